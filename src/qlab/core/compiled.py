"""The compiled stepper of the tabular agents (tabular Q-learning, ``update = step`` or
``episode``, Monte-Carlo control, SARSA, Expected SARSA, Double Q-learning) on an env with
a tabular model (:class:`~qlab.core.envs.vector.TabularVecEnv`: the grid world, random goal
included, and the toy-text envs; not per-state legal actions nor reward noise, which the
kernels do not implement) under any of the exploration schedules.

It fills the same :class:`~qlab.core.history.History` and leaves the same Q tables, bit for
bit, as the numpy reference (:class:`~qlab.core.driver.NumpyStepper`); tests check the two
agree exactly. The per-step work runs in numba kernels (:mod:`qlab.core.agents.kernels`),
one replica after the other over each replica's own random streams.

Each :meth:`CompiledStepper.advance` is one chunk: every replica runs until its next
evaluation episode (evaluations run in Python, between chunks, on the agent as the reference
does), at most ``limit`` episodes (sized so a chunk takes well under the driver's
``seconds``: listeners get their periodic updates and Ctrl-C / SIGTERM, which Python only
sees between chunks, stays prompt), up to the driver's next checkpoint mark, or until it
needs more random numbers or a larger episode buffer.

``train/sps`` here: a replica's env steps in a chunk / the chunk's wall time, for every
episode it finished in that chunk (the reference times each episode; replicas here take
turns within a chunk, so this is the rate at which the replica advanced over the chunk).

State goes in and out through the objects' own ``state_dict`` / ``load_state_dict``: at the
start the stepper reads the env's and agent's streams and stored episode from them, and
:meth:`CompiledStepper.sync` writes them back (with the env's states and the driver's loop
counters) before a checkpoint and at the end. Replicas run one after the other here, so in
a checkpoint they may be at different steps (each replica's state is whole); the reference
continues from that just as well. After training the streams are advanced past the numbers
each replica used (the reference's lock-step also draws for replicas that already finished,
while others run: those replicas' streams and env states differ, nothing learned does).
"""

from __future__ import annotations

import time

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.driver import Job, Progress, Unsupported
from qlab.core.envs.vector import TabularVecEnv
from qlab.core.exploration import KINDS
from qlab.core.history import TRAIN_KEYS
from qlab.core.rng import BLOCK_MAX, generator_from_state

UNIFORM_BLOCK = BLOCK_MAX  # numbers drawn per replica at a time, at most as ReplicaUniforms
EPISODE_CAPACITY = 256  # initial episode buffer (steps), doubled when full
FIRST_LIMIT = 16  # episodes per replica in the first chunk


