"""The store check for database URIs and failing servers, in this process (no database
needed: a missing driver, a port nobody listens on, a server answering 503). The same checks
against a real PostgreSQL are in tests/cluster/ (make test-cluster)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import qlab.tracking.server
from qlab.config.schema import TrackingConfig
from qlab.core.errors import ConfigError
from qlab.tracking import store
from tests.helpers import free_port


@pytest.mark.parametrize(("uri", "shown"), [
    ("postgresql://qlab:pw@db:5432/x", "postgresql://qlab:***@db:5432/x"),
    ("postgresql+psycopg://qlab:p%40ss@db/x", "postgresql+psycopg://qlab:***@db/x"),
    ("http://me:pw@host:5000", "http://me:***@host:5000"),
    ("postgresql://qlab@db/x", "postgresql://qlab@db/x"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
])
def test_masked(uri, shown) -> None:
    assert store.masked(uri) == shown


def test_missing_driver_in_one_line() -> None:
    with pytest.raises(ImportError):
        __import__("psycopg2")
    with pytest.raises(store.StoreError) as refused:
        store.check("postgresql+psycopg2://qlab:s3cret@127.0.0.1:5432/qlab")
    assert str(refused.value) == (
        "tracking.uri=postgresql+psycopg2://qlab:***@127.0.0.1:5432/qlab: the database driver "
        "'psycopg2' is not installed (pip install 'psycopg2-binary')")


def test_database_down_in_one_line() -> None:
    port = free_port()
    with pytest.raises(store.StoreError) as refused:
        store.check(f"postgresql://qlab:s3cret@127.0.0.1:{port}/qlab")
    assert str(refused.value) == (f"tracking.uri=postgresql://qlab:***@127.0.0.1:{port}/qlab: no "
                                  f"database server answers at 127.0.0.1:{port} (connection "
                                  "refused)")


def test_a_database_store_needs_an_artifact_location(tmp_path) -> None:
    uri = "postgresql://qlab:s3cret@db/qlab"
    with pytest.raises(store.StoreError, match="needs tracking.artifacts") as refused:
        store.artifact_location(uri, None)
    assert "s3cret" not in str(refused.value)
    assert store.artifact_location(uri, str(tmp_path)) == tmp_path.as_uri()
    assert store.artifact_location(uri, "s3://bucket/qlab") == "s3://bucket/qlab"
    assert store.artifact_location("http://host:5000", None) is None  # the server's own
    assert store.artifact_location(f"sqlite:///{tmp_path}/m.db", None) == (
        (tmp_path / "mlruns").as_uri())
    with pytest.raises(ConfigError, match="tracking.artifacts='mlartifacts': must be an absolute"):
        TrackingConfig(artifacts="mlartifacts").check()


def test_mlflow_database_tracebacks_are_dropped(caplog) -> None:
    """MLflow logs a failed statement with its traceback, then raises it: only the raise
    stays (qlab reports it in one line)."""
    store.quiet_database_errors()
    store.quiet_database_errors()  # once only
    logger = logging.getLogger("mlflow.store.db.utils")
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger="mlflow.store.db.utils"):
        try:
            raise RuntimeError("connection lost")
        except RuntimeError:
            logger.exception("SQLAlchemy database error. The following exception is caught.\n%s",
                             "connection lost")
        logger.info("Creating initial MLflow database tables...")
    assert [r.getMessage() for r in caplog.records] == [
        "Creating initial MLflow database tables..."]


class _Unavailable(BaseHTTPRequestHandler):
    """What MLflow answers while its database is down."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE",
                           "message": "(psycopg.OperationalError) connection failed\nmore"})
        self.send_response(503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


def test_a_5xx_answer_is_reported_with_status_and_message() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://user:s3cret@127.0.0.1:{server.server_address[1]}"
        with pytest.raises(store.StoreError) as failed:
            store.check(uri)
    finally:
        server.shutdown()
    assert str(failed.value) == (
        f"tracking.uri=http://user:***@127.0.0.1:{server.server_address[1]}: the server failed "
        "(HTTP 503 Service Unavailable): (psycopg.OperationalError) connection failed")


def test_server_moves_a_password_off_its_command_line(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(qlab.tracking.server.os, "execve",
                        lambda path, argv, env: calls.append((argv, env)))
    uri = "postgresql://qlab:s3cret@db/qlab"
    qlab.tracking.server.hide_password(["--port", "5001", "--backend-store-uri", uri, "--auth"])
    qlab.tracking.server.hide_password([f"--backend-store-uri={uri}"])
    qlab.tracking.server.hide_password(["--backend-store-uri", "postgresql://qlab@db/qlab"])
    assert [argv[3:] for argv, _ in calls] == [["--port", "5001", "--auth"], []]
    assert all(env["MLFLOW_BACKEND_STORE_URI"] == uri for _, env in calls)
    assert all("s3cret" not in " ".join(argv) for argv, _ in calls)
    args = qlab.tracking.server.parse_args(["--backend-store-uri", uri])
    assert "s3cret" not in " ".join(qlab.tracking.server.command(args))
