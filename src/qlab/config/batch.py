"""A job's sweep points: the configs one job trains, and their batch — the replicas of every
point as one config whose fused values are per-replica arrays (see :mod:`qlab.sweeps.fused`
for how a sweep is grouped into such jobs).

What fuses (:data:`FUSABLE`): ``seed`` and ``replicas`` (a point's seeds are seed ..
seed + replicas - 1), ``agent.lr``, ``agent.gamma`` and ``exploration.start`` / ``decay`` /
``min`` / ``duration`` — every value the agents and the epsilon schedule take per replica.

Each point's config is the job's config with the point's values applied the way Hydra applies
an override (``OmegaConf.update(..., merge=True)``), so it is the config the point's own job
would have composed; each is validated, and the batch config carries the fused values as
per-replica arrays.
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

from qlab.core.errors import ConfigError
from qlab.core.secrets import mask, mask_tree

KEY = "qlab_fused"  # the job config key listing a fused job's points (internal, never logged)
TAG = "qlab.fused_job"  # run tag: the id shared by the runs trained in one fused job
FUSABLE = ("seed", "replicas", "agent.lr", "agent.gamma", "exploration.start",
           "exploration.decay", "exploration.min", "exploration.duration")


def check_keys(keys: Sequence[str], where: str = "hydra.sweeper.fuse") -> list[str]:
    """``keys`` as a list, or a one-line error naming the first key that cannot be fused."""
    for k in keys:
        if k not in FUSABLE:
            raise ConfigError(f"{where}: {k!r} cannot be fused; allowed: {', '.join(FUSABLE)}")
    return list(keys)


def points(cfg: DictConfig) -> list[DictConfig]:
    """The configs of the sweep points a job trains: the job's own config, or for a fused job
    one per point (the job's config without :data:`KEY`, with the point's values applied)."""
    if KEY not in cfg:
        return [cfg]
    listed = OmegaConf.to_container(cfg[KEY], resolve=True)
    if not isinstance(listed, list) or not listed or not all(isinstance(p, dict) for p in listed):
        raise ConfigError(f"{KEY}: must be a non-empty list of {{key: value}} points")
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
    groups: list[range] = field(default_factory=list)  # each point's replica indices, in order

    @property
    def fused(self) -> bool:
        return TAG in self.tags

    def params(self, k: int) -> dict[str, str]:
        """Replica k's MLflow params: its point's config flattened, and its own seed."""
        from qlab.config import flatten

        params = {key: mask(v) for key, v in flatten(self.resolved[k]).items()}
        return {**params, "seed": str(self.seeds[k])}  # a URI's password masked

    def write_config(self, k: int, directory: Path) -> None:
        """Replica k's ``config.yaml`` artifact: its point's resolved config."""
        (Path(directory) / "config.yaml").write_text(OmegaConf.to_yaml(
            mask_tree(self.resolved[k])))


def batch(cfg: DictConfig) -> Batch:
    """Validate every point of a job (``ConfigError`` naming the first bad key) and build
    its batch."""
    from qlab.config import complete, validate

    cfgs = [complete(c) for c in points(cfg)]
    typed = [validate(c) for c in cfgs]
    resolved = [OmegaConf.to_container(c, resolve=True) for c in cfgs]
    seeds, per_replica, owners, groups = [], [], [], []
    for i, (t, r) in enumerate(zip(typed, resolved, strict=True)):
        groups.append(range(len(seeds), len(seeds) + t.replicas))
        seeds += [t.seed + k for k in range(t.replicas)]
        per_replica += [r] * t.replicas
        owners += [i] * t.replicas
    c = typed[0]
    if len(cfgs) == 1:
        return Batch(c, seeds, per_replica, groups=groups)
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
    return Batch(c, seeds, per_replica, {TAG: uuid.uuid4().hex[:12]}, groups)


def _check_only_fusable_differ(resolved: list[dict]) -> None:
    """Points must agree on every non-fusable value (an interpolation of a fused key, e.g.
    ``eval_every: ${seed}``, would make them differ): refuse rather than train them wrong."""
    from qlab.config import flatten

    flat = [flatten(r) for r in resolved]
    for key in sorted(set().union(*flat) - set(FUSABLE)):
        vals = {f.get(key) for f in flat}
        if len(vals) > 1:
            raise ConfigError(f"{key}: differs between the points of a fused job "
                                f"({', '.join(sorted(map(str, vals)))}); only "
                                f"{', '.join(FUSABLE)} can; use hydra/sweeper=basic")
