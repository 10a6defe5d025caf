"""``compose(overrides)``: the config ``qlab-train`` would compose for a command line, from
Python — completed with the agent's schema and validated, or a one-line
:class:`~qlab.core.errors.ConfigError` naming the bad key."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from qlab.config import CONF_DIR, complete, no_such_key, options, register, validate
from qlab.core.errors import ConfigError


def explain(exc: BaseException) -> str:
    """One line for a composition or validation error."""
    if isinstance(exc, ConfigError):
        return str(exc)
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, choice = str(exc.missing_cfg_file).rpartition("/")
        if group:
            return (f"{group}={choice}: no such {group}; choose one of: "
                    + ", ".join(options(group)))
    cause = exc.__cause__ if exc.__cause__ is not None else exc
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or "config"
        if isinstance(cause, ConfigKeyError | ConfigAttributeError):
            return no_such_key(key, getattr(cause, "object_type", None))
        return f"{key}: {str(cause).splitlines()[0]}"
    return " ".join(str(exc).split())


def compose(overrides: Sequence[str] = (),
            config_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """The job config for ``overrides`` (``qlab-train``'s syntax: ``["env=griddy8",
    "agent.lr=0.5"]``), with ``config_dirs`` — a user's own ``agent/``, ``env/``, ...
    configs — on Hydra's search path. One job only: sweeps (``seed=0,1``) run through
    ``qlab-train -m``. Every default is filled in; :class:`ConfigError` if anything is bad."""
    overrides = [str(o) for o in overrides]
    dirs = [Path(d).absolute() for d in config_dirs]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"config_dirs: {d} is not a directory")
    register(dirs)
    if dirs:
        overrides.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in dirs) + "]")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        line = explain(exc)
        if "sweep" in line.lower():
            line += " (compose builds one job; sweep with qlab-train -m)"
        raise ConfigError(line) from None
    cfg = complete(cfg)
    validate(cfg)
    return cfg
