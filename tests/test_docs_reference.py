"""The generated configuration reference (docs/gen_reference.py) lists every key of every
schema with its default, and every agent, env, hparams file and named experiment."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from qlab.config.schema import QlabConfig, TrackingConfig
from qlab.core.agents import registry as agents
from qlab.core.envs.registry import EnvConfig
from qlab.core.exploration import ExplorationConfig

ROOT = Path(__file__).resolve().parents[1]


def reference_page() -> str:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs/gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines page(); writes nothing outside a docs build
    return module.page()


def rows(text: str) -> dict[str, str]:
    """key -> its table row, in ``text``."""
    return {line.split("|")[1].strip().strip("`"): line for line in text.splitlines()
            if line.startswith("| `")}


def check_schema(cls: type, prefix: str, section: str, inherited: dict[str, str]) -> None:
    """Every field of ``cls`` is a row of ``section`` (or, unchanged, of ``inherited``)
    with its default."""
    own = rows(section)
    for f in dataclasses.fields(cls):
        if f.name in ("env", "agent", "exploration", "tracking"):
            continue
        key = prefix + f.name
        row = own.get(key) or inherited.get(key)
        assert row is not None, key
        if isinstance(f.default, int | float) and not isinstance(f.default, bool):
            assert f"| `{f.default}` |" in row, row


def test_every_key_is_in_the_reference() -> None:
    page = reference_page()
    sections = page.split("\n## ")
    by_title = {s.split("\n", 1)[0]: s for s in sections}
    check_schema(QlabConfig, "", by_title["Top level"], {})
    check_schema(TrackingConfig, "tracking.", by_title["`tracking`"], {})
    check_schema(EnvConfig, "env.", by_title["`env`"], {})
    check_schema(ExplorationConfig, "exploration.", by_title["`exploration`"], {})
    agent_part = by_title["`agent`"]
    shared = rows(agent_part.split("\n### ")[0])
    for path in sorted((ROOT / "conf/agent").glob("*.yaml")):
        section = agent_part.split(f"### `agent={path.stem}`", 1)[1].split("\n### ")[0]
        check_schema(agents.get(path.stem).config, "agent.", section, shared)
    assert "| `agent.update` | `str` | `step` | step: online Watkins Q-learning" in page
    for group in ("env", "hparams", "experiment"):
        for path in (ROOT / "conf" / group).glob("*.yaml"):
            assert f"`{path.stem}`" in page or path.name in page, path
