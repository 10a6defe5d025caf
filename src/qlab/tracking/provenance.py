"""What a run needs besides its config to be rerun: package versions, the git commit of the
source (and whether it had uncommitted changes), python and the platform.

The commit is recorded only when qlab runs from a checkout: installed editable (``pip install
-e``), whose PEP 610 record (``direct_url.json``) names the source directory, and that
directory is the top of a git checkout. A wheel install (``pip install .`` included: a copy
of the files) has no checkout, whatever the directory it was built from holds now.

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
from urllib.parse import urlparse
from urllib.request import url2pathname

from qlab.core.secrets import mask

PACKAGES = ("qlab", "numpy", "torch", "gymnasium", "mlflow", "hydra-core", "omegaconf")
ARTIFACT = "environment.json"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def editable_dir(direct_url: str | None) -> Path | None:
    """The source directory a PEP 610 ``direct_url.json`` names for an editable install;
    None for anything else (a wheel, a non-editable directory install, no or a bad record)."""
    try:
        info = json.loads(direct_url or "")
    except ValueError:
        return None
    if not isinstance(info, dict) or not (info.get("dir_info") or {}).get("editable"):
        return None
    url = urlparse(str(info.get("url", "")))
    return Path(url2pathname(url.path)) if url.scheme == "file" else None


def source_dir() -> Path | None:
    """The directory qlab's code comes from when it is installed editable, else None. (The
    installed distribution's record: a build's ``qlab.egg-info`` in the working directory,
    which may come first on ``sys.path``, has none.)"""
    for dist in metadata.distributions(name="qlab"):
        text = dist.read_text("direct_url.json")
        if text is not None:
            return editable_dir(text)
    return None


def _git(source: Path, *args: str) -> str | None:
    """``git -C source args`` stdout, or None (no git, not a checkout, any failure)."""
    try:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(source: Path | None = None) -> dict[str, Any] | None:
    """The commit, branch and dirty flag of the checkout ``source`` (default: qlab's
    :func:`source_dir`); None without one, or if ``source`` is not the top of its git
    checkout (a directory inside some other repository is not qlab's checkout)."""
    source = source or source_dir()
    if source is None:
        return None
    top = _git(source, "rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() != source.resolve():
        return None
    commit = _git(source, "rev-parse", "HEAD")
    if not commit:
        return None
    status = _git(source, "status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "branch": _git(source, "rev-parse", "--abbrev-ref", "HEAD"),
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
        "argv": [mask(a) for a in sys.argv],  # a URI's password masked
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


__all__ = ["collect", "tags", "to_json", "git_state", "source_dir", "editable_dir", "ARTIFACT"]
