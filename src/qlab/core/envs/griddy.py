"""GriddyEnv, the source notebook's grid world, as a gymnasium env and as an exact model.

A ``height`` x ``width`` grid; actions 0 = left, 1 = right, 2 = up, 3 = down; a move off the
grid stays put. The goal is the bottom-right cell (or a random cell with ``random_goal``);
the agent starts in a uniformly random non-goal cell. Reward 1 on the step that reaches the
goal (which terminates), else 0. Episodes are truncated after ``max_steps`` steps.

With ``mask_edges`` a move off the grid is not offered: each state's legal actions are the
moves that stay on the grid (the model's ``legal``, and ``info["action_mask"]``, which the
env always returns, gymnasium's way).

State index (what tabular agents use): ``agent`` = row * width + col with a fixed goal, and
``goal * (height * width) + agent`` with a random goal.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qlab.core.checks import check_range, fail
from qlab.core.envs.model import TabularModel
from qlab.core.envs.registry import EnvConfig, EnvSpec, register

GRIDDY_ID = "qlab/Griddy-v0"

# (d_row, d_col) per action: left, right, up (north), down (south).
MOVES = np.array([(0, -1), (0, 1), (-1, 0), (1, 0)])
ACTION_NAMES = ("left", "right", "up", "down")
GOAL, WALL, AGENT = 0, 1, 2  # observation channels


def _check_size(height: int, width: int) -> None:
    if height < 1 or width < 1 or height * width < 2:
        raise ValueError(f"grid of {height}x{width}: needs height, width >= 1 and at least 2 cells")


def griddy_model(height: int = 4, width: int = 4, random_goal: bool = False,
                 max_steps: int | None = 1000, mask_edges: bool = False) -> TabularModel:
    """The grid world's exact transition table (deterministic, K = 1 outcome); with
    ``mask_edges`` the moves off the grid are illegal (``legal``)."""
    _check_size(height, width)
    n = height * width
    rows, cols = np.divmod(np.arange(n), width)
    r2 = np.clip(rows[:, None] + MOVES[None, :, 0], 0, height - 1)
    c2 = np.clip(cols[:, None] + MOVES[None, :, 1], 0, width - 1)
    cell_next = r2 * width + c2  # (n, 4): where each move leads from each cell
    goals = np.arange(n) if random_goal else np.array([n - 1])
    G = len(goals)
    S = G * n
    nxt = np.empty((S, 4), dtype=np.int64)
    term = np.empty((S, 4), dtype=bool)
    initial = np.zeros(S)
    for gi, goal in enumerate(goals):
        base = gi * n
        reached = cell_next == goal
        nxt[base:base + n] = base + cell_next
        term[base:base + n] = reached
        # The goal cell itself is never acted in: make it absorbing.
        nxt[base + goal] = base + goal
        term[base + goal] = True
        starts = np.arange(n) != goal
        initial[base:base + n][starts] = 1.0
    initial /= initial.sum()
    reward = term.astype(np.float64)
    # No reward for the goal's own absorbing self-loop (it is never taken).
    for gi, goal in enumerate(goals):
        reward[gi * n + goal] = 0.0
    legal = None
    if mask_edges:
        on_grid = ((rows[:, None] + MOVES[None, :, 0] == r2)
                   & (cols[:, None] + MOVES[None, :, 1] == c2))  # (n, 4)
        legal = np.tile(on_grid, (G, 1))
    return TabularModel(prob=np.ones((S, 4, 1)), next_state=nxt[..., None],
                        reward=reward[..., None], terminal=term[..., None],
                        initial=initial, max_steps=max_steps, legal=legal)


def griddy_observations(height: int = 4, width: int = 4, random_goal: bool = False) -> np.ndarray:
    """(S, 3, height, width) binary observation of every state index."""
    n = height * width
    goals = np.arange(n) if random_goal else np.array([n - 1])
    obs = np.zeros((len(goals) * n, 3, height, width), dtype=np.int8)
    for gi, goal in enumerate(goals):
        for cell in range(n):
            s = gi * n + cell
            obs[s, GOAL].flat[goal] = 1
            obs[s, AGENT].flat[cell] = 1
    return obs


def state_index(obs: np.ndarray, random_goal: bool = False) -> int:
    """The tabular state of an observation: the agent's flat cell (and the goal's, if random)."""
    n = obs.shape[1] * obs.shape[2]
    agent = int(np.argmax(obs[AGENT].reshape(-1)))
    if not random_goal:
        return agent
    return int(np.argmax(obs[GOAL].reshape(-1))) * n + agent


# --------------------------------------------------------------------------------------------
# The gymnasium env, stepping through the exact model above.
# --------------------------------------------------------------------------------------------

CELL_PX = 32  # rgb_array pixels per cell
_WHITE = np.array([255, 255, 255], dtype=np.float64)
_DARK_GREEN = np.array([0, 90, 30], dtype=np.float64)  # shade of the highest value
_GOAL_RGB = np.array([40, 200, 70], dtype=np.uint8)
_LINE_RGB = np.array([60, 60, 60], dtype=np.uint8)
_AGENT_RGB = np.array([40, 80, 230], dtype=np.uint8)  # blue; red once on the goal
_AGENT_DONE_RGB = np.array([220, 40, 40], dtype=np.uint8)


def _shade(values: np.ndarray) -> np.ndarray:
    """(H, W) values -> (H, W, 3) float colours, white (lowest) to dark green (highest)."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float64))
    lo, hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    t = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    return _WHITE + t[..., None] * (_DARK_GREEN - _WHITE)


