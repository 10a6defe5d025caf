"""Fixtures of the cluster tests (``make test-cluster``, marker ``cluster``): a real PostgreSQL
server of Debian's packages, started for the session in a data directory of its own on
127.0.0.1 (and stopped and started again by the tests that take the database away), one fresh
database per test, and ``qlab-server`` over it.

PostgreSQL's binaries must be installed (``.ci/cluster/install``): a test of this directory
fails, not skips, without them. Each test module is marked ``cluster`` and ``integration``.
Servers run under ``$QLAB_CLUSTER_DIR`` (default /tmp/qlab-cluster), which
``.ci/cluster/down`` clears of leftovers."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import BIN, free_port, running_server

PG_VERSION = os.environ.get("QLAB_PG_VERSION", "15")
PG_BIN = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin")
CLUSTER_DIR = Path(os.environ.get("QLAB_CLUSTER_DIR", "/tmp/qlab-cluster"))
USER = "qlab"  # the role the tests connect as (its password: Postgres.password)


class Postgres:
    """A PostgreSQL server of its own: ``initdb`` in ``directory``, run as the ``postgres``
    system user (it refuses root), listening on 127.0.0.1:``port`` only, passwords checked
    (scram-sha-256) for every connection."""

    def __init__(self, directory: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            pytest.fail(f"PostgreSQL {PG_VERSION} is not installed ({PG_BIN}/initdb): run "
                        ".ci/cluster/install (make test-cluster does)", pytrace=False)
        self.dir = directory
        self.data = directory / "data"
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        shutil.chown(directory, "postgres")
        pwfile = directory / "superuser-password"
        pwfile.write_text(self.password + "\n")
        shutil.chown(pwfile, "postgres")
        pwfile.chmod(0o600)
        self._as_postgres(PG_BIN / "initdb", "-D", self.data, "-U", "postgres",
                          "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync")
        pwfile.unlink()
        self.start()
        self.sql(f"CREATE ROLE {USER} LOGIN CREATEDB PASSWORD '{self.password}'")

    def _as_postgres(self, *cmd) -> str:
        out = subprocess.run(["runuser", "-u", "postgres", "--", *map(str, cmd)], cwd=self.dir,
                             text=True, capture_output=True)
        if out.returncode:
            raise RuntimeError(f"{Path(str(cmd[0])).name} failed: {out.stderr or out.stdout}")
        return out.stdout

    def start(self) -> None:
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-l", self.dir / "server.log",
                          "-w", "-t", "60", "start", "-o",
                          f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                          "-c max_connections=200 -c fsync=off")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: connections cut, a clean shutdown; ``immediate``: like
        a crash)."""
        self._as_postgres(PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def sql(self, statement: str, database: str = "postgres") -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U",
                        "postgres", "-d", database, "-v", "ON_ERROR_STOP=1", "-qc", statement],
                       env=env, check=True, capture_output=True, text=True)

    def uri(self, database: str, password: str | None = None, user: str = USER) -> str:
        return (f"postgresql://{user}:{password or self.password}@127.0.0.1:{self.port}/"
                f"{database}")

    def new_database(self) -> str:
        """A new, empty database owned by :data:`USER`; its URI."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.sql(f"CREATE DATABASE {name} OWNER {USER}")
        return self.uri(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    CLUSTER_DIR.mkdir(parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="pg-", dir=CLUSTER_DIR))
    server = Postgres(directory)
    try:
        yield server
    finally:
        if server.running():
            with contextlib.suppress(RuntimeError):
                server.stop("immediate")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pg_uri(postgres: Postgres) -> Iterator[str]:
    """A fresh database for this test (the server is running again after the test, whatever
    the test did to it)."""
    yield postgres.new_database()
    if not postgres.running():
        postgres.start()


class TeamServer(NamedTuple):
    uri: str  # http://127.0.0.1:<port>, what qlab-train's tracking.uri names
    backend: str  # its PostgreSQL database
    artifacts: Path  # where it keeps artifacts (proxied)


@pytest.fixture(scope="session")
def team_server():
    """``with team_server(backend, directory) as server``: ``qlab-server`` over the
    PostgreSQL database ``backend`` (given through ``$MLFLOW_BACKEND_STORE_URI``, the
    documented way to keep its password off ``ps``), run from ``directory``."""
    @contextlib.contextmanager
    def launch(backend: str, directory: Path, workers: int = 2) -> Iterator[TeamServer]:
        artifacts = directory / "mlartifacts"
        with running_server([str(BIN / "qlab-server"), "--artifacts-destination",
                             str(artifacts), "--workers", str(workers)], directory,
                            env={"MLFLOW_BACKEND_STORE_URI": backend}, timeout=180) as uri:
            yield TeamServer(uri, backend, artifacts)

    return launch


