"""Sweeps section: the headline sweep, ``qlab-train +experiment=epsilon_decay`` (45 runs incl.
DQN), end to end as a user runs it — a fresh process, Hydra, the preflight check, every job,
every MLflow write, the end-of-sweep summary — with the basic launcher and with joblib, fused
(the headline's own ``hydra/sweeper=fused``: one job of 15 replicas per agent) and, as the
``-unfused`` variants, with Hydra's basic sweeper (``hydra/sweeper=basic``: 9 jobs of 5).

Each run gets its own temp dir holding the sqlite store (created before the clock starts: a
store's one-time schema migration is not part of a sweep) and Hydra's output dir. The
figure is the wall time of the whole command; afterwards the store is checked for the
expected number of FINISHED runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import Row, add_ratios, check_target, median

SECTION = "sweep"
LAUNCHERS = ("basic", "joblib")  # variants: LAUNCHER or LAUNCHER-unfused (hydra/sweeper=basic)


def qlab_train() -> list[str]:
    """The ``qlab-train`` beside this interpreter, else ``python -m qlab.app.train``."""
    script = Path(sys.executable).with_name("qlab-train")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qlab"]


def create_store(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=uri).search_experiments()


def finished_runs(uri: str, experiment: str) -> tuple[int, int]:
    """(FINISHED runs, all runs) of ``experiment``, the sweep's parent run left out."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return 0, 0
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=10_000)
            if r.data.tags.get("qlab.role") != "sweep"]
    return sum(r.info.status == "FINISHED" for r in runs), len(runs)


def run_sweep(launcher: str = "basic", experiment: str = "epsilon_decay",
              overrides: Sequence[str] = (), timeout: float = 3600) -> dict:
    """One end-to-end sweep in a temp dir; wall seconds and the runs it left. ``launcher``:
    basic or joblib, ``-unfused`` appended for Hydra's basic sweeper."""
    launcher, _, unfused = launcher.partition("-")
    with tempfile.TemporaryDirectory(prefix="qlab-bench-sweep-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        create_store(uri)
        cmd = [*qlab_train(), f"+experiment={experiment}", f"hydra.sweep.dir={tmp}/multirun",
               *(["hydra/launcher=joblib"] if launcher == "joblib" else []),
               *(["hydra/sweeper=basic"] if unfused == "unfused" else []), *overrides]
        env = {k: v for k, v in os.environ.items() if not k.startswith("QLAB_")}
        env["MLFLOW_TRACKING_URI"] = uri
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=timeout)
        seconds = time.perf_counter() - t
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                               f"{proc.stderr[-4000:]}")
        name = experiment_name(experiment, overrides)
        finished, total = finished_runs(uri, name)
    return {"seconds": seconds, "finished": finished, "runs": total, "command": cmd}


def experiment_name(experiment: str, overrides: Sequence[str]) -> str:
    """The MLflow experiment the sweep logs to (its ``experiment_name``)."""
    for o in overrides:
        if o.startswith("experiment_name="):
            return o.split("=", 1)[1]
    import yaml

    from qlab.config import CONF_DIR

    data = yaml.safe_load((CONF_DIR / "experiment" / f"{experiment}.yaml").read_text())
    return data.get("experiment_name", experiment)


def label(variant: str) -> str:
    """'basic' -> 'basic launcher', 'joblib-unfused' -> 'joblib launcher, unfused'."""
    launcher, _, unfused = variant.partition("-")
    return f"{launcher} launcher" + (", unfused" if unfused else "")


def measure(launchers: Sequence[str] = LAUNCHERS, repeats: int = 1,
            experiment: str = "epsilon_decay", overrides: Sequence[str] = (),
            progress=None) -> list[Row]:
    say = progress or (lambda msg: None)
    runs: dict[str, list[dict]] = {launcher: [] for launcher in launchers}
    for rep in range(repeats):
        for launcher in launchers:
            say(f"sweep: +experiment={experiment}{''.join(' ' + o for o in overrides)} "
                f"({launcher} launcher), repeat {rep + 1}")
            runs[launcher].append(run_sweep(launcher, experiment, overrides))
    shrunk = f" {' '.join(overrides)}" if overrides else ""
    metric = f"wall time, qlab-train +experiment={experiment}{shrunk}"
    rows = []
    for launcher, rs in runs.items():
        secs = [r["seconds"] for r in rs]
        counts = sorted({(r["finished"], r["runs"]) for r in rs})
        note = ", ".join(f"{f}/{n} runs FINISHED" for f, n in counts) + f"; {len(rs)} sweep(s)"
        rows.append(Row(SECTION, metric, label(launcher), median(secs), "s", secs, note=note))
    add_ratios(rows, label(launchers[0]), higher_is_better=False)
    if not overrides and experiment == "epsilon_decay":
        for r in rows:
            check_target(r, "<=", 60, on="value")
    return rows
