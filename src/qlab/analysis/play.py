"""``qlab-play``: watch a trained agent — the source notebook's ``visualise_agent``, from MLflow.

It loads a run's config and learned agent (``q_table.npy``, or ``q_network.pt`` for DQN),
then plays greedy episodes: rendered as text in the terminal (the grid world's and
toy-text envs' ``ansi`` mode; with the agent's V(s) in every cell), or saved as an animated
GIF (``rgb_array`` frames; the grid world's cells shaded by V(s)).

    qlab-play 8c2aa17bfdde46338fb4f4a1ee468f56                   # 3 episodes in the terminal
    qlab-play last                                                # the latest trained run
    qlab-play 8c2aa17bfdde46338fb4f4a1ee468f56 --gif agent.gif --episodes 5

On the grid world each cell shows V(s) = max_a Q(s, a) and the greedy action as an arrow;
the agent's cell is bracketed, the goal is ``G`` (a terminal cell has no value to show).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qlab.core.errors import QlabError, exit_status, one_line
from qlab.core.oracle import legal_argmax, legal_max

PROG = "qlab-play"
GIF_MIN_SIDE = 256  # frames are scaled up (nearest) to at least this many pixels
GIF_CELL_PX = 96  # the grid world's GIF: pixels per cell (room for a value and an arrow)
LAST = "last"  # qlab-play last: the latest finished training run
ARROWS = ("←", "→", "↑", "↓")  # the grid world's actions: left, right, up, down


class PlayError(QlabError, RuntimeError):
    """A one-line reason the agent cannot be played."""


def make_env(env_cfg: Any, render_mode: str | None) -> Any:
    """The gymnasium env a run trained on, with ``render_mode``."""
    import gymnasium

    import qlab.core.envs  # noqa: F401  (registers qlab/Griddy-v0)
    from qlab.app.value_maps import _kwargs

    env_id = str(env_cfg.id)
    max_steps = env_cfg.get("max_steps") if hasattr(env_cfg, "get") else None
    if env_id == "qlab/Griddy-v0":
        mask_edges = env_cfg.get("mask_edges", False) if hasattr(env_cfg, "get") else False
        return gymnasium.make(env_id, height=int(env_cfg.height), width=int(env_cfg.width),
                              random_goal=bool(env_cfg.random_goal),
                              max_steps=None if max_steps is None else int(max_steps),
                              mask_edges=bool(mask_edges), render_mode=render_mode,
                              disable_env_checker=True)
    extra = _kwargs(env_cfg.get("kwargs") if hasattr(env_cfg, "get") else None)
    if max_steps is not None:
        extra["max_episode_steps"] = int(max_steps)
    return gymnasium.make(env_id, render_mode=render_mode, **extra)


def load_policy(client: Any, run_id: str, directory: Path
                ) -> tuple[Any, Callable[[Any, dict], int], np.ndarray | None]:
    """(env config, greedy policy(obs, info) -> action, Q of every state or None)."""
    from qlab.analysis.runs import agent_file, q_on_states, run_config, state_observations

    cfg = run_config(client, run_id, directory)
    if "env" not in cfg or "id" not in cfg.env:
        raise PlayError(f"run {run_id} has no env config (not a qlab training run)")
    path = agent_file(client, run_id, directory)
    table = state_observations(cfg.env)

    def state_of(obs: Any, info: dict) -> int:
        if "state" in info:  # the grid world reports its tabular state
            return int(info["state"])
        return int(np.asarray(obs).reshape(-1)[0])

    if path.suffix == ".npy" or table is not None:
        q = q_on_states(path, cfg.env)

        def greedy(obs: Any, info: dict) -> int:  # over the legal actions, if the env says
            row = q[state_of(obs, info)]
            legal = info.get("action_mask")
            return int(np.argmax(row) if legal is None else legal_argmax(row, legal != 0))

        return cfg, greedy, q
    # A Q-network on an env without a state table (CartPole): act on the observation.
    import torch

    from qlab.core.agents.dqn import load_q_network

    net = load_q_network(path)

    @torch.no_grad()
    def policy(obs: Any, info: dict) -> int:
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1))
        return int(net(x).argmax(dim=1).item())

    return cfg, policy, None


# Action names of the toy-text envs (gymnasium's docs), by env id prefix.
TOY_TEXT_ACTIONS = {"FrozenLake": ("left", "down", "right", "up"),
                    "CliffWalking": ("up", "right", "down", "left"),
                    "Taxi": ("south", "north", "east", "west", "pickup", "dropoff")}


def _action_name(env: Any, a: int) -> str:
    from qlab.core.envs.griddy import ACTION_NAMES, GriddyEnv

    if isinstance(env.unwrapped, GriddyEnv):
        return ACTION_NAMES[a]
    env_id = env.spec.id if env.spec is not None else ""
    for prefix, names in TOY_TEXT_ACTIONS.items():
        if env_id.startswith(prefix) and 0 <= a < len(names):
            return names[a]
    return str(a)


def grid_view(inner: Any, q: np.ndarray | None, values: bool = True
              ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(values, greedy actions) of the grid world's cells for its current goal, each
    (height, width), over each cell's legal actions; None where unknown. The goal, a
    terminal cell, has neither (NaN, -1)."""
    if q is None or not values:
        return None, None
    n = inner.n_cells
    g = inner.goal_cell
    cells = slice(g * n, (g + 1) * n) if inner.random_goal else slice(0, n)
    rows, legal = q[cells], inner.model.action_mask[cells]
    v = legal_max(rows, legal).astype(float)
    a = legal_argmax(rows, legal)
    v[g], a[g] = np.nan, -1
    return v.reshape(inner.height, inner.width), a.reshape(inner.height, inner.width)


