"""The checks config schemas run on their values: each failure is a :class:`ConfigError`
whose one line names the key, the value and what is allowed."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NoReturn

from qlab.core.errors import ConfigError


def fail(key: str, value: Any, allowed: str) -> NoReturn:
    """Refuse ``key=value``: ``allowed`` says what would be accepted."""
    raise ConfigError(f"{key}={value!r}: {allowed}")


def check_in(key: str, value: Any, allowed: Iterable) -> None:
    """``value`` must be one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        fail(key, value, "must be one of " + ", ".join(map(str, allowed)))


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """``value`` must be a finite number in the interval from ``lo`` to ``hi`` (None: no
    bound; ``*_open``: the bound itself is excluded)."""
    bad = not math.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        if hi is None and lo is not None:
            fail(key, value, f"must be {'>' if lo_open else '>='} {lo:g}")
        if lo is None and hi is not None:
            fail(key, value, f"must be {'<' if hi_open else '<='} {hi:g}")
        if lo is None and hi is None:
            fail(key, value, "must be a finite number")
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        fail(key, value, f"must be in {left}{lo:g}, {hi:g}{right}")
