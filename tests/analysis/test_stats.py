"""Statistics over seeds: IQM, bootstrap CIs, probability of improvement, episodes to solve —
on hand-made numbers, then on the small real sweep."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlab.analysis import stats


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    x = np.array([100.0, 1, 2, 3, 4, 5, 6, -50])  # 8 values: drop 2 at each end
    assert stats.iqm(x) == pytest.approx(np.mean([2, 3, 4, 5]))
    assert stats.iqm(np.array([1.0, 2.0, 9.0])) == pytest.approx(4.0)  # n=3: nothing trimmed


def test_bootstrap_ci_contains_the_estimate_and_handles_degenerate_samples() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=10)
    for name, f in stats.STATISTICS.items():
        est, lo, hi = stats.bootstrap_ci([x], f, n_resamples=500)
        assert lo <= est <= hi, name
        assert est == pytest.approx(float(f(x, axis=-1)))
    assert stats.bootstrap_ci([np.full(4, 2.5)], stats.iqm) == (2.5, 2.5, 2.5)
    est, lo, hi = stats.bootstrap_ci([np.array([3.0])], stats.iqm)
    assert est == 3.0 and np.isnan(lo) and np.isnan(hi)  # one seed: no interval


def test_stratified_bootstrap_keeps_each_stratum() -> None:
    """Two strata far apart: a plain bootstrap could draw all runs from one of them; the
    stratified one always draws 3 from each, so the mean's CI stays narrow around 50."""
    a, b = np.array([0.0, 0.1, 0.2]), np.array([100.0, 100.1, 100.2])
    est, lo, hi = stats.bootstrap_ci([a, b], stats.STATISTICS["mean"], n_resamples=1000)
    assert est == pytest.approx(50.1)
    assert 49.9 < lo <= est <= hi < 50.3


def test_probability_of_improvement() -> None:
    x, y = np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 5.0])
    # pairs x>y: (1,0),(2,0),(3,0),(3,2) = 4; ties: (2,2) = 1; of 9
    assert stats.probability_of_improvement(x, y) == pytest.approx((4 + 0.5) / 9)
    assert (stats.probability_of_improvement(x, y) + stats.probability_of_improvement(y, x)
            == pytest.approx(1.0))
    for v in (x, y, np.array([7.0, 7.0, 1.0, 3.0])):
        assert stats.probability_of_improvement(v, v) == 0.5
    p, lo, hi = stats.poi_ci([x], [x], n_resamples=500)
    assert p == 0.5 and lo <= 0.5 <= hi
    p, lo, hi = stats.poi_ci([np.array([5.0, 6.0])], [np.array([1.0, 2.0])])
    assert (p, lo, hi) == (1.0, 1.0, 1.0)


def test_solved_after() -> None:
    steps = np.array([9, 19, 29, 39])
    assert stats.solved_after(steps, [True, True, True, True]) == 9
    assert stats.solved_after(steps, [True, False, True, True]) == 29
    assert np.isnan(stats.solved_after(steps, [True, True, True, False]))


def test_episodes_to_solve_matches_the_logged_metric(loaded) -> None:
    s = loaded
    scores = stats.run_scores(s)
    logged = scores["metrics.eval/episodes_to_optimal"]
    solved = scores["solved"]
    np.testing.assert_array_equal(scores.loc[solved, "episodes_to_solve"], logged[solved])
    assert logged[~solved].isna().all()
    assert (scores.loc[~solved, "episodes_to_solve"] == 30).all()  # censored at the budget


def test_aggregates_cis_and_poi_on_the_sweep(loaded) -> None:
    s = loaded
    scores = stats.run_scores(s)
    gb = stats.default_group_by(scores)
    assert gb == ["agent", "params.exploration.decay"]
    agg = stats.aggregate(scores, gb, n_resamples=500)
    assert set(agg["group"]) == {f"{a}, decay={d}" for a in ("tabular_q", "tabular_mc")
                                 for d in (0.99, 0.995)}
    assert (agg["n"] == 3).all()
    ok = agg.dropna(subset=["ci_low", "ci_high"])
    assert len(ok) == len(agg)
    assert ((ok["ci_low"] <= ok["estimate"] + 1e-12)
            & (ok["estimate"] <= ok["ci_high"] + 1e-12)).all()
    poi = stats.poi_matrix(scores, "final_q_error", gb, n_resamples=500)
    diag = poi[poi["x"] == poi["y"]]
    assert (diag["poi"] == 0.5).all()
    pairs = poi.set_index(["x", "y"])["poi"]
    for (x, y), p in pairs.items():
        assert p + pairs[(y, x)] == pytest.approx(1.0)


def test_default_group_by_adds_keys_that_split_groups() -> None:
    runs = pd.DataFrame({"agent": ["a", "a", "a", "a"],
                         "params.exploration.decay": [0.9, 0.9, 0.9, 0.9],
                         "params.agent.lr": [0.1, 0.1, 0.5, 0.5],
                         "params.seed": [0, 1, 0, 1]})
    # The decay is the same in every run: no key of its own, not in any label (issue 17).
    assert stats.default_group_by(runs) == ["agent", "params.agent.lr"]
    labels = stats.group_labels(runs, stats.default_group_by(runs))
    assert labels.iloc[0] == "a, lr=0.1"


