"""Registries: how qlab finds an agent or an env by the name a config gives it.

A module registers what it defines when it is imported; a config names the module to import
(``agent.module``, ``env.module``), so an agent or env that lives outside qlab — in a user's
package, or a file under ``examples/`` — is found the same way as qlab's own: there is no
central list to edit.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from typing import Generic, TypeVar

from qlab.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named specs of one kind (``agent``, ``env``); registering a name again replaces it."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._specs: dict[str, T] = {}

    def add(self, name: str, spec: T) -> T:
        self._specs[name] = spec
        return spec

    def find(self, name: str) -> T | None:
        return self._specs.get(name)

    def names(self) -> list[str]:
        return sorted(self._specs)

    def __iter__(self) -> Iterator[T]:
        return iter(self._specs.values())

    def __contains__(self, name: object) -> bool:
        return name in self._specs


def import_module(key: str, dotted: str) -> None:
    """Import the module a config names under ``key`` (it registers its agent or env).

    A module not found on ``sys.path`` is looked for under the working directory too (which
    then stays on ``sys.path``), so ``examples.dyna_q`` works from the checkout whichever way
    qlab was started."""
    try:
        importlib.import_module(dotted)
        return
    except ModuleNotFoundError as exc:
        top = dotted.split(".")[0]
        if exc.name is None or exc.name.split(".")[0] != top or os.getcwd() in sys.path:
            raise ConfigError(f"{key}={dotted!r}: cannot be imported ({exc})") from exc
    except Exception as exc:  # the module itself is broken: say so in one line
        raise ConfigError(f"{key}={dotted!r}: importing it failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    sys.path.append(os.getcwd())
    try:
        importlib.import_module(dotted)
    except Exception as exc:
        raise ConfigError(f"{key}={dotted!r}: cannot be imported ({exc})") from exc
