"""Statistics over seeds, the way Agarwal et al. (2021, "Deep RL at the edge of the
statistical precipice", the rliable library) recommend for few runs:

- per run, scalar **scores** from its metric histories (:func:`run_scores`): final greedy
  return, final |Q - Q*|, final share of optimal actions, Q-delta and episode length over the
  last 10% of episodes, mean training return over all episodes, and **episodes to solve**;
- per group of runs (default: agent x exploration.decay, plus any other swept key), over
  seeds: **mean, median and IQM** (interquartile mean: the mean of the middle 50%,
  ``scipy.stats.trim_mean(x, 0.25)``) with **stratified bootstrap 95% CIs**
  (``scipy.stats.bootstrap``, percentile method as rliable; runs are resampled within each
  stratum — each env — so a group spanning several envs keeps their mix);
- between groups, the **probability of improvement** P(X > Y) + 0.5 P(X = Y) that a random
  run of X scores better than a random run of Y (the Mann-Whitney statistic; averaged over
  strata), with a bootstrap CI.

**Episodes to solve** is the first evaluated episode (its 0-based index, the metric's step)
after which the greedy policy stays optimal (``eval/optimal_fraction`` = 1 at every later
evaluation) — the same definition as the logged ``eval/episodes_to_optimal``. For envs
without a model it is the first episode after which ``eval/return`` (or the training return
averaged over a trailing window) stays at or above a threshold (default: the env's
registered ``reward_threshold``). A run that never solves counts as its episode budget
(right-censored): the median is still exact while at most half the runs are unsolved, the
mean and IQM are then lower bounds; ``solved`` says how many did.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from qlab.analysis.runs import Sweep, column

CONFIDENCE = 0.95
N_RESAMPLES = 2000
DEFAULT_GROUP_BY = ("agent", "exploration.decay")
# Params that are per run, never a group of their own.
PER_RUN_PARAMS = ("seed",)
FINAL_FRACTION = 0.1  # "final" training metrics: mean over the last 10% of episodes


@dataclass(frozen=True)
class Score:
    """A per-run scalar: its label and which direction is better."""

    name: str
    label: str
    higher_is_better: bool
    fmt: str = "{:.3g}"
    log: bool = False  # spans orders of magnitude: plot on a log scale


SCORES = {
    s.name: s for s in (
        Score("episodes_to_solve", "episodes to solve", False, "{:.1f}"),
        Score("final_return", "final greedy return", True),
        Score("final_q_error", "final max |Q - Q*|", False, log=True),
        Score("final_optimal_fraction", "final share of optimal actions", True),
        Score("final_q_delta", "Q-delta (last 10% of episodes)", False, log=True),
        Score("final_episode_length", "episode length (last 10% of episodes)", False, "{:.2f}"),
        Score("mean_train_return", "mean training return (all episodes)", True),
    )
}


# ------------------------------------------------------------------------------ statistics

def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% of ``x`` along ``axis``."""
    return sps.trim_mean(x, 0.25, axis=axis)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _median(x, axis=-1):
    return np.median(x, axis=axis)


STATISTICS: dict[str, Callable[..., np.ndarray]] = {"mean": _mean, "median": _median, "iqm": iqm}


