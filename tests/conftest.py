"""Shared fixtures: MLflow stores in temp dirs (no test ever writes to the project's
mlflow.db) and Hydra composition of the real config tree."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from qlab.config import CONF_DIR, register


def sqlite_uri(directory: Path) -> str:
    """An absolute sqlite MLflow URI for a store in ``directory``."""
    return f"sqlite:///{directory}/mlflow.db"


@pytest.fixture(autouse=True)
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A per-test sqlite store, also set as ``MLFLOW_TRACKING_URI``, so anything that falls
    back on the default store writes here. The file only appears if a test uses it. Sweep
    variables a parent process might leak are cleared."""
    uri = sqlite_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("QLAB_PARENT_RUN_ID", "QLAB_SWEEP_ID"):
        monkeypatch.delenv(var, raising=False)
    return uri


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the whole session (creating a store costs seconds of migrations);
    tests using it keep apart by experiment name (see :func:`experiment`)."""
    return sqlite_uri(tmp_path_factory.mktemp("mlflow_shared"))


@pytest.fixture
def experiment() -> str:
    """A fresh experiment name."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[[Sequence[str]], DictConfig]:
    """``compose_cfg(overrides)``: the job config Hydra composes from conf/ for a command line."""
    register()

    def _compose(overrides: Sequence[str] = ()) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))

    return _compose
