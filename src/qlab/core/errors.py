"""qlab's errors: one base class carrying the process exit code, and the one handler every
console script uses to turn them into a single ``prog: error: ...`` line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")


class QlabError(Exception):
    """An error a user can act on: its message is one line, ``exit_code`` the process's."""

    exit_code = 1


class ConfigError(QlabError, ValueError):
    """A bad config value; the message is one line naming the key and what is allowed."""

    exit_code = 2


def fail(prog: str, exc: BaseException | str, exit_code: int = 1) -> NoReturn:
    """Print ``prog: error: <one line>`` on stderr and exit with the error's code."""
    print(f"{prog}: error: {str(exc) or type(exc).__name__}", file=sys.stderr)
    sys.exit(getattr(exc, "exit_code", exit_code))


def run_cli(prog: str, func: Callable[[], T]) -> T:
    """Call a console script's body; a :class:`QlabError` ends it in one line with its code."""
    logging.basicConfig(level=logging.WARNING, format=f"{prog}: %(message)s")
    try:
        return func()
    except QlabError as exc:
        fail(prog, exc)
