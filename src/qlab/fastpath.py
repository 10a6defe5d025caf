"""The compiled fast path for tabular training.

:func:`train` takes :func:`qlab.runner.train`'s arguments and returns the same
:class:`~qlab.runner.History` and leaves the same Q tables, bit for bit, for tabular
Q-learning (``update = step`` or ``episode``) and Monte-Carlo on an env with a tabular model
(:class:`~qlab.envs.vector.TabularVecEnv`: the grid world, random goal included, and the
toy-text envs) under any of the exploration schedules. The per-step work runs in numba
kernels (:mod:`qlab.agents.kernels`), one replica after the other over each replica's own
random streams; the numpy path stays the readable reference, and tests check the two
agree exactly.

The driver here calls the kernel in chunks: every replica runs until its next evaluation
episode (evaluations run in Python, between chunks, on the agent as the reference does),
at most ``limit`` episodes (sized so a chunk takes well under ``flush_seconds``: the
listeners get their periodic updates and Ctrl-C / SIGTERM, which Python only sees between
chunks, stays prompt), or until it needs more random numbers or a larger episode buffer.

``train/sps`` here: a replica's env steps in a chunk / the chunk's wall time, for every
episode it finished in that chunk (the reference times each episode; replicas here take
turns within a chunk, so this is the rate at which the replica advanced over the chunk).

After :func:`train` the agent's and env's own random streams (``ReplicaUniforms``) are not
advanced: the fast path draws from copies of their generators.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qlab import runner
from qlab.config import ConfigError
from qlab.exploration import KINDS, Schedule
from qlab.rng import ReplicaUniforms
from qlab.runner import TRAIN_KEYS, History, Listener

MODES = ("auto", "on", "off")
TABULAR_AGENTS = ("tabular_q", "tabular_mc")
UNIFORM_BLOCK = 4096  # numbers drawn per replica at a time, as ReplicaUniforms
EPISODE_CAPACITY = 256  # initial episode buffer (steps), doubled when full
FIRST_LIMIT = 16  # episodes per replica in the first chunk


def check_config(fast: str, agent: str) -> None:
    """Refuse a ``fast`` value the config cannot honour (called by ``config.validate``)."""
    if fast not in MODES:
        raise ConfigError(f"fast={fast!r}: must be one of {', '.join(MODES)} "
                          "(quote 'on' / 'off' in YAML files)")
    if fast == "on" and agent not in TABULAR_AGENTS:
        raise ConfigError(f"fast='on': the compiled fast path runs {' and '.join(TABULAR_AGENTS)}"
                          f" only, not agent={agent}; use fast=auto or fast=off")


def unsupported(env: Any, agent: Any, schedule: Schedule) -> str | None:
    """Why the fast path cannot train this env + agent + schedule, or None if it can."""
    from qlab.agents.mc import TabularMC
    from qlab.agents.qlearning import TabularQ
    from qlab.envs.vector import TabularVecEnv

    if type(agent) not in (TabularQ, TabularMC):
        return f"agent {type(agent).__name__} is not tabular Q-learning or Monte-Carlo"
    if type(env) is not TabularVecEnv:
        return f"env {type(env).__name__} is not a tabular-model env (TabularVecEnv)"
    if schedule.kind not in KINDS:
        return f"exploration {schedule.kind!r} is not one of {', '.join(KINDS)}"
    if env.num_envs != agent.replicas:
        return f"env has {env.num_envs} replicas, agent {agent.replicas}"
    for what, obj in (("agent", agent), ("env", env)):
        foreign = _foreign_methods(obj)
        if foreign:
            return f"{what} method(s) {', '.join(foreign)} replaced from outside qlab"
    return None


def _foreign_methods(obj: Any) -> list[str]:
    """Methods of ``obj`` (set on it or on its class) not defined in qlab — wrapped or
    patched from outside (tests inject failures this way); the kernels could not honour
    them."""
    out = []
    for name in dir(obj):
        if name.startswith("__"):
            continue
        attr = getattr(obj, name, None)
        func = getattr(attr, "__func__", attr)
        if (isinstance(func, types.FunctionType)
                and not (func.__module__ or "").startswith("qlab.")):
            out.append(name)
    return out


def choose(fast: str, env: Any, agent: Any, schedule: Schedule) -> Callable[..., History]:
    """The training function for ``fast``: ``auto`` — :func:`train` when it supports the
    combination, else :func:`qlab.runner.train`; ``on`` — :func:`train` or ConfigError;
    ``off`` — the numpy reference."""
    if fast not in MODES:
        raise ConfigError(f"fast={fast!r}: must be one of {', '.join(MODES)}")
    if fast == "off":
        return runner.train
    why = unsupported(env, agent, schedule)
    if why is None:
        return train
    if fast == "on":
        raise ConfigError(f"fast='on': {why}; the compiled fast path runs tabular_q and "
                          "tabular_mc on envs with a tabular model; use fast=auto or fast=off")
    return runner.train


class _Streams:
    """Each replica's uniform stream as one buffer row, continuing ``rand`` exactly (its
    buffered numbers first, then its generators' draws); row k is refilled from replica k's
    own generator, whatever the other replicas have used."""

    def __init__(self, rand: ReplicaUniforms, block: int | None = None) -> None:
        block = UNIFORM_BLOCK if block is None else block
        state = rand.state()
        left = state["buf"]
        self.gens = []
        for st in state["gens"]:
            gen = np.random.Generator(getattr(np.random, st["bit_generator"])())
            gen.bit_generator.state = st
            self.gens.append(gen)
        n = left.shape[1]
        self.buf = np.empty((len(self.gens), max(block, n)))
        self.buf[:, :n] = left
        for k, gen in enumerate(self.gens):
            gen.random(out=self.buf[k, n:])

    def refill(self, k: int, pos: int) -> None:
        """Drop row k's numbers before ``pos`` (used) and top the row up from its generator."""
        row = self.buf[k]
        rest = row.size - pos
        row[:rest] = row[pos:]
        self.gens[k].random(out=row[rest:])


