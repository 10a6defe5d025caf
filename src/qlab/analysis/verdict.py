"""The answer a sweep exists to give: per agent, which setting is best on each score, and
whether the seeds can tell — plus what makes a comparison not like for like.

- :func:`verdicts`: per agent (the groups sharing an agent; all groups when the runs have no
  agent column) and score, the best group by the summary statistic with its CI, the groups
  whose CI overlaps it ("not distinguishable with N seeds" when every other one does), the
  probability that a run of the best group beats a run of the runner-up, and whether the
  score sits at its resolution floor (every run solved at the first evaluation: the
  evaluation cadence, not the agents, decides the number).
- :func:`differing_settings`: the params that are not grouping keys yet differ between the
  groups compared — within an agent (the comparison is confounded) or only between agents.
- :func:`epsilon_floors`: where an epsilon schedule's floor cuts the swept decay short.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from qlab.analysis import stats

SCORES = ("episodes_to_solve", "final_return", "final_q_error")
COLUMNS = ["agent", "score", "best", "group", "estimate", "ci_low", "ci_high", "seeds", "tied",
           "runner_up", "poi", "poi_low", "poi_high", "floor", "verdict"]
# Params that are not settings of a comparison: per run, or bookkeeping.
NOT_SETTINGS = ("params.seed", "params.agent.module", "params.replicas", "params.experiment_name",
                "params.tracking.uri", "params.resume", "params.checkpoint_dir",
                "params.fast", "params.tracking.enabled", "params.checkpoint_every")


def agent_column(group_by: Sequence[str]) -> str | None:
    """The grouping key that names the agent, if any."""
    for c in group_by:
        if stats._short(c) in ("agent", "agent.name"):
            return c
    return None


def setting_label(row: pd.Series | dict, group_by: Sequence[str], agent_col: str | None) -> str:
    """A group's label without its agent (``decay=0.999``), or the agent alone."""
    keys = [c for c in group_by if c != agent_col]
    if not keys:
        return str(row[agent_col]) if agent_col else "all runs"
    return stats.group_labels(pd.DataFrame([dict(row)]), keys).iloc[0]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    if not all(map(math.isfinite, (*a, *b))):
        return True  # no CI: nothing tells them apart
    return a[0] <= b[1] and b[0] <= a[1]


def verdicts(scores: pd.DataFrame, agg: pd.DataFrame, group_by: Sequence[str],
             statistic: str = "iqm", n_resamples: int = stats.N_RESAMPLES,
             seed: int = 0) -> pd.DataFrame:
    """One row per (agent, score) that varies within the agent over more than one group:
    ``agent``, ``score``, ``best`` (its setting label), ``group``, ``estimate``, ``ci_low``,
    ``ci_high``, ``seeds``, ``tied`` (settings whose CI overlaps the best's), ``runner_up``,
    ``poi``, ``poi_low``, ``poi_high`` (P(best beats runner-up)), ``floor`` (resolution
    floor note or "") and ``verdict`` (one sentence)."""
    agent_col = agent_column(group_by)
    labels = stats.group_labels(scores, group_by)
    a = agg[agg["statistic"] == statistic]
    agents = ([None] if agent_col is None
              else list(dict.fromkeys(scores.sort_values(agent_col)[agent_col])))
    rows = []
    for ag in agents:
        mask = (pd.Series(True, index=scores.index) if ag is None
                else scores[agent_col] == ag)
        sub = scores[mask]
        groups = stats.ordered_groups(sub, group_by)
        if len(groups) < 2:
            continue
        names = {g: setting_label(sub[labels[mask] == g].iloc[0], group_by, agent_col)
                 for g in groups}
        for m in SCORES:
            if m not in sub or sub[m].isna().all():
                continue
            vals = sub[m].dropna().to_numpy()
            floor = resolution_floor(sub) if m == "episodes_to_solve" else ""
            if np.all(vals == vals[0]) and not floor:
                continue  # the same in every run of this agent: nothing to choose
            sign = 1.0 if stats.SCORES[m].higher_is_better else -1.0
            est = a[(a["metric"] == m) & a["group"].isin(groups)].set_index("group")
            order = sorted(groups, key=lambda g: -sign * est.loc[g, "estimate"])
            best, runner = order[0], order[1]
            b = est.loc[best]
            ci = (b["ci_low"], b["ci_high"])
            tied = [g for g in order[1:] if _overlap(ci, (est.loc[g, "ci_low"],
                                                          est.loc[g, "ci_high"]))]
            x = sign * sub.loc[labels[mask] == best, m].dropna().to_numpy(dtype=float)
            y = sign * sub.loc[labels[mask] == runner, m].dropna().to_numpy(dtype=float)
            poi, plo, phi = stats.poi_ci([x], [y], n_resamples=n_resamples, seed=seed)
            n_seeds = int(b["n"])
            name = names.__getitem__
            fmt = stats.SCORES[m].fmt
            value = (f"{fmt.format(b['estimate'])} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
                     if all(map(math.isfinite, ci)) else fmt.format(b["estimate"]))
            if floor:
                verdict = f"cannot be told apart: {floor}"
            elif len(tied) == len(order) - 1:
                verdict = (f"{name(best)} ({value}), but not distinguishable from the other "
                           f"settings with {n_seeds} seeds")
            elif tied:
                verdict = (f"{name(best)} ({value}); not distinguishable from "
                           f"{', '.join(name(g) for g in tied)} with {n_seeds} seeds")
            else:
                verdict = f"{name(best)} ({value}), ahead of every other setting"
            rows.append({"agent": ag if ag is not None else "all", "score": m,
                         "best": name(best), "group": best, "estimate": b["estimate"],
                         "ci_low": ci[0], "ci_high": ci[1], "seeds": n_seeds,
                         "tied": ", ".join(name(g) for g in tied), "runner_up": name(runner),
                         "poi": poi, "poi_low": plo, "poi_high": phi, "floor": floor,
                         "verdict": verdict})
    return pd.DataFrame(rows, columns=COLUMNS)


