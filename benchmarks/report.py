"""The results as a terminal table and as BENCHMARKS.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from benchmarks.common import Row

COLUMNS = ("metric", "contender", "value", "vs baseline", "target", "notes")


def fmt_value(r: Row) -> str:
    v = r.value
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "not reached" if "time to optimal" in r.metric else "n/a"
    if r.unit == "steps/s":
        return f"{v:,.0f} steps/s"
    if r.unit == "s":
        return f"{v:.3g} s" if v < 100 else f"{v:,.0f} s"
    if r.unit == "%":
        return f"{v:+.0f}%" if abs(v) >= 10 else f"{v:+.1f}%"
    return f"{v:.4g}" + (f" {r.unit}" if r.unit else "")


def fmt_ratio(r: Row) -> str:
    if r.baseline is None:
        return ""
    if r.who == r.baseline:
        return "baseline"
    if r.ratio is None:
        return "n/a"
    x = r.ratio
    s = f"{x:.3g}x" if x < 1000 else f"{x:,.0f}x"
    return f"{s} {r.baseline}"


def fmt_target(r: Row) -> str:
    if r.target is None:
        return ""
    verdict = "n/a" if r.met is None else ("met" if r.met else "MISSED")
    return f"{r.target}: {verdict}"


def cells(r: Row) -> list[str]:
    return [r.metric, r.who, fmt_value(r), fmt_ratio(r), fmt_target(r), r.note]


def sections(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.section, []).append(r)
    return out


def text_table(rows: Sequence[Row]) -> str:
    """A plain-text table per section, columns aligned."""
    lines = []
    for name, rs in sections(rows).items():
        data = [list(COLUMNS)] + [cells(r) for r in rs]
        widths = [max(len(row[i]) for row in data) for i in range(len(COLUMNS))]
        lines.append(f"== {name}")
        for i, row in enumerate(data):
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.append("")
    return "\n".join(lines)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown_table(rows: Sequence[Row]) -> str:
    out = []
    for name, rs in sections(rows).items():
        out.append(f"### {name}\n")
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|" + "---|" * len(COLUMNS))
        for r in rs:
            out.append("| " + " | ".join(_md_escape(c) for c in cells(r)) + " |")
        out.append("")
    return "\n".join(out)


def targets_table(rows: Sequence[Row]) -> str:
    hits = [r for r in rows if r.target is not None]
    if not hits:
        return "No targeted figure was measured in this run.\n"
    out = ["| target | section | contender | reached | verdict |",
           "|---|---|---|---|---|"]
    for r in hits:
        reached = fmt_ratio(r) if r.target.endswith("x") else fmt_value(r)
        out.append(f"| {_md_escape(r.metric)} {r.target} | {r.section} | {_md_escape(r.who)} | "
                   f"{_md_escape(reached)} | {fmt_target(r).split(': ')[-1]} |")
    return "\n".join(out) + "\n"


METHOD = """\
- **Ratios.** Every figure is set against a baseline measured in the same run on the same
  machine: rates as contender / baseline, times as baseline / contender (so above 1x is
  faster either way). Values are medians over repeats (the notes say how many). Tabular
  contenders run interleaved within each repeat, and tabular and tracking runs follow an
  uncounted warm-up run (imports, caches, any compilation); each DQN contender starts in a
  fresh process and a sweep is timed cold, end to end, as a user runs them.
- **Tabular.** All contenders use qlab's tuned settings for the grid
  (`conf/hparams/tabular_q_griddy*.yaml`: lr, gamma, epsilon schedule, episode budget). The
  notebook-style loop (`benchmarks/notebook_baseline.py`: a dict Q table keyed by pickled
  observations, `np.where` to find the agent, the episodic backward update) and qlab run the
  grid world; the plain gymnasium loop runs `FrozenLake-v1` (`is_slippery=False`) of the same
  size with a numpy Q table and online Q-learning, with 10x the episode budget (it starts in
  one corner and rarely finds the goal by chance). qlab is driven through the objects
  `qlab.app.train.run` builds (env, agent, schedule), tracking off, trained twice: by the
  compiled fast path (`qlab fast`, `qlab.core.compiled`, what `qlab-train` runs for tabular
  agents) and by the numpy reference runner (`qlab numpy`, `fast=off`; bit for bit the
  same results). qlab's steps/s come from runs evaluated as `qlab-train` evaluates by
  default (every 25 episodes); its time to optimal from a second run of the same seed
  evaluated after every episode, whose steps/s is shown too ("evaluated every episode"): the
  compiled loop hands back to Python at each evaluation, which on the 4x4 grid (~10 steps an
  episode) measures that hand-back more than training. The fast path's start-up (numba
  compiling its kernels into an empty cache, or loading them from a filled one) is timed
  apart, in fresh processes. Greedy policies are
  checked against value iteration's optimal actions after every episode (qlab: its own
  `eval/optimal_fraction`), the checking time not counted; "time to optimal" is the training
  time up to the first check after which the policy stays optimal to the end of the budget
  (FrozenLake: its greedy path from the start is a shortest path to the goal). A run that
  never gets there counts as infinitely slow in the median. For R = 64 it is the time until
  all 64 replicas are optimal, and that divided by 64 per replica; steps/s counts every
  replica's steps.
