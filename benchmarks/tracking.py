"""Tracking section: a 1000-episode tabular run (``qlab.train.run``, the default tabular_q on
the 4x4 grid, R = 1) with MLflow on — a real sqlite store in a temp dir — against off.

Both go through ``qlab.train.run`` whole: with tracking on that includes creating the run,
its params, every metric point, the artifacts (config, Q table, value heatmap, episodes.csv)
and closing it. Checkpoints (which exist only for tracked runs) are off in both, so the
figure is MLflow's cost alone. The store is created and warmed up first (its one-time schema
migration is not a cost of tracking a run), runs alternate off / on, and the overhead is the
median over pairs of (on - off) / off: the wall time tracking adds, as a share of the
untracked run's.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Sequence

from benchmarks.common import Row, add_ratios, check_target, compose, median

SECTION = "tracking"


def run_once(uri: str, tracking: bool, episodes: int, seed: int,
             overrides: Sequence[str] = ()) -> float:
    """Wall seconds of one ``qlab.train.run`` (its one-line summary swallowed)."""
    import qlab.train

    cfg = compose(["agent=tabular_q", "env=griddy", f"episodes={episodes}", f"seed={seed}",
                   "experiment_name=bench-tracking", f"tracking.enabled={str(tracking).lower()}",
                   "checkpoint_every=0", *overrides])
    cfg.tracking.uri = uri
    with contextlib.redirect_stderr(io.StringIO()):
        t = time.perf_counter()
        qlab.train.run(cfg)
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
    return rows
