"""The compiled fast path for tabular training.

:func:`train` takes :func:`qlab.core.runner.train`'s arguments and returns the same
:class:`~qlab.core.runner.History` and leaves the same Q tables, bit for bit, for tabular
Q-learning (``update = step`` or ``episode``) and Monte-Carlo on an env with a tabular model
(:class:`~qlab.core.envs.vector.TabularVecEnv`: the grid world, random goal included, and the
toy-text envs) under any of the exploration schedules. The per-step work runs in numba
kernels (:mod:`qlab.core.agents.kernels`), one replica after the other over each replica's own
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

Checkpoints and resume work as on the reference path (same arguments, same Checkpointer):
chunks also end where the fewest episodes any active replica has finished reaches a
multiple of ``checkpoint_every``, and a pending Ctrl-C / SIGTERM (``stop()``) is acted on
between chunks (kept under ``CHUNK_SECONDS`` then). There the driver writes its state back
into the objects a checkpoint saves (:func:`_sync`: Q, the agent's and env's streams, the
stored episode, the env's states, the runner's loop counters) and calls ``checkpoint(loop,
history)``; ``resume`` starts it from the restored objects. Replicas run one after the other
here, so in a fast-path checkpoint they may be at different steps (each replica's state is
whole); the reference continues from that just as well, replica by replica. The objects are
synced at the end too, so after :func:`train` the streams are advanced past the numbers each
replica used (the reference's lock-step also draws for replicas that already finished,
while others run: those replicas' streams and env states differ, nothing learned does).
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qlab.core import runner
from qlab.core.errors import ConfigError
from qlab.core.exploration import KINDS, Schedule
from qlab.core.rng import ReplicaUniforms, generator_from_state
from qlab.core.runner import TRAIN_KEYS, History, Listener

MODES = ("auto", "on", "off")
UNIFORM_BLOCK = 4096  # numbers drawn per replica at a time, as ReplicaUniforms
EPISODE_CAPACITY = 256  # initial episode buffer (steps), doubled when full
FIRST_LIMIT = 16  # episodes per replica in the first chunk
CHUNK_SECONDS = 1.0  # with ``stop``: chunks aim at well under this, so a signal acts promptly


def unsupported(env: Any, agent: Any, schedule: Schedule) -> str | None:
    """Why the fast path cannot train this env + agent + schedule, or None if it can."""
    from qlab.core.agents.mc import TabularMC
    from qlab.core.agents.qlearning import TabularQ
    from qlab.core.envs.vector import TabularVecEnv

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
    combination, else :func:`qlab.core.runner.train`; ``on`` — :func:`train` or ConfigError;
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

    def __init__(self, rand: ReplicaUniforms) -> None:
        block = UNIFORM_BLOCK
        state = rand.state()
        left = state["buf"]
        self.gens = [generator_from_state(st) for st in state["gens"]]
        n = left.shape[1]
        self.buf = np.empty((len(self.gens), max(block, n)))
        self.buf[:, :n] = left
        for k, gen in enumerate(self.gens):
            gen.random(out=self.buf[k, n:])

    def state(self, pos: np.ndarray) -> dict:
        """:meth:`ReplicaUniforms.state` of the streams with row k used up to ``pos[k]``. That
        state keeps one buffer length for all replicas: shorter rows are topped up from
        copies of their generators (the same numbers follow), this object is not changed."""
        rows = [self.buf[k, int(p):] for k, p in enumerate(pos)]
        n = max(row.size for row in rows)
        buf = np.empty((len(rows), n))
        gens = []
        for k, row in enumerate(rows):
            buf[k, :row.size] = row
            st = self.gens[k].bit_generator.state
            if row.size < n:
                gen = generator_from_state(st)
                gen.random(out=buf[k, row.size:])
                st = gen.bit_generator.state
            gens.append(st)
        return {"gens": gens, "buf": buf}

    def refill(self, k: int, pos: int) -> None:
        """Drop row k's numbers before ``pos`` (used) and top the row up from its generator."""
        row = self.buf[k]
        rest = row.size - pos
        row[:rest] = row[pos:]
        self.gens[k].random(out=row[rest:])


