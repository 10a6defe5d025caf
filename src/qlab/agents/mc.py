"""Tabular Monte-Carlo control on the replica axis.

Each replica acts epsilon-greedily (:meth:`TabularAgent.act`) and stores its episode. When
the episode ends it walks the episode backwards accumulating the discounted return
``G = r_t + gamma * G`` (G = 0 after the last step) and moves Q(s_t, a_t) toward G with a
constant step, ``Q += lr * (G - Q)`` — the notebook's exponentially weighted average of
returns, without its rounding. Updates are applied in the backward order, so an (s, a)
visited twice in one episode is moved first toward its later return, then its earlier one.

- every-visit (default): every step of the episode updates its (s, a);
- first-visit (``first_visit=True``): only the first occurrence of each (s, a) in the
  episode is updated, toward the return from that first occurrence.

A truncated episode (time limit) is treated like a terminated one: G starts at 0 after its
last step, with no bootstrap from Q — Monte-Carlo learns from complete returns only, so the
env's time limit is part of the task it learns.

Q-delta, as for Q-learning: the mean |ΔQ(s, a)| over the updates made in the episode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qlab.agents.tabular import EpisodeBuffer, TabularAgent, Transition, Updates


class TabularMC(TabularAgent):
    """Constant-step Monte-Carlo control for R independent replicas (see the module docstring)."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, first_visit: bool = False, init: float = 0.0) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init)
        self.first_visit = bool(first_visit)
        self._episodes = EpisodeBuffer(self.replicas)

    def learn(self, tr: Transition) -> Updates:
        self._episodes.push(tr)
        ending = self._rows[tr.done & tr.active]
        if ending.size == 0:
            return Updates(np.zeros(self.replicas), np.zeros(self.replicas))
        return self._learn_episodes(ending)

    def _first_visits(self, ep: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        """(n, T) bool: step t is the first occurrence of its (s, a) in its episode."""
        n, T = ep["state"].shape
        valid = np.arange(T)[None, :] < lengths[:, None]
        key = (np.arange(n)[:, None] * (self.n_states * self.n_actions)
               + ep["state"] * self.n_actions + ep["action"])
        flat = np.flatnonzero(valid.ravel())  # row-major: earliest t of each row first
        _, first = np.unique(key.ravel()[flat], return_index=True)
        mask = np.zeros(n * T, dtype=bool)
        mask[flat[first]] = True
        return mask.reshape(n, T)

    def _learn_episodes(self, ending: np.ndarray) -> Updates:
        """Backward return sweep over the finished episodes of the replicas in ``ending``."""
        ep, lengths = self._episodes.take(ending)
        abs_delta = np.zeros(self.replicas)
        count = np.zeros(self.replicas)
        lr, gamma = self.lr[ending], self.gamma[ending]
        update = self._first_visits(ep, lengths) if self.first_visit else None
        G = np.zeros(ending.size)
        for t in range(int(lengths.max()) - 1, -1, -1):
            m = t < lengths
            G[m] = ep["reward"][m, t] + gamma[m] * G[m]
            if update is not None:
                m = m & update[:, t]
            rows = ending[m]
            s, a = ep["state"][m, t], ep["action"][m, t]
            step = lr[m] * (G[m] - self.q[rows, s, a])
            self.q[rows, s, a] += step
            abs_delta[rows] += np.abs(step)
            count[rows] += 1
        return Updates(abs_delta, count)
