"""Value maps: V(s) = max_a Q(s, a) on a grid env's cells with greedy-policy arrows, beside
Q* from value iteration — the report's value figures, drawn on demand from the runs'
``q_table.npy`` (training logs no figure per run: docs/tracking.md says why).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global
state, no GUI backend, safe in workers); :func:`save` writes it as PNG. Grids: the qlab grid
world (fixed or random goal: one goal's slice is shown), FrozenLake and CliffWalking (their
own action orders).
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from qlab.core.envs.model import TabularModel
from qlab.core.oracle import legal_argmax, legal_max, value_iteration

DPI = 110


def save(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


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


def _value_axes(ax, q: np.ndarray, layout: GridLayout, acting: np.ndarray, legal: np.ndarray,
                optimal: np.ndarray | None, norm: Normalize, title: str, all_optimal: bool,
                goal: int | None = None) -> Any:
    """One heatmap: V = max_a Q over the legal actions (``legal`` (S, A)) on the cells,
    arrows for the greedy legal action (every optimal action when ``all_optimal``); with
    ``optimal`` (S, A) a wrong greedy arrow is red."""
    H, W = layout.height, layout.width
    states = layout.states(goal)
    v = legal_max(q[states], legal[states]).reshape(H, W)
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
            actions = [int(legal_argmax(q[s], legal[s]))]
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
    a line, with Q* (per distinct discount) in the first column. With per-state legal actions
    (``model.legal``) V, the greedy action and max |Q − Q*| are over the legal ones, as the
    training's evaluation takes them."""
    acting = model.acting_states
    legal = model.action_mask
    gammas = list(dict.fromkeys(float(g) for _, _, g in items))
    sols = {g: value_iteration(model, g) for g in gammas}

    def star(g: float) -> tuple[str, np.ndarray, np.ndarray, bool]:
        name = "Q* (value iteration)" if len(gammas) == 1 else f"Q* (value iteration), γ={g:g}"
        return (name + "\nall optimal actions", sols[g].q, sols[g].optimal, True)

    def learned(title: str, q: np.ndarray, g: float) -> tuple[str, np.ndarray, np.ndarray, bool]:
        sol = sols[float(g)]
        ok = sol.is_optimal(legal_argmax(q, legal))[acting]
        err = float(np.abs(q - sol.q)[acting][legal[acting]].max())
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
    vals = np.concatenate([legal_max(p[1][st], legal[st])[acting[st]] for p in panels])
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
            im = _value_axes(ax, p[1], layout, acting, legal, p[2], norm, p[0], p[3], goal)
    cax = fig.add_axes(((fw - cbar_w + 0.15) / fw, 0.5 - 0.3 * min(1.0, 3.0 / fh),
                        0.12 / fw, 0.6 * min(1.0, 3.0 / fh)))
    fig.colorbar(im, cax=cax, label="V(s) = max_a Q(s, a)")
    if note:
        fig.suptitle(note, fontsize=9, y=1 - 0.08 / fh, va="top")
    return fig
