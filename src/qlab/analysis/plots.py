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

import ast
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qlab.core.envs.model import TabularModel
from qlab.core.oracle import value_iteration

DPI = 110
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


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


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
    if episodes <= 1 or steps.size < 2:
        return 1
    spacing = float(np.median(np.diff(np.unique(steps))))
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

    policy = value_iteration(model, float(gamma)).q.argmax(axis=1)
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
                ax.annotate(f"{int(r['solved'])}/{int(r['runs'])}", (1.0, yi),
                            xycoords=("axes fraction", "data"), xytext=(3, 0),
                            textcoords="offset points", va="center", fontsize=7,
                            color="0.3")
        if scale == "log":
            ax.set_xscale("log")
        elif scale == "symlog":  # linear from 0 to the smallest positive value, log beyond
            ax.set_xscale("symlog", linthresh=float(pos.min()), linscale=1.0)
        ax.set_yticks(y, groups, fontsize=8)
        ax.set_ylim(-0.6, len(groups) - 0.4)
        better = "" if score is None else ("  (higher is better)" if score.higher_is_better
                                          else "  (lower is better)")
        title = (score.label if score else m) + better
        if m == "episodes_to_solve":
            title += "\nsolved/runs at right; unsolved runs count as the budget"
        ax.set_title(title, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        ax.margins(x=0.1)
        if scale == "symlog":  # no negative decades left of zero
            ax.set_xlim(left=-0.3 * float(pos.min()))
        ax.tick_params(axis="x", labelsize=8)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    name = "IQM" if statistic == "iqm" else statistic
    fig.suptitle(f"Final performance: {name} over seeds (tick) and {stats.CONFIDENCE:.0%} "
                 "stratified bootstrap CI (bar)", fontsize=10)
    return fig


# ------------------------------------------------------------------------------ value maps

@dataclass
class GridLayout:
    """How a finite env's states sit on a grid: cell (row, col) of state s, each action's
    (d_row, d_col), cells to label (goal, holes, cliff) and which goal slice to show."""

    height: int
    width: int
    moves: np.ndarray  # (A, 2) (d_row, d_col) per action
    labels: dict[int, str] = field(default_factory=dict)  # cell -> text
    n_goals: int = 1  # > 1: random-goal grid world, states goal * cells + cell
    name: str = ""

    @property
    def n_cells(self) -> int:
        return self.height * self.width

    def states(self, goal: int | None = None) -> np.ndarray:
        """The state index of every cell (row-major), for the shown goal."""
        cells = np.arange(self.n_cells)
        if self.n_goals == 1:
            return cells
        g = self.n_cells - 1 if goal is None else goal
        return g * self.n_cells + cells


GRIDDY_MOVES = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)])  # left, right, up, down
FROZENLAKE_MOVES = np.array([(0, -1), (1, 0), (0, 1), (-1, 0)])  # left, down, right, up
CLIFF_MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # up, right, down, left


def _kwargs(value: Any) -> dict:
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    if isinstance(value, str) and value.strip():
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return {}
        return dict(parsed) if isinstance(parsed, Mapping) else {}
    return {}


def _get(env: Any, key: str, default: Any = None) -> Any:
    if isinstance(env, Mapping):
        return env.get(key, default)
    return getattr(env, key, default)


def grid_layout(env: Any) -> GridLayout | None:
    """The grid of an env config (an object or mapping with ``id``, ``height``, ``width``,
    ``random_goal``, ``kwargs``), or None when its states are not cells of a grid."""
    env_id = str(_get(env, "id", ""))
    if env_id == "qlab/Griddy-v0":
        h, w = int(_get(env, "height", 4)), int(_get(env, "width", 4))
        random_goal = str(_get(env, "random_goal", False)).lower() == "true"
        if random_goal:  # the goal moves: _value_axes labels the shown goal's cell
            return GridLayout(h, w, GRIDDY_MOVES, {}, h * w, "griddy")
        return GridLayout(h, w, GRIDDY_MOVES, {h * w - 1: "G"}, 1, "griddy")
    if env_id.startswith(("FrozenLake", "CliffWalking")):
        import gymnasium

        e = gymnasium.make(env_id, **_kwargs(_get(env, "kwargs")))
        try:
            inner = e.unwrapped
            if env_id.startswith("FrozenLake"):
                desc = np.asarray(inner.desc).astype(str)
                labels = {i: c for i, c in enumerate(desc.ravel()) if c in "HG"}
                return GridLayout(desc.shape[0], desc.shape[1], FROZENLAKE_MOVES, labels,
                                  name="frozenlake")
            h, w = inner.shape
            labels = {(h - 1) * w + c: "C" for c in range(1, w - 1)}
            labels[h * w - 1] = "G"
            return GridLayout(h, w, CLIFF_MOVES, labels, name="cliffwalking")
        finally:
            e.close()
    return None