def train(env, agent, schedule: Schedule, episodes: int, eval_every: int,
          evaluator: Callable[[int, Any], dict[str, float]] | None = None,
          listeners: Sequence[Listener] = (), flush_seconds: float = 2.0,
          total_steps: int | None = None) -> History:
    """:func:`qlab.runner.train`, compiled (see the module docstring)."""
    from qlab.agents import kernels as K
    from qlab.agents.mc import TabularMC

    why = unsupported(env, agent, schedule)
    if why is not None:
        raise ValueError(f"fastpath.train: {why}")
    R = env.num_envs
    hist = History.empty(R, episodes, eval_every, evaluator.keys if evaluator else ())
    table = np.full((len(TRAIN_KEYS), R, episodes), np.nan)  # rows: TRAIN_KEYS
    for i, key in enumerate(TRAIN_KEYS):
        hist.train[key] = table[i]
    sps = table[TRAIN_KEYS.index("train/sps")]
    eval_at = np.zeros(episodes, dtype=bool)
    eval_at[hist.eval_steps[0]] = True
    budget = total_steps if total_steps is not None else np.iinfo(np.int64).max
    model = env.model
    if isinstance(agent, TabularMC):
        kind, first_visit = K.MC, agent.first_visit
    else:
        kind, first_visit = (K.Q_STEP if agent.update == "step" else K.Q_EPISODE), False
    as_rows = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (R,))  # noqa: E731
    params = np.ascontiguousarray(np.stack(
        [as_rows(agent.lr), as_rows(agent.gamma), as_rows(schedule.start),
         as_rows(schedule.decay), as_rows(schedule.minimum), as_rows(schedule.duration)],
        axis=1))
    istate = np.zeros((R, K.N_INT), dtype=np.int64)
    istate[:, K.EVAL_EP] = -1
    fstate = np.zeros((R, K.N_FLOAT))
    status = istate[:, K.STATUS]
    capacity = EPISODE_CAPACITY if kind != K.Q_STEP else 1
    buf_i = np.zeros((R, 4, capacity), dtype=np.int64)
    buf_r = np.zeros((R, capacity))
    fixed = (kind, first_visit, KINDS.index(schedule.kind), schedule.unit == "step",
             model.deterministic, -1 if model.max_steps is None else model.max_steps,
             episodes, budget)
    # The env's own cumulative tables and the agent's and env's streams (private to them, read
    # here so the kernel samples exactly what TabularVecEnv and TabularAgent would).
    model_arrays = (env._cum, model.next_state, model.reward, model.terminal, env._init_cum)

    istate[:, K.STATE] = env.reset()  # the env's stream takes its reset numbers, as the reference
    u_agent, u_env = _Streams(agent._rand), _Streams(env._rand)
    limit = FIRST_LIMIT
    last_flush = time.monotonic()
    try:
        while True:
            ran = status == K.RUN
            ep0, steps0 = istate[:, K.EP].copy(), istate[:, K.STEPS].copy()
            t0 = time.perf_counter()
            K.run(*fixed, limit, *model_arrays, agent.q, params, istate, fstate, u_agent.buf,
                  u_env.buf, buf_i, buf_r, eval_at, table)
            seconds = max(time.perf_counter() - t0, 1e-9)
            ep1 = istate[:, K.EP]
            moved = ep1 - ep0
            rate = (istate[:, K.STEPS] - steps0) / seconds
            one = np.flatnonzero(moved == 1)  # the common case, vectorised
            sps[one, ep0[one]] = rate[one]
            for k in np.flatnonzero(moved > 1).tolist():
                sps[k, ep0[k]:ep1[k]] = rate[k]
            hist.done[:] = ep1
            due = np.flatnonzero(istate[:, K.EVAL_EP] >= 0)
            if due.size:
                _evaluate(due, istate, hist, evaluator, agent)
            for k in np.flatnonzero(ran & (status >= K.NEED_AGENT_U)).tolist():
                if status[k] == K.FAILED:
                    e = int(ep1[k]) - 1
                    hist.failed[k] = (f"replica {k}, episode {e}: train/q_delta = "
                                      f"{hist.train['train/q_delta'][k, e]} is not finite")
                elif status[k] == K.NEED_AGENT_U:
                    u_agent.refill(k, int(istate[k, K.AGENT_POS]))
                    istate[k, K.AGENT_POS] = 0
                elif status[k] == K.NEED_ENV_U:
                    u_env.refill(k, int(istate[k, K.ENV_POS]))
                    istate[k, K.ENV_POS] = 0
            if (status == K.BUFFER_FULL).any():
                buf_i, buf_r = _grow(buf_i, buf_r)
            going = status < K.FINISHED
            if not going.any():
                break
            status[going] = K.RUN
            if seconds < flush_seconds / 8:
                limit = min(2 * limit, episodes)
            elif seconds > flush_seconds / 2:
                limit = max(1, limit // 2)
            now = time.monotonic()
            if now - last_flush >= flush_seconds:
                last_flush = now
                for listener in listeners:
                    listener.update(hist)
    finally:
        for listener in listeners:
            listener.update(hist)
    return hist


def _evaluate(rows: np.ndarray, istate: np.ndarray, hist: History, evaluator, agent) -> None:
    """Evaluate the replicas in ``rows`` after the episode each has in ``EVAL_EP``."""
    from qlab.agents import kernels as K

    episodes = istate[rows, K.EVAL_EP]
    istate[rows, K.EVAL_EP] = -1
    if evaluator is None:
        return
    results = [evaluator(k, agent) for k in rows.tolist()]
    j = hist.evals_done[rows]
    for key in results[0]:
        hist.evals[key][rows, j] = [r[key] for r in results]
    hist.eval_steps[rows, j] = episodes
    hist.evals_done[rows] += 1


def _grow(buf_i: np.ndarray, buf_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The episode buffers at twice their capacity, contents kept."""
    n = buf_r.shape[1]
    new_i = np.zeros((*buf_i.shape[:2], 2 * n), dtype=buf_i.dtype)
    new_r = np.zeros((buf_r.shape[0], 2 * n))
    new_i[..., :n], new_r[:, :n] = buf_i, buf_r
    return new_i, new_r
