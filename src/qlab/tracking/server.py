"""``qlab-server``: a locked-down MLflow tracking server (``make server``, ``make server-auth``).

    qlab-server                       # http://127.0.0.1:5000, sqlite store, proxied artifacts
    MLFLOW_AUTH_ADMIN_PASSWORD=... qlab-server --auth      # MLflow's basic-auth app

It runs ``mlflow server`` with:

- the bind address ``--host`` (127.0.0.1 by default: only this machine connects);
- MLflow's Host-header check (``--allowed-hosts``) limited to the loopback names plus the
  names given with ``--allowed-hosts`` (MLflow's own default also admits every private IP);
  binding a public interface without naming the hosts clients use is refused;
- with ``--auth``, MLflow's ``basic-auth`` app: every request needs a user and password.
  The admin user's password comes from ``MLFLOW_AUTH_ADMIN_PASSWORD`` only (nothing is
  shipped, nothing is written to disk): unset, empty, shorter than 12 characters or MLflow's
  old default is refused, and so is one of whitespace only. The auth config (an ini file
  without the password) goes to a temporary file; the user database defaults to
  ``mlflow-auth.db`` beside the sqlite store, readable by its owner only. A password changed
  between starts takes effect (MLflow itself keeps the first one), said on stderr.

The store defaults to ``mlflow.db`` and ``mlartifacts/`` in the working directory (``make
server`` passes the checkout's); ``$MLFLOW_BACKEND_STORE_URI`` sets it too. A database store
(``postgresql://...``) is checked before the server starts (one line for a database that is
down, refuses the login or does not exist) and its schema created under qlab's lock, so the
server's workers never race to create it. Its password never stays on a command line that
``ps`` shows: give it in ``$MLFLOW_BACKEND_STORE_URI``, ``$PGPASSWORD`` or ``~/.pgpass``;
given with ``--backend-store-uri``, qlab-server restarts itself at once with the URI moved to
its environment. The ``mlflow server`` child always gets it through its environment.

SIGTERM or SIGINT stops the whole ``mlflow server`` process group (its web workers too),
killed after :data:`STOP_SECONDS` if it lingers.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from qlab.core.errors import QlabError, run_cli
from qlab.tracking import store
from qlab.tracking.store import sqlite_path

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
PASSWORD_ENV = "MLFLOW_AUTH_ADMIN_PASSWORD"  # MLflow's own variable, read by its auth app
USERNAME_ENV = "MLFLOW_AUTH_ADMIN_USERNAME"
MIN_PASSWORD = 12  # MLflow's password policy
LEGACY_PASSWORD = "password1234"  # what MLflow < 3.x shipped in basic_auth.ini
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
PROG = "qlab-server"
BACKEND_ENV = "MLFLOW_BACKEND_STORE_URI"  # MLflow's own variable, read by ``mlflow server``
JOBS_ENV = "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"
STOP_SECONDS = 10.0  # after SIGTERM / SIGINT, how long the server's processes get to exit

log = logging.getLogger(__name__)


class ServerError(QlabError, ValueError):
    """Bad server settings (refused before the server starts); the message is one line."""

    exit_code = 2


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--backend-store-uri",
                   default=os.environ.get(BACKEND_ENV) or f"sqlite:///{Path.cwd() / 'mlflow.db'}",
                   help=f"the store (default: ${BACKEND_ENV}, else mlflow.db in the working "
                        "directory); a password in it: see the module's docs")
    p.add_argument("--artifacts-destination", default=str(Path.cwd() / "mlartifacts"),
                   help="where artifacts go (default: mlartifacts/ in the working directory)")
    p.add_argument("--allowed-hosts", default="",
                   help="extra comma-separated Host headers to accept (the names clients use "
                        "for this server, e.g. mlflow-host,mlflow-host:5000)")
    p.add_argument("--workers", default=None, help="server worker processes (MLflow's default: 4)")
    p.add_argument("--auth", action="store_true",
                   help=f"require a login (MLflow basic-auth); admin password from ${PASSWORD_ENV}")
    p.add_argument("--auth-db-uri", default=None,
                   help="user database (default: mlflow-auth.db beside a sqlite store)")
    p.add_argument("--default-permission", default="READ", choices=PERMISSIONS,
                   help="what a logged-in user may do with others' experiments (default READ)")
    return p.parse_args(argv)


def allowed_hosts(host: str, port: int, extra: str) -> str:
    """The Host headers the server accepts: loopback names (with and without the port), the
    bind address if it is a name or a specific address, and ``extra``."""
    names = [h.strip() for h in extra.split(",") if h.strip()]
    if host in ("0.0.0.0", "::", "") and not names:
        raise ServerError(f"--host {host or '0.0.0.0'} accepts connections from other machines: "
                          "name the host names they use with --allowed-hosts (e.g. "
                          f"mlflow-host,mlflow-host:{port}); make server ALLOWED_HOSTS=...")
    if host not in ("0.0.0.0", "::", "", *LOOPBACK):
        names.append(host)
    out: list[str] = []
    for name in [*LOOPBACK, *names]:
        has_port = "]:" in name if name.startswith("[") else ":" in name
        for h in (name,) if has_port else (name, f"{name}:{port}"):
            if h not in out:
                out.append(h)
    return ",".join(out)


def admin_password() -> str:
    """The admin password from the environment, or :class:`ServerError`."""
    password = os.environ.get(PASSWORD_ENV, "")
    if password and not password.strip():
        raise ServerError(f"${PASSWORD_ENV} is only whitespace; choose a real password")
    if not password:
        raise ServerError(f"--auth needs the admin password in ${PASSWORD_ENV} (unset or empty); "
                          "qlab ships no default password")
    if password == LEGACY_PASSWORD:
        raise ServerError(f"${PASSWORD_ENV} is MLflow's old published default; choose another")
    if len(password) < MIN_PASSWORD:
        raise ServerError(f"${PASSWORD_ENV} is too short: MLflow needs at least {MIN_PASSWORD} "
                          "characters")
    return password


def auth_db_uri(backend_store_uri: str) -> str:
    db = sqlite_path(backend_store_uri)
    if db is not None:
        return f"sqlite:///{db.parent / 'mlflow-auth.db'}"
    return f"sqlite:///{Path.cwd() / 'mlflow-auth.db'}"


def auth_ini(database_uri: str, default_permission: str, admin: str) -> str:
    """MLflow's basic-auth config, without the password (MLflow reads it from the env)."""
    return ("[mlflow]\n"
            f"default_permission = {default_permission}\n"
            f"database_uri = {database_uri}\n"
            f"admin_username = {admin}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")


