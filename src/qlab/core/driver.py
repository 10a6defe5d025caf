"""The training driver: R replicas, episodes -> agent updates -> per-episode metrics.

:func:`train` owns the control of a job — when listeners see the History, when checkpoints
are written, when a pending stop is honoured — and a *stepper* advances the replicas: the
numpy reference (:class:`NumpyStepper`, one lock-step per call) or an agent's compiled
stepper (e.g. :mod:`qlab.core.compiled` for the tabular agents, a chunk of episodes per
call). Both fill the same :class:`~qlab.core.history.History` and leave the env and agent in
the same state, bit for bit, so either continues the other's checkpoints.

The driver knows nothing of MLflow: listeners (the tracker, a progress bar) are handed the
History now and then and once at the end, even when training fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qlab.core.agents.tabular import Transition
from qlab.core.errors import ConfigError
from qlab.core.exploration import Schedule
from qlab.core.history import History, Listener, loop_state, non_finite

FAST_MODES = ("auto", "on", "off")
CHUNK_SECONDS = 1.0  # with a ``stop``: a stepper's chunks aim at well under this


@dataclass
class Job:
    """What one job trains: R = ``env.num_envs`` replicas of ``agent`` on ``env``, exploring
    by ``schedule``, for ``episodes`` episodes each (or ``total_steps`` env steps), scored by
    ``evaluator(k, agent)`` every ``eval_every`` episodes and after the last.
    ``compiled``: the agent's compiled stepper class, if it has one (see :class:`Stepper`)."""

    env: Any
    agent: Any
    schedule: Schedule
    episodes: int
    eval_every: int
    evaluator: Callable[[int, Any], dict[str, float]] | None = None
    total_steps: int | None = None
    seeds: Sequence[int] = field(default_factory=list)
    compiled: type[Stepper] | None = None

    @property
    def replicas(self) -> int:
        return int(self.env.num_envs)


class Progress:
    """The driver's state that a stepper advances: the History, the per-replica loop
    counters (:func:`~qlab.core.history.loop_state`, what a checkpoint saves), and what the
    job asks (episodes, step budget, the episodes after which replicas are evaluated)."""

    def __init__(self, job: Job, hist: History, loop: dict[str, np.ndarray]) -> None:
        self.job, self.hist, self.loop = job, hist, loop
        self.episodes = job.episodes
        self.budget = (job.total_steps if job.total_steps is not None
                       else np.iinfo(np.int64).max)
        self.eval_at = np.zeros(job.episodes, dtype=bool)
        self.eval_at[hist.eval_steps[0]] = True

    def evaluate(self, k: int, episode: int) -> None:
        """Score replica ``k`` after ``episode`` and record it (no-op without an evaluator)."""
        evaluator = self.job.evaluator
        if evaluator is None:
            return
        h = self.hist
        j = h.evals_done[k]
        for key, value in evaluator(k, self.job.agent).items():
            h.evals[key][k, j] = value
        h.eval_steps[k, j] = episode
        h.evals_done[k] += 1


class Stepper(Protocol):
    """Advances a job's replicas; the driver calls :meth:`advance` until none is active.
    A stepper class is built as ``Stepper(job, progress, resumed)``; a compiled one also has
    ``unsupported(job) -> str | None``, why it cannot train a job (None: it can)."""

    def active(self) -> np.ndarray:
        """(R,) bool: replicas still training."""

    def episodes_done(self) -> np.ndarray:
        """(R,) episodes finished per replica."""

    def advance(self, until: int | None, seconds: float) -> bool:
        """Train some more — at most until the slowest active replica has finished ``until``
        episodes (None: no bound), aiming at ``seconds`` of work — recording finished
        episodes and evaluations into the History; True if any episode finished."""

    def sync(self) -> None:
        """Write the stepper's state into the env, agent and loop counters (before a
        checkpoint, and at the end)."""


class Unsupported(ValueError):
    """A compiled stepper was asked to train a job it cannot (the reason is the message)."""