def q_star(model: TabularModel, gamma: float) -> np.ndarray:
    """Q* of ``model`` under ``gamma`` (value iteration)."""
    return value_iteration(model, float(gamma)).q


def _value_axes(ax, q: np.ndarray, layout: GridLayout, acting: np.ndarray,
                optimal: np.ndarray | None, norm: Normalize, title: str, all_optimal: bool,
                goal: int | None = None) -> Any:
    """One heatmap: V = max_a Q on the cells, arrows for the greedy action (every optimal
    action when ``all_optimal``); with ``optimal`` (S, A) a wrong greedy arrow is red."""
    H, W = layout.height, layout.width
    states = layout.states(goal)
    v = q[states].max(axis=1).reshape(H, W)
    act = acting[states].reshape(H, W)
    cmap = colormaps["YlGn"].with_extremes(bad="#e4e4e4")
    im = ax.imshow(np.ma.masked_array(v, ~act), cmap=cmap, norm=norm, interpolation="nearest")
    show_values = H * W <= 64
    font = 7 if max(H, W) <= 5 else 5.5
    shown_goal = None if layout.n_goals == 1 else (layout.n_cells - 1 if goal is None else goal)
    arrows: dict[bool, list] = {True: [], False: []}  # optimal? -> (x, y, dx, dy)
    for cell, s in enumerate(states):
        r, c = divmod(cell, W)
        text = "G" if cell == shown_goal else layout.labels.get(cell)
        if not act[r, c]:
            if text:
                ax.text(c, r, text, ha="center", va="center", fontsize=font + 4,
                        fontweight="bold", color="#333333")
            continue
        if all_optimal and optimal is not None:
            actions = np.flatnonzero(optimal[s])
        else:
            actions = [int(np.argmax(q[s]))]
        for a in actions:
            ok = optimal is None or bool(optimal[s, a])
            arrows[ok].append((c, r, *layout.moves[a][::-1]))
        dark = norm(v[r, c]) > 0.65
        if show_values:  # top-left corner, clear of the arrows
            ax.text(c - 0.45, r - 0.44, f"{v[r, c]:.2f}", ha="left", va="top", fontsize=font,
                    color="white" if dark else "#222222")
        if text:  # bottom-left corner (FrozenLake's start-adjacent labels, ...)
            ax.text(c - 0.45, r + 0.44, text, ha="left", va="bottom", fontsize=font,
                    color="white" if dark else "#333333")
    # One quiver per colour (fast); y grows downwards, so +d_row points down the screen.
    for ok, colour, width in ((True, "black", 0.9), (False, "#d62728", 1.5)):
        if arrows[ok]:
            x, y, dx, dy = np.asarray(arrows[ok], dtype=float).T
            ax.quiver(x, y, 0.3 * dx, 0.3 * dy, angles="xy", scale_units="xy", scale=1,
                      color=colour, width=width * 0.011 * 4 / max(W, 4), headwidth=4,
                      headlength=4, headaxislength=3.5, pivot="tail", zorder=3)
    ax.set_xlim(-0.5, W - 0.5)
    ax.set_ylim(H - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xticks(np.arange(-0.5, W), minor=True)
    ax.set_yticks(np.arange(-0.5, H), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="minor", length=0)
    ax.set_title(title, fontsize=8.5)
    return im


def value_figure(items: Sequence[tuple[str, np.ndarray, float]], model: TabularModel,
                 layout: GridLayout, goal: int | None = None,
                 rows: Sequence[str] | None = None, note: str | None = None) -> Figure:
    """Q* then one panel per ``(title, Q (S, A), gamma)``: V(s) = max_a Q(s, a) shaded on one
    shared scale, greedy arrows (red where not optimal), and in the title max |Q − Q*| and
    the share of optimal greedy actions over the states where the agent acts. Grey cells:
    no action is ever taken there (goal, holes, cliff). The Q* panel shows every optimal
    action. ``rows``: a row label per item (e.g. its agent) — each row's panels then share
    a line, with Q* (per distinct discount) in the first column."""
    acting = model.acting_states
    gammas = list(dict.fromkeys(float(g) for _, _, g in items))
    sols = {g: value_iteration(model, g) for g in gammas}

    def star(g: float) -> tuple[str, np.ndarray, np.ndarray, bool]:
        name = "Q* (value iteration)" if len(gammas) == 1 else f"Q* (value iteration), γ={g:g}"
        return (name + "\nall optimal actions", sols[g].q, sols[g].optimal, True)

    def learned(title: str, q: np.ndarray, g: float) -> tuple[str, np.ndarray, np.ndarray, bool]:
        sol = sols[float(g)]
        ok = sol.is_optimal(q.argmax(axis=1))[acting]
        err = float(np.abs(q - sol.q)[acting].max())
        return (f"{title}\nmax|Q−Q*| {err:.3g}, optimal {int(ok.sum())}/{ok.size}", q,
                sol.optimal, False)

    # grid[i][j]: a panel or None (blank)
    if rows is None:
        flat = [star(g) for g in gammas] + [learned(*it) for it in items]
        ncols = min(len(flat), 4)
        grid = [flat[i:i + ncols] for i in range(0, len(flat), ncols)]
    else:
        grid, shown = [], set()
        for r in dict.fromkeys(rows):
            members = [it for it, rr in zip(items, rows, strict=True) if rr == r]
            g = float(members[0][2])
            first = star(g) if g not in shown else None
            shown.add(g)
            grid.append([first] + [learned(*it) for it in members])
        ncols = max(len(row) for row in grid)
    nrows = len(grid)
    panels = [p for row in grid for p in row if p is not None]
    st = layout.states(goal)
    vals = np.concatenate([p[1][st].max(axis=1)[acting[st]] for p in panels])
    vals = vals[np.isfinite(vals)]  # a diverged replica's NaN/inf values are not shaded
    lo, hi = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
    norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    # A fixed layout (inches), much faster than a layout engine for these many texts.
    aspect = layout.width / layout.height
    pw = 2.5 if aspect <= 1.5 else 4.6  # panel width
    ph = pw / aspect
    title_h, gap, margin, cbar_w = 0.42, 0.15, 0.1, 1.0
    top = 0.3 if note else 0.0
    fw = margin + ncols * pw + (ncols - 1) * gap + cbar_w
    fh = top + nrows * (title_h + ph) + (nrows - 1) * 0.1 + margin
    fig = Figure(figsize=(fw, fh))
    im = None
    for i, row in enumerate(grid):
        for j, p in enumerate(row):
            if p is None:
                continue
            left = margin + j * (pw + gap)
            bottom = fh - top - (i + 1) * (title_h + ph) - i * 0.1
            ax = fig.add_axes((left / fw, bottom / fh, pw / fw, ph / fh))
            im = _value_axes(ax, p[1], layout, acting, p[2], norm, p[0], p[3], goal)
    cax = fig.add_axes(((fw - cbar_w + 0.15) / fw, 0.5 - 0.3 * min(1.0, 3.0 / fh),
                        0.12 / fw, 0.6 * min(1.0, 3.0 / fh)))
    fig.colorbar(im, cax=cax, label="V(s) = max_a Q(s, a)")
    if note:
        fig.suptitle(note, fontsize=9, y=1 - 0.08 / fh, va="top")
    return fig


def value_heatmap_writer(env: Any, model: TabularModel | None, q: np.ndarray,
                         gamma: np.ndarray, titles: Sequence[str] | None = None
                         ) -> Callable[[int, Path], None] | None:
    """For :meth:`qlab.tracking.Tracker.log_replica_files`: ``write(k, dir)`` saves replica
    k's ``value_heatmap.png`` (its V and greedy policy beside Q*). None when the env is not a
    grid or has no model. ``q`` (R, S, A) and ``gamma`` (R,) are read when called."""
    if model is None:
        return None
    layout = grid_layout(env)
    if layout is None:
        return None

    def write(k: int, directory: Path) -> None:
        title = titles[k] if titles is not None else f"replica {k}"
        fig = value_figure([(title, np.asarray(q[k]), float(np.asarray(gamma)[k]))], model,
                           layout)
        save(fig, Path(directory) / "value_heatmap.png")

    return write


__all__ = ["CURVES", "save", "curves_figure", "interval_figure", "GridLayout", "grid_layout",
           "value_figure", "value_heatmap_writer", "q_star", "group_colours"]
