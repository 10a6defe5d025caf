"""The agent registry: an agent is its config schema, a builder and what it needs of an env.

An agent module defines a config dataclass (a subclass of :class:`AgentConfig`, its fields'
defaults are the agent's defaults, its ``check`` refuses bad values) and registers an
:class:`AgentSpec` when imported::

    register(AgentSpec("tabular_q", TabularQConfig, build_tabular_q, tabular=True))

Its YAML, ``conf/agent/<name>.yaml``, holds ``name`` and ``module`` (the dotted module qlab
imports to find it); tuned values for an env go in ``conf/hparams/<agent>_<env>.yaml``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from qlab.core.checks import check_range
from qlab.core.errors import ConfigError
from qlab.core.registry import Registry, import_module


@dataclass
class AgentConfig:
    """Keys every agent has."""

    name: str = "???"  # the registered agent name (tabular_q, dqn, ...)
    module: str | None = None  # the module that registers it (qlab imports it)
    lr: float = 0.1  # step size / learning rate, > 0
    gamma: float = 0.95  # discount, in [0, 1]

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first bad key (subclasses add theirs)."""
        check_range("agent.lr", self.lr, 0, lo_open=True)
        check_range("agent.gamma", self.gamma, 0, 1)


@dataclass(frozen=True)
class AgentSpec:
    """What qlab needs to know of an agent."""

    name: str
    config: type[AgentConfig]  # its schema
    build: Callable[[Any, Any, Sequence[int]], Any]  # (config, env, seeds) -> the agent
    tabular: bool = False  # indexes a table by state: needs an env with an exact model
    # Its compiled stepper class, if it has one: built as ``cls(job, progress, resumed)``,
    # with ``cls.unsupported(job)`` saying why it cannot train a job (qlab.core.driver).
    compiled: type | None = None


AGENTS: Registry[AgentSpec] = Registry("agent")


def register(spec: AgentSpec) -> AgentSpec:
    """Make ``spec`` available as ``agent=<spec.name>``."""
    return AGENTS.add(spec.name, spec)


def get(name: str, module: str | None = None) -> AgentSpec:
    """The spec registered as ``name``, importing ``module`` first if it is not known yet."""
    spec = AGENTS.find(name)
    if spec is not None and module and spec.build.__module__ != module:
        raise ConfigError(f"agent.module={module!r}: agent {name!r} is already registered by "
                          f"{spec.build.__module__}; give this agent another name")
    if spec is None and not module:  # qlab's own agents register when their module loads
        _import_builtin()
        spec = AGENTS.find(name)
    if spec is None and module:
        import_module("agent.module", module)
        spec = AGENTS.find(name)
        if spec is None:
            raise ConfigError(f"agent.module={module!r}: does not register an agent named "
                              f"{name!r} (it registers: {', '.join(AGENTS.names()) or 'none'})")
    if spec is None:
        raise ConfigError(f"agent.name={name!r}: no such agent registered; set agent.module "
                          f"to the module that registers it (known: {', '.join(AGENTS.names())})")
    return spec


def _import_builtin() -> None:
    """Import every module of this package (each agent module registers itself)."""
    import importlib
    import pkgutil

    import qlab.core.agents as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def all_builtin() -> list[AgentSpec]:
    """Every agent qlab itself defines (imports them all, torch included)."""
    _import_builtin()
    return list(AGENTS)
