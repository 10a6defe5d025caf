"""What :func:`qlab.run` returns: the trained job, its metric tables as pandas frames, and
the MLflow runs that recorded it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qlab.config import QlabConfig
from qlab.core.driver import Job
from qlab.core.history import History


@dataclass
class Result:
    """A trained job. ``history`` is None when ``resume=auto`` found the job already
    finished (its runs are ``run_ids``; nothing was trained)."""

    config: QlabConfig
    history: History | None
    job: Job | None
    run_ids: list[str] = field(default_factory=list)  # per replica (or aggregate run); [] untracked

    @property
    def seeds(self) -> list[int]:
        return [] if self.job is None else [int(s) for s in self.job.seeds]

    @property
    def curves(self) -> pd.DataFrame:
        """One row per (replica, episode) trained, a column per ``train/*`` metric, beside
        ``replica``, ``seed`` and ``episode``."""
        h = self._history()
        return self._frame(h.train, h.done, lambda k, n: np.arange(n))

    @property
    def evals(self) -> pd.DataFrame:
        """One row per (replica, evaluation), a column per ``eval/*`` metric, beside
        ``replica``, ``seed`` and ``episode`` (the episode the evaluation followed)."""
        h = self._history()
        return self._frame(h.evals, h.evals_done, lambda k, n: h.eval_steps[k, :n])

    @property
    def q_values(self) -> np.ndarray:
        """(R, S, A) every replica's action values on every state (tabular agents: the
        table; a DQN on an env with a finite state set: its network on each state)."""
        if self.job is None:
            raise ValueError("nothing was trained (resume=auto skipped a finished job): "
                             "its Q values are the runs' artifacts")
        q_values = getattr(self.job.agent, "q_values", None)
        if q_values is None or getattr(self.job.env, "model", None) is None:
            raise ValueError(f"env={self.config.env.name} has no finite state set: there is "
                             "no Q table; use result.job.agent")
        return np.asarray(q_values())

    def _frame(self, tables: dict[str, np.ndarray], done: np.ndarray, episodes) -> pd.DataFrame:
        """Replica k's first ``done[k]`` columns of every table, as rows after ``replica``,
        ``seed`` and ``episode`` (``episodes(k, n)``) columns."""
        frames = []
        for k in range(len(done)):
            n = int(done[k])
            frame = pd.DataFrame({key: table[k, :n] for key, table in tables.items()})
            frame.insert(0, "episode", episodes(k, n))
            frame.insert(0, "seed", self.seeds[k])
            frame.insert(0, "replica", k)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True)

    def _history(self) -> History:
        if self.history is None:
            raise ValueError("nothing was trained (resume=auto skipped a finished job): its "
                             "metrics are in the runs (qlab.analysis.runs)")
        return self.history
