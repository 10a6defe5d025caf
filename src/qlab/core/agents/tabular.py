"""What the tabular agents share: a Q table on the replica axis, epsilon-greedy action
selection, and per-replica storage of the current episode for episodic updates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from qlab.core.oracle import legal_argmax, legal_max
from qlab.core.rng import AGENT_STREAM, ReplicaUniforms
from qlab.core.statedict import load_array


class Transition(NamedTuple):
    """One lock-step of R replicas; every field has shape (R,)."""

    state: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_state: np.ndarray
    terminated: np.ndarray
    done: np.ndarray  # terminated or truncated: the episode ends here
    active: np.ndarray  # replicas still training; the others must not change


class Updates(NamedTuple):
    """What one learning call changed, per replica: the sum of |ΔQ(s, a)| over the updates it
    made and their count. ``stats`` holds other per-replica sums (e.g. ``td_loss``) over
    ``stats_count`` learning steps; the driver logs their per-episode mean as ``train/<name>``."""

    abs_delta: np.ndarray  # (R,)
    count: np.ndarray  # (R,)
    stats: dict[str, np.ndarray] | None = None  # name -> (R,) sums
    stats_count: np.ndarray | None = None  # (R,)


class TabularAgent:
    """Q of shape (R, S, A); replica k uses lr[k], gamma[k] and its own random stream.

    ``legal`` (S, A) bool, the env's per-state legal actions (``TabularVecEnv.legal``; None:
    every action everywhere): acting, the greedy policy and every max over actions range over
    the legal actions of the state only, so an illegal action is never taken nor valued."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int],
                 lr: np.ndarray, gamma: np.ndarray, init: float = 0.0,
                 legal: np.ndarray | None = None) -> None:
        R = len(seeds)
        if legal is not None:
            legal = np.asarray(legal, dtype=bool)
            if legal.shape != (n_states, n_actions) or not legal.any(axis=1).all():
                raise ValueError(f"legal actions of shape {legal.shape}: expected "
                                 f"{(n_states, n_actions)} with a legal action in every state")
        self.legal = legal
        self.n_states, self.n_actions, self.replicas = n_states, n_actions, R
        self.lr = np.broadcast_to(np.asarray(lr, dtype=np.float64), (R,)).copy()
        self.gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (R,)).copy()
        self.q = np.full((R, n_states, n_actions), float(init))
        self._rows = np.arange(R)
        self._rand = ReplicaUniforms(seeds, AGENT_STREAM)

    def act(self, state: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions (R,); greedy ties are broken uniformly at random. With
        legal actions, the random action is uniform over the state's legal ones and the greedy
        one the best legal one (the same 2 + A numbers per replica either way)."""
        u = self._rand.take(2 + self.n_actions)
        qs = self.q[self._rows, state]
        if self.legal is None:
            ties = qs == qs.max(axis=1, keepdims=True)
            greedy = np.argmax(np.where(ties, u[:, 2:], -1.0), axis=1)
            random = (u[:, 1] * self.n_actions).astype(np.int64)
        else:
            legal = self.legal[state]
            ties = legal & (qs == legal_max(qs, legal)[:, None])
            # No tie (a NaN value): the first legal action, as the kernel does.
            greedy = np.argmax(np.where(ties, u[:, 2:], np.where(legal, -1.0, -2.0)), axis=1)
            j = (u[:, 1] * legal.sum(axis=1)).astype(np.int64)  # the j-th legal action
            random = np.argmax(np.cumsum(legal, axis=1) > j[:, None], axis=1)
        return np.where(u[:, 0] < epsilon, random, greedy)

    def greedy_policy(self) -> np.ndarray:
        """(R, S) the greedy (legal) action of every state (lowest index on ties)."""
        if self.legal is None:
            return self.q.argmax(axis=2)
        return legal_argmax(self.q, self.legal)

    def best_value(self, qs: np.ndarray, states: np.ndarray) -> np.ndarray:
        """(n,) max over the legal actions of ``states`` (n,) of their values ``qs`` (n, A)."""
        if self.legal is None:
            return qs.max(axis=1)
        return legal_max(qs, self.legal[states])

    def q_values(self) -> np.ndarray:
        """(R, S, A) the current action values."""
        return self.q

    def replica_values(self, replica: int) -> np.ndarray:
        """(S, A) ``q_values()[replica]`` (what the evaluator scores, replica by replica)."""
        return self.q_values()[replica]

    def save(self, replica: int, directory: Path) -> None:
        """Write replica ``replica``'s learned state into ``directory`` (its run's artifacts)."""
        np.save(directory / "q_table.npy", self.q[replica])

    def learn(self, tr: Transition) -> Updates:  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything learning changes: Q, the random stream, a stored episode (checkpoints)."""
        out = {"q": self.q.copy(), "rand": self._rand.state()}
        episodes = getattr(self, "_episodes", None)
        if episodes is not None:
            out["episodes"] = episodes.state_dict()
        return out

    def load_state_dict(self, d: dict) -> None:
        """Continue from :meth:`state_dict` (an agent built with the same config)."""
        self.q = load_array("agent.q", d["q"], self.q)
        self._rand.load_state(d["rand"])
        episodes = getattr(self, "_episodes", None)
        if episodes is not None:
            episodes.load_state_dict(d["episodes"], self.n_states, self.n_actions)


