"""One summary, one truth: the per-group table a sweep prints when it ends and the report's
summary, computed by the same code (:func:`qlab.analysis.stats.run_scores` and
:func:`qlab.analysis.stats.aggregate`, the same grouping, statistic, resamples and seed).

Each row is a group of runs (seeds); its scores are the IQM over its finished runs with a
95% bootstrap CI, beside how many runs it has, how many finished and how many solved.
Episodes to solve is right-censored: a run that never solved counts as its episode budget,
and the table says so wherever that happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from qlab.analysis import stats
from qlab.analysis.runs import AnalysisError, Sweep, load_sweep

STATISTIC = "iqm"  # the report's default statistic, and the terminal's
SCORES = ("episodes_to_solve", "final_return", "final_q_error")
# Every metric run_scores reads.
SCORE_KEYS = ("train/q_delta", "train/episode_length", "train/episode_return", "eval/return",
              "eval/q_error", "eval/optimal_fraction")


def finished_only(sweep: Sweep) -> Sweep:
    """The sweep restricted to its FINISHED runs (the others are left out of statistics)."""
    done = sweep.runs[sweep.runs["status"] == "FINISHED"]
    if done.empty:
        raise AnalysisError(f"none of the {len(sweep.runs)} runs finished (statuses: "
                            f"{', '.join(sorted(set(sweep.runs['status'])))})")
    return Sweep(**{**sweep.__dict__, "runs": done.reset_index(drop=True),
                    "history": sweep.history[sweep.history["run_id"].isin(done["run_id"])]})


def budget(scores: pd.DataFrame) -> int | None:
    """The episode budget unsolved runs count as (None if the runs differ)."""
    if "params.episodes" not in scores:
        return None
    vals = pd.to_numeric(scores["params.episodes"], errors="coerce").dropna().unique()
    return int(vals[0]) if len(vals) == 1 else None


def summary_table(scores: pd.DataFrame, group_by: Sequence[str], runs: pd.DataFrame | None = None,
                  statistic: str = STATISTIC, n_resamples: int = stats.N_RESAMPLES,
                  seed: int = 0) -> pd.DataFrame:
    """One row per group: ``group``, its keys, ``runs`` (all, FINISHED or not, when ``runs``
    is given), ``finished``, ``solved``, and per score in :data:`SCORES` its estimate with
    ``<score>_low`` / ``<score>_high`` (the CI)."""
    metrics = [m for m in SCORES if m in scores and scores[m].notna().any()]
    agg = stats.aggregate(scores, group_by, metrics=metrics, statistics=(statistic,),
                          n_resamples=n_resamples, seed=seed)
    totals = None
    if runs is not None:
        totals = stats.group_labels(runs, group_by).value_counts() if len(runs) else None
    rows = []
    for g in stats.ordered_groups(scores, group_by):
        sub = agg[agg["group"] == g].set_index("metric")
        first = sub.iloc[0]
        row = {"group": g, **{stats._short(c): first[c] for c in group_by},
               "runs": int(totals.get(g, first["runs"])) if totals is not None
               else int(first["runs"]),
               "finished": int(first["runs"]), "solved": int(first["solved"])}
        for m in metrics:
            row[m] = sub.loc[m, "estimate"]
            row[f"{m}_low"], row[f"{m}_high"] = sub.loc[m, "ci_low"], sub.loc[m, "ci_high"]
        rows.append(row)
    return pd.DataFrame(rows)


def _cell(est: float, lo: float, hi: float, fmt: str) -> str:
    if not math.isfinite(est):
        return "-"
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo == hi == est:
        return fmt.format(est)
    return f"{fmt.format(est)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def summary_text(table: pd.DataFrame, n_budget: int | None, statistic: str = STATISTIC) -> str:
    """The table as aligned text, with the censoring stated under it."""
    metrics = [m for m in SCORES if m in table]
    head = ["group", "runs", "finished", "solved"] + [stats.SCORES[m].label for m in metrics]
    body = []
    for _, r in table.iterrows():
        body.append([str(r["group"]), str(r["runs"]), str(r["finished"]),
                     f"{r['solved']}/{r['finished']}"]
                    + [_cell(r[m], r[f"{m}_low"], r[f"{m}_high"], stats.SCORES[m].fmt)
                       for m in metrics])
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    lines = [line(head), *map(line, body),
             f"{statistic.upper()} over finished seeds [{stats.CONFIDENCE:.0%} bootstrap CI]."]
    unsolved = table[table["solved"] < table["finished"]]
    if "episodes_to_solve" in metrics and not unsolved.empty:
        cap = f" ({n_budget})" if n_budget else ""
        lines.append(f"Episodes to solve: a run that never solved counts as the episode "
                     f"budget{cap}, so in {len(unsolved)} group(s) with unsolved runs the "
                     f"{statistic.upper()} is a lower bound.")
    return "\n".join(lines)


def sweep_summary(uri: str, parent_run_id: str, n_resamples: int = stats.N_RESAMPLES,
                  seed: int = 0) -> tuple[pd.DataFrame, str]:
    """The summary of the sweep under ``parent_run_id`` (as the report computes it): the
    table and its text."""
    sweep = load_sweep(parent=parent_run_id, uri=uri, keys=SCORE_KEYS)
    done = finished_only(sweep)
    scores = stats.run_scores(done)
    group_by = stats.default_group_by(done.runs)
    table = summary_table(scores, group_by, runs=sweep.runs, n_resamples=n_resamples, seed=seed)
    return table, summary_text(table, budget(scores))


__all__ = ["STATISTIC", "SCORES", "SCORE_KEYS", "finished_only", "budget", "summary_table",
           "summary_text", "sweep_summary"]
