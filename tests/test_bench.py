"""Smoke tests of qlab-bench: each section's measuring function on a tiny budget, the report
and the command line. They check that the figures exist and make sense, never how fast
anything is."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli, common, dqn, notebook_baseline, report, sweeps, tabular, tracking


def by(rows, metric: str) -> dict[str, common.Row]:
    return {r.who: r for r in rows if r.metric.startswith(metric)}


def test_notebook_baseline_learns_the_optimal_policy_and_reports_every_episode() -> None:
    from qlab.core import oracle
    from qlab.core.envs.griddy import griddy_model

    seen = []
    q, steps, seconds = notebook_baseline.train(
        4, 4, episodes=100, seed=0, gamma=0.9, alpha=1.0, decay=0.99, min_eps=0.01,
        on_episode=lambda ep, q, s: seen.append((ep, s)))
    assert [ep for ep, _ in seen] == list(range(100))
    assert all(b >= a for (_, a), (_, b) in zip(seen, seen[1:], strict=False))
    assert steps > 100 and 0 < seconds
    model = griddy_model(4, 4)
    sol = oracle.value_iteration(model, 0.9)
    policy = notebook_baseline.greedy_policy_table(q, 4, 4)
    assert sol.is_optimal(policy)[model.acting_states].all()


def test_stable_index_and_timed_evaluator() -> None:
    assert common.stable_index(np.array([True, False, True, True])) == 2
    assert common.stable_index(np.array([True, True])) == 0
    assert common.stable_index(np.array([True, False])) is None
    assert common.stable_index(np.array([], dtype=bool)) is None

    class Inner:
        keys = ("eval/x",)
        extra = 5

        def __call__(self, k, agent):
            return {"eval/x": float(k)}

    ev = common.TimedEvaluator(Inner())
    ev.start()
    assert ev(1, None) == {"eval/x": 1.0} and ev(1, None) == {"eval/x": 1.0}
    assert len(ev.times[1]) == 2 and ev.times[1][0] <= ev.times[1][1] and ev.spent >= 0
    assert ev.extra == 5 and ev.keys == ("eval/x",)


@pytest.mark.training
def test_tabular_section_smoke() -> None:
    rows = tabular.measure(sizes=(4,), repeats=1, batch_repeats=1, replicas=2, episodes=6,
                           warmup=False, startup=False)
    sps = by(rows, "env steps/s")
    assert set(sps) == {"notebook", "gymnasium FrozenLake", "qlab fast R=1", "qlab numpy R=1",
                        "qlab fast R=2", "qlab numpy R=2", "qlab fast R=1, evaluated every episode",
                        "qlab fast R=2, evaluated every episode"}
    assert "evaluated every 25 (qlab's default)" in sps["qlab fast R=2"].note
    for r in sps.values():
        assert r.value > 0 and r.ratio > 0 and r.baseline == "notebook"
    assert sps["notebook"].ratio == 1.0
    assert sps["qlab fast R=1"].target == ">= 10x" and sps["qlab fast R=1"].met is not None
    assert sps["qlab numpy R=1"].target is None
    tto = by(rows, "time to optimal")
    assert {"qlab fast R=2 per replica", "qlab numpy R=2 per replica"} <= set(tto)
    for r in tto.values():
        assert r.value is None or r.value > 0


def test_qlab_tabular_run_counts_every_replicas_steps() -> None:
    hp = tabular.settings(4, episodes=40)
    one = tabular.run_qlab(hp, seed=0, replicas=1)
    two = tabular.run_qlab(hp, seed=0, replicas=2)
    assert one["steps"] > 40 and two["steps"] > one["steps"]
    fast = tabular.run_qlab(hp, seed=0, replicas=2, fast=True)  # the same training, compiled
    assert fast["steps"] == two["steps"] and fast["solved"] == two["solved"]
    assert two["replicas"] == 2 and 0 <= two["solved"] <= 2
    if one["time_to_optimal"] is not None:
        assert 0 < one["time_to_optimal"] <= one["seconds"]
        assert 0 <= one["episodes_to_optimal"] < 40


@pytest.mark.slow  # compiles the kernels from scratch in a fresh process
def test_fast_path_startup_rows() -> None:
    rows = tabular.measure_startup(lambda msg: None, cold_runs=1, cached_runs=1)
    assert [r.who for r in rows] == ["empty kernel cache (compile)", "kernel cache filled"]
    for r in rows:
        assert r.section == "tabular fast path start-up" and r.value > 0 and r.unit == "s"
        assert "to import numba" in r.note


TINY_DQN = ["agent.learning_starts=100", "agent.train_freq=50", "agent.gradient_steps=2",
            "agent.hidden=[16]", "agent.buffer_size=1000", "eval_episodes=2"]


@pytest.mark.training
def test_dqn_section_smoke() -> None:
    rows = dqn.measure(steps=300, sb3_repeats=1 if dqn.have_sb3() else 0, replicas=2,
                       overrides=TINY_DQN, in_process=True)
    sps = by(rows, "env steps/s")
    assert sps["qlab R=1"].value > 0
    tput = by(rows, "throughput")
    assert tput["qlab R=2 in one job"].ratio > 0
    assert tput["qlab R=2 in one job"].target == ">= 4x"
    step = by(rows, "gradient step per replica")
    assert set(step) == {"qlab R=1", "qlab R=2"} and step["qlab R=2"].ratio > 0
    ret = by(rows, "final greedy return")
    # Replica k of the batch is seed k: the same final returns as the R=1 runs.
    assert ret["qlab R=2"].samples == pytest.approx(ret["qlab R=1"].samples)
    if dqn.have_sb3():
        assert sps["Stable-Baselines3"].value > 0 and sps["qlab R=1"].baseline == \
            "Stable-Baselines3"
        assert ret["Stable-Baselines3"].value >= 8  # CartPole lasts at least 8 steps


@pytest.mark.integration  # a worker process
def test_dqn_worker_runs_in_a_fresh_process() -> None:
    out = common.run_worker("benchmarks.dqn", {"kind": "qlab", "seeds": [3], "replicas": 1,
                                               "steps": 200, "overrides": TINY_DQN})
    assert len(out) == 1 and out[0]["steps"] == 200 and out[0]["seconds"] > 0


def test_sb3_gets_qlabs_hyperparameters() -> None:
    from qlab.config import validate

    c = validate(common.compose(dqn.BASE))
    kw = dqn.sb3_kwargs(c, 50_000)
    assert kw["learning_rate"] == c.agent.lr and kw["gradient_steps"] == c.agent.gradient_steps
    assert kw["target_update_interval"] == c.agent.target_update
    assert kw["policy_kwargs"] == {"net_arch": list(c.agent.hidden)}
    assert kw["exploration_fraction"] * 50_000 == pytest.approx(c.exploration.duration)


@pytest.mark.integration  # the store's artifacts; kept with the other bench smoke tests
def test_tracking_section_smoke() -> None:
    rows = tracking.measure(replicas=(2,), aggregate=8, repeats=1, commands=False, sweep=False)
    for label in ("R=2, a run per replica", "R=8, one aggregate run"):
        cost = by(rows, f"tracking's cost, griddy8 x 300 episodes, {label}")
        floor = cost["MLflow's floor (direct client calls)"]
        assert floor.value > 0 and len(floor.samples) == 1
        assert math.isfinite(cost["on - off"].value)
        added = cost["qlab added (tracking calls)"].value
        (on,) = [r for r in rows if r.who == "tracking on (sqlite)" and label in r.metric]
        assert 0 < added < on.value  # the tracking calls are a part of the tracked job
        table = cost.get("of which the per-replica table (built, parquet written)")
        assert (table is not None) == ("aggregate" in label)
        assert table is None or 0 < table.value < added
        (ratio,) = [r for r in rows if r.metric == f"qlab added / MLflow's floor, {label}"]
        assert ratio.target == "<= 1.25 x" and ratio.met is not None
        assert ratio.value == pytest.approx(added / floor.value)


@pytest.mark.integration  # a sweep as a process
def test_sweep_section_smoke() -> None:
    # One job of the headline sweep: command-line values win over its sweeper params.
    rows = sweeps.measure(launchers=("basic",), overrides=(
        "agent=tabular_q", "exploration.decay=0.99", "episodes=3", "replicas=1"))
    (row,) = rows
    assert row.value > 0 and row.note.startswith("1/1 runs FINISHED")
    assert row.target is None  # a shrunk sweep is not held to the 60 s target


@pytest.mark.integration  # the tracking section: qlab-train as a process
def test_report_and_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [common.Row("s", "env steps/s", "base", 100.0, "steps/s"),
            common.Row("s", "env steps/s", "fast", 2500.0, "steps/s"),
            common.Row("s", "time to optimal policy", "base", None, "s"),
            common.Row("t", "overhead of tracking", "on vs off", 12.5, "%")]
    common.add_ratios(rows[:2], "base", higher_is_better=True)
    common.check_target(rows[1], ">=", 10)
    common.check_target(rows[3], "<=", 10, on="value")
    assert rows[1].ratio == 25 and rows[1].met and rows[3].met is False
    text = report.text_table(rows)
    assert "25x base" in text and ">= 10x: met" in text and "<= 10%: MISSED" in text
    assert "not reached" in text
    info = common.machine_info()
    assert info["cpu"] and info["torch"] and info["python"]
    md = report.markdown(rows, {**info, "load_after": "0"}, "qlab-bench", "full", 60.0)
    assert "| fast | 2,500 steps/s | 25x base |" in md and "## Machine" in md
    assert cli.main(["--sections", "nope"]) == 2
    out, js = tmp_path / "b.md", tmp_path / "b.json"
    monkeypatch.setitem(cli.QUICK, "tracking", dict(replicas=(1,), aggregate=0, repeats=1,
                                                     commands=False, sweep=False))
    assert cli.main(["--quick", "--sections", "tracking", "--out", str(out),
                     "--json", str(js)]) == 0
    assert "qlab added / MLflow's floor" in out.read_text()
    assert json.loads(js.read_text())["mode"] == "quick"


@pytest.mark.integration  # a worker process
def test_dqn_burst_profile_rows() -> None:
    prof = common.run_worker("benchmarks.dqn", {"kind": "bursts", "replicas": [1, 2],
                                                "repeats": 2, "overrides": TINY_DQN})
    assert [p["replicas"] for p in prof] == [1, 2]
    for p in prof:
        # Both are wall-clock timings on a shared machine: only their presence is certain.
        assert len(p["step_us"]) == 2 and min(p["step_us"]) > 0 and p["matmul_us"] > 0
    rows = dqn.burst_rows("DQN", prof, 2)
    wall = by(rows, "gradient step per replica")
    assert wall["qlab R=1"].ratio == 1.0 and wall["qlab R=2"].ratio > 0
    (ceiling,) = [r for r in rows if r.metric.startswith("ceiling")]
    assert ceiling.value == pytest.approx(wall["qlab R=1"].value / prof[1]["matmul_us"])
