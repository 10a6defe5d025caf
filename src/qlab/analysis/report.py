"""``qlab-report``: one sweep as a self-contained HTML report — tables of aggregates over
seeds with bootstrap CIs, probability of improvement between groups, learning curves,
a final-performance interval plot and value heatmaps beside Q* — written under
``reports/<experiment>/`` (index.html, figures/*.png, data/*.csv, relative links only) and
logged to the sweep's parent run as artifacts under ``report/``.

    qlab-report epsilon_decay                       # the experiment's latest sweep
    qlab-report --sweep-id 20261124-180311-e1232c   # a given sweep, in any experiment
    qlab-report --parent 6ec45b23dcc744cb8a5234c35e3036fa --out /tmp/report
"""

from __future__ import annotations

import argparse
import html
import math
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from qlab.analysis import figures, plots, stats, summary, verdict
from qlab.analysis.runs import (
    AnalysisError,
    Sweep,
    agent_file,
    column,
    load_sweep,
    q_on_states,
    redact,
    run_config,
)
from qlab.core.errors import QlabError, exit_status, one_line

PROG = "qlab-report"
CURVE_KEYS = ("train/q_delta", "train/episode_length", "train/episode_return", "eval/return",
              "eval/q_error", "eval/optimal_fraction", "train/td_loss")
HISTORY_KEYS = CURVE_KEYS + ("eval/episodes_to_optimal",)
POI_SCORES = ("episodes_to_solve", "final_return", "final_q_error")


class ReportError(QlabError, RuntimeError):
    """The report cannot be built, written or logged (the store or the disk failed)."""


@dataclass
class Report:
    """What :func:`build_report` wrote."""

    path: Path  # index.html
    figures: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    aggregates: pd.DataFrame | None = None
    scores: pd.DataFrame | None = None


# ------------------------------------------------------------------------------ html helpers

def _e(x) -> str:
    return html.escape(str(x))


