"""Generate the configuration reference page from qlab's schemas at docs build time.

Run by the mkdocs-gen-files plugin (mkdocs.yml): every key, its type, its default and its
comment are read from the dataclasses that define them (``qlab.config.schema``,
``EnvConfig``, ``ExplorationConfig`` and each agent's config class, found through
``conf/agent/*.yaml``), so the page cannot drift from the code. ``python
docs/gen_reference.py`` prints the page.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from qlab.config.schema import QlabConfig, TrackingConfig  # noqa: E402
from qlab.core.agents import registry as agents  # noqa: E402
from qlab.core.envs.registry import EnvConfig  # noqa: E402
from qlab.core.exploration import ExplorationConfig  # noqa: E402

CONF = ROOT / "conf"


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in ``cls``'s source: the full-line comments right above it,
    then the comment at the end of its line."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    full_line: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            comments[line] = tok.string.lstrip("#").strip()
            if not tok.line[: tok.start[1]].strip():
                full_line.add(line)
    lines = source.splitlines()
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    for i, text in enumerate(lines, start=1):
        name = text.strip().split(":", 1)[0]
        if name not in names or ":" not in text or name in out:
            continue
        above = []
        j = i - 1
        while j in full_line:
            above.insert(0, comments[j])
            j -= 1
        trailing = [comments[i]] if i in comments and i not in full_line else []
        out[name] = " ".join(above + trailing)
    return out


def type_name(tp: object) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", str(tp))
    # "int or None": a "|" inside a code span would split the Markdown table's row.
    return str(text).replace("typing.", "").replace("NoneType", "None").replace(" | ", " or ")


def default_of(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if dataclasses.is_dataclass(value):
        return ""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if value == "???":
        return "(required)"
    return str(value)


def table(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> str:
    """A Markdown table of ``cls``'s own scalar keys, named with ``prefix``."""
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        tp = hints.get(f.name, f.type)
        if f.name in skip or (isinstance(tp, type) and dataclasses.is_dataclass(tp)):
            continue
        meaning = comments.get(f.name, "").replace("|", "\\|")
        code = [f"`{prefix}{f.name}`", f"`{type_name(tp)}`", f"`{default_of(f)}`"]
        rows.append("| " + " | ".join([*code, meaning]) + " |")
    return "\n".join(rows)


def group_choices(group: str) -> list[tuple[str, dict]]:
    """(name, YAML contents) of every file in ``conf/<group>/``."""
    return [(p.stem, yaml.safe_load(p.read_text()) or {})
            for p in sorted((CONF / group).glob("*.yaml"))]


def first_comment(path: Path) -> str:
    """The leading comment block of a YAML file, as one line."""
    lines = []
    for text in path.read_text().splitlines():
        if not text.startswith("#"):
            break
        if text.startswith("# @package"):
            continue
        lines.append(text.lstrip("#").strip())
    return " ".join(lines)


def page() -> str:
    parts = [
        "# Configuration reference",
        "",
        "Generated from the schemas when the site is built (`docs/gen_reference.py`): the keys,",
        "types and defaults below are the dataclasses' own, and each meaning is the comment",
        "beside the field in the source. YAML files in `conf/` only choose and override;",
        "`qlab-train --cfg job` prints the composed config of any command line. How the",
        "groups fit together: [Configuration](configuration.md).",
        "",
        "## Top level",
        "",
        f"`{QlabConfig.__module__}.QlabConfig`: {inspect.getdoc(QlabConfig)}",
        "",
        table(QlabConfig, "", skip=("env", "agent", "exploration")),
        "",
        "## `tracking`",
        "",
        f"`{TrackingConfig.__module__}.TrackingConfig`: {inspect.getdoc(TrackingConfig)}",
        "",
        table(TrackingConfig, "tracking."),
        "",
        "## `env`",
        "",
        f"`{EnvConfig.__module__}.EnvConfig`: {inspect.getdoc(EnvConfig)}",
        "",
        table(EnvConfig, "env."),
        "",
        "Choices (`env=NAME`, files in `conf/env/`):",
        "",
        "| `env=` | gymnasium id | set in the file |",
        "|---|---|---|",
    ]
    for name, body in group_choices("env"):
        keys = ", ".join(f"`{k}: {v}`" for k, v in body.items()
                         if k not in ("defaults", "name", "id"))
        parts.append(f"| `{name}` | `{body.get('id', '')}` | {keys} |")
    parts += [
        "",
        "## `exploration`",
        "",
        f"`{ExplorationConfig.__module__}.ExplorationConfig`: "
        f"{inspect.getdoc(ExplorationConfig)}",
        "",
        table(ExplorationConfig, "exploration."),
        "",
        "Choices (`exploration=NAME`): "
        + ", ".join(f"`{n}`" for n, _ in group_choices("exploration")) + ".",
        "",
        "## `agent`",
        "",
        "Every agent has the keys of `AgentConfig`; each agent's config class adds its own, and",
        "repeats a shared key where it changes its default or meaning.",
        "",
        table(agents.AgentConfig, "agent."),
        "",
    ]
    base = {f.name: (default_of(f), comment)
            for f, comment in zip(dataclasses.fields(agents.AgentConfig),
                                  map(field_comments(agents.AgentConfig).get,
                                      (f.name for f in dataclasses.fields(agents.AgentConfig))),
                                  strict=True)}
    for name, body in group_choices("agent"):
        spec = agents.get(body.get("name", name), body.get("module"))
        cls = spec.config
        comments = field_comments(cls)
        # The shared keys appear again where the agent changes their default or meaning.
        same = tuple(f.name for f in dataclasses.fields(cls) if f.name == "name" or (
            f.name in base and base[f.name][0] == default_of(f)
            and comments.get(f.name) in ("", None, base[f.name][1])))
        parts += [
            f"### `agent={name}`",
            "",
            f"`{cls.__module__}.{cls.__name__}`: {inspect.getdoc(cls)}",
            "",
            table(cls, "agent.", skip=same),
            "",
        ]
    parts += [
        "## Tuned settings (`hparams`)",
        "",
        "Loaded by themselves for an agent x env pair (`optional hparams: ${agent}_${env}`;",
        "see [Tuned settings](research_notes.md)). Each file's own comment:",
        "",
        "| file | why |",
        "|---|---|",
    ]
    for path in sorted((CONF / "hparams").glob("*.yaml")):
        parts.append(f"| `conf/hparams/{path.name}` | {first_comment(path)} |")
    parts += [
        "",
        "## Named experiments",
        "",
        "Selected with `+experiment=NAME` (files in `conf/experiment/`):",
        "",
        "| experiment | what it runs |",
        "|---|---|",
    ]
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        parts.append(f"| `{path.stem}` | {first_comment(path)} |")
    return "\n".join(parts) + "\n"


if __name__ == "<run_path>":  # run by mkdocs-gen-files while the site builds
    import mkdocs_gen_files

    with mkdocs_gen_files.open("reference.md", "w") as out:
        out.write(page())
    mkdocs_gen_files.set_edit_path("reference.md", "gen_reference.py")
elif __name__ == "__main__":
    print(page())
