"""Replay storage on the replica axis: one preallocated circular buffer per replica.

Every field is a numpy array of shape (R, capacity, ...). Replica k has its own write
pointer and fill count, is written only while it is active, and samples only its own
filled slots with its own uniform stream — so replica k's buffer, and every batch it draws,
is exactly what a run of R = 1 with seed k sees. Replicas never mix.

With ``horizons`` a buffer also keeps each transition's bootstrap horizon m (n-step returns,
:mod:`qlab.core.agents.nstep`: the reward is a sum of m discounted rewards and the target
bootstraps with gamma^m); without, every transition is a one-step one.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from qlab.core.rng import ReplicaUniforms
from qlab.core.statedict import load_array

FIELDS = ("obs", "next_obs", "action", "reward", "terminated")  # the per-transition arrays


class ReplaySample(NamedTuple):
    """A minibatch per replica; every field has leading shape (R, B)."""

    obs: np.ndarray  # (R, B, D) float32
    action: np.ndarray  # (R, B) int64
    reward: np.ndarray  # (R, B) float32
    next_obs: np.ndarray  # (R, B, D) float32
    terminated: np.ndarray  # (R, B) bool: no bootstrap from next_obs
    horizon: np.ndarray | None = None  # (R, B) int64 rewards summed (None: all 1)


class ReplayBuffer:
    """R circular buffers of ``capacity`` transitions with observations of shape ``obs_shape``.

    ``rand`` supplies each replica's uniforms; :meth:`sample` takes ``batch_size`` numbers per
    replica per call, whatever the others do, which keeps the streams in lock-step.
    ``horizons``: also store each transition's horizon (see the module docstring).
    """

    def __init__(self, replicas: int, capacity: int, obs_shape: tuple[int, ...],
                 rand: ReplicaUniforms, obs_dtype: np.dtype = np.float32,
                 horizons: bool = False) -> None:
        if capacity < 1:
            raise ValueError(f"replay capacity={capacity}: must be >= 1")
        R = replicas
        self.replicas, self.capacity = R, capacity
        self.obs = np.zeros((R, capacity, *obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((R, capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros((R, capacity), dtype=np.int64)
        self.reward = np.zeros((R, capacity), dtype=np.float32)
        self.terminated = np.zeros((R, capacity), dtype=bool)
        self.horizon = np.zeros((R, capacity), dtype=np.int64) if horizons else None
        self.fields = FIELDS + (("horizon",) if horizons else ())
        self.pos = np.zeros(R, dtype=np.int64)  # next slot to write, per replica
        self.size = np.zeros(R, dtype=np.int64)  # filled slots, per replica
        self._rows = np.arange(R)
        self._rand = rand

    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            next_obs: np.ndarray, terminated: np.ndarray, active: np.ndarray,
            horizon: np.ndarray | None = None) -> None:
        """Store one transition (fields with leading shape (R,)) for each active replica;
        ``horizon`` only (and always) in a buffer built with ``horizons``."""
        if (horizon is None) != (self.horizon is None):
            raise ValueError("replay: pass a horizon exactly when the buffer stores horizons")
        rows = self._rows[active]
        if rows.size == 0:
            return
        slot = self.pos[rows]
        self.obs[rows, slot] = obs[rows]
        self.next_obs[rows, slot] = next_obs[rows]
        self.action[rows, slot] = action[rows]
        self.reward[rows, slot] = reward[rows]
        self.terminated[rows, slot] = terminated[rows]
        if horizon is not None:
            self.horizon[rows, slot] = horizon[rows]
        self.pos[rows] = (slot + 1) % self.capacity
        self.size[rows] = np.minimum(self.size[rows] + 1, self.capacity)

    def sample(self, batch_size: int, used: np.ndarray | None = None,
               only_used: bool = False) -> ReplaySample:
        """``batch_size`` transitions per replica, drawn uniformly (with replacement) from that
        replica's filled slots. The replicas in ``used`` (default: all) must hold at least one
        transition; rows of an empty replica outside it are meaningless zeros. ``only_used``:
        return the rows of ``used`` only (every replica's stream still advances)."""
        empty = self.size == 0
        if used is not None:
            empty &= used
        if empty.any():
            raise ValueError(f"replay: replica(s) {self._rows[empty].tolist()} hold no "
                             "transitions yet; sample after learning_starts")
        u = self._rand.take(batch_size)
        r = self._rows[:, None]
        if only_used and used is not None:
            r, u = r[used], u[used]
        size = np.maximum(self.size[r], 1)
        idx = np.minimum((u * size).astype(np.int64), size - 1)
        return ReplaySample(self.obs[r, idx], self.action[r, idx], self.reward[r, idx],
                            self.next_obs[r, idx], self.terminated[r, idx],
                            None if self.horizon is None else self.horizon[r, idx])

    def state_dict(self) -> dict:
        """The filled slots (up to the fullest replica's fill count; the rest are still
        zeros), the write pointers and fill counts, and the sampling stream."""
        n = int(self.size.max(initial=0))
        return {**{k: getattr(self, k)[:, :n].copy() for k in self.fields},
                "pos": self.pos.copy(), "size": self.size.copy(), "rand": self._rand.state()}

    def load_state_dict(self, d: dict, n_actions: int | None = None,
                        max_horizon: int | None = None) -> None:
        """Continue from :meth:`state_dict`; stored actions must be below ``n_actions`` and
        horizons at most ``max_horizon``."""
        self.pos = load_array("agent.buffer.pos", d["pos"], self.pos, 0, self.capacity - 1)
        self.size = load_array("agent.buffer.size", d["size"], self.size, 0, self.capacity)
        filling = (self.size < self.capacity) & (self.pos != self.size)
        if filling.any():
            k = int(np.flatnonzero(filling)[0])
            raise ValueError(f"agent.buffer.pos[{k}] = {self.pos[k]} disagrees with "
                             f"agent.buffer.size[{k}] = {self.size[k]} (not yet full)")
        n = int(self.size.max(initial=0))
        ranges = {"action": (0, None if n_actions is None else n_actions - 1),
                  "horizon": (0, max_horizon)}  # (unfilled slots hold 0)
        for k in self.fields:
            full = getattr(self, k)
            full[...] = 0
            full[:, :n] = load_array(f"agent.buffer.{k}", d[k], full[:, :n],
                                     *ranges.get(k, (None, None)))
        self._rand.load_state(d["rand"])
