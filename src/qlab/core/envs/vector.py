"""A batched env over R replicas of one finite MDP, stepped with numpy in lock-step.

It samples transitions from a :class:`TabularModel`, so any env with a known model (the
grid world, FrozenLake, CliffWalking, Taxi) steps R copies at numpy speed, each replica on
its own random stream. It does not auto-reset: the runner resets finished replicas.

A model with per-state legal actions (``model.legal``) is exposed as :attr:`legal`, which the
tabular agents act by; an illegal action is refused. A model with Gaussian reward noise
(``model.reward_std``) draws one standard normal per replica per step from its own stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from qlab.core.envs.model import TabularModel
from qlab.core.rng import ENV_STREAM, REWARD_NOISE_STREAM, ReplicaNormals, ReplicaUniforms
from qlab.core.statedict import load_array


class Step(NamedTuple):
    state: np.ndarray  # (R,) int64
    reward: np.ndarray  # (R,) float64
    terminated: np.ndarray  # (R,) bool
    truncated: np.ndarray  # (R,) bool


class TabularVecEnv:
    """R replicas of ``model``; replica k is seeded with ``seeds[k]``."""

    def __init__(self, model: TabularModel, seeds: Sequence[int],
                 observations: np.ndarray | Callable[[], np.ndarray] | None = None) -> None:
        self.model = model
        self.num_envs = len(seeds)
        self.n_states = model.n_states
        self.n_actions = model.n_actions
        self._observations = observations
        self._rand = ReplicaUniforms(seeds, ENV_STREAM)
        self.legal = model.legal  # (S, A) bool or None: the legal actions of each state
        self._noise = (ReplicaNormals(seeds, REWARD_NOISE_STREAM)
                       if model.reward_std is not None else None)
        # Cumulative outcome and start probabilities, what sampling (and a compiled stepper)
        # searches.
        self.transition_cdf = np.cumsum(model.prob, axis=-1)
        self.transition_cdf[..., -1] = 1.0  # guard against float round-off
        self.initial_cdf = np.cumsum(model.initial)
        self.initial_cdf[-1] = 1.0
        self._rows = np.arange(self.num_envs)
        self.state = np.zeros(self.num_envs, dtype=np.int64)
        self.elapsed = np.zeros(self.num_envs, dtype=np.int64)
        self._restart_u = np.zeros(self.num_envs)

    @property
    def observations(self) -> np.ndarray | None:
        """(S, D) float32 features per state, for function approximators (DQN); built on
        first use (a tabular agent never asks, so a large grid's table is never built)."""
        if callable(self._observations):
            self._observations = self._observations()
        return self._observations

    def _starts(self, u: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.initial_cdf, u, side="right")

    def reset(self) -> np.ndarray:
        """Start every replica afresh; returns the start states (R,)."""
        u = self._rand.take(2)
        self.state = self._starts(u[:, 0])
        self.elapsed[:] = 0
        self._restart_u = u[:, 1]
        return self.state.copy()

    def step(self, actions: np.ndarray) -> Step:
        """Act in every replica (no auto-reset; see :meth:`restart`).

        Each call takes two numbers per replica from its stream (outcome, restart), used or
        not, which keeps every replica's stream independent of the others' episodes (and one
        normal from the noise stream, with reward noise).
        """
        u = self._rand.take(2)
        m = self.model
        s = self.state
        if self.legal is not None and not self.legal[s, actions].all():
            k = int(np.flatnonzero(~self.legal[s, actions])[0])
            raise ValueError(f"replica {k}: action {int(actions[k])} is not legal in state "
                             f"{int(s[k])} (legal: {np.flatnonzero(self.legal[s[k]]).tolist()})")
        if m.deterministic:
            k = np.zeros(self.num_envs, dtype=np.int64)
        else:
            k = (u[:, :1] >= self.transition_cdf[s, actions]).sum(axis=1)
        s2 = m.next_state[s, actions, k]
        reward = m.reward[s, actions, k]
        if self._noise is not None:
            reward = reward + m.reward_std[s, actions, k] * self._noise.take(1)[:, 0]
        terminated = m.terminal[s, actions, k]
        self.elapsed += 1
        if m.max_steps is not None:
            truncated = (self.elapsed >= m.max_steps) & ~terminated
        else:
            truncated = np.zeros(self.num_envs, dtype=bool)
        self.state = s2
        self._restart_u = u[:, 1]
        return Step(s2, reward, terminated, truncated)

    def restart(self, mask: np.ndarray) -> np.ndarray:
        """Restart the replicas in ``mask`` (after :meth:`step`); returns all states (R,)."""
        if mask.any():
            self.state = np.where(mask, self._starts(self._restart_u), self.state)
            self.elapsed[mask] = 0
        return self.state.copy()

    def state_dict(self) -> dict:
        """Current states, steps into the episode, the pending restart draws, the stream."""
        out = {"state": self.state.copy(), "elapsed": self.elapsed.copy(),
               "restart_u": np.asarray(self._restart_u, dtype=np.float64).copy(),
               "rand": self._rand.state()}
        if self._noise is not None:
            out["noise"] = self._noise.state()
        return out

    def load_state_dict(self, d: dict) -> None:
        self.state = load_array("env.state", d["state"], self.state)
        if ((self.state < 0) | (self.state >= self.n_states)).any():
            raise ValueError(f"env.state out of range 0..{self.n_states - 1}")
        max_steps = self.model.max_steps
        self.elapsed = load_array("env.elapsed", d["elapsed"], self.elapsed, 0, max_steps)
        self._restart_u = load_array("env.restart_u", d["restart_u"], np.zeros(self.num_envs),
                                     0.0, np.nextafter(1.0, 0.0))
        self._rand.load_state(d["rand"])
        if self._noise is not None:
            self._noise.load_state(d["noise"])
