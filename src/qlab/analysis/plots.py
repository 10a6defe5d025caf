"""Figures: learning curves per group with bootstrap CI bands, a final-performance interval
plot, and value heatmaps — V(s) = max_a Q(s, a) on the grid with greedy-policy arrows,
beside Q* from value iteration.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no GUI backend, safe in workers); :func:`save` writes it as PNG.

Heatmaps work for any agent from its Q on every state, an (S, A) array: a tabular agent's
``q_table.npy``, or a DQN's network evaluated on every state's observation
(:func:`qlab.analysis.runs.q_on_states`). Grids: the qlab grid world (fixed or random goal:
one goal's slice is shown), FrozenLake and CliffWalking (their own action orders).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from qlab.app.value_maps import (  # noqa: F401 - value maps are part of the figure set
    DPI,
    GridLayout,
    grid_layout,
    q_star,
    save,
    value_figure,
)
from qlab.core.envs.model import TabularModel
from qlab.core.oracle import legal_argmax, value_iteration

# Curves: what each metric is called, and whether a log scale reads it better by default.
CURVES: dict[str, tuple[str, bool]] = {
    "train/q_delta": ("Q-delta: mean |ΔQ(s, a)| per update", True),
    "train/episode_length": ("episode length (steps)", True),
    "train/episode_return": ("episode return", False),
    "train/epsilon": ("epsilon", False),
    "train/td_loss": ("TD loss (Huber)", True),
    "eval/return": ("greedy return (exact expectation)", False),
    "eval/q_error": ("max |Q − Q*| over acting states", True),
    "eval/optimal_fraction": ("share of states with an optimal greedy action", False),
}


# ------------------------------------------------------------------------------ colours

def group_colours(groups: Sequence[str], facets: Sequence[str] | None = None) -> dict[str, Any]:
    """A colour per group. Within a facet (e.g. an agent) groups differ by an ordered key
    (e.g. the decay), so they get ordered shades of one sequential map; without facets,
    distinct qualitative colours."""
    if facets is None:
        cmap = colormaps["tab10"]
        return {g: cmap(i % 10) for i, g in enumerate(groups)}
    out: dict[str, Any] = {}
    cmap = colormaps["viridis"]
    for f in dict.fromkeys(facets):
        members = [g for g, ff in zip(groups, facets, strict=True) if ff == f]
        for j, g in enumerate(members):
            # 0.0 (dark purple) .. 0.8 (green-yellow, still visible on white)
            out[g] = cmap(0.8 * j / max(len(members) - 1, 1))
    return out


def _facets(runs: pd.DataFrame, group_by: Sequence[str]
            ) -> tuple[list[str], list[str], list[str], dict[str, str]]:
    """(groups, their facet, facet names, group -> label within its facet). With two or
    more keys the first one (the agent) makes the panels and the rest the lines."""
    from qlab.analysis import stats  # here: scipy.stats costs a second to import
    groups = stats.ordered_groups(runs, group_by)
    if len(group_by) < 2:
        return groups, ["" for _ in groups], [""], {g: g for g in groups}
    labels = stats.group_labels(runs, group_by)
    first = stats.group_labels(runs, group_by[:1])
    rest = stats.group_labels(runs, group_by[1:])
    facet_of = dict(zip(labels, first, strict=True))
    line_of = dict(zip(labels, rest, strict=True))
    facets = [facet_of[g] for g in groups]
    return groups, facets, list(dict.fromkeys(facets)), {g: line_of[g] for g in groups}


# ------------------------------------------------------------------------------ curves

def _points(steps: np.ndarray, episodes: int) -> int:
    """How many logged points span ``episodes`` episodes (eval metrics are sparse)."""
    unique = np.unique(steps)
    if episodes <= 1 or unique.size < 2:  # (one evaluation, however many runs hold it)
        return 1
    spacing = float(np.median(np.diff(unique)))
    return max(1, int(round(episodes / max(spacing, 1.0))))


def curves_figure(sweep, key: str, group_by: Sequence[str], smooth: int = 1,
                  log: bool | None = None, confidence: float = 0.95,
                  reference: tuple[float, str] | None = None, seed: int = 0) -> Figure:
    """Metric ``key`` against episode: per group the mean over seeds with a bootstrap CI
    band; each run is first smoothed by a trailing mean over ``smooth`` episodes (for sparse
    eval metrics, over the points those episodes span). One panel per value of the first
    grouping key, sharing the y axis. ``log`` None: the metric's default scale.
    ``reference``: a dashed horizontal line (value, label), e.g. the optimal policy's."""
    from qlab.analysis import stats
    label, default_log = CURVES.get(key, (key, False))
    log = default_log if log is None else log
    steps = sweep.history.loc[sweep.history["key"] == key, "step"].to_numpy()
    points = _points(steps, smooth)
    table = stats.curve_table(sweep, key, group_by, smooth=points, confidence=confidence,
                              seed=seed)
    groups, facets, panels, line_label = _facets(sweep.runs, group_by)
    colours = group_colours(groups, facets if len(group_by) > 1 else None)
    have = set(table["group"])
    panels = [p for p in panels if any(f == p and g in have
                                       for g, f in zip(groups, facets, strict=True))] or panels
    counts = sweep.runs.groupby(stats.group_labels(sweep.runs, group_by)).size()
    same_n = counts.nunique() == 1
    n = len(panels)
    fig = Figure(figsize=(min(4.2 * n + 0.8, 16), 3.6), layout="constrained")
    axes = fig.subplots(1, n, sharex=True, sharey=True, squeeze=False)[0]
    # Log scale; symlog (linear up to the smallest positive value) when values reach exactly
    # 0, e.g. the Q-error of a table that converged exactly.
    scale, linthresh = "linear", 0.0
    if log:
        shown = table[["mean", "ci_low", "ci_high"]].to_numpy(dtype=float)
        shown = shown[np.isfinite(shown)]
        pos = shown[shown > 0]
        if pos.size and (shown >= 0).all():
            scale = "log" if pos.size == shown.size else "symlog"
            linthresh = float(pos.min())
    legends = []
    for ax, panel in zip(axes, panels, strict=True):
        for g, f in zip(groups, facets, strict=True):
            if f != panel:
                continue
            t = table[table["group"] == g]
            if t.empty:
                continue
            x, m, lo, hi = (t[c].to_numpy(dtype=float) for c in ("step", "mean", "ci_low",
                                                                 "ci_high"))
            if scale == "log":
                m, lo, hi = (np.where(a > 0, a, np.nan) for a in (m, lo, hi))
            name = line_label[g] if same_n else f"{line_label[g]} (n={counts[g]})"
            ax.plot(x, m, color=colours[g], lw=1.5, label=name,
                    marker="o" if len(x) <= 40 else None, ms=3)
            ax.fill_between(x, lo, hi, color=colours[g], alpha=0.2, lw=0)
        if reference is not None:
            ax.axhline(reference[0], color="0.35", ls="--", lw=1, label=reference[1])
        if scale == "log":
            ax.set_yscale("log")
        elif scale == "symlog":
            ax.set_yscale("symlog", linthresh=linthresh, linscale=1.0)
        ax.set_title(panel or None, fontsize=11)
        ax.set_xlabel("episode")
        ax.grid(True, alpha=0.3, which="major")
        legends.append(tuple(ax.get_legend_handles_labels()[1]))
    if scale == "symlog":  # after every panel is drawn: the y axis is shared
        top = max(float(shown.max()), reference[0] if reference else 0.0)
        axes[0].set_ylim(-0.3 * linthresh, top * 1.6)
    # One legend when every panel has the same lines (the usual agent x decay case).
    for i, ax in enumerate(axes):
        if legends[i] and (i == 0 or legends[i] != legends[0]):
            ax.legend(fontsize=8, loc="best", frameon=False)
    axes[0].set_ylabel(label, fontsize=9)
    over = f"mean over {counts.iloc[0]} seeds" if same_n else "mean over seeds"
    smooth_note = ""
    if points > 1:
        smooth_note = f"; each run smoothed over {smooth} episodes"
    fig.suptitle(f"{key}: {over} with {confidence:.0%} bootstrap CI{smooth_note}", fontsize=10)
    return fig


