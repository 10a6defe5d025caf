"""Typed schemas for every config group, their registration in Hydra's ConfigStore, and the
checks that refuse bad input — in one line naming the key — before any run exists."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from qlab.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[3]
CONF_DIR = ROOT / "conf"


@dataclass
class EnvConfig:
    """An environment: the grid world or a gymnasium id."""

    name: str = MISSING  # short name, logged as the ``env`` tag
    id: str = "qlab/Griddy-v0"  # gymnasium id
    height: int = 4  # grid rows (grid world only)
    width: int = 4  # grid columns (grid world only)
    random_goal: bool = False  # goal in a random cell, part of the state (grid world only)
    max_steps: int | None = 1000  # truncate episodes after this many steps (null: the env's own)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra gymnasium.make kwargs


@dataclass
class AgentConfig:
    """Keys every agent has."""

    name: str = MISSING  # tabular_q | ...
    lr: float = 0.1  # step size / learning rate, > 0
    gamma: float = 0.95  # discount, in [0, 1]


@dataclass
class TabularQConfig(AgentConfig):
    """Tabular Q-learning."""

    name: str = "tabular_q"
    update: str = "step"  # step: online Watkins Q-learning; episode: the notebook's backward sweep
    init: float = 0.0  # initial Q value


@dataclass
class TabularMCConfig(AgentConfig):
    """Tabular Monte-Carlo control (constant step toward the episode's returns)."""

    name: str = "tabular_mc"
    first_visit: bool = False  # true: update only the first visit of each (s, a) per episode
    init: float = 0.0  # initial Q value


@dataclass
class DQNConfig(AgentConfig):
    """Deep Q-network: an MLP over the flattened observation, replay, target network."""

    name: str = "dqn"
    lr: float = 1e-3  # Adam learning rate, > 0
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # hidden layer widths ([]: linear)
    buffer_size: int = 10_000  # replay capacity per replica, in transitions, >= 1
    batch_size: int = 64  # minibatch per gradient step, >= 1
    learning_starts: int = 500  # env steps before the first gradient step, >= 0
    train_freq: int = 1  # take gradient steps every this many env steps, >= 1
    gradient_steps: int = 1  # gradient steps each time, >= 1
    target_update: int = 100  # refresh the target network every this many env steps, >= 1
    tau: float = 1.0  # target refresh: 1 = hard copy, < 1 = Polyak weight of the online net
    double: bool = False  # double DQN: the online net picks the bootstrap action
    max_grad_norm: float = 10.0  # clip each replica's gradient to this L2 norm, > 0
    threads: int = 1  # torch CPU threads (0: torch's default); 1 is fastest for small nets


@dataclass
class ExplorationConfig:
    """Epsilon-greedy schedule."""

    name: str = "exponential"  # exponential | linear | constant
    start: float = 1.0  # epsilon at t = 0, in [0, 1]
    decay: float = 0.995  # exponential: epsilon *= decay per unit, in (0, 1]
    min: float = 0.01  # floor, in [0, start]
    duration: int = 500  # linear: units to anneal from start to min, >= 1
    unit: str = "episode"  # episode | step: what t counts


@dataclass
class TrackingConfig:
    """Where runs are recorded."""

    enabled: bool = True  # false: train without MLflow
    uri: str | None = None  # MLflow tracking URI; null: $MLFLOW_TRACKING_URI or sqlite at the root
    flush_seconds: float = 2.0  # how often buffered metrics are written while training
    # train/* curves: every episode up to this many points per run, then thinned (every 2nd
    # episode up to 2x, every 4th up to 4x, ...); the full table is the episodes.csv artifact.
    # null: every episode
    max_points: int | None = 1000


@dataclass
class QlabConfig:
    """One training job: R replicas (seeds seed .. seed + replicas - 1) of one experiment."""

    env: EnvConfig = MISSING
    agent: Any = MISSING
    exploration: ExplorationConfig = MISSING
    seed: int = 0  # seed of replica 0; replica k uses seed + k
    replicas: int = 1  # independent replicas trained in lock-step, one MLflow run each
    episodes: int = 500  # training episodes per replica
    eval_every: int = 50  # greedy evaluation every this many episodes (and after the last)
    total_steps: int | None = None  # env-step budget per replica, ends training early (null: none)
    eval_episodes: int = 10  # greedy rollouts per evaluation on envs without a model
    fast: str = "auto"  # compiled tabular fast path (qlab.core.fastpath): auto | on | off
    experiment_name: str = "qlab"  # MLflow experiment
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint_every: int = 100  # checkpoint the job every this many episodes (0: never)
    checkpoint_dir: str | None = None  # null: checkpoints/ beside a sqlite store, else the root
    resume: str | None = None  # RUN_ID | last | auto: continue a job from its checkpoint


AGENT_SCHEMAS: dict[str, type] = {"tabular_q": TabularQConfig}
AGENT_SCHEMAS["tabular_mc"] = TabularMCConfig
AGENT_SCHEMAS["dqn"] = DQNConfig


def register() -> None:
    """Put the schemas in Hydra's ConfigStore (group configs extend them by ``base_*`` names)."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=QlabConfig)
    cs.store(group="env", name="base_env", node=EnvConfig)
    cs.store(group="exploration", name="base_exploration", node=ExplorationConfig)
    for name, schema in AGENT_SCHEMAS.items():
        cs.store(group="agent", name=f"base_{name}", node=schema)


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
    """The choices of a config group (its yaml files, without the ``base_*`` schemas)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


# ---------------------------------------------------------------------------- validation

def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r}: {allowed}")


