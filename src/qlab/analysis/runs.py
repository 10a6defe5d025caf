"""Load a sweep from any MLflow store into tidy pandas frames.

A sweep is found by its parent run id, its ``sweep_id`` tag, or its experiment's name (the
latest sweep in it; an experiment without sweeps gives all its runs). :func:`load_sweep`
returns a :class:`Sweep` holding

- ``runs``: one row per run — ``run_id``, ``run_name``, ``status``, times, the qlab tags as
  plain columns (``agent``, ``env``, ``seed``, ``sweep_id``, ``parent_run_id``), then
  ``params.<dotted key>`` (numeric where every value is a number), other ``tags.<key>`` and
  ``metrics.<key>`` (each metric's last value, at its highest step);
- ``history``: every logged point, long format with columns ``run_id``, ``key``, ``step``,
  ``value`` (one row per run, key and step; a step logged twice keeps its latest value).

Runs come from ``search_runs`` in pages of 1000; histories, from an SQL store, from one
query over its metrics table (:func:`qlab.tracking.metric_points.histories`), else from one
``get_metric_history`` per (run, metric), issued from a small thread pool (on a tracking
server these calls are round trips).

An aggregate run (one run for a sweep point's replicas, ``tracking.replica_runs``) is
expanded into one row per replica, read from its ``replicas.parquet`` artifact: ``run_id``
``<aggregate run id>#<seed>``, its seed, the point's params, ``aggregate_run_id``, and the
history each replica would have logged as a run of its own (the same thinned ``train/*``
steps, every evaluation). So statistics over seeds treat both kinds of runs alike;
:func:`run_config` and :func:`agent_file` accept such ids too.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from qlab import tracking
from qlab.core.errors import QlabError
from qlab.tracking import aggregate, metric_points

PAGE = 1000  # runs per search_runs page
PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "qlab.role"
# qlab's own tags, promoted to plain columns of the runs frame.
TAG_COLUMNS = {"agent": "agent", "env": "env", "seed": "seed", "sweep_id": "sweep_id",
               PARENT_TAG: "parent_run_id"}


class AnalysisError(QlabError, LookupError):
    """What to load cannot be found (unknown experiment, run or sweep; no runs). One line."""


@dataclass
class Sweep:
    """A sweep's runs and metric histories, and where they came from."""

    uri: str
    experiment: str
    experiment_id: str
    sweep_id: str | None
    parent_run_id: str | None
    runs: pd.DataFrame
    history: pd.DataFrame
    parent: dict = field(default_factory=dict)  # the parent run: status, start_time, params
    load_seconds: float = float("nan")

    @property
    def n_runs(self) -> int:
        return len(self.runs)

    def column(self, key: str) -> str:
        """The ``runs`` column a key names: itself, else ``params.key``, ``tags.key``,
        ``metrics.key``."""
        return column(self.runs, key)

    def metric(self, key: str) -> pd.DataFrame:
        """One metric as a wide frame: index step, one column per run id."""
        h = self.history[self.history["key"] == key]
        return h.pivot(index="step", columns="run_id", values="value").sort_index()


def column(runs: pd.DataFrame, key: str) -> str:
    """See :meth:`Sweep.column`."""
    for name in (key, f"params.{key}", f"tags.{key}", f"metrics.{key}"):
        if name in runs.columns:
            return name
    raise AnalysisError(f"no column, param, tag or metric named {key!r} in these runs")


def redact(uri: str) -> str:
    """The URI without a password (``scheme://user:***@host``), for messages and reports."""
    return re.sub(r"(://[^/:@]+):[^/@]*@", r"\1:***@", uri)


# ------------------------------------------------------------------------------ finding runs

def _search(client: MlflowClient, exp_ids: Sequence[str], filter_string: str,
            order_by: list[str] | None = None, limit: int | None = None) -> list[Run]:
    """Every active run matching ``filter_string``, paging through ``search_runs``."""
    runs: list[Run] = []
    token = None
    for i in range(0, len(exp_ids), 100):  # stores cap the experiment ids per query
        ids = list(exp_ids[i:i + 100])
        while True:
            page = client.search_runs(ids, filter_string, ViewType.ACTIVE_ONLY,
                                      max_results=PAGE if limit is None else limit,
                                      order_by=order_by, page_token=token)
            runs.extend(page)
            token = page.token
            if not token or (limit is not None and len(runs) >= limit):
                token = None
                break
    return runs


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def _get_run(client: MlflowClient, run_id: str, uri: str) -> Run:
    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        raise AnalysisError(f"no run {run_id!r} in {redact(uri)}") from exc