def optimal_references(model: TabularModel, gamma: float) -> dict[str, tuple[float, str]]:
    """Reference lines from the exact model: the optimal greedy policy's expected episode
    length and return from the start distribution (within the env's step limit)."""
    from dataclasses import replace

    from qlab.core.oracle import expected_return

    policy = legal_argmax(value_iteration(model, float(gamma)).q, model.action_mask)
    steps = replace(model, reward=np.ones_like(model.reward))
    return {
        "train/episode_length": (expected_return(steps, policy), "optimal policy"),
        "eval/return": (expected_return(model, policy), "optimal policy"),
        "eval/optimal_fraction": (1.0, "optimal"),
    }


# ------------------------------------------------------------------------------ intervals

def interval_figure(agg: pd.DataFrame, metrics: Sequence[str], statistic: str = "iqm",
                    group_by: Sequence[str] | None = None, runs: pd.DataFrame | None = None
                    ) -> Figure:
    """Final performance: per metric a panel, per group a horizontal bar spanning the CI of
    ``statistic`` over seeds with a tick at its estimate (rliable's interval plot). Episodes
    to solve is annotated with how many runs solved (the others count as the budget)."""
    from qlab.analysis import stats
    metrics = [m for m in metrics if (agg["metric"] == m).any()]
    a = agg[agg["statistic"] == statistic]
    groups = list(dict.fromkeys(a["group"]))
    if runs is not None and group_by and len(group_by) > 1:
        _, facets, _, _ = _facets(runs, group_by)
        fac = dict(zip(stats.ordered_groups(runs, group_by), facets, strict=True))
        colours = group_colours(groups, [fac[g] for g in groups])
    else:
        colours = group_colours(groups)
    ncol = max(1, min(len(metrics), 3))
    nrow = max(1, math.ceil(len(metrics) / ncol))
    fig = Figure(figsize=(4.3 * ncol + 1.6, (0.3 * len(groups) + 0.9) * nrow + 0.3),
                 layout="constrained")
    axes = fig.subplots(nrow, ncol, sharey=True, squeeze=False).ravel()
    y = np.arange(len(groups))[::-1]
    for ax, m in zip(axes, metrics, strict=False):
        sub = a[a["metric"] == m].set_index("group")
        score = stats.SCORES.get(m)
        values = sub[["estimate", "ci_low", "ci_high"]].to_numpy(dtype=float)
        values = values[np.isfinite(values)]
        pos = values[values > 0]
        scale = "linear"
        if score and score.log and pos.size and (values >= 0).all():
            if pos.size == values.size:
                scale = "log"
            elif pos.max() / pos.min() > 100:  # exact zeros too (a converged table)
                scale = "symlog"
        ax.use_sticky_edges = False  # zero-width CIs at the data's edge stay visible
        for yi, g in zip(y, groups, strict=True):
            if g not in sub.index:
                continue
            r = sub.loc[g]
            c = colours[g]
            if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
                ax.barh(yi, max(r["ci_high"] - r["ci_low"], 0.0), left=r["ci_low"],
                        height=0.62, color=c, alpha=0.5)
            ax.plot([r["estimate"]] * 2, [yi - 0.31, yi + 0.31], color="black", lw=1.6)
            if m == "episodes_to_solve" and r.get("solved") is not None:
                # inside its own panel, at the right edge (not beside the next panel)
                ax.annotate(f"{int(r['solved'])}/{int(r['runs'])}", (1.0, yi),
                            xycoords=("axes fraction", "data"), xytext=(-3, 0),
                            textcoords="offset points", va="center", ha="right",
                            fontsize=7, color="0.3",
                            bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none"})
        if scale == "log":
            ax.set_xscale("log")
        elif scale == "symlog":  # linear from 0 to the smallest positive value, log beyond
            ax.set_xscale("symlog", linthresh=float(pos.min()), linscale=1.0)
            ax.set_xticks(symlog_ticks(float(pos.min()), float(pos.max())))
        ax.set_yticks(y, groups, fontsize=8)
        ax.set_ylim(-0.6, len(groups) - 0.4)
        better = "" if score is None else ("  (higher is better)" if score.higher_is_better
                                          else "  (lower is better)")
        title = (score.label if score else m) + better
        if m == "episodes_to_solve":
            title += "\nsolved/runs at the right; unsolved runs count as the budget"
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.1)
        if scale == "symlog":  # no negative decades left of zero
            ax.set_xlim(left=-0.3 * float(pos.min()))
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    name = "IQM" if statistic == "iqm" else statistic
    sep = "\n" if ncol == 1 else " "  # one panel is too narrow for the title on one line
    fig.suptitle(f"Final performance: {name} over seeds (tick){sep}and {stats.CONFIDENCE:.0%} "
                 "stratified bootstrap CI (bar)", fontsize=10)
    return fig


def symlog_ticks(lo: float, hi: float) -> list[float]:
    """0 and the decades from ``lo`` to ``hi``, without the decade next to 0 (the linear
    stretch [0, lo] is one decade wide: its labels would overlap)."""
    first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
    decades = [10.0 ** k for k in range(first, last + 1)]
    if len(decades) > 2 and decades[0] <= 10 * lo:
        decades = decades[1:]
    return [0.0, *decades]


__all__ = ["CURVES", "save", "curves_figure", "interval_figure", "GridLayout", "grid_layout",
           "value_figure", "q_star", "group_colours"]
