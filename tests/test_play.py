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
    uri, ids, _ = trained
    assert play.main([ids["tabular_q"], "--uri", uri, "--episodes", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("episode 1/2: start") == 1 and "episode 2/2: start" in text
    assert "A" in text and "G" in text
    assert "Episode 0 finished after" in text and "Episode 1 finished after" in text
    # The grid with the agent's values: 4 rows of 4 cells after each header.
    frame = text.split("episode 1/2: start\n", 1)[1].splitlines()[:4]
    assert all(len(line.split()) == 4 for line in frame), frame


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
    assert w >= 256 and h >= 256  # 4x4 cells scaled up, plus the caption bar
    assert any(not np.array_equal(frames[0], f) for f in frames[1:])  # the agent moves


def test_errors_are_one_line(trained, capsys) -> None:
    uri, _, parent = trained
    assert play.main(["0" * 32, "--uri", uri]) == 1
    assert capsys.readouterr().err.strip() == f"qlab-play: error: no run '{'0' * 32}' in {uri}"
    assert play.main([parent, "--uri", uri]) == 1  # a sweep's parent has no agent
    err = capsys.readouterr().err.strip()
    assert err.startswith("qlab-play: error: run ") and "\n" not in err
