"""The job's schema: the top-level keys and ``tracking``, with their checks. Each group's
schema lives with what it configures — :class:`~qlab.core.envs.registry.EnvConfig`,
:class:`~qlab.core.exploration.ExplorationConfig`, and each agent's config class beside the
agent (:mod:`qlab.core.agents.registry`) — and checks its own keys. Every default is
written once, here or there; the YAML files only choose and override."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from qlab.core.checks import check_range, fail
from qlab.core.envs.registry import EnvConfig
from qlab.core.exploration import ExplorationConfig

FAST_MODES = ("auto", "on", "off")
# replica_runs=auto: one MLflow run per replica while no sweep point of the job has more
# replicas than this, else one aggregate run per point (docs/tracking.md).
AUTO_REPLICA_RUNS_MAX = 100
# The textbook figures qlab-report can draw (qlab.analysis.figures), named by an experiment.
FIGURES = ("cliff_walking", "maximization_bias")


@dataclass
class TrackingConfig:
    """Where runs are recorded."""

    enabled: bool = True  # false: train without MLflow
    uri: str | None = None  # MLflow tracking URI; null: $MLFLOW_TRACKING_URI, else sqlite
    # Where a new experiment keeps its artifacts: an absolute directory every machine running
    # jobs sees, or a URI (s3://...). null: mlruns/ beside a sqlite store; the server's own
    # (proxied) store for http(s)://. Required with a database URI (postgresql://...).
    artifacts: str | None = None
    flush_seconds: float = 10.0  # how often buffered metrics are written while training
    # train/* curves: every episode up to this many points per run, then thinned (every 2nd
    # episode up to 2x, every 4th up to 4x, ...); the full table is the episodes.csv artifact.
    # null: every episode
    max_points: int | None = 1000
    # true: one MLflow run per replica; false: one aggregate run per sweep point (mean and
    # spread curves, the per-replica table as an artifact); auto: per replica up to
    # AUTO_REPLICA_RUNS_MAX replicas per point, aggregate above
    replica_runs: Any = "auto"

    def check(self) -> None:
        check_range("tracking.flush_seconds", self.flush_seconds, 0, lo_open=True)
        if self.artifacts is not None and not (
                "://" in self.artifacts or self.artifacts.startswith("/")):
            fail("tracking.artifacts", self.artifacts,
                 "must be an absolute directory (one every machine running jobs sees) or a "
                 "URI such as s3://bucket/path")
        if self.max_points is not None:
            check_range("tracking.max_points", self.max_points, 1)
        if not (isinstance(self.replica_runs, bool) or self.replica_runs == "auto"):
            fail("tracking.replica_runs", self.replica_runs, "must be true, false or auto")

    def aggregate(self, replicas_per_point: int) -> bool:
        """Whether a job whose largest sweep point has ``replicas_per_point`` replicas is
        recorded as aggregate runs (one per point)."""
        if self.replica_runs == "auto":
            return replicas_per_point > AUTO_REPLICA_RUNS_MAX
        return not self.replica_runs


@dataclass
class QlabConfig:
    """One training job: R replicas (seeds seed .. seed + replicas - 1) of one experiment."""

    env: EnvConfig = MISSING
    agent: Any = MISSING  # the agent's own config class (qlab.core.agents.registry)
    exploration: ExplorationConfig = MISSING
    seed: int = 0  # seed of replica 0; replica k uses seed + k
    replicas: int = 1  # independent replicas in lock-step (MLflow runs: tracking.replica_runs)
    episodes: int = 500  # training episodes per replica
    eval_every: int = 25  # greedy evaluation every this many episodes (and after the last)
    total_steps: int | None = None  # env-step budget per replica, ends training early (null: none)
    eval_episodes: int = 10  # greedy rollouts per evaluation on envs without a model
    fast: str = "auto"  # compiled stepper (tabular agents): auto | on | off
    experiment_name: str = "qlab"  # MLflow experiment
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint_every: int = 100  # checkpoint the job every this many episodes (0: never)
    checkpoint_dir: str | None = None  # null: checkpoints/ beside a sqlite store, else the cwd
    resume: str | None = None  # RUN_ID | last | auto: continue a job from its checkpoint
    figure: str | None = None  # qlab-report also draws this book figure: cliff_walking | ...

    def check(self) -> None:
        """The top-level keys, then each group's own checks."""
        check_range("seed", self.seed, 0, 2**32 - 1)
        check_range("replicas", self.replicas, 1)
        check_range("episodes", self.episodes, 1)
        check_range("eval_every", self.eval_every, 1)
        if self.total_steps is not None:
            check_range("total_steps", self.total_steps, 1)
        check_range("eval_episodes", self.eval_episodes, 1)
        if not self.experiment_name.strip():
            fail("experiment_name", self.experiment_name, "must not be empty")
        if self.fast not in FAST_MODES:
            fail("fast", self.fast, f"must be one of {', '.join(FAST_MODES)} "
                 "(quote 'on' / 'off' in YAML files)")
        check_range("checkpoint_every", self.checkpoint_every, 0)
        if self.resume is not None and not str(self.resume).strip():
            fail("resume", self.resume, "must be a run id, last or auto")
        if self.figure is not None and self.figure not in FIGURES:
            fail("figure", self.figure, f"must be null or one of {', '.join(FIGURES)}")
        self.env.check()
        self.agent.check()
        self.exploration.check()
        self.tracking.check()