def train(job: Job, *, fast: str = "auto", listeners: Sequence[Listener] = (),
          flush_seconds: float = 2.0,
          checkpoint: Callable[[dict[str, np.ndarray], History], None] | None = None,
          checkpoint_every: int = 0,
          resume: tuple[History, dict[str, np.ndarray]] | None = None,
          stop: Callable[[], BaseException | None] | None = None) -> History:
    """Train every replica of ``job`` for ``job.episodes`` episodes, or until it has taken
    ``job.total_steps`` env steps (the episode running then is cut and recorded); returns
    the metric history.

    ``fast``: ``auto`` — the agent's compiled stepper where it supports the job, else the
    numpy reference; ``on`` — the compiled stepper or :class:`ConfigError`; ``off`` — the
    numpy reference. ``checkpoint(loop, history)`` is called where the fewest episodes any
    active replica has finished reaches a multiple of ``checkpoint_every``, and before
    raising what ``stop()`` returns (a pending Ctrl-C / SIGTERM). ``resume`` = (history,
    loop) of a checkpoint continues from there; env, agent and evaluator must already hold
    the checkpoint's state."""
    R = job.replicas
    stat_keys = tuple(getattr(job.agent, "stat_keys", ()))
    keys = job.evaluator.keys if job.evaluator is not None else ()
    hist = History.empty(R, job.episodes, job.eval_every, keys, stat_keys)
    loop = loop_state(R, stat_keys)
    if resume is not None:
        hist = resume[0]
        for k, v in resume[1].items():
            loop[k][...] = v
    progress = Progress(job, hist, loop)
    stepper = make_stepper(job, fast, progress, resumed=resume is not None)
    every = checkpoint_every if checkpoint is not None else 0
    active = stepper.active()
    mark = int(stepper.episodes_done()[active].min()) // every if every and active.any() else 0
    seconds = min(flush_seconds, CHUNK_SECONDS) if stop is not None else flush_seconds
    last_flush = time.monotonic()
    try:
        while stepper.active().any():
            finished = stepper.advance((mark + 1) * every if every else None, seconds)
            # the checkpoint before the flush: listeners never see the slowest active
            # replica past a checkpoint not yet written (a kill between the two would leave
            # runs holding episodes no checkpoint has; resume plans on that)
            if every and finished and (active := stepper.active()).any():
                m = int(stepper.episodes_done()[active].min()) // every
                if m > mark:
                    mark = m
                    stepper.sync()
                    checkpoint(loop, hist)
            now = time.monotonic()
            if now - last_flush >= flush_seconds:
                last_flush = now
                for listener in listeners:
                    listener.update(hist)
            if stop is not None and (exc := stop()) is not None:
                if checkpoint is not None:
                    stepper.sync()
                    checkpoint(loop, hist)
                raise exc
    finally:
        stepper.sync()
        for listener in listeners:
            listener.update(hist)
    return hist


def make_stepper(job: Job, fast: str, progress: Progress, resumed: bool) -> Stepper:
    """The stepper ``fast`` asks for (see :func:`train`)."""
    return stepper_type(job, fast)(job, progress, resumed)


def stepper_type(job: Job, fast: str) -> type[Stepper]:
    """The stepper class ``fast`` picks for ``job``, or :class:`ConfigError` (``fast=on``
    where the compiled stepper cannot train it)."""
    if fast not in FAST_MODES:
        raise ConfigError(f"fast={fast!r}: must be one of {', '.join(FAST_MODES)}")
    if fast == "off":
        return NumpyStepper
    if job.compiled is None:
        why = f"{type(job.agent).__name__} has no compiled stepper"
    else:
        why = job.compiled.unsupported(job)
        if why is None:
            return job.compiled
    if fast == "on":
        raise ConfigError(f"fast='on': {why}; use fast=auto or fast=off")
    return NumpyStepper


