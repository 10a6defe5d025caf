"""Will the job fit in memory? An estimate of what it allocates, from its config alone, so a
job that cannot fit is refused in one line before anything is built or any run exists
(``episodes=1e11`` would otherwise allocate the per-episode history until the OS kills it; a
DQN on a 500 x 500 grid asks for its observation table, hundreds of GiB).

The estimate counts what grows with the config: the History's per-episode tables (twice:
the compiled stepper copies them once), the Q tables, the env's transition model, the DQN's
observation table, replay buffer and networks. It is compared with the memory the system
has available now (``MemAvailable``), which the job shares with everything else running.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from qlab.core import agents, envs
from qlab.core.errors import ConfigError
from qlab.core.history import EVAL_KEYS, TRAIN_KEYS

GiB = 2**30
FLOAT = 8  # bytes per float64 / int64


@dataclass(frozen=True)
class Part:
    """One allocation of the estimate: what it is, its bytes, the key that sizes it most."""

    name: str
    nbytes: int
    key: str


def available() -> int | None:
    """Bytes of memory available to a new allocation now (Linux ``MemAvailable``), else the
    physical memory; None where neither is known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def parts(c) -> list[Part]:
    """The allocations of job ``c`` (a validated :class:`~qlab.config.QlabConfig`) that grow
    with its config, largest first."""
    R, E = int(c.replicas), int(c.episodes)
    spec = agents.spec_of(c.agent)
    n_states, n_actions, obs_dim = envs.dims(c.env)
    stats = 0 if spec.tabular else 2  # a function approximator's own curves (td_loss, ...)
    n_evals = math.ceil(E / int(c.eval_every)) + 1
    out = [Part("history", 2 * R * E * (len(TRAIN_KEYS) + stats) * FLOAT
                + R * n_evals * (len(EVAL_KEYS) + 1) * FLOAT, "episodes")]
    if n_states is not None:
        out.append(Part("env model", n_states * n_actions * 6 * FLOAT, "env"))
        out.append(Part("exact evaluation (Q*)", 3 * n_states * n_actions * FLOAT, "env"))
    if spec.tabular and n_states is not None:
        tables = 3 if spec.name == "double_q" else 1
        out.append(Part("Q tables", tables * R * n_states * n_actions * FLOAT, "replicas"))
    hidden = list(getattr(c.agent, "hidden", []) or [])
    buffer = getattr(c.agent, "buffer_size", None)
    if not spec.tabular and buffer is not None:  # a function approximator over observations
        if n_states is not None:
            out.append(Part("observation table", n_states * obs_dim * 4, "env"))
        out.append(Part("replay buffer", R * int(buffer) * (2 * obs_dim * 4 + 3 * FLOAT),
                        "agent.buffer_size"))
        sizes = [obs_dim, *hidden, n_actions]
        weights = sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False))
        out.append(Part("networks and optimiser", 5 * R * weights * 4, "agent.hidden"))
    return sorted(out, key=lambda p: -p.nbytes)


def check(c, limit: int | None = None) -> None:
    """:class:`ConfigError` (one line, with the estimate) if job ``c`` cannot fit in
    ``limit`` bytes (default: :func:`available`)."""
    limit = available() if limit is None else limit
    if limit is None:
        return
    found = parts(c)
    total = sum(p.nbytes for p in found)
    if total <= limit:
        return
    biggest = found[0]
    detail = ", ".join(f"{p.name} {_gib(p.nbytes)}" for p in found[:3]
                       if p.nbytes >= total / 100)
    raise ConfigError(f"{biggest.key}: the job needs about {_gib(total)} of memory "
                      f"({detail}), more than the {_gib(limit)} available; make "
                      f"{_what(biggest)} smaller")


def _gib(nbytes: float) -> str:
    g = nbytes / GiB
    return f"{g:,.0f} GiB" if g >= 100 else f"{g:.3g} GiB"


def _what(p: Part) -> str:
    return {"episodes": "episodes (or replicas)", "replicas": "replicas",
            "env": "the env (env.height / env.width)",
            "agent.buffer_size": "agent.buffer_size (or replicas)",
            "agent.hidden": "agent.hidden (or replicas)"}.get(p.key, p.key)
