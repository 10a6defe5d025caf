"""``qlab-server --auth`` admin passwords: whitespace only is refused; one changed between
starts takes effect (MLflow alone keeps the first); the user database is the owner's only."""

from __future__ import annotations

import stat

import pytest

import qlab.tracking.server as server
from tests.helpers import one_error_line

OLD, NEW = "first-password-0123", "second-password-4567"


def test_a_whitespace_only_password_is_refused(monkeypatch, capsys) -> None:
    monkeypatch.setenv(server.PASSWORD_ENV, " " * 12)
    with pytest.raises(SystemExit) as exit_info:
        server.main(["--auth"])
    assert exit_info.value.code == 2
    assert "is only whitespace" in one_error_line(capsys.readouterr().err, "qlab-server")


def test_a_changed_password_takes_effect_and_the_database_is_private(tmp_path) -> None:
    # here, not at the top: MLflow's server modules take most of a second to import
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp_path / 'mlflow-auth.db'}"
    assert server.prepare_auth_db(uri, "admin", OLD) is None  # a new database, no user yet
    mode = stat.S_IMODE((tmp_path / "mlflow-auth.db").stat().st_mode)
    assert mode == 0o600, oct(mode)
    users = SqlAlchemyStore()
    users.init_db(uri)
    users.create_user("admin", OLD, is_admin=True)  # what MLflow does at the first start
    assert server.prepare_auth_db(uri, "admin", OLD) is None  # unchanged: nothing to do
    assert "password changed" in server.prepare_auth_db(uri, "admin", NEW)
    assert users.authenticate_user("admin", NEW) and not users.authenticate_user("admin", OLD)
    users.engine.dispose()