def _num(x: float, fmt: str = "{:.3g}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return fmt.format(x)


def _ci(est: float, lo: float, hi: float, fmt: str = "{:.3g}") -> str:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return f"{_num(est, fmt)}"
    return f"{_num(est, fmt)} <span class=ci>[{_num(lo, fmt)}, {_num(hi, fmt)}]</span>"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """An HTML table; cells are trusted HTML (escape before)."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _figure(rel: str, caption: str) -> str:
    return (f"<figure><a href='{_e(rel)}'><img src='{_e(rel)}' alt='{_e(caption)}'></a>"
            f"<figcaption>{caption}</figcaption></figure>")


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1400px;padding:0 1.5em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:top}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.ci{color:#777;font-size:.92em}.meta td{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}.note{color:#555;font-size:.92em}
code{background:#f4f4f4;padding:0 .25em}details{margin:.8em 0}
table.answer td,table.like td{text-align:left}
"""


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _poi_colour(p: float) -> str:
    """White at 0.5, green towards 1 (row better), red towards 0."""
    if not math.isfinite(p):
        return "#ffffff"
    t = min(abs(p - 0.5) * 2, 1.0)
    base = (46, 160, 67) if p > 0.5 else (214, 39, 40)
    r, g, b = (round(255 + t * 0.55 * (c - 255)) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


# ------------------------------------------------------------------------------ pieces

def _constant(series: pd.Series) -> bool:
    v = series.dropna()
    return v.empty or bool(np.all(v.to_numpy() == v.to_numpy()[0]))


def _representatives(scores: pd.DataFrame, group_by: list[str]) -> pd.DataFrame:
    """Per group the run with the median final |Q − Q*| (else episodes to solve): lower
    middle of the sorted runs, so it is a real run."""
    key = "final_q_error" if scores["final_q_error"].notna().any() else "episodes_to_solve"
    labels = stats.group_labels(scores, group_by)
    rows = []
    for g in stats.ordered_groups(scores, group_by):
        sub = scores[labels == g].sort_values([key, "seed"], kind="stable")
        rows.append(sub.iloc[(len(sub) - 1) // 2].to_dict() | {"group": g})
    return pd.DataFrame(rows)


def _value_figures(sweep: Sweep, scores: pd.DataFrame, group_by: list[str], out: Path,
                   notes: list[str]) -> list[tuple[Path, str]]:
    """Value heatmaps beside Q*, one figure per grid env of the sweep."""
    from qlab.core import envs

    client = MlflowClient(tracking_uri=sweep.uri)
    reps = _representatives(scores, group_by)
    env_col = "env" if "env" in reps.columns else None
    drawn = []
    with tempfile.TemporaryDirectory() as tmp:
        for env_name, sub in (reps.groupby(env_col, sort=False) if env_col
                              else [("", reps)]):
            items, rows, model, layout = [], [], None, None
            for _, r in sub.iterrows():
                d = Path(tmp) / r["run_id"]
                try:
                    cfg = run_config(client, r["run_id"], d)
                    if layout is None:
                        layout = plots.grid_layout(cfg.env)
                        if layout is None:
                            notes.append(f"No value heatmaps for env {env_name}: its states "
                                         "are not cells of a grid.")
                            break
                        model = envs.make_model(cfg.env)
                        if model is None:
                            notes.append(f"No value heatmaps for env {env_name}: no model.")
                            break
                    q = q_on_states(agent_file(client, r["run_id"], d), cfg.env)
                except (AnalysisError, MlflowException, OSError, KeyError, ValueError) as exc:
                    notes.append(f"No heatmap for run {r['run_id']} ({r['group']}): "
                                 f"{str(exc).splitlines()[0]}")
                    continue
                seed = "" if pd.isna(r.get("seed")) else f" (seed {int(r['seed'])})"
                items.append((f"{r['group']}{seed}", q, float(cfg.agent.gamma)))
                rows.append(r.get("agent") or "")
            if not items or layout is None or model is None:
                continue
            fig = plots.value_figure(items, model, layout, rows=rows if len(group_by) > 1
                                     else None)
            path = plots.save(fig, out / "figures" / f"values_{_slug(env_name or 'env')}.png")
            caption = ("V(s) = max<sub>a</sub> Q(s, a) and the greedy policy of one run per "
                       "group (the run with the median final max |Q − Q*| of its group), beside "
                       "Q* from value iteration with every optimal action. Red arrows: greedy "
                       "actions that are not optimal. Grey cells: no action is taken there."
                       + (f" Env: {_e(env_name)}." if env_name else ""))
            drawn.append((path, caption))
    return drawn


def _references(sweep: Sweep) -> dict[str, tuple[float, str]]:
    """Optimal-policy reference lines when every run shares one env with a model: those on
    which every discount in the sweep agrees (the optimal episode length on the grid world
    is the shortest path whatever gamma)."""
    from qlab.core import envs

    if sweep.runs.get("env") is None or sweep.runs["env"].nunique() != 1:
        return {}
    gam = sweep.runs.get("params.agent.gamma")
    if gam is None or gam.isna().any():
        return {}
    client = MlflowClient(tracking_uri=sweep.uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg = run_config(client, sweep.runs["run_id"].iloc[0], tmp)
            model = envs.make_model(cfg.env)
        except (MlflowException, OSError, KeyError, ValueError):
            return {}
    if model is None:
        return {}
    refs = [plots.optimal_references(model, float(g)) for g in sorted(gam.unique())]
    return {k: v for k, v in refs[0].items()
            if all(abs(r[k][0] - v[0]) < 1e-9 for r in refs[1:])}


# ------------------------------------------------------------------------------ the answer

def _answer_section(answers: pd.DataFrame, agent_col: str | None, statistic: str) -> list[str]:
    """The first screen: per agent and score, the best setting and whether seeds tell."""
    who = "agent" if agent_col is not None else "runs"
    out = [f"<h2>Answer: the best setting per {who}</h2>"]
    if answers.empty:
        out.append("<p class=note>Nothing to choose between: no score differs between the "
                   "settings of any agent.</p>")
        return out
    rows = []
    for _, r in answers.iterrows():
        poi = ("–" if not math.isfinite(r["poi"]) else
               _ci(r["poi"], r["poi_low"], r["poi_high"], "{:.2f}"))
        rows.append([f"<b>{_e(r['agent'])}</b>", _e(stats.SCORES[r["score"]].label),
                     _e(r["verdict"]), f"{poi} <span class=ci>vs {_e(r['runner_up'])}</span>"])
    out.append(_table([_e(who), "score", f"best setting ({statistic.upper()} over seeds "
                       f"[{stats.CONFIDENCE:.0%} CI])", "P(best beats runner-up)"], rows,
                      "answer"))
    out.append("<p class=note>Best by the summary statistic; \"not distinguishable\" when the "
               "confidence intervals overlap: more seeds, not this sweep, would decide.</p>")
    return out


def _like_for_like_section(differ: pd.DataFrame, floors: list[str],
                           answers: pd.DataFrame) -> list[str]:
    """What the groups compared do not share: settings, epsilon floors, resolution."""
    out = ["<h2>Like for like?</h2>"]
    if differ.empty:
        out.append("<p class=note>Every setting but the grouping keys is the same in every "
                   "run.</p>")
    else:
        rows = [[f"<code>{_e(r['setting'])}</code>",
                 "<b>within an agent: confounded</b>" if r["within"] else "between agents only",
                 _e(r["values"])] for _, r in differ.iterrows()]
        out.append("<p class=note>Settings that are not grouping keys but differ between "
                   "runs. Between agents only: each agent's own comparison is like for like, "
                   "comparing across agents is not.</p>")
        out.append(_table(["setting", "differs", "values"], rows, "like"))
    for note in floors:
        out.append(f"<p class=note>Epsilon floor: {_e(note)}; after it the decay no longer "
                   "matters.</p>")
    floor_rows = answers[answers["floor"] != ""] if not answers.empty else answers
    for _, r in floor_rows.iterrows():
        out.append(f"<p class=note>Resolution floor ({_e(r['agent'])}, "
                   f"{_e(stats.SCORES[r['score']].label)}): {_e(r['floor'])}.</p>")
    return out


# ------------------------------------------------------------------------------ the report

def build_report(sweep: Sweep, out: str | Path, group_by: Sequence[str] | None = None,
                 smooth: int | None = None, log: bool | None = None,
                 threshold: float | None = None, statistic: str = "iqm",
                 n_resamples: int = stats.N_RESAMPLES, seed: int = 0) -> Report:
    """Write the report of ``sweep`` into directory ``out``; see the module docstring."""
    t0 = time.perf_counter()
    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(parents=True, exist_ok=True)
    for old in (*(out / "figures").glob("*.png"), *(out / "data").glob("*.csv")):
        old.unlink()  # ours, from an earlier report of this experiment
    all_runs = sweep.runs
    sw = summary.finished_only(sweep)
    finished = sw.runs
    notes: list[str] = []
    if len(finished) < len(all_runs):
        others = all_runs.loc[all_runs["status"] != "FINISHED", "status"].value_counts()
        notes.append("Left out of every statistic: " + ", ".join(
            f"{n} {s}" for s, n in others.items()) + " run(s) (listed under Runs).")
    gb = (stats.default_group_by(sw.runs) if group_by is None
          else list(dict.fromkeys(column(sw.runs, k) for k in group_by)))
    scores = stats.run_scores(sw, threshold=threshold)
    varying = [m for m in stats.SCORES if m in scores and not _constant(scores[m])]
    constant = [m for m in stats.SCORES if m in scores and scores[m].notna().any()
                and m not in varying]
    agg = stats.aggregate(scores, gb, metrics=varying + constant, n_resamples=n_resamples,
                          seed=seed)
    labels = stats.group_labels(scores, gb)
    groups = stats.ordered_groups(scores, gb)
    report = Report(path=out / "index.html", notes=notes, aggregates=agg, scores=scores)
    table = summary.summary_table(scores, gb, runs=all_runs, statistic=statistic,
                                  n_resamples=n_resamples, seed=seed)
    answers = verdict.verdicts(scores, agg, gb, statistic=statistic, n_resamples=n_resamples,
                               seed=seed)
    differ = verdict.differing_settings(finished, gb)
    floors = verdict.epsilon_floors(finished, gb)
    agent_col = verdict.agent_column(gb)
    # Probability of improvement within each agent: the comparison the sweep asks for.
    blocks = ([(None, scores)] if agent_col is None
              else [(a, scores[scores[agent_col] == a])
                    for a in dict.fromkeys(scores.sort_values(agent_col)[agent_col])])

    # ---- data files
    keep = ["run_id", "run_name", "status", "agent", "env", "seed", *gb, *stats.SCORES,
            "solved", "solve_criterion"]
    runs_csv = scores.assign(group=labels)[["group"] + list(dict.fromkeys(
        c for c in keep if c in scores.columns))]
    data = {"runs.csv": runs_csv, "aggregates.csv": agg, "summary.csv": table,
            "verdict.csv": answers}
    pois: dict[str, pd.DataFrame] = {}
    for m in POI_SCORES:
        if m in varying:
            per = [stats.poi_matrix(sub, m, gb, n_resamples=n_resamples, seed=seed)
                   .assign(block="all" if a is None else str(a))
                   for a, sub in blocks if stats.group_labels(sub, gb).nunique() > 1]
            if per:
                pois[m] = pd.concat(per, ignore_index=True)
                data[f"poi_{m}.csv"] = pois[m]
    for name, df in data.items():
        df.to_csv(out / "data" / name, index=False)
        report.tables.append(out / "data" / name)

    # ---- figures
    figs: list[tuple[Path, str]] = []
    if varying:
        fig = plots.interval_figure(agg, varying, statistic=statistic, group_by=gb,
                                    runs=scores)
        figs.append((plots.save(fig, out / "figures" / "final_performance.png"),
                     f"Final performance per group: {statistic.upper()} over seeds and its "
                     f"{stats.CONFIDENCE:.0%} stratified bootstrap CI."))
    n_episodes = int(sw.history.loc[sw.history["key"] == "train/episode_length", "step"].max()
                     + 1) if (sw.history["key"] == "train/episode_length").any() else 1
    smooth = smooth if smooth is not None else max(1, n_episodes // 30)
    refs = _references(sw)
    curve_figs = []
    for key in CURVE_KEYS:
        vals = sw.history.loc[sw.history["key"] == key, "value"]
        if vals.empty:
            continue
        if _constant(vals):
            notes.append(f"<code>{_e(key)}</code> is {_num(float(vals.iloc[0]))} at every "
                         "step of every run: no curve drawn.")
            continue
        fig = plots.curves_figure(sw, key, gb, smooth=smooth, log=log,
                                  reference=refs.get(key), seed=seed)
        path = plots.save(fig, out / "figures" / f"curve_{_slug(key)}.png")
        curve_figs.append((path, f"<code>{_e(key)}</code>: mean over seeds per group with a "
                                 f"{stats.CONFIDENCE:.0%} bootstrap CI band."))
    value_figs = _value_figures(sw, scores, gb, out, notes)
    book_figs = figures.book_figures(sw, out)  # the experiment's textbook figure, if it names one
    report.figures = [p for p, _ in book_figs + figs + curve_figs + value_figs]

    # ---- the page
    parts = [f"<h1>qlab report: {_e(sw.experiment)}</h1>"]
    about = (sw.parent.get("tags") or {}).get("mlflow.note.content") if sw.parent else None
    if about:  # the named experiment's description (qlab.sweeps.callback.describe)
        parts.append(f"<p>{_e(about)}</p>")
    meta = [("experiment", _e(sw.experiment)),
            ("sweep", _e(sw.sweep_id or "– (runs without a sweep)")),
            ("parent run", _e(sw.parent_run_id or "–") + (
                f" ({_e(sw.parent.get('status', ''))})" if sw.parent else "")),
            ("tracking store", _e(redact(sw.uri))),
            ("runs", f"{len(finished)} finished of {len(all_runs)}"),
            ("groups", f"{len(groups)} (by {_e(', '.join(stats._short(c) for c in gb))})"),
            ("generated", _e(time.strftime("%Y-%m-%d %H:%M:%S %Z")))]
    overrides = sw.parent.get("params", {}).get("overrides") if sw.parent else None
    if overrides:
        meta.append(("command", f"<code>qlab-train -m {_e(overrides)}</code>"))
    parts += _answer_section(answers, agent_col, statistic)
    parts += _like_for_like_section(differ, floors, answers)
    parts.append("<h2>About these runs</h2>")
    parts.append(_table(["", ""], meta, "meta"))
    parts += [f"<p class=note>{n}</p>" for n in notes]

    # Summary: one row per group.
    fmt = {m: stats.SCORES[m].fmt for m in stats.SCORES}
    a = agg[agg["statistic"] == statistic]
    head = ["group", "runs", "finished", "solved"] + [_e(stats.SCORES[m].label)
                                                      for m in varying]
    rows = []
    totals = table.set_index("group")["runs"]
    for g in groups:
        sub = a[a["group"] == g].set_index("metric")
        first = sub.iloc[0]
        row = [_e(g), str(int(totals.get(g, first["runs"]))), str(int(first["runs"])),
               f"{int(first['solved'])}/{int(first['runs'])}"]
        for m in varying:
            r = sub.loc[m]
            row.append(_ci(r["estimate"], r["ci_low"], r["ci_high"], fmt[m]))
        rows.append(row)
    parts.append(f"<h2>Summary: {statistic.upper()} over seeds [{stats.CONFIDENCE:.0%} CI]</h2>")
    parts.append(_table(head, rows))
    if constant:
        same = ", ".join(f"{_e(stats.SCORES[m].label)} = {_num(float(scores[m].dropna().iloc[0]))}"
                         for m in constant)
        parts.append(f"<p class=note>The same in every run: {same}.</p>")
    crit = sorted(set(scores["solve_criterion"]))
    parts.append("<p class=note>Episodes to solve: the first evaluated episode (0-based) "
                 "after which the criterion holds at every later evaluation — "
                 f"{_e('; '.join(crit))}. Unsolved runs count as the episode budget, so with "
                 "unsolved runs mean and IQM are lower bounds; the median stays exact while at "
                 "most half are unsolved.</p>")
    for path, caption in book_figs + figs:
        parts.append(_figure(path.relative_to(out).as_posix(), caption))

    # Detail tables per score.
    parts.append("<h2>Aggregates per score</h2>")
    for m in varying:
        sub = agg[agg["metric"] == m]
        rows = []
        for g in groups:
            s = sub[sub["group"] == g].set_index("statistic")
            rows.append([_e(g), str(int(s["n"].iloc[0]))] + [
                _ci(s.loc[st, "estimate"], s.loc[st, "ci_low"], s.loc[st, "ci_high"], fmt[m])
                for st in ("mean", "median", "iqm")])
        better = "higher" if stats.SCORES[m].higher_is_better else "lower"
        parts.append(f"<h3>{_e(stats.SCORES[m].label)} <span class=note>({better} is "
                     "better)</span></h3>")
        parts.append(_table(["group", "n", "mean", "median", "IQM"], rows))

    # Probability of improvement, within each agent.
    if pois:
        parts.append("<h2>Probability of improvement</h2><p class=note>Cell (row X, column Y): "
                     "P(X better than Y) + ½ P(tie) for a random run of X against a random run "
                     f"of Y, with its {stats.CONFIDENCE:.0%} bootstrap CI. Above 0.5 (green): "
                     "X tends to beat Y. Settings are compared within each agent.</p>")
    for m, p in pois.items():
        parts.append(f"<h3>{_e(stats.SCORES[m].label)}</h3>")
        for _, pb in p.groupby("block", sort=False):
            names = list(dict.fromkeys(pb["x"]))
            rows = []
            for x in names:
                cells = [f"<b>{_e(x)}</b>"]
                for y in names:
                    r = pb[(pb["x"] == x) & (pb["y"] == y)].iloc[0]
                    cells.append(f"<div style='background:{_poi_colour(r['poi'])}'>"
                                 f"{_ci(r['poi'], r['ci_low'], r['ci_high'], '{:.2f}')}</div>")
                rows.append(cells)
            parts.append(_table(["X \\ Y"] + [_e(g) for g in names], rows, "poi"))

    if curve_figs:
        parts.append("<h2>Learning curves</h2>")
        parts += [_figure(p.relative_to(out).as_posix(), c) for p, c in curve_figs]
    if value_figs:
        parts.append("<h2>What the agents learned</h2>")
        parts += [_figure(p.relative_to(out).as_posix(), c) for p, c in value_figs]

    # Runs.
    parts.append("<h2>Runs</h2><details><summary>every run, its group and its scores"
                 "</summary>")
    run_rows = []
    all_labels = stats.group_labels(all_runs, gb)
    for i, r in all_runs.iterrows():
        sc = scores[scores["run_id"] == r["run_id"]]
        vals = ([_num(float(sc[m].iloc[0]), fmt[m]) for m in varying] if len(sc)
                else ["–"] * len(varying))
        solved = ("yes" if bool(sc["solved"].iloc[0]) else "no") if len(sc) else "–"
        run_rows.append([_e(r["run_name"]), _e(all_labels.loc[i]),
                         f"<code>{_e(r['run_id'])}</code>", _e(r["status"]), solved] + vals)
    parts.append(_table(["run", "group", "id", "status", "solved"]
                        + [_e(stats.SCORES[m].label) for m in varying], run_rows))
    parts.append("</details>")
    links = " · ".join(f"<a href='{_e(p.relative_to(out).as_posix())}'>{_e(p.name)}</a>"
                       for p in report.tables)
    parts.append(f"<p>Data: {links}</p>")
    parts.append(
        "<h2>Methods</h2><p class=note>Scores per run from its MLflow metric histories: final "
        "greedy return, max |Q − Q*| and share of optimal actions at the last evaluation; "
        "Q-delta and episode length averaged over the last 10% of episodes; episodes to "
        "solve as above. Per group over seeds: mean, median and IQM (mean of the middle 50%, "
        f"scipy.stats.trim_mean(x, 0.25)), each with a {stats.CONFIDENCE:.0%} percentile "
        f"bootstrap CI ({n_resamples} resamples; stratified by env when a group spans "
        "several). Probability of improvement as in Agarwal et al. (2021, rliable). Curves: "
        "mean over seeds per step, CI from resampling runs. Report built in "
        f"{time.perf_counter() - t0:.1f} s; runs loaded in {sw.load_seconds:.1f} s.</p>")
    page = ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>qlab report: {_e(sw.experiment)}</title><style>{CSS}</style></head>"
            "<body>" + "\n".join(parts) + "</body></html>\n")
    report.path.write_text(page, encoding="utf-8")
    return report


# ------------------------------------------------------------------------------ CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Write an HTML report of a sweep (aggregates over seeds with "
        "bootstrap CIs, probability of improvement, curves, value heatmaps) and log it to the "
        "sweep's parent run.")
    p.add_argument("experiment", nargs="?", help="MLflow experiment (its latest sweep)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sweep-id", help="the sweep's sweep_id tag")
    which.add_argument("--parent", metavar="RUN_ID", help="the sweep's parent run id")
    p.add_argument("--out", type=Path, help="output directory (default: reports/<experiment>)")
    p.add_argument("--uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "mlflow.db in the working directory)")
    p.add_argument("--group-by", nargs="+", metavar="KEY",
                   help="group runs by these params/tags (default: agent and exploration.decay, "
                   "plus any other swept key)")
    p.add_argument("--smooth", type=int, metavar="EPISODES",
                   help="trailing-mean window of the curves (default: episodes / 30)")
    p.add_argument("--scale", choices=("auto", "linear", "log"), default="auto",
                   help="y scale of the curves (auto: log for Q-delta, episode length, Q error)")
    p.add_argument("--threshold", type=float,
                   help="return that counts as solved on envs without a model (default: the "
                   "env's reward_threshold)")
    p.add_argument("--resamples", type=int, default=stats.N_RESAMPLES,
                   help="bootstrap resamples (default: %(default)s)")
    p.add_argument("--no-log-artifact", action="store_true",
                   help="do not log the report to the parent run")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point; errors are one line on stderr and exit code 1."""
    args = _parser().parse_args(argv)
    if args.experiment is None and args.sweep_id is None and args.parent is None:
        _parser().error("name an EXPERIMENT, or pass --sweep-id or --parent")
    if args.smooth is not None and args.smooth < 1:
        _parser().error(f"--smooth {args.smooth}: must be >= 1")
    if args.resamples < 100:
        _parser().error(f"--resamples {args.resamples}: must be >= 100")
    return exit_status(PROG, lambda: run_report(args))


def run_report(args: argparse.Namespace) -> int:
    """Build, write and log the report the command line asks for; print where it is."""
    try:
        sweep = load_sweep(args.experiment, sweep_id=args.sweep_id, parent=args.parent,
                           uri=args.uri, keys=HISTORY_KEYS)
        out = args.out or Path("reports") / _slug(sweep.experiment)
        log = {"auto": None, "linear": False, "log": True}[args.scale]
        rep = build_report(sweep, out, group_by=args.group_by, smooth=args.smooth, log=log,
                           threshold=args.threshold, n_resamples=args.resamples)
        logged = ""
        if sweep.parent_run_id and not args.no_log_artifact:
            client = MlflowClient(tracking_uri=sweep.uri)
            client.log_artifacts(sweep.parent_run_id, str(out), "report")
            logged = f"; logged to run {sweep.parent_run_id} as report/"
    except (MlflowException, OSError) as exc:
        raise ReportError(one_line(exc)) from exc
    print(f"{PROG}: {rep.path} ({sweep.n_runs} runs of {sweep.experiment!r}"
          f"{', sweep ' + sweep.sweep_id if sweep.sweep_id else ''}; loaded in "
          f"{sweep.load_seconds:.1f} s){logged}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
