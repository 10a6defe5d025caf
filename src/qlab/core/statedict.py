"""Loading saved state back into an object: every array checked against the one it replaces
(shape and dtype) and, where its values index or count something, against its range — a
crafted checkpoint must be refused in one line before any of it reaches a kernel."""

from __future__ import annotations

from typing import Any

import numpy as np


def load_array(name: str, value: Any, like: np.ndarray, lo: float | None = None,
               hi: float | None = None) -> np.ndarray:
    """``value`` as an array of ``like``'s shape and dtype (a copy), or ValueError naming it.
    With ``lo`` / ``hi``, every value must lie in [lo, hi] (NaN never does)."""
    arr = np.asarray(value)
    if arr.shape != like.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {like.shape}")
    if arr.dtype.kind != like.dtype.kind and not (arr.size == 0):
        raise ValueError(f"{name} has dtype {arr.dtype}, expected {like.dtype}")
    check_range(name, arr, lo, hi)
    return np.array(arr, dtype=like.dtype, copy=True)


def check_range(name: str, arr: np.ndarray, lo: float | None = None,
                hi: float | None = None) -> None:
    """ValueError naming ``name`` unless every value of ``arr`` lies in [lo, hi]."""
    if arr.size == 0 or (lo is None and hi is None):
        return
    a = np.asarray(arr)
    bad = np.zeros(a.shape, dtype=bool) if a.dtype.kind in "iub" else np.isnan(a)
    if lo is not None:
        bad |= a < lo
    if hi is not None:
        bad |= a > hi
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        raise ValueError(f"{name}{list(where)} = {a[where]} is out of range "
                         f"[{lo_s}, {hi_s}]")


def check_same(name: str, arr: np.ndarray, other_name: str, other: np.ndarray) -> None:
    """ValueError unless two saved arrays that must agree do."""
    if not np.array_equal(arr, other):
        raise ValueError(f"{name} {np.asarray(arr).tolist()[:8]} disagrees with {other_name} "
                         f"{np.asarray(other).tolist()[:8]}")