- **DQN.** qlab's composed config for `agent=dqn env=cartpole` (rl-zoo's tuned settings for
  SB3, `conf/hparams/dqn_cartpole.yaml`) is handed key by key to Stable-Baselines3's `DQN`
  (epsilon annealed over the same env steps); both use qlab's `agent.threads` torch threads.
  Each contender runs in its own fresh process. Steps/s is env steps over training time
  (qlab's one greedy evaluation at the end is not counted; SB3 trains without evaluating).
  The final greedy return is the mean of 10 greedy episodes. The R = 1 runs (seeds 0-7) run
  one after another and are also the sequential baseline of the R = 8 job (seeds 0-7).
  "Gradient step per replica" times bursts of 128 gradient steps alone (replay buffers
  holding 5,000 random transitions) at R = 1 and R = 8, and torch's profiler gives the part
  spent in matrix products (baddbmm, bmm); an R-replica job does R times those products, so
  R=1's step over R=8's matrix-product time per replica is a ceiling on what batching can
  gain in learning at the same thread count.
- **Tracking.** A griddy8 job of 300 episodes (tabular_q) at R = 1, 16 and 64 with one run
  per replica and at R = 4096 as one aggregate run: `qlab.app.train.run` whole with tracking
  on (a sqlite store in a temp dir, created and warmed up first) and off, alternating. *qlab
  added* is the wall time the tracked job spends in its tracking calls, timed inside it
  (planning the job against the store, opening and closing the runs, every `Tracker` call:
  each flush's metric write, the agent's files); *on - off* is shown beside it and agrees
  where the job is short (R = 64: within 0.05 s per repeat), but at R = 4096 training's own
  run-to-run spread (over a second of ~10 s) is larger than the whole tracking cost. For an
  aggregate run the part spent building and writing its per-replica table
  (`replicas.parquet`, 1.2M rows) is shown too. *MLflow's floor* writes what the tracked job
  left in the store (its runs' tags, params, every metric point, every file, the table
  ready-made) again with direct `MlflowClient` calls: per run `create_run`, one `log_batch`,
  one `log_artifacts`, `set_terminated`. The target is added <= 1.25 x floor (issue 14). qlab
  itself writes metric points into an SQL store in bulk (one multi-row insert per flush for
  all of a job's runs, `qlab.tracking.metric_points`) rather than through `log_batch`'s
  per-point ORM objects, so it can come in under this floor. The
  command rows time `qlab-train` in a fresh process tracked against untracked (issue 14:
  <= 4x at R = 64, <= 1.5x for the aggregate R = 4096, <= 1.3x for the headline sweep).
  docs/tracking.md says what the runs hold.
- **Sweeps.** `qlab-train +experiment=epsilon_decay` as a subprocess, in a temp dir with its
  own sqlite store (created beforehand) and Hydra output dir; the store is checked for the
  runs it should hold.
"""


def markdown(rows: Sequence[Row], info: dict[str, Any], command: str, mode: str,
             took: float, notes: Sequence[str] = ()) -> str:
    machine = [
        ("CPU", info["cpu"]), ("cores", info["cores"]), ("RAM", info["ram"]), ("OS", info["os"]),
        ("load average before / after", f"{info['load_before']} / {info.get('load_after', '?')}"),
    ]
    versions = [(k, info[k]) for k in ("python", "numpy", "torch", "mlflow", "gymnasium",
                                       "stable-baselines3", "hydra-core", "qlab")]
    out = [
        "# Benchmarks",
        "",
        "qlab against the baselines it replaces, measured side by side in one run of "
        "`qlab-bench` (`make bench`; `make bench-quick` for a run of under two minutes that "
        "only prints). The Targets table at the end says what each section must reach; "
        "every figure is a ratio against a baseline measured in the same run. Rerun it on "
        "your machine before comparing numbers.",
        "",
        f"- **command:** `{command}` ({mode}; took {took / 60:.1f} min)",
        f"- **date:** {info['date']}",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {_md_escape(str(v))} |" for k, v in machine],
        "",
        "| package | version |",
        "|---|---|",
        *[f"| {k} | {_md_escape(str(v))} |" for k, v in versions],
        "",
        "## Results",
        "",
    ]
    if notes:
        out += [f"> {n}" for n in notes] + [""]
    out += [markdown_table(rows), "## Targets", "", targets_table(rows), "## Method", "", METHOD]
    return "\n".join(out)
