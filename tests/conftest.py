"""Shared fixtures: every test runs in its own temp dir with its own MLflow store (no test
ever writes to the checkout or the project's mlflow.db), Hydra composition of the real config
tree, new sqlite stores without MLflow's migrations, tracking servers; and the test tiers.

Tiers (docs/development.md): *unit* tests stay in this process; *integration* tests start
processes (``qlab-train``, ``qlab-server``, ``mlflow server``, Python workers); *slow* ones
are long trainings. A test is integration if it is marked so or uses a fixture of
``SPAWNING``; a unit test that starts a Python process fails, naming the process.
Helpers that are not fixtures are in tests/helpers.py."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from omegaconf import DictConfig

from tests.helpers import BIN, compose, copy_store, make_store_template, running_server, sqlite_uri

# Fixtures that start processes: a test using one (directly or through another fixture) is
# an integration test.
SPAWNING = ("small_sweep", "trained", "results", "launch_server", "qlab_server", "mlflow_server")
# Test files (and directories) whose tests share a module- or session-scoped fixture that
# takes seconds to build (a sweep, a server, a training): under xdist (--dist loadgroup)
# each runs on one worker, so the fixture is built once; other tests go one by one.
SHARED = ("tests/analysis/", "tests/agents/test_dqn.py", "tests/test_play.py",
          "tests/test_resume.py", "tests/test_server.py", "tests/test_train_cli.py")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests using a fixture of ``SPAWNING`` integration, and run the integration
    tests first, then the ``SHARED`` groups (the long units of work: with several workers, the
    short tests fill the end). A module's integration tests and its unit tests each stay
    together, in their order."""
    for item in items:
        if any(name in item.fixturenames for name in SPAWNING):
            item.add_marker(pytest.mark.integration)

    def order(item: pytest.Item) -> tuple[bool, bool]:
        shared = item.nodeid.split("::", 1)[0].startswith(SHARED)
        return item.get_closest_marker("integration") is None, not shared

    items.sort(key=order)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """``--dist loadgroup``: the tests under each entry of ``SHARED`` go to one worker, the
    others one by one. (Groups by node id: xdist's ``xdist_group`` marks no longer take effect
    under pytest 9.2.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SharedFixtureScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return next((shared for shared in SHARED if path.startswith(shared)),
                        super()._split_scope(nodeid))

    return SharedFixtureScheduling(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What exists once the tests are collected (the modules imported: torch, mlflow, hydra,
    ...) lives to the end: frozen, Python's cyclic GC stops scanning it. And its full
    collections, which scan every object the tests made and the modules imported since
    (seconds per worker over a run), become rare; the young generations are collected as
    usual."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1000)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """An xdist worker ends here, without tearing its interpreter down: with torch, numba,
    mlflow and sqlalchemy loaded that takes seconds, which the controller waits for. Its
    results, and that it finished, are sent by now; its session fixtures are torn down."""
    if hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@pytest.fixture(autouse=True)
def qlab_console() -> None:
    """Every test starts with qlab's logging as ``qlab-train`` sets it up (its INFO lines on
    stderr as ``qlab-train: ...``), whichever tests ran before it in this worker."""
    from qlab.core.errors import console

    restore = console("qlab-train")
    yield
    restore()


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own ``tmp_path``: Hydra's outputs/, relative paths and the
    files of child processes land there, not in the checkout (nor in another xdist
    worker's way)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A per-test sqlite store, also set as ``MLFLOW_TRACKING_URI``, so anything that falls
    back on the default store writes here; the file only appears if a test uses it. Sweep
    variables a parent process might leak are cleared."""
    uri = sqlite_uri(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for var in ("QLAB_PARENT_RUN_ID", "QLAB_SWEEP_ID"):
        monkeypatch.delenv(var, raising=False)
    return uri


@pytest.fixture(autouse=True)
def in_process_only(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit test (not marked integration or slow) that starts a Python process through
    ``subprocess`` (this interpreter, or a console script of its venv) fails: mark it
    ``integration``. Other programs (git, for provenance) may run."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker(
            "slow"):
        return
    real_init = subprocess.Popen.__init__

    def guarded(self, args, *more, **kwargs):
        program = str(args if isinstance(args, (str, bytes, Path)) else args[0])
        if program == sys.executable or Path(program).parent == BIN:
            pytest.fail(f"a unit test started {Path(program).name}: mark it "
                        "@pytest.mark.integration (or make it run in-process)", pytrace=False)
        real_init(self, args, *more, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(scope="session")
def sqlite_store(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """``sqlite_store(directory, name="mlflow.db")``: the URI of a new, empty sqlite store
    there, ready to use: a copy of one MLflow made, kept in pytest's cache per MLflow version
    (MLflow's migrations cost seconds per new store). Tests about creating a store (races, a
    first run) let MLflow create it instead."""
    import mlflow

    name = f"mlflow-{mlflow.__version__}.db"
    cache = getattr(request.config, "cache", None)
    template = cache.mkdir("qlab-store-template") / name if cache is not None else None
    if template is None or not template.exists():
        made = make_store_template(tmp_path_factory.mktemp("store_template"))
        if template is None:  # -p no:cacheprovider
            template = made
        else:  # written whole, then renamed: xdist workers may race here
            part = template.with_name(f"{name}.{os.getpid()}")
            shutil.copyfile(made, part)
            os.replace(part, template)
    return lambda directory, name="mlflow.db": copy_store(template, directory, name)


@pytest.fixture(scope="session")
def shared_store(sqlite_store, tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the whole session (per xdist worker); tests using it keep apart
    by experiment name (see :func:`experiment`)."""
    return sqlite_store(tmp_path_factory.mktemp("mlflow_shared"))


@pytest.fixture
def experiment() -> str:
    """A fresh experiment name."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def compose_cfg() -> Callable[[Sequence[str]], DictConfig]:
    """``compose_cfg(overrides)``: the job config Hydra composes from conf/ for a command line."""
    return compose


@pytest.fixture(scope="session")
def launch_server(tmp_path_factory: pytest.TempPathFactory
                  ) -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with launch_server(args, env=None, cwd=None) as uri``: ``qlab-server args`` on a
    free port, run from ``cwd`` (by default a new temp dir)."""
    def launch(args, env=None, cwd=None):
        cwd = cwd or tmp_path_factory.mktemp("server_cwd")
        return running_server([str(BIN / "qlab-server"), *args], cwd, env)

    return launch


class Server(NamedTuple):
    uri: str  # http://127.0.0.1:<port>
    db: Path  # its sqlite backend store


@pytest.fixture(scope="session")
def qlab_server(tmp_path_factory: pytest.TempPathFactory, sqlite_store,
                launch_server) -> Iterator[Server]:
    """A locked-down ``qlab-server`` (no login) for the session, over its own sqlite store."""
    d = tmp_path_factory.mktemp("qlab_server")
    with launch_server(["--backend-store-uri", sqlite_store(d), "--artifacts-destination",
                        str(d / "artifacts"), "--workers", "2"]) as uri:
        yield Server(uri, d / "mlflow.db")


@pytest.fixture
def mlflow_server(tmp_path: Path, sqlite_store) -> Iterator[str]:
    """MLflow's own ``mlflow server`` (not qlab-server) over a store in ``tmp_path``."""
    (tmp_path / "server").mkdir()
    with running_server([str(BIN / "mlflow"), "server", "--backend-store-uri",
                         sqlite_store(tmp_path, "server.db"), "--artifacts-destination",
                         str(tmp_path / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
                         "--workers", "1"], tmp_path / "server") as uri:
        yield uri
