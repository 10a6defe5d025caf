"""What training records: per-replica metric tables (:class:`History`), and the driver's
per-replica counters (:func:`loop_state`) — with the objects' own state, all a checkpoint
needs to continue a job."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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


def loop_state(replicas: int, stat_keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The runner's per-replica counters at the start of training; besides the History and
    the objects' own state, they are all a checkpoint needs to continue the loop."""
    R = replicas
    return {"ep": np.zeros(R, dtype=np.int64), "steps": np.zeros(R, dtype=np.int64),
            "length": np.zeros(R, dtype=np.int64), "ret": np.zeros(R), "qd_sum": np.zeros(R),
            "qd_cnt": np.zeros(R), "stat_cnt": np.zeros(R), "active": np.ones(R, dtype=bool),
            **{f"stat_sum/{s}": np.zeros(R) for s in stat_keys}}


def non_finite(train: dict[str, np.ndarray], k: int, e: int, keys: Sequence[str]) -> str | None:
    """The first of ``keys`` whose episode-``e`` value of replica ``k`` is NaN or infinite."""
    for key in keys:
        if not np.isfinite(train[key][k, e]):
            return f"{key} = {train[key][k, e]}"
    return None


def episodes_to_optimal(history: History) -> np.ndarray:
    """(R,) the first evaluated episode after which the greedy policy stays optimal (NaN if
    never, or if the last evaluation's policy is not optimal)."""
    so_far = episodes_to_optimal_so_far(history)
    if so_far.shape[1] == 0:
        return np.full(history.replicas, math.nan)
    return so_far[:, -1]


def episodes_to_optimal_so_far(history: History) -> np.ndarray:
    """(R, n_evals) :func:`episodes_to_optimal` as it stood after each evaluation: at column
    i, the first evaluated episode after which the greedy policy stayed optimal up to
    evaluation i (NaN where the policy at evaluation i is not optimal); a replica's columns
    after its last evaluation hold its final value. A run optimal from episode 120 on reads
    120 from its evaluation at 120 onwards; one that loses its optimal policy reads NaN
    until it regains one, then the episode it regained it. The value at column i depends
    on evaluations up to i only, and the last column is :func:`episodes_to_optimal`."""
    steps = history.eval_steps
    out = np.full(steps.shape, math.nan)
    opt = history.evals.get("eval/optimal_fraction")
    if opt is None or steps.shape[1] == 0:
        return out
    cols = np.arange(steps.shape[1])
    seen = cols < history.evals_done[:, None]
    ok = seen & (opt == 1.0)
    # the first column of the optimal streak column i is in: one past the last column <= i
    # whose policy was not optimal
    first = np.maximum.accumulate(np.where(ok, -1, cols), axis=1) + 1
    since = np.take_along_axis(steps, np.minimum(first, cols[-1]), axis=1)
    out[ok] = since[ok]
    last = np.maximum(history.evals_done - 1, 0)
    final = np.where(history.evals_done > 0, out[np.arange(history.replicas), last], math.nan)
    return np.where(seen, out, final[:, None])
