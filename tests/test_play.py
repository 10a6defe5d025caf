"""qlab-play: greedy replays of trained agents from their MLflow artifacts, as terminal text
and as a GIF; a tabular agent and a DQN (whose network is read back from q_network.pt)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image, ImageSequence

from qlab.analysis import play
from tests.helpers import qlab_train, runs_of

EXPERIMENT = "play"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sqlite_store) -> tuple[str, dict[str, str], str]:
    """(uri, {agent: run id}, parent run id) of one short tabular_q and one DQN run."""
    root = tmp_path_factory.mktemp("play")
    uri = sqlite_store(root)
    out = qlab_train(["-m", "agent=tabular_q,dqn", "episodes=40", "eval_every=20",
                      f"experiment_name={EXPERIMENT}", f"tracking.uri={uri}"], uri, root)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = runs_of(uri, EXPERIMENT)
    parent = next(r.info.run_id for r in runs if r.data.tags.get("qlab.role") == "sweep")
    ids = {r.data.tags["agent"]: r.info.run_id for r in runs if "agent" in r.data.tags}
    return uri, ids, parent


def test_terminal_rendering(trained, capsys) -> None:
    """A header naming run, agent and env; one episode numbering; a board whose cells show
    V(s) and the greedy arrow, the agent's cell bracketed and the goal kept (issue 17)."""
    uri, ids, _ = trained
    assert play.main([ids["tabular_q"], "--uri", uri, "--episodes", "2"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"qlab-play: run {ids['tabular_q']} (tabular_q-griddy-seed0): "
                           "tabular_q on griddy\n")
    assert text.count("episode 1/2: start") == 1 and "episode 2/2: start" in text
    assert "episode 1/2: finished after" in text and "episode 2/2: finished after" in text
    assert "Episode" not in text  # no second numbering
    # The board: 4 rows of 4 cells between rules; the goal is G in every frame, the agent's
    # cell bracketed; the terminal goal shows no value.
    frame = text.split("episode 1/2: start\n", 1)[1].splitlines()[:9]
    rows = frame[1::2]
    assert all(line.count("|") == 5 for line in rows), frame
    assert rows[-1].split("|")[4].strip() in ("G", "[G]")
    assert sum(line.count("[") for line in rows) == 1
    assert all(any(a in cell for a in play.ARROWS) for line in rows
               for cell in line.split("|")[1:-1] if "G" not in cell)


def test_play_last_plays_the_latest_training_run(trained, capsys) -> None:
    """``qlab-play last``: the newest finished run with an agent, never the sweep's parent."""
    uri, ids, _ = trained
    client = MlflowClient(uri)
    latest = max(ids.values(), key=lambda r: client.get_run(r).info.start_time)
    assert play.main(["last", "--uri", uri, "--episodes", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"qlab-play: run {latest} ")


def test_greedy_rollout_follows_the_q_table(trained, tmp_path) -> None:
    """Episode lengths equal the greedy policy's path lengths read off the table."""
    from qlab.analysis.runs import agent_file
    from qlab.core.envs.griddy import GriddyEnv

    uri, ids, _ = trained
    client = MlflowClient(uri)
    q = np.load(agent_file(client, ids["tabular_q"], tmp_path))
    results = play.play(client, ids["tabular_q"], episodes=3, out=open(os.devnull, "w"))
    env = GriddyEnv()
    for i, (steps, ret) in enumerate(results):
        _, info = env.reset(seed=i)
        n, done = 0, False
        while not done and n < 100:
            _, r, term, trunc, info = env.step(int(np.argmax(q[info["state"]])))
            n, done = n + 1, term or trunc
        assert steps == n
        assert ret == (1.0 if done else 0.0)


@pytest.mark.parametrize("agent", ["tabular_q", "dqn"])
def test_gif(trained, tmp_path, agent) -> None:
    uri, ids, _ = trained
    gif = tmp_path / f"{agent}.gif"
    assert play.main([ids[agent], "--uri", uri, "--episodes", "2", "--gif", str(gif)]) == 0
    with Image.open(gif) as im:
        frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
    assert len(frames) >= 2
    h, w, _ = frames[0].shape
    assert w >= 4 * play.GIF_CELL_PX and h > 4 * play.GIF_CELL_PX  # cells with room for values
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])  # the agent moves


def test_errors_are_one_line(trained, capsys) -> None:
    uri, _, parent = trained
    assert play.main(["0" * 32, "--uri", uri]) == 1
    assert capsys.readouterr().err.strip() == f"qlab-play: error: no run '{'0' * 32}' in {uri}"
    assert play.main([parent, "--uri", uri]) == 1  # a sweep's parent has no agent
    err = capsys.readouterr().err.strip()
    assert err.startswith("qlab-play: error: run ") and "\n" not in err


def test_masked_edges_are_replayed_and_shown_with_legal_actions_only() -> None:
    """A run trained with ``env.mask_edges`` is replayed in an env that masks the edges, and
    its board shows V and the greedy arrow over each cell's legal actions (an illegal
    entry's never-learned value is not V, its move is not the arrow)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"id": "qlab/Griddy-v0", "height": 3, "width": 4,
                            "random_goal": False, "max_steps": 50, "mask_edges": True})
    env = play.make_env(cfg, None)
    inner = env.unwrapped
    env.reset(seed=0)
    legal = inner.model.action_mask
    assert inner.model.legal is not None and not legal.all()
    q = np.where(legal, np.arange(12 * 4).reshape(12, 4) / 100.0, 9.0)
    v, a = play.grid_view(inner, q)
    goal = inner.goal_cell
    for cell in range(12):
        if cell == goal:
            continue
        r, c = divmod(cell, 4)
        assert legal[cell, a[r, c]], cell
        assert v[r, c] == q[cell][legal[cell]].max()