def grid_text(inner: Any, q: np.ndarray | None, values: bool = True) -> str:
    """The grid world as a board: each cell its V(s) and greedy arrow, the agent's cell in
    brackets, the goal ``G``."""
    v, a = grid_view(inner, q, values)
    agent, goal = inner.agent_cell, inner.goal_cell
    width = 7 if v is not None else 3
    rule = "+" + "+".join("-" * width for _ in range(inner.width)) + "+"
    lines = [rule]
    for r in range(inner.height):
        cells = []
        for c in range(inner.width):
            i = r * inner.width + c
            if i == goal:
                body = "G"
            elif v is not None:
                body = f"{v[r, c]:.2f}{ARROWS[a[r, c]]}"
            else:
                body = "."
            if i == agent:
                body = f"[{body}]"
            cells.append(body.center(width))
        lines += ["|" + "|".join(cells) + "|", rule]
    return "\n".join(lines)


def grid_image(inner: Any, q: np.ndarray | None, caption: str, values: bool = True
               ) -> np.ndarray:
    """The grid world as a GIF frame: cells shaded by V(s) with the value and the greedy
    arrow written in, the goal green with ``G``, the agent a blue disk; a caption above."""
    from PIL import Image, ImageDraw

    v, a = grid_view(inner, q, values)
    p = GIF_CELL_PX
    bar = 28
    img = Image.new("RGB", (inner.width * p, inner.height * p + bar), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(15), _font(20)
    finite = v[np.isfinite(v)] if v is not None else np.array([])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    for r in range(inner.height):
        for c in range(inner.width):
            i = r * inner.width + c
            x0, y0 = c * p, bar + r * p
            fill = (255, 255, 255)
            if i == inner.goal_cell:
                fill = (120, 200, 120)
            elif v is not None and np.isfinite(v[r, c]):
                t = 0.0 if hi == lo else (v[r, c] - lo) / (hi - lo)
                fill = tuple(int(255 - t * (255 - k)) for k in (255, 200, 120))
            draw.rectangle([x0, y0, x0 + p - 1, y0 + p - 1], fill=fill, outline=(90, 90, 90))
            if i == inner.agent_cell:
                m = p // 5
                draw.ellipse([x0 + m, y0 + m, x0 + p - m, y0 + p - m], outline=(30, 90, 200),
                             width=5)
            if i == inner.goal_cell:
                draw.text((x0 + p / 2, y0 + p / 2), "G", fill=(0, 70, 0), font=small,
                          anchor="mm")
            elif v is not None:
                draw.text((x0 + p / 2, y0 + p * 0.36), f"{v[r, c]:.2f}", fill=(20, 20, 20),
                          font=font, anchor="mm")
                _arrow(draw, x0 + p / 2, y0 + p * 0.68, int(a[r, c]), p * 0.16)
    draw.text((6, 6), caption, fill=(30, 30, 30), font=_font(13))
    return np.asarray(img)


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def _arrow(draw: Any, x: float, y: float, action: int, r: float) -> None:
    """A greedy-action arrow centred at (x, y): 0 left, 1 right, 2 up, 3 down."""
    dx, dy = ((-1, 0), (1, 0), (0, -1), (0, 1))[action]
    x1, y1, x2, y2 = x - dx * r, y - dy * r, x + dx * r, y + dy * r
    draw.line([x1, y1, x2, y2], fill=(40, 40, 40), width=3)
    px, py = -dy, dx  # perpendicular
    head = [(x2 + dx * 4, y2 + dy * 4), (x2 - dx * 6 + px * 6, y2 - dy * 6 + py * 6),
            (x2 - dx * 6 - px * 6, y2 - dy * 6 - py * 6)]
    draw.polygon(head, fill=(40, 40, 40))


def _gif_frame(frame: np.ndarray, caption: str) -> np.ndarray:
    """The rgb frame scaled up (nearest) to at least :data:`GIF_MIN_SIDE` pixels, under a
    white caption bar."""
    from PIL import Image, ImageDraw, ImageFont

    k = max(1, int(np.ceil(GIF_MIN_SIDE / min(frame.shape[:2]))))
    big = np.repeat(np.repeat(np.asarray(frame, dtype=np.uint8), k, axis=0), k, axis=1)
    bar = 22
    img = Image.new("RGB", (big.shape[1], big.shape[0] + bar), "white")
    img.paste(Image.fromarray(big), (0, bar))
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(img).text((6, 4), caption, fill=(30, 30, 30), font=font)
    return np.asarray(img)


def play(client: Any, run_id: str, episodes: int = 3, gif: Path | None = None, seed: int = 0,
         fps: float = 4.0, max_steps: int = 100, values: bool = True,
         out=None, header: str = "") -> list[tuple[int, float]]:
    """Play ``episodes`` greedy episodes of run ``run_id``; returns (steps, return) of each.
    Text frames go to ``out`` (default stdout; none with ``gif``) under ``header``; the GIF
    to ``gif``."""
    out = sys.stdout if out is None else out
    with tempfile.TemporaryDirectory() as tmp:
        cfg, policy, q = load_policy(client, run_id, Path(tmp))
    mode = "rgb_array" if gif is not None else "ansi"
    try:
        probe = make_env(cfg.env, None)
        modes = probe.metadata.get("render_modes") or []
        probe.close()
        if mode not in modes and mode == "ansi":
            mode = None  # no text render (CartPole): print the observations instead
        elif mode not in modes:
            raise PlayError(f"env {cfg.env.id} cannot render {mode!r}")
        env = make_env(cfg.env, mode)
    except PlayError:
        raise
    except Exception as exc:  # unknown id, missing extra, bad kwargs
        raise PlayError(f"cannot make env {cfg.env.id} with render_mode={mode}: "
                        f"{str(exc).splitlines()[0]}") from exc
    inner = env.unwrapped
    if values and q is not None and hasattr(inner, "set_values"):
        inner.set_values(q.max(axis=1))
    live = gif is None and out.isatty() and fps > 0
    frames: list[np.ndarray] = []
    results = []

    from qlab.core.envs.griddy import GriddyEnv

    grid = isinstance(inner, GriddyEnv)
    if header:
        print(header, file=out if gif is None else sys.stderr)

    def show(text: str, frame: Any) -> None:
        if gif is not None:
            frames.append(grid_image(inner, q, text, values) if grid
                          else _gif_frame(frame, text))
            return
        if grid:
            frame = grid_text(inner, q, values)
        if live:
            out.write("\x1b[H\x1b[2J" + (f"{header}\n" if header else ""))
        out.write(f"{text}\n{frame}\n")
        out.flush()
        if live:
            time.sleep(1.0 / fps)

    try:
        for i in range(episodes):
            obs, info = env.reset(seed=seed + i)
            show(f"episode {i + 1}/{episodes}: start", _render(env, obs))
            total, t, done = 0.0, 0, False
            while not done and t < max_steps:
                a = policy(obs, info)
                obs, r, term, trunc, info = env.step(a)
                total += float(r)
                t += 1
                done = term or trunc
                show(f"episode {i + 1}/{episodes}, step {t}: {_action_name(env, a)}, "
                     f"reward {float(r):g}", _render(env, obs))
            if gif is not None:  # hold the last frame of each episode for a moment
                frames.extend([frames[-1]] * max(1, int(fps)))
            end = "" if done else f" (stopped at --max-steps {max_steps})"
            print(f"episode {i + 1}/{episodes}: finished after {t} steps, return {total:g}{end}",
                  file=out if gif is None else sys.stderr)
            results.append((t, total))
    finally:
        env.close()
    if gif is not None:
        from PIL import Image

        gif.parent.mkdir(parents=True, exist_ok=True)
        images = [Image.fromarray(f) for f in frames]
        images[0].save(gif, save_all=True, append_images=images[1:],
                       duration=max(20, int(1000 / max(fps, 0.1))), loop=0)
    return results


def _render(env: Any, obs: Any = None) -> Any:
    import gymnasium

    if env.render_mode is None:  # no text render: the observation itself
        return "  obs " + np.array2string(np.asarray(obs, dtype=float), precision=3,
                                          suppress_small=True)
    try:
        frame = env.render()
    except gymnasium.error.DependencyNotInstalled as exc:  # pygame, for rgb_array
        raise PlayError(f"cannot render {env.spec.id if env.spec else 'this env'} as "
                        f"{env.render_mode}: {str(exc).splitlines()[0]}") from exc
    return frame.strip("\n") if isinstance(frame, str) else frame


def latest_run(client: Any, uri: str) -> Any:
    """The latest FINISHED training run (one replica with an agent) in any experiment."""
    from qlab.analysis.runs import _all_experiment_ids, redact

    ids = _all_experiment_ids(client)
    runs = client.search_runs(ids, "attributes.status = 'FINISHED' and tags.agent != ''",
                              order_by=["attributes.start_time DESC"],
                              max_results=1) if ids else []
    if not runs:
        raise PlayError(f"no finished training run in {redact(uri)}; train one first "
                        "(make train), or name a run id")
    return runs[0]


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; errors are one line on stderr and exit code 1."""
    p = argparse.ArgumentParser(prog=PROG, description="Replay a trained agent greedily from "
                                "its MLflow run, in the terminal or as a GIF.")
    p.add_argument("run_id", metavar="RUN_ID",
                   help="an MLflow run of one trained replica, or 'last' (the latest)")
    p.add_argument("--episodes", type=int, default=3, help="episodes to play (default: 3)")
    p.add_argument("--gif", type=Path, help="save the episodes as an animated GIF here")
    p.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "mlflow.db in the working directory)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first episode's start")
    p.add_argument("--fps", type=float, default=4.0, help="frames per second (default: 4)")
    p.add_argument("--max-steps", type=int, default=100,
                   help="stop an episode after this many steps (default: 100)")
    p.add_argument("--no-values", action="store_true", help="do not show the agent's V(s)")
    args = p.parse_args(argv)
    if args.episodes < 1:
        p.error(f"--episodes {args.episodes}: must be >= 1")
    if args.max_steps < 1:
        p.error(f"--max-steps {args.max_steps}: must be >= 1")
    if args.fps <= 0:
        p.error(f"--fps {args.fps}: must be > 0")
    return exit_status(PROG, lambda: run_play(args))


def run_play(args: Any) -> int:
    """Play the run the command line names (:func:`play`)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from qlab import tracking
    from qlab.analysis.runs import redact

    uri = args.uri or tracking.default_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        if args.run_id == LAST:
            run = latest_run(client, uri)
        else:
            try:
                run = client.get_run(args.run_id)
            except MlflowException as exc:
                raise PlayError(f"no run {args.run_id!r} in {redact(uri)}") from exc
        tags = run.data.tags
        header = (f"{PROG}: run {run.info.run_id} ({run.info.run_name}): "
                  f"{tags.get('agent', '?')} on {tags.get('env', '?')}")
        play(client, run.info.run_id, episodes=args.episodes, gif=args.gif, seed=args.seed,
             fps=args.fps, max_steps=args.max_steps, values=not args.no_values, header=header)
    except (MlflowException, OSError) as exc:
        message = one_line(exc)
        if "mlflow-artifacts" in str(exc):  # artifacts a tracking server keeps
            raise PlayError(f"the run's artifacts are served by the MLflow server that logged "
                            f"it (mlflow-artifacts:/); pass --uri http://HOST:PORT of that "
                            f"server (store: {redact(uri)})") from exc
        raise PlayError(message) from exc
    if args.gif is not None:
        print(f"{PROG}: wrote {args.gif}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
