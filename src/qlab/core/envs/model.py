"""Exact finite MDPs as numpy arrays: what value iteration and the batched env both run on."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True, eq=False)
class TabularModel:
    """A finite MDP: taking action ``a`` in state ``s`` leads to outcome ``k`` with
    ``prob[s, a, k]``.

    Every outcome array has shape (S, A, K); K is the largest number of outcomes of any
    (state, action). Unused outcome slots have probability 0.

    ``legal`` (S, A) marks the actions each state offers (None: every action everywhere); the
    action space is the largest set, and an illegal (s, a) keeps a placeholder outcome that
    nothing may take. ``reward_std`` (S, A, K) adds Gaussian noise of that standard deviation
    to a sampled reward (None: none); ``reward`` is then the mean, so value iteration and
    exact evaluation, which need only expectations, are exact.
    """

    prob: np.ndarray  # (S, A, K) float64, each (s, a) row sums to 1
    next_state: np.ndarray  # (S, A, K) int64
    reward: np.ndarray  # (S, A, K) float64
    terminal: np.ndarray  # (S, A, K) bool: this transition ends the episode
    initial: np.ndarray  # (S,) float64 start-state distribution
    max_steps: int | None = None  # episodes are truncated after this many steps
    legal: np.ndarray | None = None  # (S, A) bool: the actions each state offers
    reward_std: np.ndarray | None = None  # (S, A, K) float64: Gaussian reward noise

    def __post_init__(self) -> None:
        S, A, K = self.prob.shape
        for name in ("next_state", "reward", "terminal", "reward_std"):
            if getattr(self, name) is not None and getattr(self, name).shape != (S, A, K):
                raise ValueError(f"TabularModel.{name} has shape {getattr(self, name).shape}, "
                                 f"expected {(S, A, K)}")
        if not np.allclose(self.prob.sum(-1), 1.0):
            raise ValueError("TabularModel.prob rows must sum to 1")
        if self.initial.shape != (S,) or not np.isclose(self.initial.sum(), 1.0):
            raise ValueError("TabularModel.initial must be a distribution over the S states")
        if self.legal is not None:
            if self.legal.shape != (S, A) or self.legal.dtype != bool:
                raise ValueError(f"TabularModel.legal must be a bool array of shape {(S, A)}")
            if not self.legal.any(axis=1).all():
                raise ValueError("TabularModel.legal: every state needs a legal action")

    @cached_property
    def action_mask(self) -> np.ndarray:
        """(S, A) bool: the legal actions of every state (all True without ``legal``)."""
        if self.legal is None:
            return np.ones(self.prob.shape[:2], dtype=bool)
        return self.legal

    @property
    def n_states(self) -> int:
        return self.prob.shape[0]

    @property
    def n_actions(self) -> int:
        return self.prob.shape[1]

    @property
    def deterministic(self) -> bool:
        return self.prob.shape[2] == 1

    @cached_property
    def acting_states(self) -> np.ndarray:
        """(S,) bool: states where the agent acts — reachable from a start state without the
        episode having ended. Q* is only meaningful there; errors are measured there only."""
        reach = self.initial > 0
        frontier = reach.copy()
        live = (self.prob > 0) & ~self.terminal & self.action_mask[..., None]
        while frontier.any():
            nxt = np.zeros_like(reach)
            nxt[self.next_state[frontier][live[frontier]]] = True
            frontier = nxt & ~reach
            reach |= nxt
        return reach

    @classmethod
    def from_gym_P(cls, P: dict, initial: np.ndarray, max_steps: int | None) -> TabularModel:
        """Build from gymnasium toy-text's ``env.unwrapped.P[s][a] = [(p, s', r, done), ...]``.

        Outcomes with the same (s', r, done) are merged, so slippery FrozenLake's duplicate
        entries count once with their summed probability.
        """
        S, A = len(P), len(P[0])
        merged = []
        for s in range(S):
            row = []
            for a in range(A):
                acc: dict[tuple[int, float, bool], float] = {}
                for p, s2, r, done in P[s][a]:
                    if p > 0:
                        key = (int(s2), float(r), bool(done))
                        acc[key] = acc.get(key, 0.0) + float(p)
                row.append(acc)
            merged.append(row)
        K = max(len(acc) for row in merged for acc in row)
        prob = np.zeros((S, A, K))
        nxt = np.zeros((S, A, K), dtype=np.int64)
        rew = np.zeros((S, A, K))
        term = np.zeros((S, A, K), dtype=bool)
        for s, row in enumerate(merged):
            for a, acc in enumerate(row):
                for k, ((s2, r, done), p) in enumerate(acc.items()):
                    prob[s, a, k], nxt[s, a, k], rew[s, a, k], term[s, a, k] = p, s2, r, done
                # Pad with copies of the last outcome (probability 0), so float round-off
                # in a cumulative sum can only ever select a real outcome.
                n = len(acc)
                nxt[s, a, n:], rew[s, a, n:], term[s, a, n:] = (
                    nxt[s, a, n - 1], rew[s, a, n - 1], term[s, a, n - 1])
        return cls(prob, nxt, rew, term, np.asarray(initial, dtype=np.float64), max_steps)