def _check_in(key: str, value: Any, allowed: tuple | list) -> None:
    if value not in allowed:
        _fail(key, value, "must be one of " + ", ".join(map(str, allowed)))


def _check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> None:
    bad = not math.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        if hi is None and lo is not None:
            _fail(key, value, f"must be {'>' if lo_open else '>='} {lo:g}")
        if lo is None and hi is not None:
            _fail(key, value, f"must be {'<' if hi_open else '<='} {hi:g}")
        if lo is None and hi is None:
            _fail(key, value, "must be a finite number")
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        _fail(key, value, f"must be in {left}{lo:g}, {hi:g}{right}")


def _check_keys(node: DictConfig, prefix: str = "") -> None:
    """Refuse keys a schema does not have: Hydra's ``+agent.lrr=0.1`` adds them unchecked,
    and training would silently ignore them."""
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


def _check_env_id(env_id: str) -> None:
    """Only registered ids: gymnasium.make("module:Env-v0") would import ``module`` first."""
    import gymnasium

    from qlab.core import envs  # noqa: F401 - registers qlab/Griddy-v0

    if env_id not in gymnasium.registry:
        _fail("env.id", env_id, "not a registered gymnasium env id (module:id imports "
              "are refused)" if ":" in env_id else "not a registered gymnasium env id")


def _check_tabular_env(e: EnvConfig, agent: str) -> None:
    """Tabular agents index their table by state: refuse an env without a discrete state (no
    exact model) here, so the preflight check stops a sweep before any job runs."""
    from qlab.core import envs

    if envs.make_model(e) is None:
        raise ConfigError(f"env={e.name} ({e.id}) has no discrete state: agent={agent} needs a "
                          "grid world or toy-text env (griddy*, frozenlake*, cliffwalking, taxi); "
                          "use agent=dqn for this env")


def validate(cfg: DictConfig) -> QlabConfig:
    """The typed config, or :class:`ConfigError` naming the first bad key."""
    from qlab.core import agents, exploration, fastpath

    _check_keys(cfg)
    c: QlabConfig = OmegaConf.to_object(cfg)
    e, a, x = c.env, c.agent, c.exploration
    _check_range("seed", c.seed, 0, 2**32 - 1)
    _check_range("replicas", c.replicas, 1)
    _check_range("episodes", c.episodes, 1)
    _check_range("eval_every", c.eval_every, 1)
    if c.total_steps is not None:
        _check_range("total_steps", c.total_steps, 1)
    _check_range("eval_episodes", c.eval_episodes, 1)
    if not c.experiment_name.strip():
        _fail("experiment_name", c.experiment_name, "must not be empty")
    if e.id == "qlab/Griddy-v0":
        _check_range("env.height", e.height, 1)
        _check_range("env.width", e.width, 1)
        if e.height * e.width < 2:
            _fail("env.height", e.height, f"a {e.height}x{e.width} grid has fewer than 2 cells; "
                  "height * width must be >= 2")
    if e.max_steps is not None:
        _check_range("env.max_steps", e.max_steps, 1)
    _check_env_id(e.id)
    _check_in("agent.name", a.name, agents.NAMES)
    _check_range("agent.lr", a.lr, 0, lo_open=True)
    _check_range("agent.gamma", a.gamma, 0, 1)
    agents.validate(a, _fail, _check_in, _check_range)
    if a.name in agents.TABULAR:
        _check_tabular_env(e, a.name)
    _check_in("exploration.name", x.name, exploration.KINDS)
    _check_in("exploration.unit", x.unit, exploration.UNITS)
    _check_range("exploration.start", x.start, 0, 1)
    _check_range("exploration.decay", x.decay, 0, 1, lo_open=True)
    _check_range("exploration.min", x.min, 0, x.start)
    _check_range("exploration.duration", x.duration, 1)
    _check_range("tracking.flush_seconds", c.tracking.flush_seconds, 0, lo_open=True)
    if c.tracking.max_points is not None:
        _check_range("tracking.max_points", c.tracking.max_points, 1)
    fastpath.check_config(c.fast, a.name)
    _check_range("checkpoint_every", c.checkpoint_every, 0)
    if c.resume is not None and not str(c.resume).strip():
        _fail("resume", c.resume, "must be a run id, last or auto")
    if c.resume is not None and not c.tracking.enabled:
        _fail("resume", c.resume, "needs tracking.enabled=true (jobs are found by their runs)")
    return c
