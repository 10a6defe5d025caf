"""Every command in README.md and the docs pages runs, so the docs cannot drift from the CLI.

The shell blocks (```bash, ```sh, ```console, and any block of ``$ `` lines) of README.md and
docs/*.md are read; each command is then

- ``qlab-train`` / ``python -m qlab`` (and the make targets that wrap it: train, sweep,
  cartpole): composed and validated through qlab-train's own preflight, every job of a sweep;
  a ``$ `` line followed by ``qlab-train: error: ...`` must fail with exactly that line
  (README's commands and every documented error in the default suite, the others' in the
  slow one: composing them all costs ~15 s of CPU).
  README's first command trains for real in the default suite; ``make test-slow`` runs every
  training command of every page for real, in this process, with a small budget
  (``replicas=1 episodes=2``), into the test's temp store (sweeps with worker processes or SLURM are
  only validated).
- another make target: it must exist in the Makefile;
- anything else: listed in ``SKIPPED`` with the reason it does not run here (servers, a run id
  of the reader's, minutes of benchmarks). A command that is neither fails the test.
"""

from __future__ import annotations

import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import qlab.cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(`{3,})\s*([\w-]*)")
SHELL = {"bash", "sh", "shell", "console"}
PROG_ERROR = "qlab-train: error: "
# What a documented run is cut to here: one replica, two episodes, evaluated, no checkpoints.
BUDGET = ["replicas=1", "episodes=2", "eval_every=1", "checkpoint_every=0"]
MAKE_TRAINING = {"train": [], "sweep": ["+experiment={EXP}"],
                 "cartpole": ["+experiment=dqn_cartpole"]}

# First word (after VAR=value assignments) -> why the command is not run by this test.
SKIPPED = {
    "qlab-report": "reads a sweep already in the store (tests/analysis/test_report.py runs it)",
    "qlab-play": "replays a run id of the reader's (tests/test_play.py runs it)",
    "qlab-bench": "minutes of benchmarks (tests/test_bench.py runs its quick mode)",
    "qlab-server": "a server that keeps running (tests/test_server.py starts it)",
    "mlflow": "the MLflow UI: a server that keeps running",
    "pytest": "the test suite itself",
    "python": "a benchmark script's search: minutes (benchmarks/mc_search.py)",
    "read": "reads a password from the terminal",
    "export": "sets the reader's credentials",
    "source": "activates the reader's venv",
}
# Make targets that are only checked to exist (they start servers, benchmarks, the suite).
# Commands that need something of the reader's are skipped by what they contain.
PLACEHOLDERS = ("<", "$", "...", "mydir")
# Launchers that start worker processes or a cluster job: validated, not run in-process.
LAUNCHERS = ("hydra/launcher=joblib", "hydra/launcher=slurm", "hydra/launcher=submitit_local")


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    expected_error: str | None = None  # the qlab-train error line the page shows after it

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def commands(path: Path) -> list[Command]:
    """The commands of ``path``'s shell blocks, continuation lines joined."""
    page = str(path.relative_to(ROOT))
    out: list[Command] = []
    fence, lang, block = None, "", []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        m = FENCE.match(line)
        if fence is None:
            if m:
                fence, lang, block = m.group(1), m.group(2), []
            continue
        if not line.startswith(fence):
            block.append((n, line))
            continue
        fence = None
        prompted = any(text.startswith("$ ") for _, text in block)
        if lang in SHELL or prompted:
            out += _block_commands(page, block, prompted)
    return out


def _block_commands(page: str, block: list[tuple[int, str]], prompted: bool) -> list[Command]:
    out: list[Command] = []
    pending: tuple[int, str] | None = None
    for i, (n, text) in enumerate(block):
        if prompted:
            if not text.startswith("$ "):
                continue
            nxt = block[i + 1][1] if i + 1 < len(block) else ""
            expected = nxt[len(PROG_ERROR):] if nxt.startswith(PROG_ERROR) else None
            out.append(Command(page, n, text[2:], expected))
            continue
        if pending is not None:
            n, text = pending[0], pending[1] + " " + text
        if text.endswith("\\"):
            pending = (n, text[:-1].rstrip())
            continue
        pending = None
        if shlex.split(text, comments=True):
            out.append(Command(page, n, text))
    return out


ALL = [c for page in PAGES for c in commands(page)]
# Each distinct command once, at its first place.
DISTINCT = list({(c.text, c.expected_error): c for c in reversed(ALL)}.values())[::-1]


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def plan(text: str) -> tuple[str, list[str] | str]:
    """("train", qlab-train's arguments) | ("make", target) | ("skip", why)."""
    if any(p in text for p in PLACEHOLDERS):
        return "skip", "needs something of the reader's (a run id, a password, their own dir)"
    words = shlex.split(text, comments=True)
    assigned = {}
    while words and re.match(r"^[A-Z_]+=", words[0]):
        key, value = words.pop(0).split("=", 1)
        assigned[key] = value
    words[0] = words[0].removeprefix(".venv/bin/")
    if words[0] == "qlab-train":
        return "train", words[1:]
    if words[:3] == ["python", "-m", "qlab"]:
        return "train", words[3:]
    if words[0] == "make":
        target = next((w for w in words[1:] if "=" not in w), "help")
        params = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if target in MAKE_TRAINING:
            exp = params.get("EXP", "epsilon_decay")
            return "train", ([a.format(EXP=exp) for a in MAKE_TRAINING[target]]
                             + shlex.split(params.get("ARGS", "")))
        return "make", target
    if words[0] in SKIPPED:
        return "skip", SKIPPED[words[0]]
    return "unknown", f"no runner for {words[0]!r}: run it in this test or say in SKIPPED why not"


def test_the_pages_have_commands() -> None:
    assert sum(c.page == "README.md" for c in ALL) >= 10 and len(DISTINCT) >= 50, len(DISTINCT)
    assert any(c.expected_error for c in ALL)


def _tiered(command: Command):
    """README's commands and the documented errors in the default suite, the rest slow
    (composing every job of a command costs about 0.2 s of CPU: the whole set, ~15 s)."""
    fast = command.page == "README.md" or command.expected_error is not None
    return pytest.param(command, id=command.id, marks=() if fast else pytest.mark.slow)


@pytest.mark.parametrize("command", [_tiered(c) for c in DISTINCT])
def test_documented_command_is_valid(command: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each command is handled; qlab-train's are valid (every job), or fail as documented."""
    from qlab.sweeps.preflight import check

    kind, what = plan(command.text)
    assert kind != "unknown", what
    if kind == "make":
        assert what in make_targets(), f"make {what}: no such target in the Makefile"
    if kind != "train":
        return
    monkeypatch.chdir(ROOT)  # hydra.searchpath=[file://examples/conf] is relative to the root
    from hydra._internal.utils import get_args_parser

    errors = check(get_args_parser().parse_args(what).overrides)
    if command.expected_error is not None:
        assert errors and errors[-1] == command.expected_error, errors
    else:
        assert errors == [], errors


def _run(command: Command, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kind, args = plan(command.text)
    if (kind != "train" or command.expected_error is not None
            or any(a in LAUNCHERS for a in args) or "--cfg" in args):
        pytest.skip(f"not a training command run in-process: {command.text}")
    if "resume=last" in args:
        pytest.skip("continues a job stopped earlier (tests/test_resume.py stops and resumes)")
    monkeypatch.chdir(ROOT)
    extra = [*BUDGET, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep"]
    monkeypatch.setattr(sys, "argv", ["qlab-train", *args, *extra])
    try:
        qlab.cli.main()
    except SystemExit as stop:
        assert stop.code in (0, None), f"{command.text}: exit {stop.code}"


@pytest.mark.training
def test_front_door_trains(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """README's first command, ``make train``, for real (in this process, two episodes)."""
    first = next(c for c in ALL if c.page == "README.md")
    assert first.text.startswith("make train")
    _run(first, monkeypatch, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("command", DISTINCT, ids=lambda c: c.id)
def test_documented_command_runs(command: Command, monkeypatch: pytest.MonkeyPatch,
                                 tmp_path: Path) -> None:
    """Every training command of the pages, for real with a small budget."""
    _run(command, monkeypatch, tmp_path)
