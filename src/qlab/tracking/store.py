"""Is a tracking store usable? Checked before any run exists, so a bad ``tracking.uri`` gives
one line and no half-written runs instead of a hang or a traceback.

- Accepted: ``sqlite:////absolute/path.db`` (its directory must exist and be writable, and
  so must the ``mlruns/`` artifact directory beside it if present), ``http(s)://`` tracking
  servers (probed: they must take a connection within :data:`PROBE_TIMEOUT` seconds,
  answer, and accept our credentials and Host header), and SQL databases
  (``postgresql://``, ``mysql://``, ...: their driver must be installed, and one connection
  must succeed within :data:`CONNECT_TIMEOUT` seconds; MLflow's own engine retries a dead
  database for minutes).
- Refused: MLflow's file store (``file:///...`` or a bare path: it writes wherever the path
  points, and MLflow is retiring it), relative sqlite paths (they depend on the working
  directory, which differs between launchers), in-memory sqlite, and other schemes.

:func:`check` also shortens MLflow's HTTP retries (unless the user set them): by default
MLflow retries a dead server for minutes per request.

Passwords inside a URI never reach a message: :func:`masked` writes them ``***``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from qlab.core.errors import QlabError
from qlab.core.secrets import has_secret, mask

# The reachability probe of a tracking server: seconds to connect (a dead or unreachable
# server fails here), then to answer (a live server just started, or busy, may be slow).
PROBE_TIMEOUT = 5.0
PROBE_READ_TIMEOUT = 30.0
# MLflow's HTTP client defaults (7 retries, backoff factor 2, 120 s timeout) keep a job
# waiting ~4 minutes per request on a dead server; these give up after ~10 s.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
SQL_SCHEMES = ("postgresql", "mysql", "mssql")
# Seconds a database gets to accept one connection (the store check, the schema lock).
CONNECT_TIMEOUT = 5
# The PostgreSQL advisory lock held while MLflow creates or upgrades its schema (any number
# shared by every qlab process; "qlab" in ASCII).
SCHEMA_LOCK_KEY = 0x716C6162
# What to install for a SQLAlchemy dialect's default driver, when it is missing.
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                   "mysqldb": "mysqlclient", "pymysql": "pymysql", "pyodbc": "pyodbc"}

log = logging.getLogger(__name__)


class StoreError(QlabError, RuntimeError):
    """The tracking store cannot be used; the message is one line naming it and why."""


def configure_http() -> None:
    """Shorter MLflow HTTP retries for this process, unless set in the environment."""
    for var, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(var, value)


def check(uri: str) -> None:
    """Raise :class:`StoreError` if ``uri`` is not a usable tracking store."""
    scheme = urlparse(uri).scheme.lower()
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        configure_http()
        _probe_server(uri)
    elif scheme.split("+")[0] in SQL_SCHEMES:
        _check_database(uri)
    elif scheme in ("", "file") or len(scheme) == 1:  # a bare path (or C:\ on Windows)
        raise StoreError(f"tracking.uri={masked(uri)!r}: MLflow's file store is not supported; use "
                         "sqlite:////absolute/path/mlflow.db or http(s)://host:port")
    else:
        raise StoreError(f"tracking.uri={masked(uri)!r}: unsupported scheme {scheme!r}; use "
                         "sqlite:////absolute/path/mlflow.db, http(s)://host:port or a "
                         "postgresql:// / mysql:// database")


def masked(uri: str) -> str:
    """``uri`` with the password of its ``user:password@`` part (or a password query
    parameter) written ``***``: :func:`qlab.core.secrets.mask`, qlab's one masking rule."""
    return mask(uri)


def is_database(uri: str) -> bool:
    """A SQL database URI (``postgresql://``, ``mysql+pymysql://``, ...), sqlite excepted."""
    return urlparse(uri).scheme.lower().split("+")[0] in SQL_SCHEMES


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory or another store)."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://"):]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:].split("?")[0])


