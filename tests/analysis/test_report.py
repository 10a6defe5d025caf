"""qlab-report on the small real sweep: its aggregates equal a computation by hand from the
raw MLflow metric histories, its CIs contain their estimates, P(X > X) = 0.5, its figures
are real PNGs of sensible sizes, its HTML links only files that exist, and it is logged to
the sweep's parent run."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from qlab.analysis import report
from tests.helpers import metric_history, sweep_runs


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture(scope="module")
def built(small_sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "small"
    code = report.main([small_sweep.experiment, "--uri", small_sweep.uri, "--out", str(out),
                        "--resamples", "500"])
    assert code == 0
    return out


def by_hand(uri: str, experiment: str) -> pd.DataFrame:
    """Per run, straight from MlflowClient: the scores the report aggregates."""
    client = MlflowClient(uri)
    _, runs = sweep_runs(client, experiment)
    rows = []
    def history(run_id: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        pts = metric_history(client, run_id, key)
        return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])

    for r in runs:
        def series(key: str, run_id: str = r.info.run_id) -> tuple[np.ndarray, np.ndarray]:
            return history(run_id, key)
        steps, opt = series("eval/optimal_fraction")
        # first evaluated episode after which every evaluation is optimal
        solved_at = None
        for i in range(len(opt)):
            if all(v == 1.0 for v in opt[i:]):
                solved_at = steps[i]
                break
        _, qd = series("train/q_delta")
        _, length = series("train/episode_length")
        tail = max(1, round(0.1 * len(qd)))
        rows.append({
            "agent": r.data.tags["agent"],
            "decay": float(r.data.params["exploration.decay"]),
            "episodes_to_solve": float(solved_at) if solved_at is not None else 30.0,
            "final_q_error": series("eval/q_error")[1][-1],
            "final_optimal_fraction": opt[-1],
            "final_q_delta": float(np.mean(qd[-tail:])),
            "final_episode_length": float(np.mean(length[-tail:])),
        })
    return pd.DataFrame(rows)


def iqm_by_hand(x: np.ndarray) -> float:
    x = np.sort(x)
    k = int(len(x) * 0.25)
    return float(np.mean(x[k:len(x) - k]))


def test_aggregates_equal_a_computation_by_hand(small_sweep, built) -> None:
    agg = pd.read_csv(built / "data" / "aggregates.csv")
    hand = by_hand(small_sweep.uri, small_sweep.experiment)
    assert len(hand) == 12
    checked = 0
    for (agent, decay), sub in hand.groupby(["agent", "decay"]):
        group = f"{agent}, decay={decay:g}"
        for metric in ("episodes_to_solve", "final_q_error", "final_optimal_fraction",
                       "final_q_delta", "final_episode_length"):
            rows = agg[(agg["group"] == group) & (agg["metric"] == metric)].set_index("statistic")
            if rows.empty:  # the same in every run: reported as a constant, checked below
                assert sub[metric].nunique() == 1 and hand[metric].nunique() == 1
                continue
            x = sub[metric].to_numpy()
            assert rows.loc["mean", "estimate"] == pytest.approx(np.mean(x), rel=1e-12)
            assert rows.loc["median", "estimate"] == pytest.approx(np.median(x), rel=1e-12)
            assert rows.loc["iqm", "estimate"] == pytest.approx(iqm_by_hand(x), rel=1e-12)
            assert (rows["n"] == 3).all()
            checked += 1
    assert checked >= 12
    solved = pd.read_csv(built / "data" / "runs.csv")
    assert solved["solved"].sum() == (hand["episodes_to_solve"] < 30).sum()


def test_every_ci_contains_its_estimate(built) -> None:
    agg = pd.read_csv(built / "data" / "aggregates.csv")
    assert agg[["ci_low", "ci_high"]].notna().all().all()
    assert ((agg["ci_low"] <= agg["estimate"] + 1e-12)
            & (agg["estimate"] <= agg["ci_high"] + 1e-12)).all()
    for path in (built / "data").glob("poi_*.csv"):
        poi = pd.read_csv(path)
        assert ((poi["ci_low"] <= poi["poi"] + 1e-12)
                & (poi["poi"] <= poi["ci_high"] + 1e-12)).all()


def test_probability_of_improvement_of_a_group_over_itself_is_one_half(built) -> None:
    files = list((built / "data").glob("poi_*.csv"))
    assert files
    for path in files:
        poi = pd.read_csv(path)
        # within each agent: 2 decays x 2, not 4 groups x 4 across agents (issue 17)
        assert len(poi) == 8 and set(poi["block"]) == {"tabular_q", "tabular_mc"}
        agents = zip(poi["x"].str.split(",").str[0], poi["y"].str.split(",").str[0], strict=True)
        assert all(x == y for x, y in agents)
        assert (poi.loc[poi["x"] == poi["y"], "poi"] == 0.5).all()


def test_the_answer_comes_first(built) -> None:
    """The first screen answers "which decay for which agent": the verdict per agent, then
    what is not like for like, then the numbers."""
    page = (built / "index.html").read_text(encoding="utf-8")
    assert (page.index("Answer: the best setting per agent") < page.index("Like for like?")
            < page.index("<h2>Summary"))
    v = pd.read_csv(built / "data" / "verdict.csv", keep_default_na=False)
    assert not v.empty and set(v["agent"]) <= {"tabular_q", "tabular_mc"}
    assert set(v["best"]) <= {"decay=0.99", "decay=0.995"}
    assert all(b in page for b in v["verdict"].map(html.escape))


def test_runs_can_be_told_apart(built) -> None:
    """Run names carry the swept decay; the run table has group and solved columns."""
    runs = pd.read_csv(built / "data" / "runs.csv")
    assert runs["run_name"].is_unique and len(runs) == 12
    for _, r in runs.iterrows():
        assert r["run_name"] == (f"{r['agent']}-griddy-decay{r['params.exploration.decay']:g}"
                                 f"-seed{r['seed']}")
    page = (built / "index.html").read_text(encoding="utf-8")
    assert "<th>run</th><th>group</th><th>id</th><th>status</th><th>solved</th>" in page


def test_terminal_summary_is_the_reports(small_sweep, built) -> None:
    """One truth: the table a sweep prints when it ends is the report's summary.csv."""
    from qlab.analysis import summary
    from qlab.analysis.runs import load_sweep

    parent = load_sweep(small_sweep.experiment, uri=small_sweep.uri, history=False)
    table, text = summary.sweep_summary(small_sweep.uri, parent.parent_run_id,
                                        n_resamples=500)
    reported = pd.read_csv(built / "data" / "summary.csv")
    pd.testing.assert_frame_equal(table, reported, check_dtype=False)
    solved = reported.set_index("group")["solved"]
    for group, n in solved.items():
        assert re.search(rf"^{re.escape(group)}\s+3\s+3\s+{n}/3\s", text, re.M), text


