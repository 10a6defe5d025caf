"""Size limits up front: a job that cannot fit in memory is refused in one line with the
estimate before anything is built or recorded; a tabular agent on a large grid never builds
the observation table it does not read; ``checkpoint_dir`` is checked before any run."""

from __future__ import annotations

import pytest

from qlab.app.build import build
from qlab.config import memory, validate
from qlab.core import driver
from qlab.core.errors import ConfigError
from tests.helpers import assert_no_runs, cli_exit, one_error_line


@pytest.mark.parametrize(("args", "says"), [
    (["episodes=100000000000"], r"episodes: the job needs about 7,570 GiB of memory \(history "
                                r"7,570 GiB\), more than the 16 GiB available; make episodes "
                                r"\(or replicas\) smaller"),
    (["agent=dqn", "env.height=500", "env.width=500"],
     r"env: the job needs about .* GiB of memory \(observation table 698 GiB, replay buffer"),
    (["env.height=300", "env.width=300", "env.random_goal=true"],
     r"env: the job needs about .* \(env model .* GiB, exact evaluation \(Q\*\)"),
])
def test_a_job_that_cannot_fit_is_refused_with_the_estimate(args, says, compose_cfg,
                                                            monkeypatch) -> None:
    monkeypatch.setattr(memory, "available", lambda: 16 * memory.GiB)
    with pytest.raises(ConfigError, match=says):
        validate(compose_cfg(args))


def test_refused_before_any_run(monkeypatch, capsys, mlflow_uri) -> None:
    monkeypatch.setattr(memory, "available", lambda: 16 * memory.GiB)
    assert cli_exit(monkeypatch, ["episodes=100000000000"]) == 2
    assert "the job needs about" in one_error_line(capsys.readouterr().err)
    assert_no_runs(mlflow_uri)


def test_a_tabular_agent_on_a_large_grid_builds_no_observation_table(compose_cfg) -> None:
    job = build(validate(compose_cfg(["env.height=150", "env.width=150", "episodes=1",
                                      "tracking.enabled=false"])))
    driver.train(job)
    assert callable(job.env._observations)  # still the recipe: 22,500 x 67,500 never built


@pytest.mark.parametrize("where", ["/proc", "/proc/qlab-checkpoints"])
def test_an_unwritable_checkpoint_dir_is_refused_before_any_run(where, monkeypatch, capsys,
                                                                mlflow_uri) -> None:
    assert cli_exit(monkeypatch, ["episodes=3", f"checkpoint_dir={where}"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"qlab-train: error: checkpoint_dir={where}: checkpoints cannot be "
                           "written there ("), line
    assert_no_runs(mlflow_uri)