class EpisodeBuffer:
    """The transitions of each replica's current episode, for updates made at episode end."""

    def __init__(self, replicas: int, capacity: int = 256) -> None:
        self.length = np.zeros(replicas, dtype=np.int64)
        self._rows = np.arange(replicas)
        self._alloc(replicas, capacity)

    def _alloc(self, replicas: int, capacity: int) -> None:
        old = getattr(self, "fields", None)
        self.fields = {
            "state": np.zeros((replicas, capacity), dtype=np.int64),
            "action": np.zeros((replicas, capacity), dtype=np.int64),
            "reward": np.zeros((replicas, capacity)),
            "next_state": np.zeros((replicas, capacity), dtype=np.int64),
            "terminated": np.zeros((replicas, capacity), dtype=bool),
        }
        if old is not None:
            n = next(iter(old.values())).shape[1]
            for k, v in old.items():
                self.fields[k][:, :n] = v

    def push(self, tr: Transition) -> None:
        """Append the step of every active replica."""
        rows = self._rows[tr.active]
        if rows.size == 0:
            return
        if self.length.max() >= self.fields["state"].shape[1]:
            self._alloc(len(self.length), 2 * self.fields["state"].shape[1])
        t = self.length[rows]
        for name, arr in self.fields.items():
            arr[rows, t] = getattr(tr, name)[rows]
        self.length[rows] += 1

    def state_dict(self) -> dict:
        return {"length": self.length.copy(), **{k: v.copy() for k, v in self.fields.items()}}

    def load_state_dict(self, d: dict, n_states: int, n_actions: int) -> None:
        """Continue from :meth:`state_dict`; states and actions must index a table of
        ``n_states`` x ``n_actions``."""
        self.length = load_array("agent.episodes.length", d["length"], self.length, 0)
        cap = int(np.asarray(d["state"]).shape[-1]) if np.ndim(d["state"]) == 2 else -1
        if cap < max(1, int(self.length.max(initial=0))):
            raise ValueError(f"agent.episodes.state has shape {np.shape(d['state'])}, "
                             f"expected ({len(self.length)}, >= {self.length.max()})")
        ranges = {"state": (0, n_states - 1), "next_state": (0, n_states - 1),
                  "action": (0, n_actions - 1)}
        self.fields = {k: load_array(f"agent.episodes.{k}", d[k],
                                     np.zeros((len(self.length), cap), dtype=v.dtype),
                                     *ranges.get(k, (None, None)))
                       for k, v in self.fields.items()}

    def take(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The stored episodes of ``rows`` (fields of shape (len(rows), T)) and their lengths;
        clears them."""
        lengths = self.length[rows].copy()
        T = int(lengths.max()) if rows.size else 0
        episodes = {k: v[rows, :T] for k, v in self.fields.items()}
        self.length[rows] = 0
        return episodes, lengths
