"""qlab installed from a wheel (not editable) works from any directory: its configs are package
data, its default store is in the working directory, and a run records no git commit (there
is no checkout, even when the working directory is some other git project)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]
# Left out of the copy the wheel is built from: state, caches and what the build writes.
NOT_SOURCE = (".git", ".venv", "__pycache__", "*.egg-info", "build", "mlruns", "multirun",
              "outputs", "mlflow.db*", "mlflow-auth.db", "mlartifacts", "checkpoints",
              "reports", "qlab-unsent", ".pytest_cache", ".ruff_cache")
TORCH_VERSION = "2.13.0"  # as the Makefile pins it: an unpinned torch pulls a CUDA build


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 600):
    out = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.returncode}\n{out.stdout[-3000:]}\n" \
                                f"{out.stderr[-3000:]}"
    return out


def _summary(stderr: str, episodes: int) -> str:
    """qlab-train's one-line summary among its stderr lines."""
    pattern = rf"tabular_q on griddy: 1 replica\(s\) x {episodes} episodes, final train return"
    lines = [line for line in stderr.splitlines() if re.match(pattern, line)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.slow  # builds a wheel and installs it with its dependencies into a fresh venv
def test_a_wheel_install_trains_from_any_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QLAB_", "HYDRA_", "MLFLOW_")) and k != "PYTHONPATH"}
    source = tmp_path / "source"  # a copy: the build writes build/ and *.egg-info beside it
    shutil.copytree(CHECKOUT, source, symlinks=True,
                    ignore=shutil.ignore_patterns(*NOT_SOURCE))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), "."], source,
         env)
    (wheel,) = wheels.glob("qlab-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    python, bin_ = venv / "bin" / "python", venv / "bin"
    _run([str(python), "-m", "pip", "install", "--quiet", f"torch=={TORCH_VERSION}"], tmp_path,
         env, timeout=1200)
    _run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], tmp_path, env,
         timeout=1800)
    shutil.rmtree(source)  # nothing may come from the source tree any more

    project = tmp_path / "project"  # some user's git project
    project.mkdir()
    git = ["git", "-C", str(project), "-c", "user.email=t@t", "-c", "user.name=t"]
    _run([*git, "init", "-q"], project, env)
    _run([*git, "commit", "-q", "--allow-empty", "-m", "x"], project, env)
    conf = _run([str(python), "-c", "import qlab.config as c; print(c.CONF_DIR); "
                 "print(' '.join(c.options('experiment')))"], project, env).stdout.split("\n")
    assert Path(conf[0]).is_relative_to(venv) and "epsilon_decay" in conf[1].split()

    out = _run([str(bin_ / "qlab-train"), "episodes=20", "tracking.enabled=false"], project, env)
    _summary(out.stderr, 20)
    assert not (project / "mlflow.db").exists()

    out = _run([str(bin_ / "qlab-train"), "episodes=5", "experiment_name=wheel"], project, env)
    _summary(out.stderr, 5)
    assert (project / "mlflow.db").is_file() and (project / "mlruns").is_dir()
    tags = _run([str(python), "-c", "from mlflow.tracking import MlflowClient; "
                 "c = MlflowClient('sqlite:///mlflow.db'); "
                 "e = c.get_experiment_by_name('wheel'); "
                 "(r,) = c.search_runs([e.experiment_id]); print(sorted(r.data.tags))"],
                project, env).stdout
    assert "'qlab.version'" in tags and "qlab.git_commit" not in tags, tags
