"""Secrets never recorded: a password inside a URI (``postgresql://user:pw@host/db``,
``http://user:pw@host:5000``, ``...?password=pw``) is masked as ``***`` wherever qlab records
or prints text — params, tags, artifacts, log records, error lines.

:func:`mask` is the one masking function; the boundaries apply it (the tracker to params and
tags, the config artifact, the provenance record, every :class:`~qlab.core.errors.QlabError`
message and log record). What Hydra writes itself (``outputs/``, ``multirun/``, its job line)
never sees the password: ``qlab-train`` moves a secret-bearing override into an environment
variable before Hydra starts (:func:`hide_in_overrides`), so the command line Hydra records
reads ``tracking.uri=${oc.env:QLAB_SECRET_0}`` — the form docs/security.md recommends.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

MASK = "***"
ENV_PREFIX = "QLAB_SECRET_"

# scheme://user:password@  (the password up to the last '@' of the authority)
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s'\"]*:)"
                       r"(?P<pw>[^/?#\s'\"]*)@")
# ?password=...  &token=...  (libpq / driver query parameters)
_QUERY = re.compile(r"(?i)(?P<head>[?&;](?:password|passwd|pwd|token|secret|api_key)=)"
                    r"(?P<pw>[^&;#\s'\"]*)")


def mask(text: str) -> str:
    """``text`` with every URI password (userinfo or query parameter) replaced by ``***``;
    idempotent, and text without one comes back unchanged."""
    if "://" not in text and "=" not in text:
        return text
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@" if m["pw"] else m[0], text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}" if m["pw"] else m[0], text)


def has_secret(text: str) -> bool:
    """Whether ``text`` holds a URI password :func:`mask` would hide."""
    return mask(text) != text


def mask_tree(obj: Any) -> Any:
    """:func:`mask` applied to every string of nested dicts / lists (a resolved config, a
    provenance record); other values unchanged."""
    if isinstance(obj, str):
        return mask(obj)
    if isinstance(obj, Mapping):
        return {k: mask_tree(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(mask_tree(v) for v in obj)
    return obj


def hide_in_overrides(overrides: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Command-line overrides with every secret-bearing value (``key=scheme://u:pw@...``)
    moved into an environment variable: ``key=${oc.env:QLAB_SECRET_<i>}``. Returns the new
    overrides and the variables to set (the caller puts them in ``os.environ``, which
    launcher workers and cluster jobs inherit). Sweeps over several values (``a,b``) are
    left as they are (masked where recorded)."""
    out, env = [], {}
    for i, o in enumerate(overrides):
        key, sep, value = o.partition("=")
        if not sep or not has_secret(value) or value.startswith("${"):
            out.append(o)
            continue
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif "," in value:  # a sweep over several URIs: Hydra splits it, masking covers it
            out.append(o)
            continue
        var = f"{ENV_PREFIX}{i}"
        env[var] = value
        out.append(f"{key}=${{oc.env:{var}}}")
    return out, env


__all__ = ["MASK", "mask", "mask_tree", "has_secret", "hide_in_overrides"]