def _concat(statistic: Callable[..., np.ndarray],
            fixed: Sequence[np.ndarray] = ()) -> Callable[..., np.ndarray]:
    """A statistic over several strata: applied to their concatenation, with the ``fixed``
    strata (single values: nothing to resample) appended to every resample."""
    def stat(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        samples = tuple(np.moveaxis(x, axis, -1) for x in samples)
        lead = samples[0].shape[:-1]
        held = [np.broadcast_to(f, (*lead, len(f))) for f in fixed]
        return statistic(np.concatenate([*samples, *held], axis=-1), axis=-1)
    return stat


def bootstrap_ci(strata: Sequence[np.ndarray], statistic: Callable[..., np.ndarray],
                 confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high): ``statistic`` of all values and its stratified bootstrap
    percentile CI (each stratum resampled on its own). NaN bounds with fewer than 2 values
    in every stratum (nothing to resample)."""
    strata = [np.asarray(s, dtype=np.float64) for s in strata if len(s)]
    if not strata:
        return np.nan, np.nan, np.nan
    est = float(statistic(np.concatenate(strata), axis=-1))
    if all(len(s) < 2 for s in strata):
        return est, np.nan, np.nan
    if all(np.ptp(s) == 0 for s in strata):
        # Every resample is the sample itself; scipy would warn about degenerate data.
        return est, est, est
    # A stratum of one run (one env seen once) cannot be resampled: it is held as it is.
    free = tuple(s for s in strata if len(s) >= 2)
    fixed = [s for s in strata if len(s) < 2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap(free, _concat(statistic, fixed), n_resamples=n_resamples,
                            confidence_level=confidence, method="percentile", vectorized=True,
                            paired=False, rng=np.random.default_rng(seed))
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) + 0.5 P(X = Y) over all pairs of a run of X and a run of Y (rliable's
    definition for one task); vectorised over leading axes of resamples."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    y = np.moveaxis(np.asarray(y, dtype=np.float64), axis, -1)
    gt = (x[..., :, None] > y[..., None, :]).mean(axis=(-2, -1))
    eq = (x[..., :, None] == y[..., None, :]).mean(axis=(-2, -1))
    return gt + 0.5 * eq


def poi_ci(x_strata: Sequence[np.ndarray], y_strata: Sequence[np.ndarray],
           confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
           seed: int = 0) -> tuple[float, float, float]:
    """(P(X > Y), low, high): the probability of improvement averaged over the strata both
    share, and its bootstrap CI (X's and Y's runs resampled independently per stratum)."""
    pairs = [(np.asarray(a, float), np.asarray(b, float))
             for a, b in zip(x_strata, y_strata, strict=True) if len(a) and len(b)]
    if not pairs:
        return np.nan, np.nan, np.nan
    flat = [a for pair in pairs for a in pair]

    def stat(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean([probability_of_improvement(samples[i], samples[i + 1], axis=axis)
                        for i in range(0, len(samples), 2)], axis=0)

    est = float(stat(*flat))
    if all(len(a) < 2 and len(b) < 2 for a, b in pairs):
        return est, np.nan, np.nan
    if all(np.ptp(a) == 0 and np.ptp(b) == 0 for a, b in pairs):
        return est, est, est
    free = [i for i, a in enumerate(flat) if len(a) >= 2]  # a single run is held as it is

    def resampled(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        lead = np.moveaxis(samples[0], axis, -1).shape[:-1]
        full = [np.broadcast_to(a, (*lead, len(a))) for a in flat]
        for i, x in zip(free, samples, strict=True):
            full[i] = np.moveaxis(x, axis, -1)
        return stat(*full)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        res = sps.bootstrap(tuple(flat[i] for i in free), resampled, n_resamples=n_resamples,
                            confidence_level=confidence, method="percentile", vectorized=True,
                            paired=False, rng=np.random.default_rng(seed))
    return est, float(res.confidence_interval.low), float(res.confidence_interval.high)


# ------------------------------------------------------------------------------ per-run scores

def solved_after(steps: np.ndarray, ok: np.ndarray) -> float:
    """The first step after which ``ok`` holds at every later point (NaN if the last
    point is not ok). ``steps`` ascending."""
    ok = np.asarray(ok, dtype=bool)
    if ok.size == 0 or not ok[-1]:
        return np.nan
    bad = np.flatnonzero(~ok)
    return float(steps[0 if bad.size == 0 else bad[-1] + 1])


def reward_threshold(env_id: str | None) -> float | None:
    """The env's registered ``reward_threshold`` (gymnasium spec), if any."""
    if not env_id or not isinstance(env_id, str):
        return None
    try:
        import gymnasium

        import qlab.core.envs  # noqa: F401  (registers qlab/Griddy-v0)

        return gymnasium.spec(env_id).reward_threshold
    except Exception:  # unknown id, plugin not installed: no default threshold
        return None


def _series(h: pd.DataFrame, key: str) -> tuple[np.ndarray, np.ndarray]:
    s = h[h["key"] == key]
    return s["step"].to_numpy(), s["value"].to_numpy()


def run_scores(sweep: Sweep, threshold: float | None = None,
               final_fraction: float = FINAL_FRACTION, window: int | None = None) -> pd.DataFrame:
    """One row per run: its ids and params (as in ``sweep.runs``) plus the scores in
    :data:`SCORES`, ``solved`` and ``solve_criterion`` (see the module docstring).

    ``threshold``: the return that counts as solved on envs without a model (default: the
    env's ``reward_threshold``). ``window``: trailing episodes averaged when that falls back
    to the training return (default: 10% of the episodes)."""
    runs = sweep.runs.copy()
    by_run = dict(tuple(sweep.history.groupby("run_id", sort=False)))
    env_ids = runs[column(runs, "env.id")] if "params.env.id" in runs else None
    out = []
    for i, run_id in enumerate(runs["run_id"]):
        h = by_run.get(run_id, sweep.history.iloc[:0])
        row: dict = {}
        t_steps, t_len = _series(h, "train/episode_length")
        n_episodes = int(t_steps.max()) + 1 if t_steps.size else 0
        if "params.episodes" in runs and pd.notna(runs["params.episodes"].iloc[i]):
            n_episodes = max(n_episodes, int(runs["params.episodes"].iloc[i]))
        tail = max(1, int(round(final_fraction * max(t_steps.size, 1))))
        for key, name in (("train/q_delta", "final_q_delta"),
                          ("train/episode_length", "final_episode_length")):
            _, v = _series(h, key)
            row[name] = float(np.mean(v[-tail:])) if v.size else np.nan
        _, tr = _series(h, "train/episode_return")
        row["mean_train_return"] = float(np.mean(tr)) if tr.size else np.nan
        for key, name in (("eval/return", "final_return"), ("eval/q_error", "final_q_error"),
                          ("eval/optimal_fraction", "final_optimal_fraction")):
            _, v = _series(h, key)
            row[name] = float(v[-1]) if v.size else np.nan
        if np.isnan(row["final_return"]) and tr.size:
            row["final_return"] = float(np.mean(tr[-tail:]))
        # Episodes to solve.
        o_steps, opt = _series(h, "eval/optimal_fraction")
        if o_steps.size:
            solved_at = solved_after(o_steps, opt >= 1.0)
            criterion = "greedy policy optimal (eval/optimal_fraction = 1)"
        else:
            thr = threshold
            if thr is None and env_ids is not None:
                thr = reward_threshold(env_ids.iloc[i])
            e_steps, e_ret = _series(h, "eval/return")
            if thr is None:
                solved_at, criterion = np.nan, "no model and no return threshold"
            elif e_steps.size:
                solved_at = solved_after(e_steps, e_ret >= thr)
                criterion = f"eval/return >= {thr:g}"
            else:
                w = window or max(1, int(round(final_fraction * max(tr.size, 1))))
                smooth = pd.Series(tr).rolling(w, min_periods=1).mean().to_numpy()
                r_steps, _ = _series(h, "train/episode_return")
                solved_at = solved_after(r_steps, smooth >= thr)
                criterion = f"train/episode_return (mean of last {w}) >= {thr:g}"
        row["solved"] = bool(np.isfinite(solved_at))
        row["episodes_to_solve"] = solved_at if row["solved"] else float(n_episodes)
        row["solve_criterion"] = criterion
        out.append(row)
    scores = pd.DataFrame(out, index=runs.index)
    return pd.concat([runs, scores], axis=1)


# ------------------------------------------------------------------------------ groups

def default_group_by(runs: pd.DataFrame,
                     base: Sequence[str] = DEFAULT_GROUP_BY) -> list[str]:
    """agent x exploration.decay (those present; the decay only where it varies), the env
    whenever runs span several (envs are never lumped together), plus every other param that
    splits these groups further (a swept key such as ``agent.lr``); seeds never do."""
    keys = []
    for k in base:
        try:
            c = column(runs, k)
        except LookupError:
            continue
        if keys and runs[c].nunique(dropna=False) < 2:
            continue  # an unswept decay is no group of its own
        keys.append(c)
    if "env" in runs.columns and runs["env"].nunique(dropna=False) > 1:
        keys.insert(1 if keys else 0, "env")
    skip = {f"params.{p}" for p in PER_RUN_PARAMS} | {"params.agent.name"}
    # The env tag first: a sweep over envs then groups by its short name, and the env's own
    # params (id, kwargs, ...) no longer split anything.
    candidates = (["env"] if "env" in runs.columns else []) + sorted(
        c for c in runs.columns if c.startswith("params."))
    for c in candidates:
        if c in skip or c in keys:
            continue
        if runs[c].nunique(dropna=False) < 2:
            continue
        if not keys:
            keys.append(c)
            continue
        split = runs.groupby(keys, dropna=False)[c].nunique(dropna=False)
        if (split > 1).any():
            keys.append(c)
    return keys


def _short(col: str) -> str:
    return col.split(".", 1)[1] if col.startswith(("params.", "tags.")) else col


def _fmt_value(v) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) >= 1:
        return str(int(v))
    return str(v)