def train(env, agent, schedule: Schedule, episodes: int, eval_every: int,
          evaluator: Callable[[int, Any], dict[str, float]] | None = None,
          listeners: Sequence[Listener] = (), flush_seconds: float = 2.0,
          total_steps: int | None = None,
          checkpoint: Callable[[dict[str, np.ndarray], History], None] | None = None,
          checkpoint_every: int = 0,
          resume: tuple[History, dict[str, np.ndarray]] | None = None,
          stop: Callable[[], BaseException | None] | None = None) -> History:
    """:func:`qlab.core.runner.train`, compiled (see the module docstring); the same arguments,
    checkpoints and resume included."""
    from qlab.core.agents import kernels as K
    from qlab.core.agents.mc import TabularMC

    why = unsupported(env, agent, schedule)
    if why is not None:
        raise ValueError(f"fastpath.train: {why}")
    R = env.num_envs
    hist = History.empty(R, episodes, eval_every, evaluator.keys if evaluator else ())
    eval_at = np.zeros(episodes, dtype=bool)
    eval_at[hist.eval_steps[0]] = True
    loop = runner.loop_state(R)
    if resume is not None:
        hist = resume[0]
        for k, v in resume[1].items():
            loop[k][...] = v
    table = np.full((len(TRAIN_KEYS), R, episodes), np.nan)  # rows: TRAIN_KEYS
    for i, key in enumerate(TRAIN_KEYS):
        table[i] = hist.train[key]
        hist.train[key] = table[i]
    sps = table[TRAIN_KEYS.index("train/sps")]
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
    buf_i, buf_r = _episode_buffers(agent, kind)
    fixed = (kind, first_visit, KINDS.index(schedule.kind), schedule.unit == "step",
             model.deterministic, -1 if model.max_steps is None else model.max_steps,
             episodes, budget)
    # The env's own cumulative tables and the agent's and env's streams (private to them, read
    # here so the kernel samples exactly what TabularVecEnv and TabularAgent would).
    model_arrays = (env._cum, model.next_state, model.reward, model.terminal, env._init_cum)

    if resume is None:  # the env's stream takes its reset numbers, as the reference
        istate[:, K.STATE] = env.reset()
    else:  # the restored objects and loop counters (runner.loop_state) go on from there
        istate[:, K.STATE], istate[:, K.ELAPSED] = env.state, env.elapsed
        istate[:, K.EP], istate[:, K.STEPS] = loop["ep"], loop["steps"]
        fstate[:, K.RET], fstate[:, K.QD_SUM], fstate[:, K.QD_CNT] = (
            loop["ret"], loop["qd_sum"], loop["qd_cnt"])
        status[~loop["active"]] = K.FINISHED
        if kind != K.Q_STEP:  # the stored part of each replica's current episode
            istate[:, K.BUF_LEN] = agent._episodes.length
    u_agent, u_env = _Streams(agent._rand), _Streams(env._rand)
    every = checkpoint_every if checkpoint is not None else 0
    active = status < K.FINISHED
    ckpt_mark = int(istate[active, K.EP].min()) // every if every and active.any() else 0
    target = min(flush_seconds, CHUNK_SECONDS) if stop is not None else flush_seconds
    limit = FIRST_LIMIT

    def sync() -> None:
        _sync(env, agent, loop, istate, fstate, u_agent, u_env, buf_i, buf_r)

    last_flush = time.monotonic()
    try:
        while True:
            ran = status == K.RUN
            ep0, steps0 = istate[:, K.EP].copy(), istate[:, K.STEPS].copy()
            chunk = limit
            if every and ran.any():  # the slowest replica stops at the next checkpoint mark
                chunk = min(limit, (ckpt_mark + 1) * every - int(ep0[ran].min()))
            t0 = time.perf_counter()
            K.run(*fixed, chunk, *model_arrays, agent.q, params, istate, fstate, u_agent.buf,
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
            now = time.monotonic()
            if now - last_flush >= flush_seconds:
                last_flush = now
                for listener in listeners:
                    listener.update(hist)
            if every and going.any():
                mark = int(ep1[going].min()) // every
                if mark > ckpt_mark:
                    ckpt_mark = mark
                    sync()
                    checkpoint(loop, hist)
            if stop is not None and (exc := stop()) is not None:
                if checkpoint is not None:
                    sync()
                    checkpoint(loop, hist)
                raise exc
            if not going.any():
                break
            status[going] = K.RUN
            if seconds < target / 8:
                limit = min(2 * limit, episodes)
            elif seconds > target / 2:
                limit = max(1, limit // 2)
    finally:
        sync()  # the objects hold the driver's state, as after the reference
        for listener in listeners:
            listener.update(hist)
    return hist


def _episode_buffers(agent, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's episode buffers (state, action, next state, terminated; reward), holding
    the agent's stored episode (a resumed checkpoint's), at least ``EPISODE_CAPACITY`` wide."""
    from qlab.core.agents import kernels as K

    R = agent.replicas
    if kind == K.Q_STEP:
        return np.zeros((R, 4, 1), dtype=np.int64), np.zeros((R, 1))
    f = agent._episodes.fields
    n = f["state"].shape[1]
    buf_i = np.zeros((R, 4, max(EPISODE_CAPACITY, n)), dtype=np.int64)
    buf_r = np.zeros((R, buf_i.shape[2]))
    for j, name in enumerate(("state", "action", "next_state", "terminated")):
        buf_i[:, j, :n] = f[name]
    buf_r[:, :n] = f["reward"]
    return buf_i, buf_r


def _sync(env, agent, loop: dict[str, np.ndarray], istate: np.ndarray, fstate: np.ndarray,
          u_agent: _Streams, u_env: _Streams, buf_i: np.ndarray, buf_r: np.ndarray) -> None:
    """Write the driver's state into the objects a checkpoint saves: the env's states and
    stream, the agent's stream and stored episode (its Q is the kernel's own array) and the
    runner's loop counters (:func:`qlab.core.runner.loop_state`)."""
    from qlab.core.agents import kernels as K

    env.state = istate[:, K.STATE].copy()
    env.elapsed = istate[:, K.ELAPSED].copy()
    env._rand.load_state(u_env.state(istate[:, K.ENV_POS]))
    agent._rand.load_state(u_agent.state(istate[:, K.AGENT_POS]))
    episodes = getattr(agent, "_episodes", None)
    if episodes is not None:
        episodes.load_state_dict({
            "length": istate[:, K.BUF_LEN].copy(), "state": buf_i[:, 0], "action": buf_i[:, 1],
            "next_state": buf_i[:, 2], "terminated": buf_i[:, 3] != 0, "reward": buf_r})
    active = istate[:, K.STATUS] < K.FINISHED
    loop["ep"][:], loop["steps"][:] = istate[:, K.EP], istate[:, K.STEPS]
    loop["length"][:] = np.where(active, istate[:, K.ELAPSED], 0)
    loop["ret"][:], loop["qd_sum"][:] = fstate[:, K.RET], fstate[:, K.QD_SUM]
    loop["qd_cnt"][:] = fstate[:, K.QD_CNT]
    loop["stat_cnt"][:] = 0.0
    loop["active"][:] = active


def _evaluate(rows: np.ndarray, istate: np.ndarray, hist: History, evaluator, agent) -> None:
    """Evaluate the replicas in ``rows`` after the episode each has in ``EVAL_EP``."""
    from qlab.core.agents import kernels as K

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


def stepper(env: Any, agent: Any, schedule: Schedule) -> Callable[..., History]:
    """The compiled trainer for this env + agent + schedule (ValueError if unsupported)."""
    why = unsupported(env, agent, schedule)
    if why is not None:
        raise ValueError(f"fastpath: {why}")
    return train