class NumpyStepper:
    """The reference: one call is one lock-step — every active replica acts, the env steps,
    the agent learns; finished episodes are recorded (and evaluated when due) at once."""

    def __init__(self, job: Job, progress: Progress, resumed: bool) -> None:
        self.job, self.p = job, progress
        self.stat_keys = tuple(getattr(job.agent, "stat_keys", ()))
        self.rows = np.arange(job.replicas)
        self.state = job.env.reset() if not resumed else job.env.state.copy()
        self.ep_start = np.full(job.replicas, time.monotonic())

    def active(self) -> np.ndarray:
        return self.p.loop["active"]

    def episodes_done(self) -> np.ndarray:
        return self.p.loop["ep"]

    def sync(self) -> None:
        """Nothing to write: the env and agent hold their own state."""

    def advance(self, until: int | None = None, seconds: float = 0.0) -> bool:
        job, p, loop = self.job, self.p, self.p.loop
        env, agent = job.env, job.agent
        ep, steps, length, active = loop["ep"], loop["steps"], loop["length"], loop["active"]
        per_step = job.schedule.unit == "step"
        state = self.state
        eps = job.schedule(steps if per_step else ep)
        action = agent.act(state, eps)
        st = env.step(action)
        done = st.terminated | st.truncated
        upd = agent.learn(Transition(state, action, st.reward, st.state, st.terminated,
                                     done, active))
        length += active
        steps += active
        loop["ret"] += np.where(active, st.reward, 0.0)
        loop["qd_sum"] += upd.abs_delta
        loop["qd_cnt"] += upd.count
        if upd.stats:
            for s, v in upd.stats.items():
                loop[f"stat_sum/{s}"] += v
            loop["stat_cnt"] += upd.stats_count
        finished = (done | (steps >= p.budget)) & active
        if finished.any():
            self._record(finished, eps)
        self.state = env.restart(done)
        return bool(finished.any())

    def _record(self, finished: np.ndarray, eps: np.ndarray) -> None:
        """Write the finished episodes' rows, evaluate where due, start the next episodes.
        Vectorised over the finished replicas (thousands finish at once on short episodes);
        only failures and evaluations go replica by replica."""
        p, loop, hist, tr = self.p, self.p.loop, self.p.hist, self.p.hist.train
        ep, steps, length, active = loop["ep"], loop["steps"], loop["length"], loop["active"]
        ret, qd_sum, qd_cnt = loop["ret"], loop["qd_sum"], loop["qd_cnt"]
        stat_cnt = loop["stat_cnt"]
        now = time.monotonic()
        ks = self.rows[finished]
        es = ep[ks]
        tr["train/episode_length"][ks, es] = length[ks]
        tr["train/episode_return"][ks, es] = ret[ks]
        cnt = qd_cnt[ks]
        tr["train/q_delta"][ks, es] = np.divide(qd_sum[ks], cnt, out=np.zeros(ks.size),
                                                where=cnt != 0)
        tr["train/epsilon"][ks, es] = eps[ks]
        tr["train/sps"][ks, es] = length[ks] / np.maximum(now - self.ep_start[ks], 1e-9)
        scnt = stat_cnt[ks]
        for s in self.stat_keys:
            tr[f"train/{s}"][ks, es] = np.divide(loop[f"stat_sum/{s}"][ks], scnt,
                                                 out=np.full(ks.size, np.nan), where=scnt != 0)
        bad = ~np.isfinite(tr["train/q_delta"][ks, es])
        for s in self.stat_keys:
            bad |= (scnt != 0) & ~np.isfinite(tr[f"train/{s}"][ks, es])
        for k, e in zip(ks[bad].tolist(), es[bad].tolist(), strict=True):
            keys = ("train/q_delta", *(f"train/{s}" for s in self.stat_keys if stat_cnt[k]))
            hist.failed[k] = (f"replica {k}, episode {e}: {non_finite(tr, k, e, keys)} "
                              "is not finite")
        due = ~bad & (p.eval_at[es] | (es + 1 >= p.episodes) | (steps[ks] >= p.budget))
        for k, e in zip(ks[due].tolist(), es[due].tolist(), strict=True):
            p.evaluate(k, e)
        length[finished] = 0
        ret[finished] = qd_sum[finished] = qd_cnt[finished] = 0.0
        stat_cnt[finished] = 0.0
        for s in self.stat_keys:
            loop[f"stat_sum/{s}"][finished] = 0.0
        self.ep_start[finished] = now
        ep[finished] += 1
        hist.done[:] = ep
        active &= (ep < p.episodes) & (steps < p.budget)
        for k in hist.failed:
            active[k] = False