def group_labels(df: pd.DataFrame, group_by: Sequence[str]) -> pd.Series:
    """A readable label per row: ``tabular_q, decay=0.99`` (agent and env by value only)."""
    def label(row) -> str:
        parts = []
        for c in group_by:
            v = row[c]
            name = _short(c)
            if name in ("agent", "env", "agent.name", "env.name"):
                parts.append(_fmt_value(v))
            else:
                parts.append(f"{name.rsplit('.', 1)[-1]}={_fmt_value(v)}")
        return ", ".join(parts)
    if not group_by:
        return pd.Series("all runs", index=df.index)
    return df.apply(label, axis=1)


def ordered_groups(df: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """Group labels in a stable order: by each key's values (numbers numerically)."""
    keys = df[list(group_by)].drop_duplicates()
    keys = keys.sort_values(list(group_by), kind="stable") if group_by else keys
    return list(dict.fromkeys(group_labels(keys, group_by)))


def _strata_column(df: pd.DataFrame, group_by: Sequence[str]) -> str | None:
    """Runs are stratified by env unless env is a grouping key (then each group is one env)."""
    env = "env" if "env" in df.columns else None
    if env is None or any(_short(c) in ("env", "env.name", "env.id") for c in group_by):
        return None
    return env


def aggregate(scores: pd.DataFrame, group_by: Sequence[str] | None = None,
              metrics: Sequence[str] | None = None,
              statistics: Sequence[str] = ("mean", "median", "iqm"),
              confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
              seed: int = 0) -> pd.DataFrame:
    """Long table: one row per (group, metric, statistic) with ``n`` (runs with a value),
    ``estimate``, ``ci_low``, ``ci_high``; ``solved`` (runs that solved) on every row."""
    group_by = list(default_group_by(scores) if group_by is None else group_by)
    metrics = [m for m in (metrics or SCORES) if m in scores.columns
               and scores[m].notna().any()]
    strata_col = _strata_column(scores, group_by)
    labels = group_labels(scores, group_by)
    rows = []
    for g in ordered_groups(scores, group_by):
        sub = scores[labels == g]
        strata = ([sub] if strata_col is None
                  else [s for _, s in sub.groupby(strata_col, dropna=False)])
        key_vals = {c: sub[c].iloc[0] for c in group_by}
        for m in metrics:
            parts = [s[m].dropna().to_numpy(dtype=np.float64) for s in strata]
            n = int(sum(len(p) for p in parts))
            for st in statistics:
                est, lo, hi = bootstrap_ci(parts, STATISTICS[st], confidence, n_resamples, seed)
                rows.append({"group": g, **key_vals, "metric": m, "statistic": st, "n": n,
                             "solved": int(sub["solved"].sum()) if "solved" in sub else None,
                             "runs": len(sub), "estimate": est, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows)


def poi_matrix(scores: pd.DataFrame, metric: str, group_by: Sequence[str] | None = None,
               confidence: float = CONFIDENCE, n_resamples: int = N_RESAMPLES,
               seed: int = 0) -> pd.DataFrame:
    """Long table of P(row group improves on column group) on ``metric`` (better =
    :data:`SCORES`' direction), with bootstrap CIs: columns ``x``, ``y``, ``poi``,
    ``ci_low``, ``ci_high``. The diagonal is 0.5 by definition."""
    group_by = list(default_group_by(scores) if group_by is None else group_by)
    sign = 1.0 if SCORES[metric].higher_is_better else -1.0
    strata_col = _strata_column(scores, group_by)
    labels = group_labels(scores, group_by)
    groups = ordered_groups(scores, group_by)
    strata_vals = ([None] if strata_col is None
                   else list(scores[strata_col].drop_duplicates()))

    def split(g: str) -> list[np.ndarray]:
        sub = scores[labels == g]
        if strata_col is None:
            return [sign * sub[metric].dropna().to_numpy(dtype=float)]
        return [sign * sub.loc[sub[strata_col] == s, metric].dropna().to_numpy(dtype=float)
                for s in strata_vals]

    parts = {g: split(g) for g in groups}
    rows = []
    for x in groups:
        for y in groups:
            p, lo, hi = poi_ci(parts[x], parts[y], confidence, n_resamples, seed)
            rows.append({"x": x, "y": y, "metric": metric, "poi": p, "ci_low": lo,
                         "ci_high": hi})
    return pd.DataFrame(rows)


def curve_table(sweep: Sweep, key: str, group_by: Sequence[str], smooth: int = 1,
                confidence: float = CONFIDENCE, n_resamples: int = 1000,
                seed: int = 0) -> pd.DataFrame:
    """Per group and step: the mean of metric ``key`` over runs (each run first smoothed
    by a trailing mean over ``smooth`` points) and a bootstrap CI of that mean, resampling
    runs — ``group``, ``step``, ``n``, ``mean``, ``ci_low``, ``ci_high``."""
    labels = group_labels(sweep.runs, group_by)
    run_group = dict(zip(sweep.runs["run_id"], labels, strict=True))
    h = sweep.history[sweep.history["key"] == key]
    if h.empty:
        return pd.DataFrame(columns=["group", "step", "n", "mean", "ci_low", "ci_high"])
    wide = h.pivot(index="step", columns="run_id", values="value").sort_index()
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean()
    rng = np.random.default_rng(seed)
    alpha = (1 - confidence) / 2
    out = []
    for g in ordered_groups(sweep.runs, group_by):
        cols = [c for c in wide.columns if run_group.get(c) == g]
        if not cols:
            continue
        x = wide[cols].to_numpy()  # (steps, runs)
        n = np.isfinite(x).sum(axis=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(x, axis=1)
            if x.shape[1] > 1:
                # Resample runs (columns) with replacement, the same draw for every step:
                # each resample as how often it draws each run, so a resampled mean is a
                # matrix product (x[:, idx] would be steps x resamples x runs: 24 GB for
                # 10,000 replicas).
                idx = rng.integers(0, x.shape[1], size=(n_resamples, x.shape[1]))
                counts = np.stack([np.bincount(row, minlength=x.shape[1]) for row in idx])
                finite = np.isfinite(x)
                total = np.where(finite, x, 0.0) @ counts.T  # (steps, resamples)
                drawn = finite.astype(float) @ counts.T
                boot = np.where(drawn > 0, total / np.maximum(drawn, 1), np.nan)
                lo, hi = np.nanquantile(boot, [alpha, 1 - alpha], axis=1)
            else:
                lo = hi = np.full(len(mean), np.nan)
        out.append(pd.DataFrame({"group": g, "step": wide.index.to_numpy(), "n": n,
                                 "mean": mean, "ci_low": lo, "ci_high": hi}))
    return pd.concat(out, ignore_index=True)


__all__ = ["SCORES", "STATISTICS", "iqm", "bootstrap_ci", "probability_of_improvement",
           "poi_ci", "run_scores", "default_group_by", "group_labels", "ordered_groups",
           "aggregate", "poi_matrix", "curve_table", "solved_after", "reward_threshold"]