def find_runs(client: MlflowClient, uri: str, experiment: str | None = None,
              sweep_id: str | None = None, parent: str | None = None
              ) -> tuple[str, str, Run | None, list[Run]]:
    """(experiment name, experiment id, parent run or None, child runs) of what is asked."""
    exp = None
    if experiment is not None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise AnalysisError(f"no experiment {experiment!r} in {redact(uri)}")
    parent_run: Run | None = None
    if parent is not None:
        parent_run = _get_run(client, parent, uri)
        nested_in = parent_run.data.tags.get(PARENT_TAG)
        if nested_in:
            raise AnalysisError(f"run {parent} is not a sweep's parent run: it is nested under "
                                f"{nested_in}")
        if exp is not None and parent_run.info.experiment_id != exp.experiment_id:
            raise AnalysisError(f"run {parent} is not in experiment {experiment!r}")
        exp = client.get_experiment(parent_run.info.experiment_id)
        children = _search(client, [exp.experiment_id], f"tags.`{PARENT_TAG}` = '{parent}'")
        if not children:
            raise AnalysisError(f"no runs nested under run {parent} in {redact(uri)}")
        return exp.name, exp.experiment_id, parent_run, children
    if sweep_id is not None:
        if "'" in sweep_id:
            raise AnalysisError(f"sweep id {sweep_id!r}: must not contain quotes")
        ids = [exp.experiment_id] if exp is not None else _all_experiment_ids(client)
        tagged = _search(client, ids, f"tags.sweep_id = '{sweep_id}'")
        parents = [r for r in tagged if r.data.tags.get(ROLE_TAG) == "sweep"]
        children = [r for r in tagged if r.data.tags.get(ROLE_TAG) != "sweep"]
        if not children:
            where = f"experiment {experiment!r}" if exp is not None else redact(uri)
            raise AnalysisError(f"no runs of sweep {sweep_id!r} in {where}")
        exp = client.get_experiment(children[0].info.experiment_id)
        return exp.name, exp.experiment_id, (parents[0] if parents else None), children
    if exp is None:
        raise AnalysisError("name an experiment, a sweep id or a parent run")
    latest = _search(client, [exp.experiment_id], f"tags.`{ROLE_TAG}` = 'sweep'",
                     order_by=["attributes.start_time DESC"], limit=1)
    if latest:
        parent_run = latest[0]
        children = _search(client, [exp.experiment_id],
                           f"tags.`{PARENT_TAG}` = '{parent_run.info.run_id}'")
        if not children:
            raise AnalysisError(f"experiment {experiment!r}: its latest sweep (parent run "
                                f"{parent_run.info.run_id}) has no runs")
        return exp.name, exp.experiment_id, parent_run, children
    children = [r for r in _search(client, [exp.experiment_id], "")
                if r.data.tags.get(ROLE_TAG) != "sweep"]
    if not children:
        raise AnalysisError(f"experiment {experiment!r} has no runs in {redact(uri)}")
    return exp.name, exp.experiment_id, None, children


# ------------------------------------------------------------------------------ to pandas

def _numeric(col: pd.Series) -> pd.Series:
    """The column as numbers when every present value is one (params are strings)."""
    present = col.dropna()
    if present.empty:
        return col
    try:
        return pd.to_numeric(col)
    except (ValueError, TypeError):
        return col