class GriddyEnv(gym.Env):
    """The source notebook's grid world as a gymnasium env, stepped through :func:`griddy_model`.

    ``self.state`` is the tabular state index (see the module docstring); observations are
    the matching rows of :func:`griddy_observations`. ``set_values`` shades the cells in
    renders by a value table.
    """

    render_modes = ["ansi", "rgb_array"]
    metadata = {"render_modes": render_modes, "render_fps": 4}

    def __init__(self, height: int = 4, width: int = 4, random_goal: bool = False,
                 max_steps: int | None = 1000, render_mode: str | None = None,
                 mask_edges: bool = False) -> None:
        for name, val in (("height", height), ("width", width)):
            if isinstance(val, bool) or not isinstance(val, int | np.integer) or val < 1:
                raise ValueError(f"GriddyEnv {name}={val!r}: must be an int >= 1")
        if height * width < 2:
            raise ValueError(f"GriddyEnv height={height}, width={width}: the grid needs at least "
                             "2 cells")
        if max_steps is not None and (isinstance(max_steps, bool)
                                      or not isinstance(max_steps, int | np.integer)
                                      or max_steps < 1):
            raise ValueError(f"GriddyEnv max_steps={max_steps!r}: must be an int >= 1 or None")
        if render_mode is not None and render_mode not in self.render_modes:
            raise ValueError(f"GriddyEnv render_mode={render_mode!r}: must be None or one of "
                             f"{self.render_modes}")
        self.height, self.width = int(height), int(width)
        self.n_cells = self.height * self.width
        self.random_goal = bool(random_goal)
        self.max_steps = None if max_steps is None else int(max_steps)
        self.render_mode = render_mode
        self.model = griddy_model(self.height, self.width, self.random_goal, self.max_steps,
                                  bool(mask_edges))
        self._masks = self.model.action_mask.astype(np.int8)
        self._obs = griddy_observations(self.height, self.width, self.random_goal)
        self.observation_space = spaces.Box(0, 1, (3, self.height, self.width), np.int8)
        self.action_space = spaces.Discrete(len(MOVES))
        self.state: int | None = None  # None until reset
        self.elapsed = 0
        self._values: np.ndarray | None = None

    # ---- cells of the current state ----
    @property
    def agent_cell(self) -> int:
        """Flat cell index of the agent."""
        return self._require_state() % self.n_cells

    @property
    def goal_cell(self) -> int:
        """Flat cell index of the goal."""
        return self._require_state() // self.n_cells if self.random_goal else self.n_cells - 1

    def _require_state(self) -> int:
        if self.state is None:
            raise RuntimeError("GriddyEnv: call reset() before step() or render()")
        return self.state

    # ---- gymnasium API ----
    def reset(self, *, seed: int | None = None,
              options: dict | None = None) -> tuple[np.ndarray, dict]:
        """Start in a uniformly random non-goal cell (random goal cell with ``random_goal``).

        ``options={"state": s}`` starts in state index ``s`` instead (any valid start state).
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"state"}
        if unknown:
            raise ValueError(f"GriddyEnv.reset options {sorted(unknown)}: only 'state' is allowed")
        if "state" in options:
            s = int(options["state"])
            if not 0 <= s < self.model.n_states or self.model.initial[s] == 0:
                raise ValueError(f"GriddyEnv.reset options state={s}: not a start state "
                                 "(the agent may not start on the goal)")
        else:
            s = int(self.np_random.choice(self.model.n_states, p=self.model.initial))
        self.state, self.elapsed = s, 0
        return self._obs[s].copy(), {"state": s, "action_mask": self._masks[s].copy()}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """One move: looks the transition up in ``self.model``."""
        s = self._require_state()
        a = int(action)
        if not 0 <= a < self.model.n_actions:
            raise ValueError(f"GriddyEnv.step action={action!r}: must be in 0..3")
        if not self._masks[s, a]:
            raise ValueError(f"GriddyEnv.step action={action!r}: not legal in state {s} "
                             f"(legal: {np.flatnonzero(self._masks[s]).tolist()})")
        m = self.model
        k = 0 if m.deterministic else int(self.np_random.choice(m.prob.shape[2], p=m.prob[s, a]))
        s2 = int(m.next_state[s, a, k])
        reward = float(m.reward[s, a, k])
        terminated = bool(m.terminal[s, a, k])
        self.elapsed += 1
        truncated = (self.max_steps is not None and self.elapsed >= self.max_steps
                     and not terminated)
        self.state = s2
        return (self._obs[s2].copy(), reward, terminated, bool(truncated),
                {"state": s2, "action_mask": self._masks[s2].copy()})

    # ---- value shading ----
    @property
    def values(self) -> np.ndarray | None:
        """Per-cell values shading the renders: (height, width), (S,) for the fixed goal, or
        (S,) with ``random_goal`` (the slice of the current goal is shown); None clears."""
        return self._values

    @values.setter
    def values(self, values: np.ndarray | None) -> None:
        self.set_values(values)

    def set_values(self, values: np.ndarray | None) -> None:
        """Set (or clear with None) the value table shading the cells; see :attr:`values`."""
        if values is None:
            self._values = None
            return
        v = np.asarray(values, dtype=np.float64)
        allowed = {(self.height, self.width), (self.n_cells,), (self.model.n_states,)}
        if v.shape not in allowed:
            raise ValueError(f"GriddyEnv values of shape {v.shape}: must be one of "
                             f"{sorted(allowed)}")
        self._values = v.copy()

    def _cell_values(self) -> np.ndarray | None:
        """(height, width) values of the current goal's cells, or None."""
        v = self._values
        if v is None:
            return None
        if v.shape == (self.model.n_states,) and self.random_goal:
            g = self.goal_cell
            v = v[g * self.n_cells:(g + 1) * self.n_cells]
        return v.reshape(self.height, self.width)

    # ---- rendering ----
    def render(self) -> str | np.ndarray | None:
        """'ansi': the grid as text; 'rgb_array': an (H*32, W*32, 3) uint8 picture."""
        if self.render_mode is None:
            gym.logger.warn("GriddyEnv.render() called without a render_mode; pass "
                            f"render_mode in {self.render_modes} to the constructor")
            return None
        if self.render_mode == "ansi":
            return self._render_ansi()
        return self._render_rgb()

    def _render_ansi(self) -> str:
        """'A' agent, 'G' goal, '.' other cells; with values, each cell is its value + marker."""
        agent, goal = self.agent_cell, self.goal_cell
        vals = self._cell_values()
        lines = []
        for r in range(self.height):
            cells = []
            for c in range(self.width):
                i = r * self.width + c
                mark = "A" if i == agent else "G" if i == goal else None
                if vals is None:
                    cells.append(mark or ".")
                else:  # value, then the marker (blank for a plain cell)
                    cells.append(f"{vals[r, c]:6.2f}{mark or ' '}")
            lines.append(" ".join(cells))
        return "\n".join(lines) + "\n"

    def _render_rgb(self) -> np.ndarray:
        agent, goal = self.agent_cell, self.goal_cell
        p = CELL_PX
        vals = self._cell_values()
        if vals is None:
            colours = np.broadcast_to(_WHITE, (self.height, self.width, 3))
        else:
            colours = _shade(vals)
        img = np.repeat(np.repeat(np.round(colours).astype(np.uint8), p, 0), p, 1)
        gr, gc = divmod(goal, self.width)
        img[gr * p:(gr + 1) * p, gc * p:(gc + 1) * p] = _GOAL_RGB
        # Grid lines on every cell's top/left edge, plus the outer bottom/right edges.
        img[::p, :] = _LINE_RGB
        img[:, ::p] = _LINE_RGB
        img[-1, :] = _LINE_RGB
        img[:, -1] = _LINE_RGB
        ar, ac = divmod(agent, self.width)
        yy, xx = np.mgrid[0:p, 0:p] + 0.5
        disk = (yy - p / 2) ** 2 + (xx - p / 2) ** 2 <= (0.35 * p) ** 2
        cell = img[ar * p:(ar + 1) * p, ac * p:(ac + 1) * p]
        cell[disk] = _AGENT_DONE_RGB if agent == goal else _AGENT_RGB
        return img


