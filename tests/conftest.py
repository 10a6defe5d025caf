"""Shared fixtures: MLflow stores in temp dirs (no test ever writes to the project's
mlflow.db) and Hydra composition of the real config tree."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from qlab.config import CONF_DIR, register

BIN = Path(sys.executable).parent


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(args: Sequence[str], port: int, env: dict[str, str] | None = None,
                   timeout: float = 120) -> Iterator[str]:
    """``qlab-server --port <port> args`` until the block ends (its whole process group is
    stopped); yields its URI once it answers /health."""
    import requests

    log = tempfile.TemporaryFile("w+")  # a pipe nobody reads would fill and block the server
    proc = subprocess.Popen([str(BIN / "qlab-server"), "--port", str(port), *args],
                            env={**os.environ, **(env or {})}, stdout=log, stderr=log,
                            text=True, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"qlab-server exited {proc.returncode}: {log.read()[-2000:]}")
            try:
                if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                pytest.fail("qlab-server did not start")
            time.sleep(0.5)
        yield uri
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)  # uvicorn's graceful shutdown can take 10+ s: not needed here
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def launch_server() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with launch_server(args, env) as uri``: a ``qlab-server`` on a free port."""
    return lambda args, env=None: running_server(args, free_port(), env)


class Server(NamedTuple):
    uri: str  # http://127.0.0.1:<port>
    db: Path  # its sqlite backend store


@pytest.fixture(scope="session")
def qlab_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A locked-down ``qlab-server`` (no login) for the session, over its own sqlite store."""
    d = tmp_path_factory.mktemp("qlab_server")
    with running_server(["--backend-store-uri", sqlite_uri(d), "--artifacts-destination",
                         str(d / "artifacts"), "--workers", "2"], free_port()) as uri:
        yield Server(uri, d / "mlflow.db")