def runs_frame(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per run: see the module docstring."""
    rows = []
    for r in runs:
        info, data = r.info, r.data
        row: dict = {"run_id": info.run_id, "run_name": info.run_name, "status": info.status,
                     "start_time": info.start_time, "end_time": info.end_time}
        for tag, name in TAG_COLUMNS.items():
            row[name] = data.tags.get(tag)
        row.update({f"params.{k}": v for k, v in data.params.items()})
        row.update({f"tags.{k}": v for k, v in data.tags.items()
                    if k not in TAG_COLUMNS and not k.startswith("mlflow.")})
        row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for t in ("start_time", "end_time"):
        df[t] = pd.to_datetime(df[t], unit="ms", utc=True)
    df["duration_s"] = (df["end_time"] - df["start_time"]).dt.total_seconds()
    df["seed"] = pd.to_numeric(df["seed"], errors="coerce").astype("Int64")
    for c in df.columns:
        if c.startswith("params."):
            df[c] = _numeric(df[c])
    front = ["run_id", "run_name", "status", "agent", "env", "seed", "sweep_id",
             "parent_run_id", "start_time", "end_time", "duration_s"]
    rest = sorted(c for c in df.columns if c not in front)
    order = [c for c in front if c in df.columns] + rest
    return df[order].sort_values(["agent", "run_name", "seed"], na_position="last",
                                 kind="stable").reset_index(drop=True)


def _fetch_histories(client: MlflowClient, jobs: list[tuple[str, str]],
                     workers: int) -> pd.DataFrame:
    """The points of each (run id, key) of ``jobs`` by ``get_metric_history``, ``workers``
    calls at a time."""
    def fetch(job: tuple[str, str]) -> tuple[str, str, list]:
        run_id, key = job
        return run_id, key, client.get_metric_history(run_id, key)

    if workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(fetch, jobs))
    else:
        results = [fetch(j) for j in jobs]
    run_ids, keys_, steps, values, stamps = [], [], [], [], []
    for run_id, key, points in results:
        run_ids += [run_id] * len(points)
        keys_ += [key] * len(points)
        steps += [m.step for m in points]
        values += [m.value for m in points]
        stamps += [m.timestamp for m in points]
    return pd.DataFrame({"run_id": run_ids, "key": keys_,
                         "step": np.asarray(steps, dtype=np.int64),
                         "value": np.asarray(values, dtype=np.float64),
                         "timestamp": np.asarray(stamps, dtype=np.int64)})


def history_frame(client: MlflowClient, runs: pd.DataFrame, keys: Iterable[str] | None = None,
                  workers: int = 8) -> pd.DataFrame:
    """Every logged point of the runs' metrics (all, or those in ``keys``), long format."""
    wanted = None if keys is None else set(keys)
    cols = [c for c in runs.columns if c.startswith("metrics.")
            and (wanted is None or c[len("metrics."):] in wanted)]
    names = [c[len("metrics."):] for c in cols]
    run_ids = list(runs["run_id"])
    h = metric_points.histories(client, run_ids, names) if names and run_ids else None
    if h is None:  # not an SQL store: one get_metric_history per run and key (a key whose
        # last value is NaN shows as NaN in ``runs`` too, so every key is asked for)
        h = _fetch_histories(client, [(r, k) for r in run_ids for k in names], workers)
    h = (h.sort_values(["run_id", "key", "step", "timestamp"], kind="stable")
          .drop_duplicates(["run_id", "key", "step"], keep="last")
          .drop(columns="timestamp").reset_index(drop=True))
    return h


def load_sweep(experiment: str | None = None, *, sweep_id: str | None = None,
               parent: str | None = None, uri: str | None = None,
               keys: Iterable[str] | None = None, history: bool = True,
               workers: int = 8) -> Sweep:
    """The runs of a sweep (see the module docstring); raises :class:`AnalysisError`."""
    uri = uri or tracking.default_uri()
    t0 = time.perf_counter()
    client = MlflowClient(tracking_uri=uri)
    try:
        name, exp_id, parent_run, children = find_runs(client, uri, experiment, sweep_id,
                                                       parent)
    except MlflowException as exc:
        raise AnalysisError(f"cannot read {redact(uri)}: {exc.message.splitlines()[0]}") from exc
    runs = runs_frame(children)
    is_agg = (runs[f"tags.{aggregate.AGGREGATE_TAG}"] == "true"
              if f"tags.{aggregate.AGGREGATE_TAG}" in runs else pd.Series(False, runs.index))
    hist = (history_frame(client, runs[~is_agg], keys, workers) if history
            else pd.DataFrame(columns=["run_id", "key", "step", "value"]))
    if is_agg.any():
        runs, hist = expand_aggregates(client, runs, is_agg, hist, keys, history)
    info: dict = {}
    if parent_run is not None:
        info = {"run_id": parent_run.info.run_id, "run_name": parent_run.info.run_name,
                "status": parent_run.info.status,
                "start_time": pd.to_datetime(parent_run.info.start_time, unit="ms", utc=True),
                "params": dict(parent_run.data.params), "tags": dict(parent_run.data.tags)}
    sid = (parent_run.data.tags.get("sweep_id") if parent_run is not None else sweep_id)
    return Sweep(uri=uri, experiment=name, experiment_id=exp_id, sweep_id=sid,
                 parent_run_id=parent_run.info.run_id if parent_run is not None else None,
                 runs=runs, history=hist, parent=info,
                 load_seconds=time.perf_counter() - t0)


# ------------------------------------------------------------------------------ aggregate runs

SEED_SEP = "#"  # <aggregate run id>#<seed>: a replica of an aggregate run


def split_run_id(run_id: str) -> tuple[str, int | None]:
    """(the MLflow run id, the replica's seed) of a run id of :func:`load_sweep`'s frames;
    the seed is None for a run of its own."""
    real, sep, seed = run_id.partition(SEED_SEP)
    return real, (int(seed) if sep else None)


def replica_history(table: pd.DataFrame, max_points: int | None,
                    keys: Iterable[str] | None = None) -> pd.DataFrame:
    """An aggregate run's per-replica table as the long history its replicas would have
    logged as runs of their own (``run_id`` still the replica's seed): the ``train/*``
    points at :func:`qlab.tracking.curve_steps` and each replica's last episode, the
    ``eval/*`` points where they were taken; only ``keys`` (all with None). Built column by
    column with numpy (a 10,000-replica table is millions of rows: no per-replica loop)."""
    ep = table["episode"].to_numpy()
    seed = table["seed"].to_numpy()
    last = table.groupby("seed", sort=False)["episode"].transform("max").to_numpy()
    keep = ep == last
    for hi in np.unique(last):  # replicas that ran the same episodes keep the same points
        rows = last == hi
        keep[rows] |= np.isin(ep[rows], tracking.curve_steps(0, int(hi) + 1, max_points))
    wanted = None if keys is None else set(keys)
    parts = []
    for key in (c for c in table.columns if c.startswith(("train/", "eval/"))):
        if wanted is not None and key not in wanted:
            continue
        v = table[key].to_numpy()
        mask = keep if key.startswith("train/") else ~np.isnan(v)
        parts.append(pd.DataFrame({"run_id": seed[mask], "key": key, "step": ep[mask],
                                   "value": v[mask]}))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run_id", "key", "step", "value"])


def _last_values(table: pd.DataFrame, keys: Iterable[str] | None) -> pd.DataFrame:
    """Per seed, each metric's last value: a replica run's ``metrics.*`` columns."""
    wanted = None if keys is None else set(keys)
    cols = [c for c in table.columns if c.startswith(("train/", "eval/"))
            and (wanted is None or c in wanted)]
    by_seed = table.sort_values(["seed", "episode"], kind="stable").groupby("seed", sort=False)
    return by_seed[cols].last()  # the last non-NaN value of each column (evals: the last one)


def expand_aggregates(client: MlflowClient, runs: pd.DataFrame, is_agg: pd.Series,
                      hist: pd.DataFrame, keys: Iterable[str] | None = None,
                      history: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``runs`` and ``hist`` with every aggregate run (rows ``is_agg``) replaced by one row
    per replica and its history (see the module docstring)."""
    import tempfile

    rows, hists = [runs[~is_agg]], [hist]
    with tempfile.TemporaryDirectory(prefix="qlab-aggregate-") as tmp:
        for _, run in runs[is_agg].iterrows():
            path = client.download_artifacts(run["run_id"], aggregate.TABLE,
                                             str(Path(tmp) / run["run_id"]))
            table = aggregate.read_table(path)
            mp = run.get("params.tracking.max_points")
            seeds = table.drop_duplicates("seed")[["seed", "replica"]]
            ids = [f"{run['run_id']}{SEED_SEP}{s}" for s in seeds["seed"]]
            if history:
                h = replica_history(table, None if pd.isna(mp) or mp in ("None", "null")
                                    else int(mp), keys)
                # one string per replica, shared by its rows (categorical codes, not copies)
                codes = pd.Index(seeds["seed"].to_numpy()).get_indexer(h["run_id"].to_numpy())
                h["run_id"] = pd.Categorical.from_codes(codes, ids).astype(object)
                hists.append(h)
            last = _last_values(table, keys)
            base = run.drop([c for c in run.index if c.startswith("metrics.")]
                            + ["params.seeds"], errors="ignore")
            frame = pd.DataFrame([base] * len(seeds)).reset_index(drop=True)
            frame["aggregate_run_id"] = run["run_id"]
            frame["replica"] = seeds["replica"].to_numpy()
            frame["seed"] = pd.array(seeds["seed"].to_numpy(), dtype="Int64")
            frame["run_id"] = ids
            frame["run_name"] = [f"{run['run_name']} seed {s}" for s in seeds["seed"]]
            if "params.seed" in frame:
                frame["params.seed"] = seeds["seed"].to_numpy()
            for key in last.columns:
                frame[f"metrics.{key}"] = last[key].reindex(seeds["seed"].to_numpy()).to_numpy()
            rows.append(frame)
    out = pd.concat(rows, ignore_index=True)
    out = out.sort_values(["agent", "run_name", "seed"], na_position="last",
                          kind="stable").reset_index(drop=True)
    return out, pd.concat([x for x in hists if len(x)], ignore_index=True) if any(
        len(x) for x in hists) else hist


# ------------------------------------------------------------------------------ artifacts

AGENT_FILES = ("q_table.npy", "q_network.pt")
# MLflow draws a progress bar per downloaded file; noise for these one-file downloads.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def run_config(client: MlflowClient, run_id: str, dst: str | Path) -> DictConfig:
    """A run's resolved config: its ``config.yaml`` artifact, else rebuilt from its params
    (a replica of an aggregate run: its point's config)."""
    run_id, _ = split_run_id(run_id)
    try:
        path = client.download_artifacts(run_id, "config.yaml", str(dst))
        return OmegaConf.load(path)
    except (MlflowException, OSError):
        run = client.get_run(run_id)
        cfg = OmegaConf.create()
        for k, v in run.data.params.items():
            try:
                value = yaml.safe_load(v)
            except yaml.YAMLError:
                value = v
            OmegaConf.update(cfg, k, value, force_add=True)
        return cfg


def agent_file(client: MlflowClient, run_id: str, dst: str | Path) -> Path:
    """Download the run's learned agent (``q_table.npy`` or ``q_network.pt``) into ``dst``
    (a replica of an aggregate run: its table from ``q_tables.npy`` or its own files)."""
    run_id, seed = split_run_id(run_id)
    if seed is not None:
        return _replica_agent_file(client, run_id, seed, Path(dst))
    names = {a.path for a in client.list_artifacts(run_id)}
    for name in AGENT_FILES:
        if name in names:
            return Path(client.download_artifacts(run_id, name, str(dst)))
    raise AnalysisError(f"run {run_id} has no {' or '.join(AGENT_FILES)} artifact "
                        "(not a training run, or it did not finish)")


def _replica_agent_file(client: MlflowClient, run_id: str, seed: int, dst: Path) -> Path:
    """Replica ``seed``'s agent file of aggregate run ``run_id``, in ``dst``."""
    names = {a.path for a in client.list_artifacts(run_id)}
    if "q_tables.npy" in names:
        first = int(str(client.get_run(run_id).data.params["seeds"]).split("..")[0])
        tables = np.load(client.download_artifacts(run_id, "q_tables.npy", str(dst)),
                         mmap_mode="r")
        out = dst / f"q_table_{seed}.npy"
        np.save(out, np.asarray(tables[seed - first]))
        return out
    for name in AGENT_FILES:
        try:
            return Path(client.download_artifacts(run_id, f"replicas/{seed}/{name}", str(dst)))
        except (MlflowException, OSError):
            continue
    raise AnalysisError(f"run {run_id} has no agent file of seed {seed}")


def state_observations(env_cfg: Any) -> np.ndarray | None:
    """(S, D) float32 network input of every state, as training fed them to a DQN (None for
    envs without a state table)."""
    from qlab.core import envs

    model = envs.make_model(env_cfg)
    if model is None:
        return None
    return envs.make(env_cfg, [0]).observations


def q_on_states(path: str | Path, env_cfg: Any) -> np.ndarray:
    """(S, A) Q of every state from an agent file: the table itself, or the Q-network
    evaluated on every state's observation."""
    path = Path(path)
    if path.suffix == ".npy":
        return np.load(path)
    import torch

    from qlab.core.agents.dqn import load_q_network

    obs = state_observations(env_cfg)
    if obs is None:
        raise AnalysisError(f"env {env_cfg.id}: no state table to evaluate the network on")
    net = load_q_network(path)
    with torch.no_grad():
        return net(torch.from_numpy(np.asarray(obs, dtype=np.float32))).double().numpy()


__all__ = ["AnalysisError", "Sweep", "load_sweep", "find_runs", "runs_frame", "history_frame",
           "expand_aggregates", "replica_history", "split_run_id",
           "column", "redact", "run_config", "agent_file", "q_on_states", "state_observations"]
