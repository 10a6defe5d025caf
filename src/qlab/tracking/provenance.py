"""What a run needs besides its config to be rerun: package versions, the git commit of the
source (and whether it had uncommitted changes), python and the platform.

Recorded on every run as ``qlab.*`` tags (searchable) and as the ``environment.json``
artifact (the full record); the resolved config is the ``config.yaml`` artifact.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from qlab.config import ROOT

PACKAGES = ("qlab", "numpy", "torch", "gymnasium", "mlflow", "hydra-core", "omegaconf")
ARTIFACT = "environment.json"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    """``git -C <source root> args`` stdout, or None (no git, not a checkout, any failure)."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state() -> dict[str, Any] | None:
    """The source checkout's commit, branch and dirty flag; None if qlab's source root is not
    the top of a git checkout (an installed qlab inside some other repository is not)."""
    top = _git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != ROOT.resolve():
        return None
    commit = _git("rev-parse", "HEAD")
    if not commit:
        return None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": _git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(status) if status is not None else None}


@functools.cache
def collect() -> dict[str, Any]:
    """The record (computed once per process: it does not change while it runs)."""
    return {
        "python": platform.python_version(),
        "executable": sys.executable,
        "packages": {p: _version(p) for p in PACKAGES},
        "git": git_state(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "argv": list(sys.argv),
    }


def tags(record: dict[str, Any]) -> dict[str, str]:
    """The searchable part of ``record`` as MLflow tags."""
    out = {"qlab.version": str(record["packages"].get("qlab")),
           "qlab.python": record["python"], "qlab.platform": record["platform"]}
    for name in ("numpy", "torch", "gymnasium", "mlflow"):
        out[f"qlab.{name}_version"] = str(record["packages"].get(name))
    git = record["git"]
    if git is not None:
        out["qlab.git_commit"] = git["commit"]
        out["qlab.git_dirty"] = str(git["dirty"]).lower()
        # MLflow's own tag, shown in its UI's source column.
        out["mlflow.source.git.commit"] = git["commit"]
    return out


def to_json(record: dict[str, Any]) -> str:
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


__all__ = ["collect", "tags", "to_json", "git_state", "ARTIFACT"]