class Streams:
    """Each replica's uniform stream as one buffer row, continuing a
    :class:`~qlab.core.rng.ReplicaUniforms` state exactly (its buffered numbers first, then
    its generators' draws); row k is refilled from replica k's own generator, whatever the
    other replicas have used."""

    def __init__(self, state: dict, per_step: int = 1) -> None:
        block = max(UNIFORM_BLOCK, per_step)  # a row always holds one step's numbers
        left = np.asarray(state["buf"], dtype=np.float64)
        self.gens = [generator_from_state(st) for st in state["gens"]]
        n = left.shape[1]
        self.buf = np.empty((len(self.gens), max(block, n)))
        self.buf[:, :n] = left
        for k, gen in enumerate(self.gens):
            gen.random(out=self.buf[k, n:])

    def state(self, pos: np.ndarray) -> dict:
        """The ``ReplicaUniforms`` state of the streams with row k used up to ``pos[k]``. That
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


def model_unsupported(model) -> str | None:
    """Why the kernels cannot step an env with this exact model, or None if they can."""
    if model.legal is not None:
        return "the kernels do not act by per-state legal actions (env has action masks)"
    if model.reward_std is not None:
        return "the kernels do not draw random rewards (env has reward noise)"
    return None


class CompiledStepper:
    """:class:`~qlab.core.driver.Stepper` over the numba kernels (see the module docstring)."""

    @staticmethod
    def unsupported(job: Job) -> str | None:
        """Why this stepper cannot train ``job``, or None if it can: it runs agents that name
        their kernel (``agent.kernel``: tabular Q-learning, Monte-Carlo, SARSA, Expected SARSA,
        Double Q) on tabular-model envs under the schedules the kernels implement."""
        env, agent, schedule = job.env, job.agent, job.schedule
        kind = getattr(agent, "kernel", None)
        if kind not in (K.Q_STEP, K.Q_EPISODE, K.MC, K.SARSA, K.EXPECTED_SARSA, K.DOUBLE_Q):
            return f"agent {type(agent).__name__} has no kernel of this stepper"
        if kind in (K.EXPECTED_SARSA, K.DOUBLE_Q) and agent.n_actions > K.MAX_SUM_ACTIONS:
            return f"more than {K.MAX_SUM_ACTIONS} actions (the kernels' sums are numpy's " \
                   "only up to there)"
        if type(env) is not TabularVecEnv:
            return f"env {type(env).__name__} is not a tabular-model env (TabularVecEnv)"
        why = model_unsupported(env.model)
        if why is not None:
            return why
        if schedule.kind not in KINDS:
            return f"exploration {schedule.kind!r} is not one of {', '.join(KINDS)}"
        if env.num_envs != agent.replicas:
            return f"env has {env.num_envs} replicas, agent {agent.replicas}"
        return None

    def __init__(self, job: Job, progress: Progress, resumed: bool) -> None:
        why = self.unsupported(job)
        if why is not None:
            raise Unsupported(why)
        self.job, self.p = job, progress
        env, agent, schedule, hist = job.env, job.agent, job.schedule, progress.hist
        R = job.replicas
        table = np.full((len(TRAIN_KEYS), R, job.episodes), np.nan)  # rows: TRAIN_KEYS
        for i, key in enumerate(TRAIN_KEYS):
            table[i] = hist.train[key]
            hist.train[key] = table[i]
        self.table = table
        self.sps = table[TRAIN_KEYS.index("train/sps")]
        model = env.model
        kind = self.kind = agent.kernel
        first_visit = bool(getattr(agent, "first_visit", False))
        rows = lambda x: np.broadcast_to(np.asarray(x, dtype=np.float64), (R,))  # noqa: E731
        self.params = np.ascontiguousarray(np.stack(
            [rows(agent.lr), rows(agent.gamma), rows(schedule.start), rows(schedule.decay),
             rows(schedule.minimum), rows(schedule.duration)], axis=1))
        self.istate = istate = np.zeros((R, K.N_INT), dtype=np.int64)
        istate[:, K.EVAL_EP] = -1
        self.fstate = fstate = np.zeros((R, K.N_FLOAT))
        self.status = istate[:, K.STATUS]
        agent_state = agent.state_dict()
        self.buf_i, self.buf_r = self._episode_buffers(agent_state.get("episodes"))
        self.fixed = (kind, first_visit, KINDS.index(schedule.kind), schedule.unit == "step",
                      model.deterministic, -1 if model.max_steps is None else model.max_steps,
                      job.episodes, progress.budget)
        self.model_arrays = (env.transition_cdf, model.next_state, model.reward,
                             model.terminal, env.initial_cdf)
        self.pend_i = np.zeros((R, 3), dtype=np.int64)  # SARSA's pending updates
        self.pend_r = np.zeros(R)
        if kind == K.SARSA:
            pending = agent_state["pending"]
            self.pend_i[:, 0] = pending["pending"]
            self.pend_i[:, 1] = pending["pending_state"]
            self.pend_i[:, 2] = pending["pending_action"]
            self.pend_r[:] = pending["pending_reward"]
        self.no_tables = np.zeros((2, 1, 1, 1))
        if not resumed:  # the env's stream takes its reset numbers, as the reference
            istate[:, K.STATE] = env.reset()
        else:  # the restored objects and loop counters go on from there
            loop = progress.loop
            istate[:, K.STATE], istate[:, K.ELAPSED] = env.state, env.elapsed
            istate[:, K.EP], istate[:, K.STEPS] = loop["ep"], loop["steps"]
            fstate[:, K.RET], fstate[:, K.QD_SUM], fstate[:, K.QD_CNT] = (
                loop["ret"], loop["qd_sum"], loop["qd_cnt"])
            self.status[~loop["active"]] = K.FINISHED
            if kind in K.EPISODIC:  # the stored part of each replica's current episode
                istate[:, K.BUF_LEN] = agent_state["episodes"]["length"]
        per_step = 2 + agent.n_actions  # act's numbers; SARSA draws a' too, Double Q a coin
        per_step = 2 * per_step if kind == K.SARSA else per_step + (kind == K.DOUBLE_Q)
        self.u_agent = Streams(agent_state["rand"], per_step)
        self.u_env = Streams(env.state_dict()["rand"])
        self.limit = FIRST_LIMIT

    def active(self) -> np.ndarray:
        return self.status < K.FINISHED

    def episodes_done(self) -> np.ndarray:
        return self.istate[:, K.EP]

    def advance(self, until: int | None, seconds: float) -> bool:
        istate, status, hist = self.istate, self.status, self.p.hist
        status[status < K.FINISHED] = K.RUN
        ran = status == K.RUN
        ep0, steps0 = istate[:, K.EP].copy(), istate[:, K.STEPS].copy()
        chunk = self.limit
        if until is not None and ran.any():  # the slowest replica stops at the driver's mark
            chunk = min(chunk, until - int(ep0[ran].min()))
        t0 = time.perf_counter()
        agent = self.job.agent
        tables = agent.tables if self.kind == K.DOUBLE_Q else self.no_tables
        K.run(*self.fixed, chunk, *self.model_arrays, agent.q, tables, self.pend_i,
              self.pend_r, self.params, istate,
              self.fstate, self.u_agent.buf, self.u_env.buf, self.buf_i, self.buf_r,
              self.p.eval_at, self.table)
        took = max(time.perf_counter() - t0, 1e-9)
        ep1 = istate[:, K.EP]
        moved = ep1 - ep0
        rate = (istate[:, K.STEPS] - steps0) / took
        one = np.flatnonzero(moved == 1)  # the common case, vectorised
        self.sps[one, ep0[one]] = rate[one]
        for k in np.flatnonzero(moved > 1).tolist():
            self.sps[k, ep0[k]:ep1[k]] = rate[k]
        hist.done[:] = ep1
        for k in np.flatnonzero(istate[:, K.EVAL_EP] >= 0).tolist():
            episode = int(istate[k, K.EVAL_EP])
            istate[k, K.EVAL_EP] = -1
            self.p.evaluate(k, episode)
        for k in np.flatnonzero(ran & (status >= K.NEED_AGENT_U)).tolist():
            if status[k] == K.FAILED:
                e = int(ep1[k]) - 1
                hist.failed[k] = (f"replica {k}, episode {e}: train/q_delta = "
                                  f"{hist.train['train/q_delta'][k, e]} is not finite")
            elif status[k] == K.NEED_AGENT_U:
                self.u_agent.refill(k, int(istate[k, K.AGENT_POS]))
                istate[k, K.AGENT_POS] = 0
            elif status[k] == K.NEED_ENV_U:
                self.u_env.refill(k, int(istate[k, K.ENV_POS]))
                istate[k, K.ENV_POS] = 0
        if (status == K.BUFFER_FULL).any():
            self.buf_i, self.buf_r = _grow(self.buf_i, self.buf_r)
        if took < seconds / 8:
            self.limit = min(2 * self.limit, self.job.episodes)
        elif took > seconds / 2:
            self.limit = max(1, self.limit // 2)
        return bool(moved.any())

    def sync(self) -> None:
        """Write the stepper's state into the objects a checkpoint saves: the env's states
        and stream, the agent's stream, stored episode or pending updates (its tables are
        the kernel's own arrays) and the driver's loop counters."""
        istate, fstate, loop = self.istate, self.fstate, self.p.loop
        env, agent = self.job.env, self.job.agent
        env_state = env.state_dict()
        env.load_state_dict({**env_state, "state": istate[:, K.STATE],
                             "elapsed": istate[:, K.ELAPSED],
                             "rand": self.u_env.state(istate[:, K.ENV_POS])})
        agent_state = {**agent.state_dict(), "rand": self.u_agent.state(istate[:, K.AGENT_POS])}
        if self.kind == K.SARSA:
            agent_state["pending"] = {
                "pending": self.pend_i[:, 0] != 0, "pending_state": self.pend_i[:, 1].copy(),
                "pending_action": self.pend_i[:, 2].copy(), "pending_reward": self.pend_r.copy()}
        if self.kind in K.EPISODIC:
            b = self.buf_i
            agent_state["episodes"] = {
                "length": istate[:, K.BUF_LEN].copy(), "state": b[:, 0], "action": b[:, 1],
                "next_state": b[:, 2], "terminated": b[:, 3] != 0, "reward": self.buf_r}
        agent.load_state_dict(agent_state)
        active = istate[:, K.STATUS] < K.FINISHED
        loop["ep"][:], loop["steps"][:] = istate[:, K.EP], istate[:, K.STEPS]
        loop["length"][:] = np.where(active, istate[:, K.ELAPSED], 0)
        loop["ret"][:], loop["qd_sum"][:] = fstate[:, K.RET], fstate[:, K.QD_SUM]
        loop["qd_cnt"][:] = fstate[:, K.QD_CNT]
        loop["stat_cnt"][:] = 0.0
        loop["active"][:] = active

    def _episode_buffers(self, episodes: dict | None) -> tuple[np.ndarray, np.ndarray]:
        """The kernel's episode buffers (state, action, next state, terminated; reward),
        holding the agent's stored episode (a resumed checkpoint's), at least
        ``EPISODE_CAPACITY`` wide."""
        R = self.job.replicas
        if self.kind not in K.EPISODIC:
            return np.zeros((R, 4, 1), dtype=np.int64), np.zeros((R, 1))
        n = episodes["state"].shape[1]
        buf_i = np.zeros((R, 4, max(EPISODE_CAPACITY, n)), dtype=np.int64)
        buf_r = np.zeros((R, buf_i.shape[2]))
        for j, name in enumerate(("state", "action", "next_state", "terminated")):
            buf_i[:, j, :n] = episodes[name]
        buf_r[:, :n] = episodes["reward"]
        return buf_i, buf_r


def _grow(buf_i: np.ndarray, buf_r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The episode buffers at twice their capacity, contents kept."""
    n = buf_r.shape[1]
    new_i = np.zeros((*buf_i.shape[:2], 2 * n), dtype=buf_i.dtype)
    new_r = np.zeros((buf_r.shape[0], 2 * n))
    new_i[..., :n], new_r[:, :n] = buf_i, buf_r
    return new_i, new_r