def test_default_group_by_never_lumps_envs_together() -> None:
    """Runs of several envs without a sweep (a few ``make train``): the env is a key even
    where no other key would split by it (issue 17)."""
    runs = pd.DataFrame({"agent": ["q", "q", "q"], "env": ["griddy", "frozenlake", "griddy"],
                         "params.exploration.decay": [0.99, 0.999, 0.99],
                         "params.seed": [0, 0, 1]})
    assert stats.default_group_by(runs) == ["agent", "env", "params.exploration.decay"]


def test_bootstrap_holds_a_stratum_of_one_run() -> None:
    """A group spanning envs with one run in one of them: scipy cannot resample a stratum
    of one; it is held, the others resampled (was a raw ValueError, issue 17)."""
    est, lo, hi = stats.bootstrap_ci([np.array([1.0, 3.0]), np.array([10.0])], stats.iqm,
                                     n_resamples=200)
    assert est == pytest.approx(stats.iqm(np.array([1.0, 3.0, 10.0])))
    assert lo <= est <= hi and np.isfinite([lo, hi]).all()
    p, plo, phi = stats.poi_ci([np.array([1.0, 2.0]), np.array([5.0])],
                               [np.array([0.0, 1.5]), np.array([4.0])], n_resamples=200)
    assert 0.5 < p <= 1 and plo <= p <= phi


def test_episodes_to_solve_by_return_threshold_without_a_model() -> None:
    """No eval/optimal_fraction (CartPole): solved once eval/return stays >= the threshold;
    default threshold: the env's registered reward_threshold (CartPole-v1: 475)."""
    from qlab.analysis.runs import Sweep

    runs = pd.DataFrame({"run_id": ["a", "b"], "agent": "dqn", "env": "cartpole",
                         "params.env.id": "CartPole-v1", "params.episodes": [50, 50]})
    steps = np.arange(9, 50, 10)
    returns = {"a": [20, 480, 100, 500, 490], "b": [20, 30, 40, 50, 60]}
    rows = [(r, "eval/return", s, v) for r, vs in returns.items()
            for s, v in zip(steps, vs, strict=True)]
    rows += [(r, "train/episode_length", s, 10.0) for r in "ab" for s in range(50)]
    hist = pd.DataFrame(rows, columns=["run_id", "key", "step", "value"])
    sweep = Sweep(uri="", experiment="x", experiment_id="0", sweep_id=None, parent_run_id=None,
                  runs=runs, history=hist)
    scores = stats.run_scores(sweep).set_index("run_id")
    assert scores.loc["a", "episodes_to_solve"] == 39 and scores.loc["a", "solved"]
    assert scores.loc["b", "episodes_to_solve"] == 50 and not scores.loc["b", "solved"]
    assert scores.loc["a", "solve_criterion"] == "eval/return >= 475"
    low = stats.run_scores(sweep, threshold=25).set_index("run_id")
    assert low.loc["b", "episodes_to_solve"] == 19


def test_curve_table_bootstrap_is_the_mean_of_resampled_runs_nan_aware() -> None:
    # The CI band resamples runs by counts (a matrix product, so 10,000 replicas fit in
    # memory); it must equal the plain nanmean of the resampled columns, runs of different
    # lengths (NaN) included.
    from qlab.analysis.runs import Sweep

    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5))
    x[4:, 1] = np.nan  # run 1 stopped after 4 steps
    runs = pd.DataFrame({"run_id": list("abcde"), "agent": "q"})
    hist = pd.DataFrame([(r, "train/episode_return", s, x[s, j])
                         for j, r in enumerate("abcde") for s in range(6)
                         if np.isfinite(x[s, j])], columns=["run_id", "key", "step", "value"])
    sweep = Sweep(uri="", experiment="x", experiment_id="0", sweep_id=None, parent_run_id=None,
                  runs=runs, history=hist)
    table = stats.curve_table(sweep, "train/episode_return", ["agent"], n_resamples=50, seed=7)
    idx = np.random.default_rng(7).integers(0, 5, size=(50, 5))
    with np.errstate(all="ignore"):
        boot = np.nanmean(x[:, idx], axis=2)
    lo, hi = np.nanquantile(boot, [0.025, 0.975], axis=1)
    np.testing.assert_allclose(table["ci_low"], lo, rtol=1e-12)
    np.testing.assert_allclose(table["ci_high"], hi, rtol=1e-12)
    np.testing.assert_allclose(table["mean"], np.nanmean(x, axis=1))


def test_one_evaluation_smooths_over_one_point() -> None:
    from qlab.analysis.plots import _points

    assert _points(np.full(20_000, 299), 10) == 1  # 20,000 runs, each evaluated once
    assert _points(np.repeat([9, 19, 29], 4), 20) == 2
