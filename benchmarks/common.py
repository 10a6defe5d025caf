"""What the sections share: result rows, medians and ratios, Hydra composition of qlab's own
config, a timing wrapper for qlab's evaluator, subprocess workers, and the machine's identity."""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Row:
    """One figure of the table: ``value`` (a median over ``samples``) of ``metric`` for
    contender ``who`` in ``section``, and its ratio to the section's ``baseline`` contender.
    ``higher_is_better`` says which way the ratio reads: for rates the ratio is
    value / baseline, for times baseline / value (a speedup either way)."""

    section: str
    metric: str
    who: str
    value: float | None
    unit: str
    samples: list[float] = field(default_factory=list)
    ratio: float | None = None
    baseline: str | None = None
    target: str | None = None  # e.g. ">= 250x", "<= 10%"
    met: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median(xs: Sequence[float | None]) -> float | None:
    """The median of the finite values, None when there are none."""
    vals = [float(x) for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(vals) if vals else None


def speedup(value: float | None, base: float | None, higher_is_better: bool) -> float | None:
    """value / base for rates, base / value for times; None if either is missing or zero."""
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return value / base if higher_is_better else base / value


def add_ratios(rows: list[Row], baseline: str, higher_is_better: bool) -> None:
    """Fill ``ratio`` of every row against the row of contender ``baseline`` with the same
    section and metric."""
    base = {(r.section, r.metric): r.value for r in rows if r.who == baseline}
    for r in rows:
        if (r.section, r.metric) in base:
            r.baseline = baseline
            r.ratio = speedup(r.value, base[(r.section, r.metric)], higher_is_better)


def check_target(row: Row, op: str, bound: float, on: str = "ratio") -> None:
    """Mark ``row`` against a target: ``op`` '>=' or '<=' ``bound`` on its ratio or value."""
    x = row.ratio if on == "ratio" else row.value
    unit = "x" if on == "ratio" else (" " + row.unit if row.unit != "%" else "%")
    row.target = f"{op} {bound:g}{unit}"
    if x is not None:
        row.met = x >= bound if op == ">=" else x <= bound


# ------------------------------------------------------------------------- qlab config

def compose(overrides: Sequence[str] = ()):
    """The job config qlab-train would compose for ``overrides`` (tuned hparams included)."""
    from hydra import compose as _compose
    from hydra import initialize_config_dir

    from qlab.config import CONF_DIR, register

    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return _compose(config_name="config", overrides=list(overrides))


class TimedEvaluator:
    """Wraps qlab's evaluator: records, per replica, the training time (evaluation time
    excluded) at which each evaluation was taken, and how long evaluations took in all."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.keys = inner.keys
        self.spent = 0.0
        self.t0 = time.perf_counter()
        self.times: dict[int, list[float]] = defaultdict(list)

    def start(self) -> None:
        self.t0, self.spent = time.perf_counter(), 0.0
        self.times.clear()

    def __call__(self, replica: int, agent: Any) -> dict[str, float]:
        t = time.perf_counter()
        self.times[int(replica)].append(t - self.t0 - self.spent)
        out = self.inner(replica, agent)
        self.spent += time.perf_counter() - t
        return out

    def __getattr__(self, name: str) -> Any:
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


def stable_index(ok: np.ndarray) -> int | None:
    """The first index from which ``ok`` (bool, one per evaluation) stays True to the end
    (as qlab's ``episodes_to_optimal``); None if the last is False or there is none."""
    ok = np.asarray(ok, dtype=bool)
    if ok.size == 0 or not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    return 0 if bad.size == 0 else int(bad[-1] + 1)


# ------------------------------------------------------------------------- subprocesses

def run_worker(module: str, spec: dict[str, Any], timeout: float | None = None) -> Any:
    """``python -m module JSON``: run a measurement in a fresh process (its own imports,
    threads and memory); the worker prints its JSON result as the last stdout line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QLAB_")}
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    return json.loads(lines[-1])


def worker_main(handlers: dict[str, Any]) -> None:
    """Entry point of a worker module: ``spec["kind"]`` picks the handler."""
    spec = json.loads(sys.argv[1])
    out = handlers[spec.pop("kind")](**spec)
    sys.stdout.flush()
    print(json.dumps(out))


# ------------------------------------------------------------------------- machine

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    """``git args`` in qlab's checkout: the source directory of its editable install (PEP
    610), else the working directory (``make bench`` runs in the checkout); "" on failure."""
    from qlab.tracking.provenance import source_dir

    try:
        return subprocess.run(["git", *args], cwd=source_dir() or os.getcwd(),
                              capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, OS, load, library versions, qlab's commit, the date."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    ram = _ram_gb()
    commit = _git("rev-parse", "--short", "HEAD")
    if commit and _git("status", "--porcelain", "--untracked-files=no"):
        commit += " + uncommitted changes"
    return {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({usable} usable)",
        "ram": f"{ram:.1f} GB" if ram else "unknown",
        "os": platform.platform(),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "mlflow": _version("mlflow"),
        "gymnasium": _version("gymnasium"),
        "stable-baselines3": _version("stable-baselines3"),
        "hydra-core": _version("hydra-core"),
        "qlab": commit or _version("qlab"),
    }
