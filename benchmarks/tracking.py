"""Tracking section: a 1000-episode tabular run (``qlab.app.train.run``, the default tabular_q on
the 4x4 grid, R = 1) with MLflow on — a real sqlite store in a temp dir — against off.

Both go through ``qlab.app.train.run`` whole: with tracking on that includes creating the run,
its params, every metric point, the artifacts (config, Q table, value heatmap, episodes.csv)
and closing it. Checkpoints (which exist only for tracked runs) are off in both, so the
figure is MLflow's cost alone. The store is created and warmed up first (its one-time schema
migration is not a cost of tracking a run), runs alternate off / on, and the overhead is the
median over pairs of (on - off) / off: the wall time tracking adds, as a share of the
untracked run's.

Two more rows say why that share is what it is. MLflow's floor: creating and ending one
empty run (no params, metrics or artifacts) in the same warm store — no tracking design can
cost less per run, so when the floor alone exceeds 10% of the untracked run the target cannot
be met for a run that short. And the whole command a user waits for, ``qlab-train`` in a fresh
process (interpreter, imports, Hydra composition, training, tracking), on against off.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from benchmarks.common import Row, add_ratios, check_target, compose, median

SECTION = "tracking"


def run_once(uri: str, tracking: bool, episodes: int, seed: int,
             overrides: Sequence[str] = ()) -> float:
    """Wall seconds of one ``qlab.app.train.run`` (its one-line summary swallowed)."""
    import qlab.app.train

    cfg = compose(["agent=tabular_q", "env=griddy", f"episodes={episodes}", f"seed={seed}",
                   "experiment_name=bench-tracking", f"tracking.enabled={str(tracking).lower()}",
                   "checkpoint_every=0", *overrides])
    cfg.tracking.uri = uri
    with contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        qlab.app.train.run(cfg)
        return time.perf_counter() - t


def empty_run_seconds(uri: str, repeats: int) -> list[float]:
    """Wall seconds of creating and ending one empty MLflow run in the store at ``uri``."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench-tracking").experiment_id
    out = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        client.set_terminated(client.create_run(exp).info.run_id)
        out.append(time.perf_counter() - t)
    return out[1:]


def command_seconds(uri: str, tracking: bool, episodes: int, seed: int) -> float:
    """Wall seconds of ``qlab-train`` in a fresh process, as a user runs it."""
    cmd = [sys.executable, "-m", "qlab", "agent=tabular_q", "env=griddy",
           f"episodes={episodes}", f"seed={seed}", "experiment_name=bench-tracking",
           f"tracking.enabled={str(tracking).lower()}", "checkpoint_every=0",
           f"tracking.uri={uri}"]
    with tempfile.TemporaryDirectory(prefix="qlab-bench-cwd-") as cwd:
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return time.perf_counter() - t


def measure(episodes: int = 1000, repeats: int = 5, overrides: Sequence[str] = (),
            progress=None) -> list[Row]:
    say = progress or (lambda msg: None)
    with tempfile.TemporaryDirectory(prefix="qlab-bench-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        say(f"tracking: warm-up (creates the store at {uri})")
        run_once(uri, True, min(episodes, 20), 10_000, overrides)
        run_once(uri, False, min(episodes, 20), 10_000, overrides)
        off, on = [], []
        for rep in range(repeats):
            say(f"tracking: {episodes} episodes off / on, repeat {rep + 1}")
            off.append(run_once(uri, False, episodes, rep, overrides))
            on.append(run_once(uri, True, episodes, rep, overrides))
        say("tracking: MLflow's floor, empty runs")
        floor = empty_run_seconds(uri, max(repeats, 5))
        cmd_off, cmd_on = [], []
        for rep in range(min(repeats, 3)):
            say(f"tracking: the qlab-train command off / on, repeat {rep + 1}")
            cmd_off.append(command_seconds(uri, False, episodes, rep))
            cmd_on.append(command_seconds(uri, True, episodes, rep))
    overhead = [100.0 * (b - a) / a for a, b in zip(off, on, strict=True)]
    what = f"{episodes}-episode tabular_q run, 4x4"
    rows = [Row(SECTION, f"wall time, {what}", "MLflow off", median(off), "s", off,
                note=f"{repeats} runs"),
            Row(SECTION, f"wall time, {what}", "MLflow on (sqlite)", median(on), "s", on,
                note=f"{repeats} runs"),
            Row(SECTION, "overhead of tracking", "MLflow on vs off", statistics.median(overhead),
                "%", overhead, note="(on - off) / off: added wall time as a share of the "
                                    "untracked run's, median over alternating pairs")]
    add_ratios(rows[:2], "MLflow off", higher_is_better=False)
    check_target(rows[2], "<=", 10, on="value")
    floor_share = [100.0 * f / median(off) for f in floor]
    rows += [Row(SECTION, "MLflow's floor: one empty run (create + end)", "MLflow (sqlite)",
                 median(floor), "s", floor, note=f"{len(floor)} runs, same store"),
             Row(SECTION, "MLflow's floor as a share of the untracked run", "MLflow (sqlite)",
                 median(floor_share), "%", floor_share,
                 note="above 10%: no tracking design meets the target for this run")]
    cmd_overhead = [100.0 * (b - a) / a for a, b in zip(cmd_off, cmd_on, strict=True)]
    cmd = [Row(SECTION, f"qlab-train command, {what}", "MLflow off", median(cmd_off), "s",
               cmd_off, note=f"{len(cmd_off)} runs, fresh process each"),
           Row(SECTION, f"qlab-train command, {what}", "MLflow on (sqlite)", median(cmd_on), "s",
               cmd_on, note=f"{len(cmd_on)} runs, fresh process each"),
           Row(SECTION, "overhead of tracking, whole command", "MLflow on vs off",
               statistics.median(cmd_overhead), "%", cmd_overhead,
               note="(on - off) / off of the command's wall time")]
    add_ratios(cmd[:2], "MLflow off", higher_is_better=False)
    return rows + cmd
