"""The textbook's figures, drawn by ``qlab-report`` for the experiments that reproduce them.

An experiment names its figure with the top-level key ``figure`` (logged as a param of every
run, so the report finds it in the store):

- ``cliff_walking`` — Sutton & Barto's Example 6.6 (Figure 6.4): the sum of rewards per
  episode during training (the online return, exploration included) per agent, smoothed by a
  trailing mean over ``CLIFF_SMOOTH`` episodes, mean over replicas with a 95% CI band;
- ``maximization_bias`` — Example 6.7 (Figure 6.5): the share of episodes that go left from
  A, per episode, per agent, with the 5% that the optimal policy takes under epsilon = 0.1.
  It is read from ``train/episode_length``: on ``maxbias`` an episode that goes left lasts 2
  steps, one that goes right 1, so share left = mean length - 1 — a mean, so an aggregate run
  (one run for many replicas) holds it exactly, and its binomial CI needs only the count.

Each figure function takes the loaded :class:`~qlab.analysis.runs.Sweep` and returns
(figure, caption); :func:`book_figures` writes the ones the sweep's runs name. CIs are normal
approximations over replicas (t-free: every group has 100 replicas or more).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from qlab.analysis.plots import group_colours, save
from qlab.analysis.runs import Sweep

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CLIFF_SMOOTH = 10  # episodes in the cliff figure's trailing mean
OPTIMAL_LEFT = 0.05  # maxbias: an epsilon-greedy (0.1) optimal policy goes left half of 10%
BOOK_ORDER = ("sarsa", "expected_sarsa", "tabular_q", "double_q")
LABELS = {"sarsa": "SARSA", "expected_sarsa": "Expected SARSA", "tabular_q": "Q-learning",
          "double_q": "Double Q-learning"}


def replicas_per_run(runs: pd.DataFrame) -> pd.Series:
    """How many replicas each run stands for: 1 for a run per replica; ``replicas`` for an
    aggregate run (``tracking.replica_runs`` false: one run holds its job's mean curves)."""
    flag = runs.get("params.tracking.replica_runs")
    reps = pd.to_numeric(runs.get("params.replicas", pd.Series(1, index=runs.index)),
                         errors="coerce").fillna(1)
    if flag is None:
        return pd.Series(1, index=runs.index)
    aggregate = flag.astype(str).str.lower().isin(("false", "0"))
    if "aggregate_run_id" in runs:  # a replica of an aggregate run, expanded on loading
        aggregate &= runs["aggregate_run_id"].isna()
    return reps.where(aggregate, 1).astype(int)


def agent_curves(sweep: Sweep, key: str) -> dict[str, tuple[np.ndarray, np.ndarray, int]]:
    """Per agent, the per-episode values of ``key``: (episodes, the (episodes, runs) table,
    replicas behind each column as weights summed) — columns are runs, weights say how many
    replicas each stands for."""
    h = sweep.history[sweep.history["key"] == key]
    wide = h.pivot(index="step", columns="run_id", values="value").sort_index()
    weights = dict(zip(sweep.runs["run_id"], replicas_per_run(sweep.runs), strict=True))
    out = {}
    agents = sweep.runs["agent"].fillna("?")
    present = list(dict.fromkeys(agents))
    for agent in [a for a in BOOK_ORDER if a in present] + [a for a in present
                                                          if a not in BOOK_ORDER]:
        cols = [r for r in sweep.runs.loc[agents == agent, "run_id"] if r in wide.columns]
        if cols:
            out[agent] = (wide.index.to_numpy(), wide[cols].to_numpy(dtype=float),
                          np.array([weights[c] for c in cols]))
    return out


def weighted_mean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(steps,) the mean over replicas: columns of ``x`` weighted by the replicas ``w``
    behind them (missing values left out)."""
    ok = np.isfinite(x)
    return np.where(ok, x, 0.0) @ w / np.maximum(ok @ w, 1)


def cliff_walking(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 6.4: online return per episode, per agent."""
    curves = agent_curves(sweep, "train/episode_return")
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    colours = group_colours(list(curves))
    notes = []
    for agent, (steps, x, w) in curves.items():
        smoothed = pd.DataFrame(x).rolling(CLIFF_SMOOTH, min_periods=1).mean().to_numpy()
        mean = weighted_mean(smoothed, w)
        n = int(w.sum())
        ax.plot(steps, mean, color=colours[agent], lw=1.4, label=f"{LABELS.get(agent, agent)}")
        if (w == 1).all() and x.shape[1] > 1:  # runs per replica: the spread is in the store
            half = Z95 * np.nanstd(smoothed, axis=1, ddof=1) / np.sqrt(n)
            ax.fill_between(steps, mean - half, mean + half, color=colours[agent], alpha=0.25,
                            lw=0)
        late = weighted_mean(x, w)[len(steps) // 5:].mean()
        notes.append(f"{LABELS.get(agent, agent)} {late:.1f} (n={n})")
    ax.set_ylim(-100, -10)
    ax.set_xlabel("episode")
    ax.set_ylabel("sum of rewards during episode")
    ax.axhline(-13, color="0.5", ls=":", lw=1)
    ax.axhline(-17, color="0.5", ls="--", lw=1)
    ax.text(0.99, -13, "optimal path (-13)", transform=ax.get_yaxis_transform(), ha="right",
            va="bottom", fontsize=8, color="0.4")
    ax.text(0.99, -17, "safe path (-17)", transform=ax.get_yaxis_transform(), ha="right",
            va="top", fontsize=8, color="0.4")
    ax.legend(loc="lower right", frameon=False, bbox_to_anchor=(1.0, 0.08))
    ax.grid(True, alpha=0.3)
    fig.suptitle("Cliff walking (Sutton & Barto, Example 6.6): online return per episode",
                 fontsize=10)
    caption = (f"Sum of rewards per episode during training (ε = 0.1 exploration included), "
               f"each replica smoothed over {CLIFF_SMOOTH} episodes, mean over replicas with a "
               "95% CI band (normal approximation). The book: SARSA near −25, Q-learning near "
               "−50 (it learns the optimal edge path but falls off it while exploring). Here, "
               "mean online return over the last 80% of episodes: " + "; ".join(notes) + ".")
    return fig, caption


def maximization_bias(sweep: Sweep) -> tuple[Figure, str]:
    """Figure 6.5: % of episodes going left from A, per agent."""
    curves = agent_curves(sweep, "train/episode_length")
    fig = Figure(figsize=(7.5, 4.4), layout="constrained")
    ax = fig.subplots()
    colours = group_colours(list(curves))
    notes = []
    for agent, (steps, x, w) in curves.items():
        left = weighted_mean(x - 1.0, w)  # an episode that goes left lasts 2 steps
        n = int(w.sum())
        half = Z95 * np.sqrt(left * (1 - left) / n)
        ax.plot(steps + 1, 100 * left, color=colours[agent], lw=1.4,
                label=LABELS.get(agent, agent))
        ax.fill_between(steps + 1, 100 * (left - half), 100 * (left + half),
                        color=colours[agent], alpha=0.25, lw=0)
        early = left[:20].mean()
        notes.append(f"{LABELS.get(agent, agent)} {100 * left.max():.1f}% at its peak "
                     f"(episode {int(steps[np.argmax(left)]) + 1}), {100 * early:.1f}% over "
                     f"episodes 1-20, {100 * left[-50:].mean():.1f}% over the last 50 (n={n})")
    ax.axhline(100 * OPTIMAL_LEFT, color="0.35", ls="--", lw=1)
    ax.text(0.01, 100 * OPTIMAL_LEFT - 1, "optimal (5%)", transform=ax.get_yaxis_transform(),
            ha="left", va="top", fontsize=8, color="0.35")
    ax.set_ylim(0, 100)
    ax.set_xlabel("episodes")
    ax.set_ylabel("% left actions from A")
    ax.legend(loc="upper right", frameon=False)
    ax.grid(True, alpha=0.3)
    fig.suptitle("Maximization bias (Sutton & Barto, Example 6.7): % left from A",
                 fontsize=10)
    caption = ("Share of episodes whose first action goes left from A (= mean episode length − "
               "1), per episode, mean over replicas with a 95% binomial CI band (normal "
               "approximation). The dashed line is the 5% an optimal ε-greedy policy (ε = 0.1) "
               "goes left. The book: Q-learning far above 5% early, Double Q-learning near it. "
               "Here: " + "; ".join(notes) + ".")
    return fig, caption


DRAW: dict[str, Callable[[Sweep], tuple[Figure, str]]] = {
    "cliff_walking": cliff_walking,
    "maximization_bias": maximization_bias,
}


def named(sweep: Sweep) -> list[str]:
    """The figures the sweep's runs name (param ``figure``), in order."""
    col = sweep.runs.get("params.figure")
    if col is None:
        return []
    return [f for f in dict.fromkeys(col.dropna().astype(str)) if f in DRAW]


def book_figures(sweep: Sweep, out: Path) -> list[tuple[Path, str]]:
    """Write the figures the sweep names into ``out/figures``; (path, caption) of each."""
    written = []
    for name in named(sweep):
        fig, caption = DRAW[name](sweep)
        written.append((save(fig, Path(out) / "figures" / f"book_{name}.png"), caption))
    return written