def artifact_location(uri: str, artifacts: str | None) -> str | None:
    """Where a new experiment of store ``uri`` keeps its artifacts (None: the server
    decides): ``artifacts`` (``tracking.artifacts``, an absolute directory or a URI), else
    ``mlruns/`` beside a sqlite store. A database store needs ``artifacts``: MLflow's own
    default, ``./mlruns`` of whichever process creates the experiment, is a directory other
    machines never see, shared by same-numbered experiments of different databases."""
    if artifacts:
        return Path(artifacts).as_uri() if artifacts.startswith("/") else artifacts
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / "mlruns").resolve().as_uri()
    if is_database(uri):
        raise StoreError(f"tracking.uri={masked(uri)}: a database store needs tracking.artifacts "
                         "(a directory every machine running jobs sees, or a URI such as "
                         "s3://bucket/path); or track through qlab-server "
                         "(tracking.uri=http://host:port), which stores the artifacts itself")
    return None


def _check_sqlite(uri: str) -> None:
    db = sqlite_path(uri)
    if db is None:
        raise StoreError(f"tracking.uri={uri!r}: an in-memory sqlite store keeps nothing; use "
                         "sqlite:////absolute/path/mlflow.db")
    if not db.is_absolute():
        raise StoreError(f"tracking.uri={uri!r}: a relative sqlite path depends on the working "
                         f"directory; use an absolute one: sqlite:///{db.absolute()}")
    if not db.parent.is_dir():
        raise StoreError(f"tracking.uri={uri!r}: directory {db.parent} does not exist")
    # sqlite writes its journal beside the database, so the directory must be writable too
    for target in (db.parent, db) if db.exists() else (db.parent,):
        if not os.access(target, os.W_OK):
            raise StoreError(f"tracking.uri={uri!r}: {target} is not writable")
    artifacts = db.parent / "mlruns"
    if artifacts.exists() and not os.access(artifacts, os.W_OK | os.X_OK):
        raise StoreError(f"tracking.uri={uri!r}: artifact directory {artifacts} is not writable")


def _engine(uri: str):
    """A SQLAlchemy engine of ``uri`` that holds no pool and waits at most
    :data:`CONNECT_TIMEOUT` seconds for a connection."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    backend = urlparse(uri).scheme.lower().split("+")[0]
    args = {"connect_timeout": CONNECT_TIMEOUT} if backend in ("postgresql", "mysql") else {}
    return create_engine(uri, poolclass=NullPool, connect_args=args)


def _check_database(uri: str) -> None:
    """The driver is installed and the database accepts one connection, or one line why."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

    where = f"tracking.uri={masked(uri)}"
    try:
        url = make_url(uri)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError) as exc:
        raise StoreError(f"{where}: not a database URL SQLAlchemy knows ({exc})") from None
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = url.get_driver_name()
        package = DRIVER_PACKAGES.get(driver, driver)
        raise StoreError(f"{where}: the database driver {driver!r} is not installed "
                         f"(pip install '{package}')") from None
    from sqlalchemy import text

    try:
        with _engine(uri).connect() as conn:
            conn.execute(text("SELECT 1"))
    except DBAPIError as exc:
        raise StoreError(f"{where}: {_database_refusal(url, exc.orig)}") from None


def _database_refusal(url, exc: BaseException | None) -> str:
    """Why a database refused a connection, in a few words (the driver's own words
    otherwise, first line)."""
    text = " ".join(str(exc).split()) if exc is not None else ""
    low = text.lower()
    at = f"{url.host or 'localhost'}:{url.port or 'default port'}"
    if "password authentication failed" in low or "access denied" in low:
        return f"the database refused user {url.username!r} (wrong password?)"
    if "no password supplied" in low:
        return (f"the database needs a password for user {url.username!r} (in the URI, "
                "$PGPASSWORD or ~/.pgpass)")
    if "role" in low and "does not exist" in low:
        return f"the database has no user {url.username!r}"
    if "database" in low and ("does not exist" in low or "unknown database" in low):
        return f"database {url.database!r} does not exist at {at} (create it first)"
    if "timeout expired" in low or "timed out" in low:
        return f"no database answers at {at} within {CONNECT_TIMEOUT} s"
    if "connection refused" in low or "can't connect" in low:
        return f"no database server answers at {at} (connection refused)"
    if "could not translate host name" in low or "name or service not known" in low:
        return f"unknown database host {url.host!r}"
    line = text.split(" connection to server at ")[-1] if text else type(exc).__name__
    return f"the database refused the connection: {line[:300]}"


