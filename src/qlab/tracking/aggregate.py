"""Aggregate runs: one MLflow run for the replicas of a sweep point (``tracking.replica_runs``),
for jobs of hundreds or thousands of replicas that would not fit as one run each.

What an aggregate run holds (the names are documented in docs/tracking.md):

- the usual metric keys (``train/episode_return``, ``eval/q_error``, ...) hold the mean over
  the point's replicas at each episode / evaluation (NaN values, of replicas stopped early,
  left out);
- the spread: ``train_std/<name>`` and ``eval_std/<name>``, the population standard
  deviation (ddof 0) over the same replicas; ``eval/optimal_policy_share``, the share of
  replicas whose greedy policy is optimal in every state (``eval/optimal_fraction`` = 1);
- the artifact :data:`TABLE` (parquet, zstd): one row per (replica, episode) with the
  columns ``replica`` (index in the job), ``seed``, ``episode``, every ``train/*`` metric, and
  every ``eval/*`` metric at the row of the episode it followed (NaN elsewhere). pandas reads
  it back bit for bit (:func:`read_table`).

The functions here are pure: the tracker decides when they run and what is sent.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

TABLE = "replicas.parquet"
OPTIMAL_SHARE = "eval/optimal_policy_share"
AGGREGATE_TAG = "qlab.aggregate"  # "true" on aggregate runs


def spread_key(key: str) -> str:
    """The standard-deviation metric of ``key``: ``train/q_delta`` -> ``train_std/q_delta``."""
    prefix, _, name = key.partition("/")
    return f"{prefix}_std/{name}"


def mean_and_std(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of ``block`` (replicas x steps), the mean and std (ddof 0) of its finite
    rows' values; NaN where no replica has one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: NaN, not a warning
        return np.nanmean(block, axis=0), np.nanstd(block, axis=0)


def optimal_share(block: np.ndarray) -> np.ndarray:
    """Per column of ``eval/optimal_fraction`` values (replicas x evaluations), the share of
    the replicas evaluated there whose greedy policy was optimal everywhere."""
    seen = np.isfinite(block).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(seen > 0, (block == 1.0).sum(axis=0) / np.maximum(seen, 1), np.nan)


def replica_table(history, members: range, seeds: np.ndarray,
                  extra: Mapping[str, tuple[np.ndarray, int]] | None = None) -> pa.Table:
    """The point's per-replica per-episode table (see the module docstring) as an Arrow
    table. ``history`` is the job's :class:`~qlab.core.history.History`, ``members`` the
    point's replica indices, ``seeds`` their seeds; ``extra[key] = (values (R,), step)``:
    one value per replica of the job at one episode (e.g. the final
    ``eval/episodes_to_optimal`` at the last episode), at its own last episode for a replica
    stopped before it.
    When every replica finished the same episodes the metric columns are views of the
    History's rows, not copies."""
    lo, hi = members.start, members.stop
    done = np.asarray(history.done[lo:hi], dtype=np.int64)
    n = done.max(initial=0)
    offsets = np.concatenate([[0], np.cumsum(done)])
    rows = int(offsets[-1])
    uniform = bool((done == n).all())

    def per_episode(table: np.ndarray) -> np.ndarray:
        block = table[lo:hi, :n]
        if uniform:
            return block.reshape(-1)  # a view when the History's row is contiguous
        return np.concatenate([table[k, :d] for k, d in zip(range(lo, hi), done, strict=True)])

    if uniform:
        episode = np.tile(np.arange(n, dtype=np.int64), hi - lo)
        replica = np.repeat(np.arange(lo, hi, dtype=np.int64), n)
        seed = np.repeat(np.asarray(seeds, dtype=np.int64), n)
    else:
        episode = np.concatenate([np.arange(d, dtype=np.int64) for d in done])
        replica = np.repeat(np.arange(lo, hi, dtype=np.int64), done)
        seed = np.repeat(np.asarray(seeds, dtype=np.int64), done)
    columns = {"replica": replica, "seed": seed, "episode": episode}
    columns.update({key: per_episode(t) for key, t in history.train.items()})

    # each replica's evaluations (those it did, after an episode it finished) at their rows
    steps = np.asarray(history.eval_steps[lo:hi], dtype=np.int64)
    did = np.arange(steps.shape[1]) < np.asarray(history.evals_done[lo:hi])[:, None]
    did &= steps < done[:, None]
    at = (offsets[:-1, None] + steps)[did]
    for key, table in history.evals.items():
        col = np.full(rows, np.nan)
        col[at] = table[lo:hi][did]
        columns[key] = col
    for key, (values, step) in (extra or {}).items():
        col = np.full(rows, np.nan)
        last = np.minimum(step, done - 1)  # a replica stopped before ``step``: its last episode
        has = done > 0
        col[offsets[:-1][has] + last[has]] = np.asarray(values)[lo:hi][has]
        columns[key] = col
    return pa.table({k: pa.array(v) for k, v in columns.items()})


ZSTD_LEVEL = 1  # as small as at pyarrow's default level here, and ~8% faster to write


def write_table(table: pa.Table, path: Path) -> Path:
    """``table`` as zstd-compressed parquet at ``path``."""
    pq.write_table(table, path, compression="zstd", compression_level=ZSTD_LEVEL)
    return path


def read_table(path: str | Path) -> pd.DataFrame:
    """An aggregate run's :data:`TABLE` as a pandas frame (the values as written)."""
    return pd.read_parquet(path)


__all__ = ["TABLE", "OPTIMAL_SHARE", "AGGREGATE_TAG", "spread_key", "mean_and_std",
           "optimal_share", "replica_table", "write_table", "read_table"]
