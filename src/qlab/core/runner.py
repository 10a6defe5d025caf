"""The training loop: R replicas in lock-step, episodes -> agent updates -> per-episode metrics.

It knows nothing of MLflow: it fills a :class:`History` and hands it to listeners (the
tracker, the progress bar) now and then and once at the end, even when training fails.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from qlab.core.agents.tabular import Transition
from qlab.core.envs.model import TabularModel
from qlab.core.exploration import Schedule
from qlab.core.oracle import Solution, expected_return, value_iteration

TRAIN_KEYS = ("train/episode_length", "train/episode_return", "train/q_delta", "train/epsilon",
              "train/sps")
EVAL_KEYS = ("eval/return", "eval/q_error", "eval/optimal_fraction")


@dataclass
class History:
    """Per-replica metric tables. ``train[key]`` is (R, episodes) indexed by episode;
    ``evals[key]`` is (R, n_evals), taken after the episodes in ``eval_steps``. NaN = not yet.
    ``eval_steps`` is per replica: a replica stopped by a step budget is evaluated after its
    last episode, whatever the schedule (``evals_done[k]`` says how many slots are real)."""

    replicas: int
    episodes: int
    eval_steps: np.ndarray  # (R, n_evals) episode index each evaluation follows
    train: dict[str, np.ndarray] = field(default_factory=dict)
    evals: dict[str, np.ndarray] = field(default_factory=dict)
    done: np.ndarray = None  # (R,) episodes finished per replica
    evals_done: np.ndarray = None  # (R,) evaluations finished per replica
    failed: dict[int, str] = field(default_factory=dict)  # replica -> why it was stopped

    @classmethod
    def empty(cls, replicas: int, episodes: int, eval_every: int,
              eval_keys: Sequence[str], stat_keys: Sequence[str] = ()) -> History:
        steps = np.arange(eval_every - 1, episodes, eval_every)
        if steps.size == 0 or steps[-1] != episodes - 1:
            steps = np.append(steps, episodes - 1)  # always evaluate the final policy
        h = cls(replicas, episodes, np.tile(steps, (replicas, 1)))
        h.train = {k: np.full((replicas, episodes), np.nan)
                   for k in (*TRAIN_KEYS, *(f"train/{s}" for s in stat_keys))}
        h.evals = {k: np.full((replicas, len(steps)), np.nan) for k in eval_keys}
        h.done = np.zeros(replicas, dtype=np.int64)
        h.evals_done = np.zeros(replicas, dtype=np.int64)
        return h


class Listener(Protocol):
    def update(self, history: History) -> None: ...


class Evaluator:
    """Exact greedy evaluation on a known model: expected return of the greedy policy from
    the start distribution (within the env's horizon), max |Q - Q*| and the share of states
    whose greedy action is optimal, over the states where the agent acts."""

    keys = EVAL_KEYS

    def __init__(self, model: TabularModel, gamma: np.ndarray) -> None:
        self.model = model
        self.gamma = np.asarray(gamma, dtype=np.float64)
        self._solutions: dict[float, Solution] = {}
        self._acting = model.acting_states

    def solution(self, gamma: float) -> Solution:
        if gamma not in self._solutions:
            self._solutions[gamma] = value_iteration(self.model, gamma)
        return self._solutions[gamma]

    def __call__(self, replica: int, q: np.ndarray | Any) -> dict[str, float]:
        """Evaluate replica ``replica``'s Q (S, A), given directly or as an agent's
        ``q_values()[replica]`` (the runner passes the agent)."""
        if not isinstance(q, np.ndarray):
            q = q.q_values()[replica]
        sol = self.solution(float(self.gamma[replica]))
        policy = q.argmax(axis=1)
        acting = self._acting
        return {
            "eval/return": expected_return(self.model, policy),
            "eval/q_error": float(np.abs(q - sol.q)[acting].max()),
            "eval/optimal_fraction": float(sol.is_optimal(policy)[acting].mean()),
        }


class RolloutEvaluator:
    """Greedy evaluation by rollouts, for envs without a model: ``eval/return`` is the mean
    undiscounted return of ``episodes`` greedy episodes on replica k's own eval env copies
    (copy i seeded from (seed k, EVAL_STREAM, i) on its first reset, running on after that).
    Needs ``agent.greedy_actions(replica, obs (N, D)) -> (N,)``."""

    keys = ("eval/return",)

    def __init__(self, make_env: Callable[[], Any], seeds: Sequence[int],
                 episodes: int = 10) -> None:
        self.make_env, self.seeds, self.episodes = make_env, [int(s) for s in seeds], episodes
        self._envs: dict[int, list] = {}

    def __call__(self, replica: int, agent: Any) -> dict[str, float]:
        from qlab.core.rng import EVAL_STREAM, derive_seed

        envs = self._envs.get(replica)
        seeds: list[int | None] = [None] * self.episodes
        if envs is None:
            envs = self._envs[replica] = [self.make_env() for _ in range(self.episodes)]
            seeds = [derive_seed(self.seeds[replica], EVAL_STREAM, i)
                     for i in range(self.episodes)]
        obs = np.stack([np.asarray(env.reset(seed=s)[0], dtype=np.float32).reshape(-1)
                        for env, s in zip(envs, seeds, strict=True)])
        returns = np.zeros(self.episodes)
        running = np.ones(self.episodes, dtype=bool)
        while running.any():
            idx = np.flatnonzero(running)
            actions = agent.greedy_actions(replica, obs[idx])
            for i, a in zip(idx, actions, strict=True):
                o, r, term, trunc, _ = envs[i].step(int(a))
                obs[i] = np.asarray(o, dtype=np.float32).reshape(-1)
                returns[i] += r
                running[i] = not (term or trunc)
        return {"eval/return": float(returns.mean())}

    def state_dict(self) -> dict:
        """The random state of every eval env copy made so far (they are between episodes)."""
        return {str(k): {str(i): env.unwrapped.np_random.bit_generator.state
                         for i, env in enumerate(envs)} for k, envs in self._envs.items()}

    def load_state_dict(self, d: dict) -> None:
        from qlab.core.rng import generator_from_state

        self._envs = {}
        for k, states in d.items():
            envs = self._envs[int(k)] = [self.make_env() for _ in range(self.episodes)]
            if set(states) != {str(i) for i in range(self.episodes)}:
                raise ValueError(f"evaluator: {len(states)} eval envs, expected {self.episodes}")
            for i, env in enumerate(envs):
                env.unwrapped.np_random = generator_from_state(states[str(i)])


def loop_state(replicas: int, stat_keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The runner's per-replica counters at the start of training; besides the History and
    the objects' own state, they are all a checkpoint needs to continue the loop."""
    R = replicas
    return {"ep": np.zeros(R, dtype=np.int64), "steps": np.zeros(R, dtype=np.int64),
            "length": np.zeros(R, dtype=np.int64), "ret": np.zeros(R), "qd_sum": np.zeros(R),
            "qd_cnt": np.zeros(R), "stat_cnt": np.zeros(R), "active": np.ones(R, dtype=bool),
            **{f"stat_sum/{s}": np.zeros(R) for s in stat_keys}}


def train(env, agent, schedule: Schedule, episodes: int, eval_every: int,
          evaluator: Callable[[int, Any], dict[str, float]] | None = None,
          listeners: Sequence[Listener] = (), flush_seconds: float = 2.0,
          total_steps: int | None = None,
          checkpoint: Callable[[dict[str, np.ndarray], History], None] | None = None,
          checkpoint_every: int = 0,
          resume: tuple[History, dict[str, np.ndarray]] | None = None,
          stop: Callable[[], BaseException | None] | None = None) -> History:
    """Train every replica for ``episodes`` episodes, or until it has taken ``total_steps``
    env steps (the episode running then is cut and recorded); returns the metric history.
    ``evaluator(k, agent)`` scores replica k every ``eval_every`` episodes and at its end.

    ``checkpoint(loop, history)`` is called at the lock-step boundary where the fewest
    episodes any active replica has finished reaches a multiple of ``checkpoint_every``, and
    before raising what ``stop()`` returns (a pending Ctrl-C / SIGTERM). ``resume`` =
    (history, loop) of a checkpoint continues from there; env, agent and evaluator must
    already hold the checkpoint's state."""
    R = env.num_envs
    stat_keys = tuple(getattr(agent, "stat_keys", ()))
    hist = History.empty(R, episodes, eval_every, evaluator.keys if evaluator else (), stat_keys)
    eval_at = np.zeros(episodes, dtype=bool)
    eval_at[hist.eval_steps[0]] = True
    loop = loop_state(R, stat_keys)
    if resume is not None:
        hist = resume[0]
        for k, v in resume[1].items():
            loop[k][...] = v
    stat_sum = {s: loop[f"stat_sum/{s}"] for s in stat_keys}
    stat_cnt = loop["stat_cnt"]
    budget = total_steps if total_steps is not None else np.iinfo(np.int64).max
    rows = np.arange(R)
    ep, steps, length, active = loop["ep"], loop["steps"], loop["length"], loop["active"]
    ret, qd_sum, qd_cnt = loop["ret"], loop["qd_sum"], loop["qd_cnt"]
    per_step = schedule.unit == "step"
    tr = hist.train
    state = env.reset() if resume is None else env.state.copy()
    ckpt_mark = (int(ep[active].min()) // checkpoint_every
                 if checkpoint_every and active.any() else 0)
    last_flush = time.monotonic()
    ep_start = np.full(R, last_flush)
    try:
        while active.any():
            eps = schedule(steps if per_step else ep)
            action = agent.act(state, eps)
            st = env.step(action)
            done = st.terminated | st.truncated
            upd = agent.learn(Transition(state, action, st.reward, st.state, st.terminated,
                                         done, active))
            length += active
            steps += active
            ret += np.where(active, st.reward, 0.0)
            qd_sum += upd.abs_delta
            qd_cnt += upd.count
            if upd.stats:
                for s, v in upd.stats.items():
                    stat_sum[s] += v
                stat_cnt += upd.stats_count
            finished = (done | (steps >= budget)) & active
            if finished.any():
                now = time.monotonic()
                for k in rows[finished]:
                    e = ep[k]
                    tr["train/episode_length"][k, e] = length[k]
                    tr["train/episode_return"][k, e] = ret[k]
                    tr["train/q_delta"][k, e] = qd_sum[k] / qd_cnt[k] if qd_cnt[k] else 0.0
                    tr["train/epsilon"][k, e] = eps[k]
                    tr["train/sps"][k, e] = length[k] / max(now - ep_start[k], 1e-9)
                    for s in stat_keys:
                        tr[f"train/{s}"][k, e] = (stat_sum[s][k] / stat_cnt[k] if stat_cnt[k]
                                                  else np.nan)
                    bad = _non_finite(tr, k, e, ("train/q_delta", *(f"train/{s}" for s in
                                                                    stat_keys if stat_cnt[k])))
                    if bad:
                        hist.failed[k] = f"replica {k}, episode {e}: {bad} is not finite"
                        continue
                    last = e + 1 >= episodes or steps[k] >= budget
                    if evaluator is not None and (eval_at[e] or last):
                        j = hist.evals_done[k]
                        for key, value in evaluator(k, agent).items():
                            hist.evals[key][k, j] = value
                        hist.eval_steps[k, j] = e
                        hist.evals_done[k] += 1
                length[finished] = 0
                ret[finished] = qd_sum[finished] = qd_cnt[finished] = 0.0
                stat_cnt[finished] = 0.0
                for v in stat_sum.values():
                    v[finished] = 0.0
                ep_start[finished] = now
                ep[finished] += 1
                hist.done[:] = ep
                active &= (ep < episodes) & (steps < budget)
                for k in hist.failed:
                    active[k] = False
            state = env.restart(done)
            now = time.monotonic()
            if now - last_flush >= flush_seconds:
                last_flush = now
                for listener in listeners:
                    listener.update(hist)
            if checkpoint is not None and checkpoint_every and finished.any() and active.any():
                mark = int(ep[active].min()) // checkpoint_every
                if mark > ckpt_mark:
                    ckpt_mark = mark
                    checkpoint(loop, hist)
            if stop is not None and (exc := stop()) is not None:
                if checkpoint is not None:
                    checkpoint(loop, hist)
                raise exc
    finally:
        for listener in listeners:
            listener.update(hist)
    return hist


def _non_finite(train: dict[str, np.ndarray], k: int, e: int, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` whose episode-``e`` value of replica ``k`` is NaN or infinite."""
    for key in keys:
        if not np.isfinite(train[key][k, e]):
            return f"{key} = {train[key][k, e]}"
    return None


def episodes_to_optimal(history: History) -> np.ndarray:
    """(R,) the first evaluated episode after which the greedy policy stays optimal (NaN if
    never)."""
    opt = history.evals.get("eval/optimal_fraction")
    out = np.full(history.replicas, math.nan)
    if opt is None:
        return out
    for k in range(history.replicas):
        ok = opt[k, :history.evals_done[k]] == 1.0
        if ok.size and ok[-1]:
            bad = np.flatnonzero(~ok)
            first = 0 if bad.size == 0 else bad[-1] + 1
            out[k] = history.eval_steps[k, first]
    return out
