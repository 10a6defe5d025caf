"""The textbook figures qlab-report draws for an experiment that names one (``figure``), from
a sweep's runs: numbers checked on hand-made histories (no store needed), runs per replica
and aggregate runs weighted by the replicas they stand for; the experiments name them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlab.analysis import figures
from qlab.analysis.runs import Sweep
from qlab.config import ConfigError, validate
from qlab.config.schema import FIGURES, TrackingConfig


def sweep_of(curves: dict[str, np.ndarray], key: str, figure: str,
             aggregate: dict[str, int] | None = None) -> Sweep:
    """A Sweep whose runs are the columns of each agent's (episodes, runs) table; with
    ``aggregate``, agent -> replicas each of its runs stands for (tracking.replica_runs
    false)."""
    runs, rows = [], []
    for agent, table in curves.items():
        for j in range(table.shape[1]):
            run_id = f"{agent}-{j}"
            reps = (aggregate or {}).get(agent)
            runs.append({"run_id": run_id, "agent": agent, "params.figure": figure,
                         "params.replicas": str(reps or 1),
                         "params.tracking.replica_runs": "False" if reps else "True"})
            rows += [{"run_id": run_id, "key": key, "step": e, "value": float(v)}
                     for e, v in enumerate(table[:, j])]
    return Sweep(uri="sqlite:///x.db", experiment="x", experiment_id="1", sweep_id=None,
                 parent_run_id=None, runs=pd.DataFrame(runs), history=pd.DataFrame(rows))


def test_every_allowed_figure_has_a_drawing() -> None:
    assert set(figures.DRAW) == set(FIGURES)


def test_left_share_from_episode_lengths_per_replica_and_aggregate(tmp_path) -> None:
    """Share left = mean length - 1 over replicas, per episode; an aggregate run's mean
    length counts for its replicas; the CI is the binomial one of all replicas."""
    lengths = np.array([[2, 1, 1, 2], [2, 2, 2, 1], [1, 1, 1, 1]], dtype=float)  # 3 ep x 4
    agg = np.array([[1.5], [1.25], [1.0]])  # one run for 8 replicas: 50%, 25%, 0% left
    sw = sweep_of({"tabular_q": lengths, "double_q": agg}, "train/episode_length",
                  "maximization_bias", aggregate={"double_q": 8})
    curves = figures.agent_curves(sw, "train/episode_length")
    assert list(curves) == ["tabular_q", "double_q"]  # the book's order
    steps, x, w = curves["tabular_q"]
    np.testing.assert_array_equal(figures.weighted_mean(x - 1, w), [0.5, 0.75, 0.0])
    steps, x, w = curves["double_q"]
    assert w.tolist() == [8]
    np.testing.assert_array_equal(figures.weighted_mean(x - 1, w), [0.5, 0.25, 0.0])
    fig, caption = figures.maximization_bias(sw)
    assert "Q-learning 75.0% at its peak (episode 2)" in caption and "(n=4)" in caption
    assert "Double Q-learning 50.0% at its peak (episode 1)" in caption and "(n=8)" in caption
    assert [line.get_label() for line in fig.axes[0].get_lines()][:2] == [
        "Q-learning", "Double Q-learning"]
    written = figures.book_figures(sw, tmp_path)
    assert [p.name for p, _ in written] == ["book_maximization_bias.png"]
    assert written[0][0].stat().st_size > 10_000


def test_cliff_figure_mean_and_band() -> None:
    """Online return per episode: each run smoothed, the mean over runs; the caption's number
    is the mean over the last 80% of episodes."""
    rng = np.random.default_rng(0)
    returns = {"sarsa": -25 + rng.normal(0, 3, (50, 6)), "tabular_q": np.full((50, 6), -50.0)}
    sw = sweep_of(returns, "train/episode_return", "cliff_walking")
    fig, caption = figures.cliff_walking(sw)
    late = returns["sarsa"][10:].mean()
    assert f"SARSA {late:.1f} (n=6)" in caption and "Q-learning -50.0 (n=6)" in caption
    ax = fig.axes[0]
    q_line = [ln for ln in ax.get_lines() if ln.get_label() == "Q-learning"][0]
    np.testing.assert_allclose(q_line.get_ydata(), -50.0)
    assert len(ax.collections) == 2  # a CI band per agent
    assert figures.named(sw) == ["cliff_walking"]
    assert figures.named(sweep_of(returns, "train/episode_return", "None")) == []


def test_experiments_name_their_figure_and_the_book_settings(compose_cfg) -> None:
    c = validate(compose_cfg(["+experiment=cliff_sarsa_vs_q", "agent=sarsa",
                              "hydra.mode=RUN"]))
    assert (c.figure, c.env.name, c.replicas, c.episodes) == ("cliff_walking", "cliffwalking",
                                                             100, 500)
    assert (c.exploration.name, c.exploration.start, c.agent.lr, c.agent.gamma) == (
        "constant", 0.1, 0.5, 1.0)
    c = validate(compose_cfg(["+experiment=cliff_sarsa_vs_q", "agent=tabular_q",
                              "hydra.mode=RUN"]))  # its tuned cliff hparams do not leak in
    assert (c.agent.lr, c.agent.gamma, c.episodes, c.exploration.name) == (0.5, 1.0, 500,
                                                                          "constant")
    with pytest.raises(ConfigError, match=r"^figure='fig6': must be null or one of "
                                          r"cliff_walking, maximization_bias"):
        validate(compose_cfg(["figure=fig6"]))
    if "replica_runs" not in TrackingConfig.__dataclass_fields__:
        pytest.skip("tracking.replica_runs (branch tracking-scale) is not merged yet: the "
                    "maximization_bias experiment needs it")
    c = validate(compose_cfg(["+experiment=maximization_bias", "agent=double_q",
                              "hydra.mode=RUN"]))
    assert (c.figure, c.env.name, c.env.n_actions_b, c.replicas, c.episodes) == (
        "maximization_bias", "maxbias", 10, 10_000, 300)
    assert (c.exploration.start, c.agent.lr, c.agent.gamma) == (0.1, 0.1, 1.0)
    assert c.tracking.replica_runs is False
