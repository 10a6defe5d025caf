"""n-step returns on the replica axis: each replica's last transitions, folded into n-step
transitions before they go to the replay buffer.

An n-step transition starting at step t holds (x_t, a_t, G, x_{t+m}, terminated, m) with
G = r_t + gamma r_{t+1} + ... + gamma^(m-1) r_{t+m-1}; its DQN target is
G + gamma^m (1 - terminated) max_a' Q(x_{t+m}, a'). m = n, except at an episode's end, where
the sum is cut: when step t+m-1 ends the episode, every transition still waiting (the last
min(n, length) of the episode) is emitted with the rewards up to that end. A termination stops
bootstrapping (``terminated`` is set); a truncation (a time limit) does not: the target
bootstraps from the value of x_{t+m}, the truncated step's true successor observation.

Replica k's window holds only its own transitions and is emitted in its own time order, so
its replay buffer gets exactly what a run of R = 1 with seed k gives it. The window is part of
the agent's state (:meth:`NStepWindow.state_dict`): a checkpoint taken mid-window continues
bit-exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qlab.core.statedict import load_array

FIELDS = ("obs", "action", "reward")  # the per-step arrays of a window


class NStepTransitions(NamedTuple):
    """At most one n-step transition per replica; fields have leading shape (R,), and only
    the rows of ``emit`` hold a transition."""

    obs: np.ndarray  # (R, D) x_t
    action: np.ndarray  # (R,) a_t
    reward: np.ndarray  # (R,) the discounted sum G of the m rewards
    next_obs: np.ndarray  # (R, D) x_{t+m}
    terminated: np.ndarray  # (R,) bool: x_{t+m} is terminal (no bootstrap)
    horizon: np.ndarray  # (R,) m, the number of rewards summed: the bootstrap discount is gamma^m
    emit: np.ndarray  # (R,) bool: the rows that hold a transition


def discounted_suffix_sums(reward: np.ndarray, length: np.ndarray,
                           gamma: np.ndarray) -> np.ndarray:
    """(R, n): entry [k, j] = sum_{i=j}^{length_k - 1} gamma_k^(i-j) reward[k, i] for
    j < length_k, 0 beyond (Horner's scheme from the end, in float64)."""
    R, n = reward.shape
    out = np.zeros((R, n))
    acc = np.zeros(R)
    for i in range(n - 1, -1, -1):
        acc = np.where(i < length, reward[:, i] + gamma * acc, 0.0)
        out[:, i] = acc
    return out


class NStepWindow:
    """Per replica, the transitions of its current episode not yet emitted (fewer than
    ``n``); ``gamma``: (R,) discounts."""

    def __init__(self, replicas: int, n: int, obs_dim: int, gamma: np.ndarray) -> None:
        if n < 1:
            raise ValueError(f"n-step window of n={n}: must be >= 1")
        R = replicas
        self.n = int(n)
        self.gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (R,)).copy()
        self.obs = np.zeros((R, n, obs_dim), dtype=np.float32)
        self.action = np.zeros((R, n), dtype=np.int64)
        self.reward = np.zeros((R, n))
        self.length = np.zeros(R, dtype=np.int64)  # transitions waiting, per replica
        self._rows = np.arange(R)

    def push(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
             next_obs: np.ndarray, terminated: np.ndarray, episode_end: np.ndarray,
             active: np.ndarray) -> list[NStepTransitions]:
        """Add one step (fields with leading shape (R,)) for each active replica; returns the
        n-step transitions it completes, in rounds: round j holds each replica's j-th, so
        storing the rounds in order stores every replica's transitions in time order. A
        replica whose window is full emits its oldest; one whose episode ends
        (``episode_end``: terminated or truncated) emits all it holds and starts empty."""
        rows = self._rows[active]
        if rows.size == 0:
            return []
        at = self.length[rows]
        self.obs[rows, at] = obs[rows]
        self.action[rows, at] = action[rows]
        self.reward[rows, at] = reward[rows]
        self.length[rows] += 1
        end = active & episode_end
        full = active & ~end & (self.length == self.n)
        count = np.where(end, self.length, full.astype(np.int64))  # transitions emitted
        if not count.any():
            return []
        G = discounted_suffix_sums(self.reward, self.length, self.gamma)
        term = terminated & end
        out = [NStepTransitions(self.obs[:, j].copy(), self.action[:, j].copy(), G[:, j],
                                next_obs, term, self.length - j, count > j)
               for j in range(int(count.max()))]
        for name in FIELDS:  # a full window drops its oldest step
            arr = getattr(self, name)
            arr[full, :-1] = arr[full, 1:]
        self.length[full] -= 1
        self.length[end] = 0
        return out

    def state_dict(self) -> dict:
        """The waiting transitions (up to the longest window) and each window's length."""
        m = int(self.length.max(initial=0))
        return {**{k: getattr(self, k)[:, :m].copy() for k in FIELDS},
                "length": self.length.copy()}

    def load_state_dict(self, d: dict, n_actions: int | None = None) -> None:
        """Continue from :meth:`state_dict`; waiting actions must be below ``n_actions``."""
        self.length = load_array("agent.nstep.length", d["length"], self.length)
        if ((self.length < 0) | (self.length >= self.n)).any():
            raise ValueError(f"agent.nstep.length out of range [0, {self.n - 1}]")
        m = int(self.length.max(initial=0))
        for k in FIELDS:
            full = getattr(self, k)
            full[...] = 0
            hi = n_actions - 1 if k == "action" and n_actions is not None else None
            full[:, :m] = load_array(f"agent.nstep.{k}", d[k], full[:, :m],
                                     0 if k == "action" else None, hi)