def prepare_auth_db(database_uri: str, admin: str, password: str) -> str | None:
    """Before the server starts: the user database readable by its owner only (it holds
    password hashes), and the admin's password the one given now — MLflow sets it only when
    it creates the user, so a changed ``$MLFLOW_AUTH_ADMIN_PASSWORD`` would be silently
    ignored. Returns what was done (a line to log), or None."""
    db = sqlite_path(database_uri)
    if db is None:
        return None
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    old_umask = os.umask(0o077)  # a new database file (and its journal) for the owner only
    try:
        users = SqlAlchemyStore()
        users.init_db(database_uri)
    finally:
        os.umask(old_umask)
    os.chmod(db, 0o600)
    changed = None
    if users.has_user(admin) and not users.authenticate_user(admin, password):
        users.update_user(admin, password=password)
        changed = f"admin user {admin!r}: password changed to ${PASSWORD_ENV}'s"
    users.engine.dispose()
    return changed


def command(args: argparse.Namespace) -> list[str]:
    """The ``mlflow server`` command line (the store URI goes in its environment:
    :data:`BACKEND_ENV`)."""
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server",
           "--artifacts-destination", args.artifacts_destination, "--serve-artifacts",
           "--host", args.host, "--port", str(args.port),
           "--allowed-hosts", allowed_hosts(args.host, args.port, args.allowed_hosts)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    if args.auth:
        cmd += ["--app-name", "basic-auth"]
    return cmd


