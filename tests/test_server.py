"""``qlab-server``: the locked-down tracking server refuses foreign Host headers; the
authenticated mode refuses requests without a valid login, accepts the admin with the
password from the environment, and does not start without one."""

from __future__ import annotations

import pytest
import requests
from mlflow.tracking import MlflowClient

import qlab.app.train
import qlab.tracking.server
from tests.helpers import cli_exit

PASSWORD = "correct-horse-battery-staple"
SEARCH = "/api/2.0/mlflow/experiments/search"


def get(uri: str, host: str | None = None, auth: tuple[str, str] | None = None) -> int:
    headers = {"Host": host} if host else {}
    return requests.get(uri + SEARCH, params={"max_results": 1}, headers=headers, auth=auth,
                        timeout=30).status_code


def test_locked_down_server_refuses_a_foreign_host_header(auth_server) -> None:
    """On a running server (the authenticated one: the same --allowed-hosts as without
    --auth, see test_command_line); the Host check comes before the login."""
    uri, _ = auth_server
    port, admin = uri.rsplit(":", 1)[1], ("admin", PASSWORD)
    assert get(uri, auth=admin) == 200
    assert get(uri, host=f"localhost:{port}", auth=admin) == 200
    assert get(uri, host="evil.example.com", auth=admin) == 403
    assert get(uri, host="evil.example.com") == 403
    # MLflow's own default admits private addresses (DNS rebinding from the LAN); not here.
    assert get(uri, host=f"192.168.1.10:{port}", auth=admin) == 403


def test_command_line() -> None:
    """make server and make server-auth: loopback bind, the same Host allow-list."""
    for auth in ([], ["--auth"]):
        server = qlab.tracking.server
        cmd = server.command(server.parse_args(["--port", "5123", *auth]))
        assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
        assert cmd[cmd.index("--allowed-hosts") + 1] == qlab.tracking.server.allowed_hosts(
            "127.0.0.1", 5123, "")
        assert ("--app-name" in cmd) == bool(auth)


def test_allowed_hosts() -> None:
    assert qlab.tracking.server.allowed_hosts("127.0.0.1", 5000, "").split(",") == [
        "localhost", "localhost:5000", "127.0.0.1", "127.0.0.1:5000", "[::1]", "[::1]:5000"]
    hosts = qlab.tracking.server.allowed_hosts("0.0.0.0", 5000,
                                               "mlflow-host, 10.1.2.3:5000").split(",")
    assert hosts[-3:] == ["mlflow-host", "mlflow-host:5000", "10.1.2.3:5000"]


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--auth"], None, "MLFLOW_AUTH_ADMIN_PASSWORD (unset or empty)"),
    (["--auth"], "", "MLFLOW_AUTH_ADMIN_PASSWORD (unset or empty)"),
    (["--auth"], "short", "at least 12 characters"),
    (["--auth"], "password1234", "old published default"),
    (["--host", "0.0.0.0"], None, "--allowed-hosts"),
], ids=["unset", "empty", "short", "legacy-default", "public-bind-unnamed"])
def test_refuses_to_start_in_one_line(args, env, says, monkeypatch, capsys) -> None:
    if env is None:
        monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", env)
    with pytest.raises(SystemExit) as exit_info:
        qlab.tracking.server.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("qlab-server: error: "), err
    assert says in err


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, launch_server, sqlite_store):
    """(its URI, the directory of its store); it runs from ``cwd/`` there."""
    d = tmp_path_factory.mktemp("auth_server")
    (d / "cwd").mkdir()
    with launch_server(["--auth", "--backend-store-uri", sqlite_store(d),
                        "--artifacts-destination", str(d / "artifacts"), "--workers", "1"],
                       env={"MLFLOW_AUTH_ADMIN_PASSWORD": PASSWORD}, cwd=d / "cwd") as uri:
        yield uri, d


def test_auth_server_refuses_unauthenticated_accepts_admin(auth_server) -> None:
    uri, d = auth_server
    assert get(uri) == 401
    assert get(uri, auth=("admin", "wrong-password-123")) == 401
    assert get(uri, auth=("admin", "password1234")) == 401
    assert get(uri, auth=("admin", PASSWORD)) == 200
    assert get(uri, host="evil.example.com", auth=("admin", PASSWORD)) == 403
    assert (d / "mlflow-auth.db").exists()  # users beside the store, not in the cwd
    assert not (d / "cwd" / "basic_auth.db").exists()


def test_training_against_the_auth_server(auth_server, compose_cfg, monkeypatch, capsys,
                                          experiment) -> None:
    """Without credentials qlab-train stops in one line before any run; with them (the
    client's MLFLOW_TRACKING_USERNAME / PASSWORD) it records as usual."""
    uri, _ = auth_server
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    assert cli_exit(monkeypatch, ["episodes=3", f"tracking.uri={uri}",
                                  f"experiment_name={experiment}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qlab-train: error: tracking.uri={uri}: the server requires a login (no "
                   "credentials given); set MLFLOW_TRACKING_USERNAME and "
                   "MLFLOW_TRACKING_PASSWORD"]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    result = qlab.app.train.run(compose_cfg(["episodes=3", "replicas=2", f"tracking.uri={uri}",
                                             f"experiment_name={experiment}"]))
    _, run_ids = result.history, result.run_ids
    client = MlflowClient(uri)
    assert [client.get_run(r).info.status for r in run_ids] == ["FINISHED", "FINISHED"]
    assert len(client.get_metric_history(run_ids[1], "train/episode_return")) == 3