def _probe_server(uri: str) -> None:
    """One quick request without retries: the server answers, and accepts us."""
    import requests

    base = uri.rstrip("/")
    where = f"tracking.uri={masked(uri)}"
    user = os.environ.get("MLFLOW_TRACKING_USERNAME")
    auth = (user, os.environ.get("MLFLOW_TRACKING_PASSWORD", "")) if user else None
    headers = {}
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {token}"
    try:
        resp = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                            params={"max_results": 1}, auth=auth, headers=headers,
                            timeout=(PROBE_TIMEOUT, PROBE_READ_TIMEOUT))
    except requests.RequestException as exc:
        reason = type(exc).__name__
        if isinstance(exc, requests.ConnectTimeout):
            reason = f"no connection within {PROBE_TIMEOUT:g} s"
        elif isinstance(exc, requests.Timeout):
            reason = f"no answer within {PROBE_READ_TIMEOUT:g} s"
        elif isinstance(exc, requests.ConnectionError) and "refused" in str(exc).lower():
            reason = "connection refused"
        raise StoreError(f"{where}: no MLflow server answers there ({reason}); start "
                         "one (make server) or fix tracking.uri / MLFLOW_TRACKING_URI") from None
    if resp.status_code == 401:
        who = f"user {user!r} was refused" if user else "no credentials given"
        raise StoreError(f"{where}: the server requires a login ({who}); set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if resp.status_code == 403 and "Host header" in resp.text:
        raise StoreError(f"{where}: the server refuses the Host header "
                         f"{urlparse(uri).netloc!r}; add it to the server's --allowed-hosts")
    if resp.status_code == 403:
        raise StoreError(f"{where}: user {user!r} may not read experiments there "
                         "(HTTP 403)")
    if resp.status_code >= 500:
        raise StoreError(f"{where}: the server failed (HTTP {resp.status_code} "
                         f"{resp.reason}): {server_message(resp)}")
    if resp.status_code != 200:
        raise StoreError(f"{where}: not an MLflow tracking server (HTTP {resp.status_code} from "
                         f"{masked(base)}/api/2.0/mlflow/experiments/search)")


def server_message(resp) -> str:
    """What a failing server said: MLflow's JSON ``message`` (its first line), else the first
    line of the body."""
    try:
        text = str(resp.json().get("message") or resp.text)
    except ValueError:
        text = resp.text
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return (lines[0][:300] if lines else "no message")


@contextlib.contextmanager
def creation_lock(uri: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold an inter-process lock while MLflow opens the store: it creates and migrates the
    schema on first use, and processes doing that at once fail ("table ... already exists",
    alembic errors). A file lock (``<db>.lock``) beside a sqlite store; a PostgreSQL advisory
    lock (:data:`SCHEMA_LOCK_KEY`) for a PostgreSQL store; a no-op for other stores."""
    if urlparse(uri).scheme.lower().split("+")[0] == "postgresql":
        with _advisory_lock(uri, timeout):
            yield
        return
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    with FileLock(f"{db}.lock", timeout=timeout):
        yield


@contextlib.contextmanager
def _advisory_lock(uri: str, timeout: float) -> Iterator[None]:
    """PostgreSQL's session advisory lock :data:`SCHEMA_LOCK_KEY`, held on a connection of
    its own (the server drops it if this process dies)."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError, OperationalError

    with _engine(uri).connect() as conn:
        conn.execute(text(f"SET lock_timeout = {int(timeout * 1000)}"))
        try:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
        except OperationalError as exc:
            raise StoreError(f"tracking.uri={masked(uri)}: another process held the schema "
                             f"lock for {timeout:g} s ({_one_line_driver(exc)})") from None
        conn.commit()
        try:
            yield
        finally:
            with contextlib.suppress(DBAPIError):  # a lost connection has dropped the lock
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                conn.commit()


def _one_line_driver(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "orig", exc)).split())[:200]