# --------------------------------------------------------------------------------------------
# Registration: gymnasium id and qlab's env spec.
# --------------------------------------------------------------------------------------------

def _check_config(cfg: EnvConfig) -> None:
    check_range("env.height", cfg.height, 1)
    check_range("env.width", cfg.width, 1)
    if cfg.height * cfg.width < 2:
        fail("env.height", cfg.height, f"a {cfg.height}x{cfg.width} grid has fewer than 2 "
             "cells; height * width must be >= 2")


def _observations(cfg: EnvConfig) -> np.ndarray:
    obs = griddy_observations(cfg.height, cfg.width, cfg.random_goal)
    return obs.reshape(obs.shape[0], -1).astype(np.float32)


if GRIDDY_ID not in gym.registry:
    gym.register(id=GRIDDY_ID, entry_point="qlab.core.envs.griddy:GriddyEnv")
def _model(cfg: EnvConfig) -> TabularModel:
    """The model of an env config (one recorded before ``mask_edges`` existed has none)."""
    return griddy_model(cfg.height, cfg.width, cfg.random_goal, cfg.max_steps,
                        bool(getattr(cfg, "mask_edges", False)))


def _dims(cfg: EnvConfig) -> tuple[int, int, int]:
    """(states, actions, observation size) of a grid config: what its tables will hold."""
    cells = int(cfg.height) * int(cfg.width)
    return cells * (cells if cfg.random_goal else 1), len(MOVES), 3 * cells


register(EnvSpec(GRIDDY_ID, _model, _observations, _check_config, _dims))
