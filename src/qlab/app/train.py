"""Train one job and record it: build the job from its config, plan its resume, open its
MLflow runs, train with checkpoints and a graceful stop, write the artifacts. It wires; the
modules compute. ``qlab-train`` (:mod:`qlab.cli`) and :func:`qlab.run` call :func:`run`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from qlab import tracking
from qlab.app import checkpoint, resume
from qlab.app.build import build
from qlab.app.naming import run_names
from qlab.app.progress import ProgressBar
from qlab.app.result import Result
from qlab.app.stopping import GracefulStop, Terminated
from qlab.config import QlabConfig, complete
from qlab.config.batch import batch as config_batch
from qlab.core import agents, driver
from qlab.core.errors import QlabError
from qlab.core.history import History, episodes_to_optimal_so_far

__all__ = ["run", "summary", "Result", "Terminated", "ReplicaFailure"]


class ReplicaFailure(QlabError, RuntimeError):
    """Some replicas were stopped (non-finite values); the others finished."""


def run(cfg: DictConfig, tags: dict[str, str] | None = None) -> Result:
    """Train one job (R replicas; of several sweep points if fused) and record it (unless
    ``tracking.enabled`` is false). ``tags`` go on every run (a sweep's nesting tags)."""
    batch = config_batch(cfg)  # validates every point; replica k records its own point's config
    c: QlabConfig = batch.config
    seeds = batch.seeds
    job = build(c, seeds)
    env, agent = job.env, job.agent
    resolved = OmegaConf.to_container(complete(cfg), resolve=True)  # (a fused job: all points)
    plan = bar = None
    try:  # from here on a resumed job holds its lock: released whatever happens
        if c.tracking.enabled:  # checkpoints and resume go with tracked runs
            uri = c.tracking.uri or tracking.default_uri()
            root = resume.checkpoint_root(c.checkpoint_dir, uri)
            if c.checkpoint_every:
                resume.check_root(root)
            plan = resume.plan_job(uri, c.experiment_name, c.resume, resolved, batch.params(0),
                                   root, len(seeds))
            if plan.skip:
                resume.end_abandoned(plan, uri)  # runs of an earlier attempt killed while made
                resume.announce(plan)
                return Result(c, None, None, plan.run_ids)
            resume.restore(plan, env, agent, job.evaluator, c.episodes, c.eval_every)
            resume.announce(plan)
        aggregate = c.tracking.enabled and c.tracking.aggregate(max(map(len, batch.groups)))
        names = run_names(batch, tags)  # agent-env-<swept values>-seedN
        groups = batch.groups if aggregate else [range(k, k + 1) for k in range(len(seeds))]
        runs = [run_record(batch, m, names, aggregate,
                           {"agent": c.agent.name, "env": c.env.name, **(tags or {}),
                            **batch.tags, **(plan.tags if plan else {})}) for m in groups]
        bar = ProgressBar(c.replicas * c.episodes, desc=f"{c.agent.name} on {c.env.name}")
        if not c.tracking.enabled:
            ctx = contextlib.nullcontext(tracking.NullTracker())
        else:
            ctx = tracking.open_runs(uri, c.experiment_name, {}, runs,
                                     [r["name"] for r in runs],
                                     max_points=c.tracking.max_points, resume_ids=plan.run_ids,
                                     groups=groups, aggregate=aggregate, seeds=seeds,
                                     artifacts=c.tracking.artifacts)
        stop = GracefulStop()
        # Ctrl-C / SIGTERM wait from before the runs are made until they have ended: the
        # driver acts on one at a clean point (a checkpoint, then the runs end KILLED); one
        # while the runs are made or closed waits for that to finish (a second raises at once)
        if plan is not None and c.checkpoint_every:
            plan.acquire()  # before the runs exist: a job being created is not taken for dead
        with stop, stop.deferring(), ctx as tracker:
            ckpt = None
            if plan is not None:
                resume.end_abandoned(plan, uri)  # runs of a job killed while they were made
            if plan is not None and c.checkpoint_every:
                ckpt = checkpoint.Checkpointer(
                    plan.path, {"job_id": plan.job_id, "run_ids": tracker.run_ids,
                                "config": checkpoint.identity(resolved),
                                "config_hash": checkpoint.config_hash(resolved)},
                    env, agent, job.evaluator)
            hist = driver.train(job, fast=c.fast, listeners=[tracker, bar],
                                flush_seconds=c.tracking.flush_seconds, checkpoint=ckpt,
                                checkpoint_every=c.checkpoint_every,
                                resume=plan.start if plan else None, stop=stop)
            if job.evaluator is not None and "eval/optimal_fraction" in hist.evals:
                # a point per evaluation from the finished History: a stopped job logs none
                # (its resume logs them all), and its last point is the final value
                tracker.log_evals("eval/episodes_to_optimal", episodes_to_optimal_so_far(hist))
            tracker.log_files(lambda m, d: batch.write_config(m.start, d))
            tracker.log_files(agent_files(agent, seeds, aggregate,
                                          agents.spec_of(c.agent).tabular))
        if plan is not None:
            plan.finished()  # training is complete: its checkpoint has no more use
        if stop.pending is not None:  # a signal while the runs were closed: the job is done
            raise stop.pending
    finally:
        if bar is not None:
            bar.close()
        if plan is not None:
            plan.release()
    print(summary(c, hist), file=sys.stderr)
    if hist.failed:
        raise ReplicaFailure("; ".join(f"seed {seeds[k]} ({why})"
                                       for k, why in sorted(hist.failed.items())))
    return Result(c, hist, job, tracker.run_ids)


def run_record(batch, members: range, names: list[str], aggregate: bool,
               tags: dict[str, str]) -> dict:
    """The name, params and tags of the run recording replicas ``members``: one replica's
    (its seed), or an aggregate run's (its point's first seed, ``seeds``: first..last)."""
    first, seeds = members.start, batch.seeds
    own = {"params": batch.params(first),
           "tags": {**tags, "seed": seeds[first], resume.REPLICA_TAG: first}}
    if not aggregate:
        return {"name": names[first], **own}
    span = f"{seeds[first]}..{seeds[members.stop - 1]}"
    own["params"]["seeds"] = span
    own["tags"][tracking.aggregate.AGGREGATE_TAG] = "true"
    return {"name": f"{names[first]}..{seeds[members.stop - 1]}", **own}


AGGREGATE_Q_TABLES = "q_tables.npy"


def agent_files(agent, seeds: list[int], aggregate: bool, tabular: bool
                ) -> Callable[[range, Path], None]:
    """For :meth:`qlab.tracking.Tracker.log_files`: the learned agent of a run's replicas —
    a replica run's own files (``q_table.npy``, ``q_network.pt``, ...); an aggregate run of a
    tabular agent: every replica's table in ``q_tables.npy`` (replicas x S x A, in the order
    of its seeds), of another agent: each replica's files in ``replicas/<seed>/``."""
    def write(members: range, directory: Path) -> None:
        if not aggregate:
            agent.save(members.start, directory)
        elif tabular:
            np.save(directory / AGGREGATE_Q_TABLES,
                    np.asarray(agent.q_values()[members.start:members.stop]))
        else:
            for k in members:
                (directory / "replicas" / str(seeds[k])).mkdir(parents=True)
                agent.save(k, directory / "replicas" / str(seeds[k]))
    return write


def summary(c: QlabConfig, hist: History) -> str:
    """One line: what was trained and how it ended (medians over replicas)."""
    budget = f"{c.episodes} episodes" if c.total_steps is None else f"{c.total_steps} steps"
    parts = [f"{c.agent.name} on {c.env.name}: {c.replicas} replica(s) x {budget}"]
    last = np.maximum(hist.done - 1, 0)  # each replica's last episode (a step budget ends early)
    rows = np.arange(c.replicas)
    ret = hist.train["train/episode_return"][rows, last]
    parts.append(f"final train return {np.median(ret):.3g}")
    if "eval/optimal_fraction" not in hist.evals and "eval/return" in hist.evals:
        final = hist.evals["eval/return"][rows, np.maximum(hist.evals_done - 1, 0)]
        parts.append("final eval return " + " ".join(f"{v:.4g}" for v in final))
    if "eval/optimal_fraction" in hist.evals:
        opt = hist.evals["eval/optimal_fraction"][:, -1]
        err = hist.evals["eval/q_error"][:, -1]
        parts.append(f"optimal policy in {int((opt == 1).sum())}/{c.replicas}")
        parts.append(f"median q_error {np.median(err):.3g}")
    return ", ".join(parts)
