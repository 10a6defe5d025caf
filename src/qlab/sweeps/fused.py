"""Fused sweeps: sweep points that differ only in per-replica values train as replicas of one
job, and each still lands as its own MLflow run with exactly the params it would have had as
a job of its own.

What fuses (:data:`FUSABLE`): ``seed`` and ``replicas`` (a point's seeds are seed ..
seed + replicas - 1), ``agent.lr``, ``agent.gamma`` and ``exploration.start`` / ``decay`` /
``min`` / ``duration`` — every value the agents and the epsilon schedule take per replica.

Sweeper side (:func:`fuse`, used by ``hydra/sweeper=fused`` and the preflight check): expand
the sweep into one override list per point, as Hydra's basic sweeper does; points whose
other overrides are equal form a group; a group of more than one point becomes one job with
the shared overrides plus ``+qlab_fused=[{seed:0,exploration.decay:0.99}, ...]``, one dict per
point holding its values of the fusable keys the sweep varies.

Job side (:func:`batch`, called by ``qlab-train``): each point's config is the job's config
with the point's values applied the way Hydra applies an override (``OmegaConf.update(...,
merge=True)``), so it is the config the point's own job would have composed; each is
validated, and the batch config carries the fused values as per-replica arrays.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict

KEY = "qlab_fused"  # the job config key listing a fused job's points (internal, never logged)
TAG = "qlab.fused_job"  # run tag: the id shared by the runs trained in one fused job
FUSABLE = ("seed", "replicas", "agent.lr", "agent.gamma", "exploration.start",
           "exploration.decay", "exploration.min", "exploration.duration")


def _config_error(msg: str) -> Exception:
    from qlab.config import ConfigError

    return ConfigError(msg)


def check_keys(keys: Sequence[str], where: str = "hydra.sweeper.fuse") -> list[str]:
    """``keys`` as a list, or a one-line error naming the first key that cannot be fused."""
    for k in keys:
        if k not in FUSABLE:
            raise _config_error(f"{where}: {k!r} cannot be fused; allowed: {', '.join(FUSABLE)}")
    return list(keys)


def fuse(jobs: Sequence[Sequence[str]], keys: Sequence[str] = FUSABLE) -> list[list[str]]:
    """Jobs (override lists, as the basic sweeper expands a sweep) -> fused jobs: points that
    differ only in ``keys`` become one job (see the module docstring). A key fuses only where
    the sweep varies it and every value is a plain number; a group of one stays as it was."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys = check_keys(keys)
    parser = OverridesParser.create()
    parsed = [parser.parse_overrides(list(job)) for job in jobs]
    values: dict[str, set[str]] = {}
    numeric: dict[str, bool] = {}
    for job in parsed:
        for o in job:
            k = o.get_key_element()  # with its +/~ prefix and @package: those never fuse
            values.setdefault(k, set()).add(o.get_value_element_as_str())
            v = o.value()
            numeric[k] = numeric.get(k, True) and type(v) in (int, float)
    fused = {k for k in keys if len(values.get(k, ())) > 1 and numeric[k]}
    if not fused:
        return [list(job) for job in jobs]
    groups: dict[tuple[str, ...], list[tuple[list[str], dict[str, str]]]] = {}
    for job, ovs in zip(jobs, parsed, strict=True):
        shared = tuple(line for line, o in zip(job, ovs, strict=True)
                       if o.get_key_element() not in fused)
        point = {o.get_key_element(): o.get_value_element_as_str() for o in ovs
                 if o.get_key_element() in fused}
        groups.setdefault(shared, []).append((list(job), point))
    out = []
    for shared, members in groups.items():
        if len(members) == 1:
            out.append(members[0][0])
            continue
        points = ",".join("{" + ",".join(f"{k}:{v}" for k, v in p.items()) + "}"
                          for _, p in members)
        out.append([*shared, f"+{KEY}=[{points}]"])
    return out


