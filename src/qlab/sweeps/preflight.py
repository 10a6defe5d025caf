"""Check every job of a command line before anything runs: compose each job's config the
way Hydra will, validate it, and turn any failure into one line naming the key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, open_dict
from omegaconf.errors import (
    OmegaConfBaseException,
)

from qlab.app.resume import check_root, checkpoint_root
from qlab.config import CONF_DIR, ConfigError, options, register, search_dirs
from qlab.config.batch import batch
from qlab.config.compose import explain
from qlab.core.errors import QlabError
from qlab.sweeps import fused
from qlab.tracking import default_uri, store


def job_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Expand sweep syntax (``seed=0,1,2``) into one override list per job, as Hydra's basic
    sweeper does; ``hydra.*`` overrides are Hydra's own business and are left out, but for
    ``hydra.searchpath`` (where a user's own configs are found), which every job keeps."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    search = [o.input_line for o in parsed
              if o.get_key_element().lstrip("+~") == "hydra.searchpath"]
    parsed = [o for o in parsed if not o.get_key_element().lstrip("+~").startswith("hydra")]
    if not parsed:
        return [search]
    return [[*search, *job]
            for job in BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]]


CHOSEN_GROUPS = ("agent", "env", "exploration")  # groups whose base_* schemas are not choices


def group_choice(job: Sequence[str]) -> str | None:
    """``agent=base_dqn``: the schemas are in the ConfigStore (Hydra would accept them), not
    choices; a one-line error for a group value that is not one of the group's configs."""
    for o in OverridesParser.create().parse_overrides(list(job)):
        key = o.get_key_element().lstrip("+~")
        if key in CHOSEN_GROUPS and isinstance(o.value(), str):
            allowed = options(key)
            if o.value() not in allowed:
                return f"{key}={o.value()}: no such {key}; choose one of: {', '.join(allowed)}"
    return None


def _sweeper(overrides: Sequence[str]
             ) -> tuple[list[str], list[str] | None, DictConfig | None]:
    """(The sweeps a config itself declares — ``hydra.sweeper.params`` of a named experiment —
    for keys the command line does not set, as overrides: the command line wins, as in Hydra's
    basic sweeper; the keys the sweeper fuses: None unless ``hydra/sweeper=fused``; the job's
    own config if the command line is one job as it stands — no sweep, no ``hydra.*`` override
    but the search path, first — else None)."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    given = {o.get_key_element().lstrip("+~") for o in parsed}
    cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    _check_targets(cfg.hydra)
    params = [f"{k}={v}" for k, v in (cfg.hydra.sweeper.get("params") or {}).items()
              if k not in given]
    keys = None
    if cfg.hydra.sweeper.get("_target_", "").endswith(".FusedSweeper"):
        keys = list(cfg.hydra.sweeper.get("fuse") or [])
    names = [o.get_key_element().lstrip("+~") for o in parsed]
    hydra = [name.startswith("hydra") for name in names]  # what job_overrides() leaves out
    one_job = (len(fixed) == len(parsed) and not params and keys is None
               and all(name == "hydra.searchpath" for name in names if name.startswith("hydra"))
               and hydra == sorted(hydra, reverse=True))  # the search path first, as in a job
    if not one_job:
        return params, keys, None
    with open_dict(cfg):  # what compose() returns for the job (it composes the same way)
        del cfg["hydra"]
    return params, keys, cfg


# What Hydra may instantiate from its own config: its plugins and qlab's callbacks. A
# ``_target_`` elsewhere (``+hydra.callbacks.x._target_=os.system``, or one in a config
# file) would run arbitrary code; qlab's own keys refuse ``_target_`` as an unknown key.
TARGET_PREFIXES = ("qlab.", "hydra._internal.", "hydra_plugins.")


def _check_targets(node, path: str = "hydra") -> None:
    from omegaconf import DictConfig, ListConfig

    if isinstance(node, DictConfig):
        items = [(str(k), node._get_node(k)) for k in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(str(i), node._get_node(i)) for i in range(len(node))]
    else:
        return
    for key, child in items:
        if key == "_target_":
            target = str(child._value())
            if not target.startswith(TARGET_PREFIXES):
                raise ConfigError(f"{path}._target_={target!r}: Hydra may only instantiate "
                                  f"{', '.join(p + '*' for p in TARGET_PREFIXES)}")
        elif isinstance(child, DictConfig | ListConfig):
            _check_targets(child, f"{path}.{key}")


def check(overrides: Sequence[str]) -> list[str]:
    """Compose and validate every job — every point of a fused job — as it will run; returns
    one error line per failing job (deduplicated)."""
    register(search_dirs(overrides))
    errors: list[str] = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        try:
            params, fuse_keys, composed = _sweeper(overrides)
            jobs = job_overrides([*overrides, *params])
            if fuse_keys is not None:
                jobs = fused.fuse(jobs, fuse_keys)
        except (HydraException, OmegaConfBaseException, ConfigError) as exc:
            return [explain(exc)]
        uris: list[tuple[str, str | None]] = []  # (store, tracking.artifacts)
        roots: list[Path] = []  # where the jobs' checkpoints go
        for job in jobs:
            wrong = group_choice(job)
            if wrong is not None:
                if wrong not in errors:
                    errors.append(wrong)
                continue
            try:
                if composed is None or len(jobs) != 1:
                    composed = compose(config_name="config", overrides=job)
                c = batch(composed).config
            except (HydraException, OmegaConfBaseException, ConfigError) as exc:
                line = explain(exc)
                if line not in errors:
                    errors.append(line)
            else:
                where = (c.tracking.uri or default_uri(), c.tracking.artifacts)
                if c.tracking.enabled and where not in uris:
                    uris.append(where)
                if c.tracking.enabled and c.checkpoint_every:
                    root = checkpoint_root(c.checkpoint_dir, c.tracking.uri or default_uri())
                    if root not in roots:
                        roots.append(root)
    checked: set[str] = set()
    for uri, artifacts in uris if not errors else []:  # the stores the jobs will write to
        try:
            store.artifact_location(uri, artifacts)
            if uri not in checked:
                checked.add(uri)
                store.check(uri)
        except store.StoreError as exc:
            if str(exc) not in errors:
                errors.append(str(exc))
    for root in roots if not errors else []:
        try:
            check_root(root)
        except QlabError as exc:
            errors.append(str(exc))
    return errors
