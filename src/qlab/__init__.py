"""qlab: run, track and compare value-based reinforcement-learning experiments.

The Python door::

    import qlab
    cfg = qlab.compose(["env=griddy8", "agent=tabular_q", "replicas=5", "tracking.enabled=false"])
    result = qlab.run(cfg)   # result.curves, result.evals, result.q_values, result.run_ids

``qlab.core`` is the library underneath (envs, agents, the training driver), importable on its
own: it needs numpy, torch, numba and gymnasium only. The names here load lazily, so
``import qlab.core`` does not pull in Hydra or MLflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlab.app.result import Result
    from qlab.config.compose import compose

__all__ = ["compose", "run", "Result", "ConfigError", "QlabError"]


def run(cfg: Any) -> Result:
    """Train the job ``cfg`` describes (from :func:`compose`) and record it in MLflow
    (unless ``tracking.enabled=false``); returns its :class:`~qlab.app.result.Result`."""
    from qlab.app.train import run as run_job
    from qlab.core.errors import python_console

    with python_console():
        return run_job(cfg)


def __getattr__(name: str) -> Any:
    if name == "compose":
        from qlab.config.compose import compose

        return compose
    if name == "Result":
        from qlab.app.result import Result

        return Result
    if name in ("ConfigError", "QlabError"):
        from qlab.core import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'qlab' has no attribute {name!r}")
