"""Loading saved state back into an object: every array checked against the one it replaces."""

from __future__ import annotations

from typing import Any

import numpy as np


def load_array(name: str, value: Any, like: np.ndarray) -> np.ndarray:
    """``value`` as an array of ``like``'s shape and dtype (a copy), or ValueError naming it."""
    arr = np.asarray(value)
    if arr.shape != like.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected {like.shape}")
    if arr.dtype.kind != like.dtype.kind and not (arr.size == 0):
        raise ValueError(f"{name} has dtype {arr.dtype}, expected {like.dtype}")
    return np.array(arr, dtype=like.dtype, copy=True)
