"""qlab's errors: one base class carrying the process exit code, and the one handler every
console script uses to turn them into a single ``prog: error: ...`` line.

Diagnostics (a resumed job, a sweep's parent run, a server's address) are ``logging``
records of qlab's module loggers; a console script shows them on stderr as ``prog: message``
lines (:func:`console`), and under Hydra they also go to the job's log file
(:func:`job_log`). Only the result lines a user reads are plain prints.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import NoReturn, TypeVar

from qlab.core.secrets import has_secret, mask

T = TypeVar("T")

LOGGER = "qlab"  # the parent of qlab's module loggers (``logging.getLogger(__name__)``)


class QlabError(Exception):
    """An error a user can act on: its message is one line, ``exit_code`` the process's
    (1: something failed while running; 2: bad input, refused before anything ran). A URI
    password in the message is masked (:func:`qlab.core.secrets.mask`)."""

    exit_code = 1

    def __init__(self, *args: object) -> None:
        super().__init__(*(mask(a) if isinstance(a, str) else a for a in args))


class ConfigError(QlabError, ValueError):
    """A bad config value; the message is one line naming the key and what is allowed."""

    exit_code = 2


def one_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (its type's name if it has none): how a foreign
    error (MLflow's, the OS's) becomes a :class:`QlabError`'s message."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def print_error(prog: str, exc: BaseException | str, exit_code: int = 1) -> int:
    """Print ``prog: error: <one line>`` on stderr; returns the exit code for it (the
    error's own ``exit_code``, else ``exit_code``)."""
    print(f"{prog}: error: {mask(str(exc)) or type(exc).__name__}", file=sys.stderr)
    return getattr(exc, "exit_code", exit_code)


def fail(prog: str, exc: BaseException | str, exit_code: int = 1) -> NoReturn:
    """Print ``prog: error: <one line>`` on stderr and exit with the error's code."""
    sys.exit(print_error(prog, exc, exit_code))


def run_cli(prog: str, func: Callable[[], T]) -> T:
    """Call a console script's body with its console set up (:func:`console`, undone after);
    a :class:`QlabError` ends the process in one line with its code."""
    restore = console(prog)
    try:
        return func()
    except QlabError as exc:
        fail(prog, exc)
    finally:
        restore()


def exit_status(prog: str, func: Callable[[], int | None]) -> int:
    """:func:`run_cli` for a ``main(argv) -> int`` body, which tests call in-process: the
    body's exit status (None: 0), or, after the error's one line, its exit code."""
    restore = console(prog)
    try:
        return func() or 0
    except QlabError as exc:
        return print_error(prog, exc)
    finally:
        restore()


# ---------------------------------------------------------------------------- logging

class MaskSecrets(logging.Filter):
    """Masks URI passwords in a record's message before a handler writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if has_secret(text):
            record.msg, record.args = mask(text), None
        return True


class _Stderr(logging.StreamHandler):
    """A ``prog: message`` handler on whatever ``sys.stderr`` is when a record comes (pytest
    and notebooks swap it after set-up), like logging's own last-resort handler."""

    def __init__(self, prog: str, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)
        self.setFormatter(logging.Formatter(f"{prog}: %(message)s"))
        self.addFilter(MaskSecrets())

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr


def console(prog: str) -> Callable[[], None]:
    """Make this process console script ``prog``'s: qlab's records from INFO up go to stderr
    as ``prog: message`` lines, and only there (the ``qlab`` logger does not propagate, so a
    console handler Hydra gives the root logger at job start, on stdout, does not repeat
    them); other libraries' warnings go to stderr likewise if the root logger has no
    handler yet. Returns the function undoing it (for a script's body run in-process)."""
    log, root = logging.getLogger(LOGGER), logging.getLogger()
    saved = (log.level, log.propagate, [h for h in log.handlers if isinstance(h, _Stderr)])
    for h in saved[2]:
        log.removeHandler(h)
    log.addHandler(_Stderr(prog))
    log.setLevel(logging.INFO)
    log.propagate = False
    added = None
    if not root.handlers:  # as logging.basicConfig: never over a handler set up already
        added = _Stderr(prog)
        root.addHandler(added)

    def restore() -> None:
        for h in [h for h in log.handlers if isinstance(h, _Stderr)]:
            log.removeHandler(h)
        for h in saved[2]:
            log.addHandler(h)
        log.setLevel(saved[0])
        log.propagate = saved[1]
        if added is not None:
            root.removeHandler(added)

    return restore


@contextlib.contextmanager
def python_console(prog: str = "qlab") -> Iterator[None]:
    """For a call from Python (``qlab.run`` in a script or notebook): qlab's INFO lines (the
    job's summary, its run ids, "resuming job ...") reach stderr as from the console scripts —
    unless the caller set logging up itself (a handler on the ``qlab`` or the root logger, or
    a level on ``qlab``), which is then left alone."""
    log = logging.getLogger(LOGGER)
    if log.handlers or logging.getLogger().handlers or log.level != logging.NOTSET:
        yield
        return
    restore = console(prog)
    try:
        yield
    finally:
        restore()


@contextlib.contextmanager
def job_log(prog: str) -> Iterator[None]:
    """For the block (a Hydra job): :func:`console` ``prog``'s, and qlab's records also go
    to the root logger's log files, the job log Hydra set up as the job started. (A
    launcher's worker process runs the job without importing the module that set the
    console up: this sets it up there.)"""
    restore = console(prog)
    log = logging.getLogger(LOGGER)
    files = [h for h in logging.getLogger().handlers
             if isinstance(h, logging.FileHandler) and h not in log.handlers]
    masking = MaskSecrets()
    for h in files:
        h.addFilter(masking)  # every record of the job log, other libraries' too
        log.addHandler(h)
    try:
        yield
    finally:
        for h in files:
            log.removeHandler(h)
            h.removeFilter(masking)
        restore()