def resolution_floor(runs: pd.DataFrame) -> str:
    """A note when every run solved at the first evaluation (episode ``eval_every`` - 1):
    the number is the evaluation cadence's, not the agent's; "" otherwise."""
    if "params.eval_every" not in runs or "episodes_to_solve" not in runs:
        return ""
    every = pd.to_numeric(runs["params.eval_every"], errors="coerce")
    if every.isna().any():
        return ""
    first = every - 1
    if bool(runs["solved"].all()) and bool((runs["episodes_to_solve"] <= first).all()):
        cad = ", ".join(sorted({str(int(e)) for e in every}))
        return (f"every run solved at the first evaluation (eval_every={cad}): the score is at "
                "its resolution floor; evaluate more often to separate the settings")
    return ""


def differing_settings(runs: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Params that are not grouping keys but differ between runs: ``setting``, ``within``
    (True when they differ between groups of one agent: the comparison is confounded) and
    ``values`` (per agent, or per group, its values)."""
    agent_col = agent_column(group_by)
    rows = []
    for c in sorted(c for c in runs.columns if c.startswith("params.")):
        if c in group_by or c in NOT_SETTINGS or c == "params.agent.name":
            continue
        col = runs[c]
        if col.astype(str).nunique() < 2:
            continue
        if agent_col is not None:
            has = col.notna().groupby(runs[agent_col]).any()
            if has.sum() < 2:
                continue  # one agent's own key (batch_size): nothing to compare it with
            mine = col.notna() & runs[agent_col].isin(has[has].index)
            per = col[mine].groupby(runs.loc[mine, agent_col], sort=True).agg(
                lambda v: sorted({_value(x) for x in v}))
            if sum(map(len, per)) < 2:
                continue
            within = bool((per.map(len) > 1).any())
            values = "; ".join(f"{a}: {', '.join(v)}" for a, v in per.items())
        else:
            within = True
            values = ", ".join(sorted({_value(x) for x in col}))
        rows.append({"setting": stats._short(c), "within": within, "values": values})
    return pd.DataFrame(rows, columns=["setting", "within", "values"])


def _value(x) -> str:
    """A param value as a user wrote it: 1.0 -> 1, 0.0 -> 0."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def epsilon_floors(runs: pd.DataFrame, group_by: Sequence[str]) -> list[str]:
    """Notes where an exponential epsilon schedule reaches its floor ``exploration.min``
    within the episode budget: from there on the swept decay no longer changes anything."""
    need = ("params.exploration.name", "params.exploration.start", "params.exploration.decay",
            "params.exploration.min", "params.episodes")
    if not all(c in runs for c in need):
        return []
    notes = []
    labels = stats.group_labels(runs, group_by)
    for g in stats.ordered_groups(runs, group_by):
        r = runs[labels == g].iloc[0]
        try:
            start, decay, low, n = (float(r[c]) for c in need[1:])
        except (TypeError, ValueError):
            continue
        if r[need[0]] != "exponential" or not (0 < low < start) or not (0 < decay < 1):
            continue
        at = math.ceil(math.log(low / start) / math.log(decay))
        if at < n:
            notes.append(f"{g}: epsilon reaches its floor {low:g} at episode {at} of {int(n)}")
    return notes


__all__ = ["SCORES", "agent_column", "setting_label", "verdicts", "resolution_floor",
           "differing_settings", "epsilon_floors"]
