"""The config layer: the schemas registered in Hydra's ConfigStore, completing a composed
config with its agent's schema, and validation — every check before any run exists, each
failure one line naming the key."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from qlab.config import memory
from qlab.config.schema import QlabConfig, TrackingConfig
from qlab.core import agents, envs
from qlab.core.envs.registry import EnvConfig
from qlab.core.errors import ConfigError
from qlab.core.exploration import ExplorationConfig
from qlab.core.registry import import_module

# qlab's configs, package data (in a checkout src/qlab/conf links to the top-level conf/, the
# source): found wherever qlab is installed, whatever the working directory.
CONF_DIR = Path(str(resources.files("qlab") / "conf")).resolve()
CONFIG_DIRS_ENV = "QLAB_CONFIG_DIRS"  # user config dirs, for worker processes
_user_dirs: list[Path] = []  # the user config dirs registered in this process

__all__ = ["CONF_DIR", "ConfigError", "EnvConfig", "ExplorationConfig", "QlabConfig",
           "TrackingConfig", "complete", "flatten", "options", "register", "search_dirs",
           "validate"]


def register(config_dirs: Sequence[str | Path] = ()) -> None:
    """Put the schemas in Hydra's ConfigStore (group configs extend them by ``base_*`` names).

    An agent's schema is its registered config class, stored as ``base_<name>``: the modules
    named by ``module:`` in every ``agent/*.yaml`` of qlab's configs and of ``config_dirs``
    (a user's own, added to Hydra's search path) and of ``$QLAB_CONFIG_DIRS`` (how a sweep's
    worker processes learn them) are imported first, so they register."""
    env_dirs = [d for d in os.environ.get(CONFIG_DIRS_ENV, "").split(os.pathsep) if d]
    for d in map(Path, [*config_dirs, *env_dirs]):
        if d not in _user_dirs:
            _user_dirs.append(d)
    _store(None, "base_config", QlabConfig)
    _store("env", "base_env", EnvConfig)
    _store("exploration", "base_exploration", ExplorationConfig)
    for directory in (CONF_DIR, *map(Path, [*config_dirs, *env_dirs])):
        for path in sorted((directory / "agent").glob("*.yaml")):
            module = _yaml_key(path, "module")
            if module:
                import_module(f"agent.module ({path.name})", module)
    for spec in agents.registry.AGENTS:
        _store("agent", f"base_{spec.name}", spec.config)


# What register() put in the ConfigStore: (the store, (group, name) -> schema). Storing a
# schema again builds it anew (milliseconds each; every composition registers): skipped
# while the same schema is stored there already.
_stored: tuple[ConfigStore | None, dict[tuple[str | None, str], type]] = (None, {})


def _store(group: str | None, name: str, node: type) -> None:
    global _stored
    cs = ConfigStore.instance()
    if _stored[0] is not cs:
        _stored = (cs, {})
    if _stored[1].get((group, name)) is not node:
        cs.store(group=group, name=name, node=node)
        _stored[1][(group, name)] = node


_yaml_keys: dict[tuple[Path, str], tuple[tuple[int, int], str | None]] = {}  # by file version


def _yaml_key(path: Path, key: str) -> str | None:
    """A top-level string value of a YAML config file (None if absent or not a string); read
    again only once the file changed (its mtime or size)."""
    try:
        stat = path.stat()
        version = (stat.st_mtime_ns, stat.st_size)
        cached = _yaml_keys.get((path, key))
        if cached is not None and cached[0] == version:
            return cached[1]
        value = OmegaConf.load(path).get(key)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable YAML config ({exc})") from None
    value = value if isinstance(value, str) else None
    _yaml_keys[(path, key)] = (version, value)
    return value


def search_dirs(overrides: Sequence[str]) -> list[Path]:
    """The directories a command line adds to Hydra's search path
    (``hydra.searchpath=[file:///abs/conf,file://rel/conf]``; ``pkg://`` entries skipped)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    dirs: list[Path] = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if o.get_key_element().lstrip("+~") != "hydra.searchpath":
            continue
        value = o.value()
        for entry in value if isinstance(value, list) else [value]:
            entry = str(entry)
            if entry.startswith("file://"):
                dirs.append(Path(entry[len("file://"):]).absolute())
    return dirs


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted keys (``agent.lr``) with string values, as MLflow stores them."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def options(group: str) -> list[str]:
    """The choices of a config group: its yaml files in qlab's configs and in the user config
    dirs registered so far (:func:`register`), without the ``base_*`` schemas."""
    dirs = [CONF_DIR, *_user_dirs]
    return sorted({p.stem for d in dirs for p in (Path(d) / group).glob("*.yaml")})


# ---------------------------------------------------------------------------- completion

def no_such_key(key: str, schema: type | None) -> str:
    """'agent.lrr: no such key; did you mean agent.lr? allowed agent keys: gamma, ...'"""
    import difflib

    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return f"{key}: no such key; see `qlab-train --cfg job` for the keys"
    allowed = sorted(f.name for f in dataclasses.fields(schema))
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, allowed, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}? " if close else ""
    where = f"{parent} " if parent else ""
    return f"{key}: no such key; {hint}allowed {where}keys: {', '.join(allowed)}"


def complete(cfg: DictConfig) -> DictConfig:
    """``cfg`` with its ``agent`` group merged onto the agent's registered schema: every
    default filled in, every value type-checked (the agent's module imported if needed)."""
    node = cfg.get("agent")
    if not isinstance(node, DictConfig) or node.get("name") in (None, "???"):
        raise ConfigError("agent.name: missing; choose an agent (agent=NAME)")
    spec = agents.get(str(node.name), node.get("module"))
    try:
        merged = OmegaConf.merge(OmegaConf.structured(spec.config), node)
    except ConfigKeyError as exc:
        raise ConfigError(no_such_key(f"agent.{exc.full_key}", spec.config)) from None
    except OmegaConfBaseException as exc:
        msg = str(exc).splitlines()[0]
        raise ConfigError(f"agent.{getattr(exc, 'full_key', '') or ''}: {msg}") from None
    out = cfg.copy()
    with open_dict(out):
        out.agent = merged
    return out


# ---------------------------------------------------------------------------- validation

def _check_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuse keys a schema does not have: Hydra's ``+env.foo=1`` adds them unchecked, and
    training would silently ignore them."""
    schema = OmegaConf.get_type(node)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return
    allowed = sorted(f.name for f in dataclasses.fields(schema))
    for key in node.keys():
        if key not in allowed:
            where = f"{prefix[:-1]} " if prefix else ""
            raise ConfigError(f"{prefix}{key}: no such key; allowed {where}keys: "
                              + ", ".join(allowed))
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_keys(child, f"{prefix}{key}.")


def _check_env(e: EnvConfig, spec: agents.AgentSpec) -> None:
    """Cross-group checks of the env: a registered gymnasium id (``gymnasium.make`` of
    ``module:Env-v0`` would import ``module`` first), and, for an agent that indexes a
    table by state, an env with an exact model — so a sweep stops here, before any job."""
    envs.registry.find(e)  # imports env.module, which registers its id
    if e.id not in gymnasium.registry:
        raise ConfigError(f"env.id={e.id!r}: not a registered gymnasium env id"
                          + (" (module:id imports are refused)" if ":" in e.id else ""))
    if spec.tabular and not envs.has_model(e):
        raise ConfigError(f"env={e.name} ({e.id}) has no discrete state: agent={spec.name} "
                          "needs a grid world or toy-text env (griddy*, frozenlake*, "
                          "cliffwalking, taxi); use agent=dqn for this env")
    env_spec = envs.registry.find(e)
    if not spec.tabular and env_spec is not None and env_spec.model(e).legal is not None:
        raise ConfigError(f"env={e.name} ({e.id}) offers different actions per state: "
                          f"agent={spec.name} does not act by legal-action masks; use a "
                          "tabular agent (tabular_q, tabular_mc, sarsa, expected_sarsa, "
                          "double_q)")


def validate(cfg: DictConfig) -> QlabConfig:
    """The typed config, or :class:`ConfigError` naming the first bad key."""
    cfg = complete(cfg)
    _check_keys(cfg)
    c: QlabConfig = OmegaConf.to_object(cfg)
    c.check()  # each group's own checks
    spec = agents.spec_of(c.agent)
    _check_env(c.env, spec)
    if c.fast == "on" and spec.compiled is None:
        raise ConfigError(f"fast='on': agent={spec.name} has no compiled stepper; "
                          "use fast=auto or fast=off")
    if c.fast == "on" and (model := envs.make_model(c.env)) is not None:
        from qlab.core.compiled import model_unsupported

        if (why := model_unsupported(model)) is not None:
            raise ConfigError(f"fast='on': env={c.env.name}: {why}; use fast=auto or fast=off")
    if c.resume is not None and not c.tracking.enabled:
        raise ConfigError(f"resume={c.resume!r}: needs tracking.enabled=true (jobs are found "
                          "by their runs)")
    memory.check(c)  # a job that cannot fit: refused now, with the estimate
    return c