class _RaisedDatabaseErrors(logging.Filter):
    """Drops MLflow's log record of a failed SQL statement: MLflow logs each one with its
    traceback (dozens when a database goes away mid-run) and then raises it as an
    ``MlflowException``, which qlab reports in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def quiet_database_errors() -> None:
    """Install :class:`_RaisedDatabaseErrors` on MLflow's database logger (once)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _RaisedDatabaseErrors) for f in logger.filters):
        logger.addFilter(_RaisedDatabaseErrors())


def client_for(uri: str):
    """An ``MlflowClient`` of ``uri``. Creating one opens (and, the first time, creates and
    migrates) the store, which processes starting together must do one at a time; a new
    sqlite store is made whole beside its path first (:func:`ensure_sqlite`)."""
    from mlflow.tracking import MlflowClient

    if has_secret(uri):  # MLflow prints "View run <name> at: <uri with the password>"
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if is_database(uri):
        quiet_database_errors()
    with creation_lock(uri):
        db = sqlite_path(uri)
        if db is not None:
            ensure_sqlite(db)
        return MlflowClient(tracking_uri=uri)


CREATING = ".creating-"  # infix of a store being made beside its path
SET_ASIDE = ".half-created-"  # infix of a half-created store moved out of the way


def ensure_sqlite(db: Path) -> None:
    """Make sure the sqlite store ``db`` exists whole (call under :func:`creation_lock`).

    MLflow creates and migrates a new store in place, in dozens of steps: a process killed
    meanwhile (kill -9, a node going away) leaves a file every later command fails on
    ("table _alembic_tmp_experiments already exists"). So a new store is created and migrated
    at ``.<name>.creating-<pid>`` beside ``db``, then renamed into place (atomic): ``db`` is
    either absent or whole. A store found half-created (by an older qlab, or MLflow itself)
    is moved aside to ``<name>.half-created-<time>`` and made anew if it holds no runs, and
    refused in one line if it does."""
    for stale in db.parent.glob(f".{db.name}{CREATING}*"):  # left by a killed creation
        stale.unlink(missing_ok=True)
    if db.exists():
        why = half_created(db)
        if why is None:
            return
        runs = _count_runs(db)
        if runs:
            raise StoreError(f"tracking store {db} was left half-created ({why}) and holds "
                             f"{runs} run(s); restore it from a backup or run `mlflow db "
                             f"upgrade sqlite:///{db}`")
        aside = db.with_name(f"{db.name}{SET_ASIDE}{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(db, aside)
        log.warning("tracking store %s was left half-created (%s) and held no runs: moved "
                    "to %s and created anew", db, why, aside)
    tmp = db.with_name(f".{db.name}{CREATING}{os.getpid()}")
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    uri = f"sqlite:///{tmp}"
    chatty = logging.getLogger("mlflow.store.db.utils")  # "Creating initial ... tables"
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        made = SqlAlchemyStore(uri, (db.parent / "mlruns").resolve().as_uri())
        made.engine.dispose()
        SqlAlchemyStore._engine_map.pop(uri, None)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, db)
        fd = os.open(db.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        chatty.setLevel(level)
        tmp.unlink(missing_ok=True)


def half_created(db: Path) -> str | None:
    """Why the sqlite store ``db`` is not whole (None if it is, or is no sqlite file at all:
    MLflow's own error says so): no schema version, or an interrupted migration's tables."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE "
                                               "type = 'table'")}
            if any(n.startswith("_alembic_tmp_") for n in names):
                return "an interrupted schema migration"
            if "alembic_version" not in names:
                return "no schema version"
            versions = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
    except sqlite3.DatabaseError:
        return None
    latest = _latest_revision()
    if versions != [latest]:
        return f"schema revision {versions or 'none'}, this MLflow's is {latest}"
    return None


@functools.cache
def _latest_revision() -> str:
    """The schema revision this MLflow creates (read from its migration scripts, once)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _count_runs(db: Path) -> int:
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return int(con.execute("SELECT count(*) FROM runs").fetchone()[0])
    except sqlite3.DatabaseError:  # no runs table yet
        return 0


__all__ = ["StoreError", "artifact_location", "check", "client_for", "configure_http",
           "creation_lock", "ensure_sqlite", "half_created", "is_database", "masked",
           "quiet_database_errors", "sqlite_path"]
