"""Greedy evaluation of the replicas' policies: exact on envs with a model (:class:`Evaluator`),
by rollouts on envs without (:class:`RolloutEvaluator`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from qlab.core.envs.model import TabularModel
from qlab.core.history import EVAL_KEYS
from qlab.core.oracle import Solution, expected_return, legal_argmax, value_iteration
from qlab.core.rng import EVAL_STREAM, derive_seed, generator_from_state


class Evaluator:
    """Exact greedy evaluation on a known model: expected return of the greedy policy from
    the start distribution (within the env's horizon), max |Q - Q*| and the share of states
    whose greedy action is optimal, over the states where the agent acts (and, on an env
    with per-state legal actions, over their legal actions only)."""

    keys = EVAL_KEYS

    def __init__(self, model: TabularModel, gamma: np.ndarray) -> None:
        self.model = model
        self.gamma = np.asarray(gamma, dtype=np.float64)
        self._solutions: dict[float, Solution] = {}
        self._acting = model.acting_states
        self._legal = model.action_mask
        self._scored = self._legal[self._acting]  # the (s, a) entries |Q - Q*| is taken over

    def solution(self, gamma: float) -> Solution:
        if gamma not in self._solutions:
            self._solutions[gamma] = value_iteration(self.model, gamma)
        return self._solutions[gamma]

    def __call__(self, replica: int, q: np.ndarray | Any) -> dict[str, float]:
        """Evaluate replica ``replica``'s Q (S, A), given directly or as an agent's
        ``replica_values(replica)`` (or ``q_values()[replica]``; the driver passes the
        agent)."""
        if not isinstance(q, np.ndarray):
            own = getattr(q, "replica_values", None)
            q = own(replica) if own is not None else q.q_values()[replica]
        sol = self.solution(float(self.gamma[replica]))
        policy = legal_argmax(q, self._legal) if self.model.legal is not None else q.argmax(1)
        acting = self._acting
        return {
            "eval/return": expected_return(self.model, policy),
            "eval/q_error": float(np.abs(q - sol.q)[acting][self._scored].max()),
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
        self._envs = {}
        for k, states in d.items():
            envs = self._envs[int(k)] = [self.make_env() for _ in range(self.episodes)]
            if set(states) != {str(i) for i in range(self.episodes)}:
                raise ValueError(f"evaluator: {len(states)} eval envs, expected {self.episodes}")
            for i, env in enumerate(envs):
                env.unwrapped.np_random = generator_from_state(states[str(i)])