def main(argv: list[str] | None = None) -> None:
    """Console entry point: bad settings are one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    hide_password(argv)
    args = parse_args(argv)
    sys.exit(run_cli(PROG, lambda: serve(args)))


def hide_password(argv: list[str]) -> None:
    """A ``--backend-store-uri`` with a password on the command line (which ``ps`` shows to
    every user): restart this process at once with the URI in :data:`BACKEND_ENV` instead."""
    for i, arg in enumerate(argv):
        if arg == "--backend-store-uri" and i + 1 < len(argv):
            uri, rest = argv[i + 1], [*argv[:i], *argv[i + 2:]]
        elif arg.startswith("--backend-store-uri="):
            uri, rest = arg.split("=", 1)[1], [*argv[:i], *argv[i + 1:]]
        else:
            continue
        if urlparse(uri).password is None:
            return
        env = {**os.environ, BACKEND_ENV: uri}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "qlab.tracking.server", *rest], env)


def prepare_store(uri: str) -> None:
    """A database store: checked (one line if it cannot be used) and its schema created or
    upgraded under qlab's lock, before the server's workers open it all at once."""
    if not store.is_database(uri):
        return
    try:
        store.check(uri)
    except store.StoreError as exc:
        raise ServerError(str(exc).replace("tracking.uri=", "--backend-store-uri ", 1)) from None
    store.client_for(uri)


def serve(args: argparse.Namespace) -> int:
    """Run the server until it exits (its exit code); :class:`ServerError` before it starts."""
    env = {**os.environ, BACKEND_ENV: args.backend_store_uri}
    # MLflow's job runner (GenAI evaluation jobs: a dozen huey worker processes) serves
    # nothing qlab records; on only if the environment asks for it.
    env.setdefault(JOBS_ENV, "false")
    cmd = command(args)
    if args.auth:
        admin_password()
    prepare_store(args.backend_store_uri)
    with tempfile.TemporaryDirectory(prefix="qlab-server-") as tmp:
        if args.auth:
            ini = Path(tmp) / "basic_auth.ini"
            users_uri = args.auth_db_uri or auth_db_uri(args.backend_store_uri)
            admin = env.get(USERNAME_ENV) or "admin"
            changed = prepare_auth_db(users_uri, admin, admin_password())
            if changed:
                log.warning("%s", changed)
            ini.write_text(auth_ini(users_uri, args.default_permission, admin))
            env["MLFLOW_AUTH_CONFIG_PATH"] = str(ini)
            # CSRF key shared by this server's workers; set it yourself for several servers.
            env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_urlsafe(32))
        mode = "login required (basic-auth)" if args.auth else "no login"
        log.info("http://%s:%s, %s, store %s, accepted Host headers: %s", args.host, args.port,
                 mode, store.masked(args.backend_store_uri),
                 cmd[cmd.index("--allowed-hosts") + 1])
        # its own process group: a signal reaches mlflow's web workers too, not only its CLI
        proc = subprocess.Popen(cmd, env=env, start_new_session=True)
        stopped_by: list[int] = []

        def forward(signum, frame):
            stopped_by.append(signum)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, forward)
        code = proc.wait()
        if stopped_by:
            stop_group(proc.pid)
            return 128 + stopped_by[0]
        return code


def stop_group(pgid: int, seconds: float = STOP_SECONDS) -> None:
    """Wait until no process of group ``pgid`` is left, killing them after ``seconds``."""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(pgid, 0)
            time.sleep(0.1)
        log.warning("the server's processes outlived SIGTERM by %g s: killed", seconds)
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
