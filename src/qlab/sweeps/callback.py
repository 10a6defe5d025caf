"""Sweeps in MLflow: one parent run per Hydra multirun with every job's runs nested under it.

``SweepCallback`` (registered in conf/config.yaml) creates the store, the experiment and the
parent run once, before any job starts, and hands jobs the parent's id through the
environment (inherited by joblib workers, submitit and SLURM jobs). The parent ends FINISHED,
or FAILED when a job failed — also when Hydra skips ``on_multirun_end`` after a failing job,
because ``qlab-train`` calls :func:`finish` on its way out.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from qlab import tracking
from qlab.app.naming import SWEPT_TAG
from qlab.core.secrets import mask
from qlab.tracking import provenance, store

PARENT_ENV = "QLAB_PARENT_RUN_ID"
SWEEP_ENV = "QLAB_SWEEP_ID"
SWEPT_ENV = "QLAB_SWEPT_KEYS"
SWEEP_KEY_TAG = "qlab.sweep_key"
# Swept keys that make replicas of one group rather than groups of their own.
SEED_KEYS = ("seed", "replicas")

_active: dict[str, Any] = {}
# (tracking uri, parent run id) -> (summary table, its text): set by qlab-train to the
# report's own summary (qlab.analysis.summary), which this layer cannot import.
summarizer: Callable[[str, str], tuple[pd.DataFrame, str]] | None = None

log = logging.getLogger(__name__)


def in_sweep() -> bool:
    """Whether this process runs a job of a Hydra multirun that has a parent run."""
    try:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        multirun = False
    return multirun and bool(os.environ.get(PARENT_ENV))


def job_tags() -> dict[str, str]:
    """Tags nesting a job's runs under the sweep's parent run (empty outside a sweep)."""
    if not in_sweep():
        return {}
    return {"mlflow.parentRunId": os.environ[PARENT_ENV], "sweep_id": os.environ[SWEEP_ENV],
            SWEPT_TAG: os.environ.get(SWEPT_ENV, "")}


def command_overrides(task: list[str], sweeper_params: dict) -> list[str]:
    """The sweep's overrides as one command line: the task's, then the named experiment's
    ``hydra.sweeper.params`` that the command line did not override (Hydra lets the command
    line win, so ``agent=`` appears once, with the value that ran)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    given = {o.get_key_element().lstrip("+~")
             for o in OverridesParser.create().parse_overrides(task)}
    return task + [f"{k}={v}" for k, v in sweeper_params.items()
                   if str(k).lstrip("+~") not in given]


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys a multirun sweeps over (``key=a,b`` or sweep functions), seeds excluded."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    keys: list[str] = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element().lstrip("+~")
        if o.is_sweep_override() and key not in SEED_KEYS and key not in keys:
            keys.append(key)
    return keys


class SweepCallback(Callback):
    """Creates the parent run before jobs start and closes it when they are done."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.tracking.enabled:
            return
        uri = config.tracking.uri or tracking.default_uri()
        client = store.client_for(uri)
        exp_id = tracking.get_or_create_experiment(client, config.experiment_name, uri,
                                                   config.tracking.get("artifacts"))
        sweep_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        overrides = command_overrides(list(config.hydra.overrides.task),
                                      config.hydra.sweeper.get("params") or {})
        key = sweep_key(overrides)
        describe(client, exp_id, overrides)  # the experiment file's own words
        parent = previous_sweep(client, exp_id, key) if config.get("resume") == "auto" else None
        rerun = parent is not None
        if rerun:  # a rerun: its jobs skip or resume under the same parent run
            run_id, sweep_id = parent.info.run_id, parent.data.tags["sweep_id"]
            client.update_run(run_id, status="RUNNING")
        else:
            parent = client.create_run(exp_id, tags={"sweep_id": sweep_id, "qlab.role": "sweep",
                                                     SWEEP_KEY_TAG: key,
                                                     **provenance.tags(provenance.collect())},
                                       run_name=f"sweep-{config.experiment_name}-{sweep_id}")
            run_id = parent.info.run_id
            client.log_param(run_id, "overrides", mask(" ".join(overrides))[:6000])
            text = experiment_description(overrides)
            if text:
                client.set_tag(run_id, NOTE_TAG, text)
        _active.update(client=client, run_id=run_id, sweep_id=sweep_id, exp_id=exp_id,
                       uri=uri, experiment=config.experiment_name)
        os.environ[PARENT_ENV], os.environ[SWEEP_ENV] = run_id, sweep_id
        os.environ[SWEPT_ENV] = ",".join(swept_keys(overrides))
        log.info("sweep %s -> MLflow experiment %r, parent run %s%s", sweep_id,
                 config.experiment_name, run_id, " (rerun: resume=auto)" if rerun else "")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """One line per job of a sweep, in qlab's words (Hydra's own lines are off)."""
        if not in_sweep():
            return
        log.info("%s", job_line(config))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        finish()


def job_line(config: DictConfig) -> str:
    """``job 0: agent=dqn (15 replicas: 3 sweep points x 5 seeds)``: the job's overrides,
    without the fused sweeper's internal one."""
    from qlab.config.batch import KEY

    task = [o for o in config.hydra.overrides.task if not o.lstrip("+").startswith(f"{KEY}=")]
    points = len(config.get(KEY) or []) or 1
    replicas = int(config.get("replicas", 1))
    seeds = f"{replicas} seed{'s' if replicas > 1 else ''}"
    fused = (f" ({points * replicas} replicas: {points} sweep points x {seeds})"
             if points > 1 else "")
    return f"job {config.hydra.job.num}: {' '.join(task)}{fused}"


NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows


def experiment_description(overrides: list[str]) -> str:
    """The first paragraph of the named experiment's leading comment (``+experiment=NAME``;
    its YAML), as one line: what the sweep compares and why ("" for sweeps without one)."""
    from pathlib import Path

    from qlab.config import CONF_DIR, _user_dirs

    names = [o.split("=", 1)[1] for o in overrides
             if o.lstrip("+").split("=", 1)[0] == "experiment" and "=" in o]
    if not names:
        return ""
    for d in (CONF_DIR, *_user_dirs):
        path = Path(d) / "experiment" / f"{names[-1]}.yaml"
        if path.is_file():
            lines = []
            for line in path.read_text(encoding="utf-8").splitlines():
                if not line.startswith("#"):
                    break
                text = line.lstrip("#").strip()
                if not text and lines:
                    break  # the first paragraph is the description
                if text and not text.startswith("@package"):
                    lines.append(text)
            return " ".join(t for t in lines if t)
    return ""


def describe(client: MlflowClient, exp_id: str, overrides: list[str]) -> None:
    """Give the MLflow experiment the named experiment's description (shown in the UI's
    experiment list and atop the experiment's page)."""
    exp = client.get_experiment(exp_id)
    text = experiment_description(overrides)
    if text and exp.tags.get(NOTE_TAG) != text:
        client.set_experiment_tag(exp_id, NOTE_TAG, text)


def sweep_key(overrides: list[str]) -> str:
    """What makes two sweep command lines the same sweep: their overrides, except those a
    resume may change (``checkpoint.EXCLUDED``: resume, checkpoints, fast, tracking.*)."""
    import hashlib

    from qlab.app.checkpoint import EXCLUDED

    def may_change(o: str) -> bool:
        return o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] in EXCLUDED

    kept = sorted(o for o in overrides if not may_change(o))
    return hashlib.sha256("\n".join(kept).encode()).hexdigest()[:16]


def previous_sweep(client: MlflowClient, exp_id: str, key: str):
    """The latest parent run of the same sweep (see :func:`sweep_key`), or None."""
    runs = client.search_runs([exp_id], f"tags.`{SWEEP_KEY_TAG}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def children(client: MlflowClient, exp_id: str, parent_id: str) -> list:
    """Every run nested under ``parent_id``."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{parent_id}'",
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def latest_attempts(runs: list) -> list:
    """Each job replica's newest run: a ``resume=auto`` rerun that starts a job afresh (it
    stopped before its first checkpoint) leaves the old KILLED/FAILED runs under the parent,
    and they no longer speak for the sweep. Runs are matched by config hash and replica."""
    from qlab.app.resume import HASH_TAG, REPLICA_TAG

    newest: dict[tuple, Any] = {}
    for r in runs:
        tags = r.data.tags
        key = ((tags[HASH_TAG], tags.get(REPLICA_TAG)) if HASH_TAG in tags
               else (r.info.run_id,))
        if key not in newest or r.info.start_time > newest[key].info.start_time:
            newest[key] = r
    return sorted(newest.values(), key=lambda r: r.info.start_time)


def finish(failed: bool = False) -> None:
    """Close the parent run of this process's sweep (no-op when there is none)."""
    if not _active:
        return
    client, run_id = _active["client"], _active["run_id"]
    try:
        try:
            runs = latest_attempts(children(client, _active["exp_id"], run_id))
            failed = failed or any(r.info.status != "FINISHED" for r in runs)
            if summarizer is not None and runs:
                try:
                    table, text = summarizer(_active["uri"], run_id)
                except Exception as exc:  # the summary is a convenience: never fail the sweep
                    log.warning("no sweep summary: %s", str(exc).splitlines()[0] if str(exc)
                                else type(exc).__name__)
                else:
                    exp = _active["experiment"]
                    print(f"\nqlab: sweep {_active['sweep_id']}: {len(runs)} runs, parent run "
                          f"{run_id}\n{text}\nNext: qlab-report {exp}  (make report EXP={exp}); "
                          "make ui, then expand the parent run", file=sys.stderr)
                    client.log_text(run_id, table.to_csv(index=False), "sweep_summary.csv")
                    client.log_text(run_id, text + "\n", "sweep_summary.txt")
            reruns = len(client.get_metric_history(run_id, "sweep/runs"))  # resume=auto reruns
            client.log_metric(run_id, "sweep/runs", len(runs), step=reruns)
        finally:
            client.set_terminated(run_id, "FAILED" if failed else "FINISHED")
    except Exception as exc:  # noqa: BLE001 - the store went away; the jobs said so already
        text = " ".join(str(exc).split())
        log.error("sweep %s: its parent run %s could not be closed (%s: %s); the same command "
                  "with resume=auto completes the sweep and closes it", _active["sweep_id"],
                  run_id, type(exc).__name__, text[:300])
    finally:
        for var in (PARENT_ENV, SWEEP_ENV):
            os.environ.pop(var, None)
        _active.clear()