def test_figures_exist_with_sensible_sizes(built, assert_png) -> None:
    figures = sorted((built / "figures").glob("*.png"))
    names = {p.name for p in figures}
    assert {"final_performance.png", "curve_train_q_delta.png",
            "curve_train_episode_length.png", "values_griddy.png"} <= names, names
    for p in figures:
        assert_png(p)


def test_html_references_only_files_that_exist(built) -> None:
    page = (built / "index.html").read_text(encoding="utf-8")
    parser = Links()
    parser.feed(page)
    assert parser.links
    for link in parser.links:
        assert not re.match(r"^[a-z]+:|^/", link), f"not a relative link: {link}"
        assert (built / link).is_file(), link
    referenced = {(built / link).resolve() for link in parser.links}
    for p in (built / "figures").glob("*.png"):
        assert p.resolve() in referenced, f"{p.name} is not in the report"
    assert "Probability of improvement" in page and "tabular_q, decay=0.99" in page


def test_report_is_logged_to_the_parent_run(small_sweep, built) -> None:
    from qlab.analysis.runs import load_sweep

    s = load_sweep(small_sweep.experiment, uri=small_sweep.uri, history=False)
    client = MlflowClient(small_sweep.uri)
    names = {a.path for a in client.list_artifacts(s.parent_run_id, "report")}
    assert "report/index.html" in names and "report/figures" in names


def test_errors_are_one_line(small_sweep, tmp_path, capsys) -> None:
    code = report.main(["no_such_experiment", "--uri", small_sweep.uri, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip() == ("qlab-report: error: no experiment 'no_such_experiment' in "
                           f"{small_sweep.uri}")
    assert report.main(["--parent", "f" * 32, "--uri", small_sweep.uri]) == 1
    assert "no run" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        report.main(["--uri", small_sweep.uri])  # nothing named
    assert info.value.code == 2
    assert not list(Path(tmp_path).iterdir())  # nothing written