def points(cfg: DictConfig) -> list[DictConfig]:
    """The configs of the sweep points a job trains: the job's own config, or for a fused job
    one per point (the job's config without :data:`KEY`, with the point's values applied)."""
    if KEY not in cfg:
        return [cfg]
    listed = OmegaConf.to_container(cfg[KEY], resolve=True)
    if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) for p in listed):
        raise _config_error(f"{KEY}: must be a non-empty list of {{key: value}} points")
    base = copy.deepcopy(cfg)
    with open_dict(base):
        del base[KEY]
    out = []
    for p in listed:
        check_keys(list(p), KEY)
        c = copy.deepcopy(base)
        for key, value in p.items():
            OmegaConf.update(c, key, value, merge=True)  # as Hydra applies ``key=value``
        out.append(c)
    return out


@dataclass
class Batch:
    """What one job trains: R replicas over one or more sweep points."""

    config: Any  # QlabConfig of the batch: replicas = R; fused values as (R,) arrays
    seeds: list[int]  # (R,) replica k's seed
    resolved: list[dict]  # (R,) replica k's point's resolved config (what its run records)
    tags: dict[str, str] = field(default_factory=dict)  # tags of every run ({TAG: id} if fused)

    @property
    def fused(self) -> bool:
        return TAG in self.tags

    def params(self, k: int) -> dict[str, str]:
        """Replica k's MLflow params: its point's config flattened, and its own seed."""
        from qlab.config import flatten

        return {**flatten(self.resolved[k]), "seed": str(self.seeds[k])}

    def write_config(self, k: int, directory: Path) -> None:
        """Replica k's ``config.yaml`` artifact: its point's resolved config."""
        (Path(directory) / "config.yaml").write_text(OmegaConf.to_yaml(self.resolved[k]))


def batch(cfg: DictConfig) -> Batch:
    """Validate every point of a job (``ConfigError`` naming the first bad key) and build
    its batch."""
    from qlab.config import validate

    cfgs = points(cfg)
    typed = [validate(c) for c in cfgs]
    resolved = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
    seeds, per_replica, owners = [], [], []
    for i, (t, r) in enumerate(zip(typed, resolved, strict=True)):
        seeds += [t.seed + k for k in range(t.replicas)]
        per_replica += [r] * t.replicas
        owners += [i] * t.replicas
    c = typed[0]
    if len(cfgs) == 1:
        return Batch(c, seeds, per_replica)
    _check_only_fusable_differ(resolved)

    def arr(get) -> np.ndarray:
        return np.array([get(typed[i]) for i in owners], dtype=np.float64)

    agent = dataclasses.replace(c.agent, lr=arr(lambda t: t.agent.lr),
                                gamma=arr(lambda t: t.agent.gamma))
    x = c.exploration
    exploration = dataclasses.replace(
        x, start=arr(lambda t: t.exploration.start), decay=arr(lambda t: t.exploration.decay),
        min=arr(lambda t: t.exploration.min), duration=arr(lambda t: t.exploration.duration))
    c = dataclasses.replace(c, agent=agent, exploration=exploration, seed=seeds[0],
                            replicas=len(seeds))
    return Batch(c, seeds, per_replica, {TAG: uuid.uuid4().hex[:12]})


def _check_only_fusable_differ(resolved: list[dict]) -> None:
    """Points must agree on every non-fusable value (an interpolation of a fused key, e.g.
    ``eval_every: ${seed}``, would make them differ): refuse rather than train them wrong."""
    from qlab.config import flatten

    flat = [flatten(r) for r in resolved]
    for key in sorted(set().union(*flat) - set(FUSABLE)):
        vals = {f.get(key) for f in flat}
        if len(vals) > 1:
            raise _config_error(f"{key}: differs between the points of a fused job "
                                f"({', '.join(sorted(map(str, vals)))}); only "
                                f"{', '.join(FUSABLE)} can; use hydra/sweeper=basic")
