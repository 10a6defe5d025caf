"""Is a tracking store usable? Checked before any run exists, so a bad ``tracking.uri`` gives
one line and no half-written runs instead of a hang or a traceback.

- Accepted: ``sqlite:////absolute/path.db`` (its directory must exist and be writable, and
  so must the ``mlruns/`` artifact directory beside it if present), ``http(s)://`` tracking
  servers (probed: they must take a connection within :data:`PROBE_TIMEOUT` seconds,
  answer, and accept our credentials and Host header), and SQL databases
  (``postgresql://``, ``mysql://``, ...).
- Refused: MLflow's file store (``file:///...`` or a bare path: it writes wherever the path
  points, and MLflow is retiring it), relative sqlite paths (they depend on the working
  directory, which differs between launchers), in-memory sqlite, and other schemes.

:func:`check` also shortens MLflow's HTTP retries (unless the user set them): by default
MLflow retries a dead server for minutes per request.
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
from qlab.core.secrets import has_secret

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
        return
    elif scheme in ("", "file") or len(scheme) == 1:  # a bare path (or C:\ on Windows)
        raise StoreError(f"tracking.uri={uri!r}: MLflow's file store is not supported; use "
                         "sqlite:////absolute/path/mlflow.db or http(s)://host:port")
    else:
        raise StoreError(f"tracking.uri={uri!r}: unsupported scheme {scheme!r}; use "
                         "sqlite:////absolute/path/mlflow.db, http(s)://host:port or a "
                         "postgresql:// / mysql:// database")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for in-memory or another store)."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://"):]
    if not rest.startswith("/") or rest in ("/", "/:memory:"):
        return None
    return Path(rest[1:].split("?")[0])


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


def _probe_server(uri: str) -> None:
    """One quick request without retries: the server answers, and accepts us."""
    import requests

    base = uri.rstrip("/")
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
        raise StoreError(f"tracking.uri={uri}: no MLflow server answers there ({reason}); start "
                         "one (make server) or fix tracking.uri / MLFLOW_TRACKING_URI") from None
    if resp.status_code == 401:
        who = f"user {user!r} was refused" if user else "no credentials given"
        raise StoreError(f"tracking.uri={uri}: the server requires a login ({who}); set "
                         "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD")
    if resp.status_code == 403 and "Host header" in resp.text:
        raise StoreError(f"tracking.uri={uri}: the server refuses the Host header "
                         f"{urlparse(uri).netloc!r}; add it to the server's --allowed-hosts")
    if resp.status_code == 403:
        raise StoreError(f"tracking.uri={uri}: user {user!r} may not read experiments there "
                         "(HTTP 403)")
    if resp.status_code != 200:
        raise StoreError(f"tracking.uri={uri}: not an MLflow tracking server "
                         f"(HTTP {resp.status_code} from {base}/api/2.0/mlflow/experiments/search)")


@contextlib.contextmanager
def creation_lock(uri: str, timeout: float = 300.0) -> Iterator[None]:
    """Hold an inter-process lock (``<db>.lock`` beside a sqlite store) while MLflow opens the
    store: it creates and migrates the schema on first use, and processes doing that at once
    fail ("table ... already exists", alembic errors). A no-op for other stores."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    from filelock import FileLock

    with FileLock(f"{db}.lock", timeout=timeout):
        yield


def client_for(uri: str):
    """An ``MlflowClient`` of ``uri``. Creating one opens (and, the first time, creates and
    migrates) the store, which processes starting together must do one at a time; a new
    sqlite store is made whole beside its path first (:func:`ensure_sqlite`)."""
    from mlflow.tracking import MlflowClient

    if has_secret(uri):  # MLflow prints "View run <name> at: <uri with the password>"
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
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


__all__ = ["StoreError", "check", "client_for", "configure_http", "creation_lock",
           "ensure_sqlite", "half_created", "sqlite_path"]
