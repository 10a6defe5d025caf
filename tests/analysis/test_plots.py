"""Figures render to PNGs of sensible sizes; value heatmaps work from any (S, A) Q array
(a DQN's plugs in the same way) on every grid env; tabular runs log their heatmap."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from qlab.analysis import plots, stats
from qlab.analysis.runs import load_sweep
from qlab.core.envs import make_model
from qlab.core.envs.griddy import griddy_model
from qlab.core.oracle import value_iteration


def test_curves_and_interval_figures(loaded, tmp_path, assert_png) -> None:
    s = loaded
    gb = stats.default_group_by(s.runs)
    for key, log in (("train/q_delta", None), ("train/episode_length", True),
                     ("eval/optimal_fraction", False)):
        fig = plots.curves_figure(s, key, gb, smooth=3, log=log)
        assert len(fig.axes) == 2  # one panel per agent
        # log, or symlog when some curve reaches exactly 0 (a table that converged exactly)
        expected = ("log", "symlog") if log is not False else ("linear",)
        assert fig.axes[0].get_yscale() in expected
        assert_png(plots.save(fig, tmp_path / f"{key.replace('/', '_')}.png"))
    scores = stats.run_scores(s)
    agg = stats.aggregate(scores, gb, n_resamples=200)
    fig = plots.interval_figure(agg, ["episodes_to_solve", "final_q_error"], group_by=gb,
                                runs=scores)
    assert_png(plots.save(fig, tmp_path / "intervals.png"))


def test_curve_table_mean_is_the_mean_over_seeds(loaded) -> None:
    s = loaded
    gb = stats.default_group_by(s.runs)
    t = stats.curve_table(s, "train/episode_length", gb, smooth=1, n_resamples=200)
    g = t["group"].iloc[0]
    ids = s.runs.loc[stats.group_labels(s.runs, gb) == g, "run_id"]
    wide = s.metric("train/episode_length")[list(ids)]
    mine = t[t["group"] == g].set_index("step")["mean"]
    np.testing.assert_allclose(mine.to_numpy(), wide.mean(axis=1).to_numpy())
    assert ((t["ci_low"] <= t["mean"] + 1e-12) & (t["mean"] <= t["ci_high"] + 1e-12)).all()


def griddy(h: int = 4, w: int = 4, random_goal: bool = False) -> SimpleNamespace:
    return SimpleNamespace(id="qlab/Griddy-v0", name="griddy", height=h, width=w,
                           random_goal=random_goal, max_steps=1000, kwargs={})


def test_value_figure_from_any_q_array(tmp_path, assert_png) -> None:
    """Q* itself has every greedy action optimal; a random (S, A) array — what a DQN's
    network gives on every state — plugs into the same figure."""
    model = griddy_model(4, 4)
    layout = plots.grid_layout(griddy())
    q_star = value_iteration(model, 0.95).q
    noisy = np.random.default_rng(0).random(q_star.shape)
    fig = plots.value_figure([("exact", q_star, 0.95), ("dqn-like", noisy, 0.95)], model, layout,
                             rows=["a", "b"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("exact" in t and "optimal 15/15" in t and "max|Q−Q*| 0" in t for t in titles)
    assert_png(plots.save(fig, tmp_path / "values.png"))


@pytest.mark.parametrize("env, shape", [
    (griddy(3, 5), (3, 5)),
    (griddy(4, 4, random_goal=True), (4, 4)),
    (SimpleNamespace(id="FrozenLake-v1", kwargs={"map_name": "4x4", "is_slippery": True},
                     max_steps=100), (4, 4)),
    (SimpleNamespace(id="CliffWalking-v1", kwargs={}, max_steps=200), (4, 12)),
])
def test_heatmaps_on_every_grid_env(env, shape, tmp_path, assert_png) -> None:
    layout = plots.grid_layout(env)
    assert (layout.height, layout.width) == shape
    model = make_model(env)
    sol = value_iteration(model, 0.9)
    start = int(np.flatnonzero(model.initial)[0])
    assert_png(plots.save(plots.value_figure([("q*", sol.q, 0.9)], model, layout),
                               tmp_path / "v.png"), min_side=200)
    if env.id == "CliffWalking-v1":  # the arrow for "up" from the start is the model's up
        r, c = divmod(start, layout.width)
        up = int(np.flatnonzero(layout.moves[:, 0] == -1)[0])
        assert model.next_state[start, up, 0] == (r - 1) * layout.width + c


def test_no_grid_no_heatmap() -> None:
    assert plots.grid_layout(SimpleNamespace(id="Taxi-v3", kwargs={})) is None
    assert plots.grid_layout(SimpleNamespace(id="CartPole-v1", kwargs={})) is None


def test_tabular_runs_keep_what_heatmaps_are_drawn_from(small_sweep) -> None:
    """Training logs no figure per run (docs/tracking.md): the report draws value maps from
    each run's q_table.npy and config.yaml."""
    s = load_sweep(small_sweep.experiment, uri=small_sweep.uri, history=False)
    client = MlflowClient(small_sweep.uri)
    for run_id in s.runs["run_id"]:
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"q_table.npy", "config.yaml", "environment.json", "episodes.csv"} == names


def test_a_diverged_q_still_renders(tmp_path, assert_png) -> None:
    """A replica stopped for non-finite values still gets its heatmap (NaN cells unshaded)."""
    model = griddy_model(4, 4)
    q = np.full((16, 4), np.nan)
    fig = plots.value_figure([("diverged", q, 0.95)], model, plots.grid_layout(griddy()))
    assert_png(plots.save(fig, tmp_path / "value_heatmap.png"), min_side=200)


def test_value_figure_with_masked_edges_reads_legal_actions_only(tmp_path, assert_png) -> None:
    """``env.mask_edges``: moves off the grid are illegal, their Q entries never learned (here
    larger than any legal value). V, the greedy arrows and max |Q − Q*| are over the legal
    actions, as the training's evaluation takes them: Q* with such entries is all optimal."""
    model = griddy_model(4, 4, mask_edges=True)
    legal = model.action_mask
    assert not legal.all()
    q = value_iteration(model, 0.9).q.copy()
    q[~legal] = 100.0
    fig = plots.value_figure([("learned", q, 0.9)], model, plots.grid_layout(griddy()))
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert any("learned" in t and "optimal 15/15" in t and "max|Q−Q*| 0" in t for t in titles)
    assert max(im.norm.vmax for ax in fig.axes for im in ax.images) < 100.0
    assert_png(plots.save(fig, tmp_path / "masked.png"))
