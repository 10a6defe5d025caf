"""``qlab-bench``: run the benchmark suite, print the table, write BENCHMARKS.md.

    qlab-bench                  # the full suite (tens of minutes), writes BENCHMARKS.md
    qlab-bench --quick          # under two minutes: fewer repeats and steps, a shrunk sweep
    qlab-bench --sections tabular,tracking --out /tmp/b.md --json /tmp/b.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks import common, report
from qlab.core.errors import ConfigError, exit_status

PROG = "qlab-bench"
SECTIONS = ("tabular", "dqn", "tracking", "sweeps")

FULL = {
    "tabular": dict(sizes=(4, 8), repeats=5, batch_repeats=3, replicas=64),
    "dqn": dict(steps=50_000, sb3_repeats=3, replicas=8),
    "tracking": dict(replicas=(1, 16, 64), aggregate=4096, repeats=3),
    "sweeps": dict(launchers=("basic", "basic-unfused", "joblib"), repeats=2, overrides=()),
}
QUICK = {
    "tabular": dict(sizes=(4, 8), repeats=2, batch_repeats=1, replicas=64),
    "dqn": dict(steps=2_500, sb3_repeats=1, replicas=8),
    "tracking": dict(replicas=(1, 16), aggregate=256, repeats=1, commands=False,
                     sweep=False),
    "sweeps": dict(launchers=("basic",), repeats=1, overrides=("episodes=20",)),
}
# Progress lines: under qlab's logger, so qlab-bench's console shows them as "qlab-bench: ...".
log = logging.getLogger("qlab.bench")
QUICK_NOTES = (
    "Quick mode: tabular medians of 2 runs (R=64: 1); DQN 2,500 env steps per seed instead of "
    "50,000 (learning starts at 1,000, so steps/s leans on the warm-up and final returns are "
    "not comparable to the 50k goal), SB3 1 run; tracking R = 1, 16 and an aggregate "
    "R = 256 once, without the command and sweep rows; the sweep shrunk to "
    "episodes=20, basic launcher only, once. Run `make bench` for the real figures.",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="under two minutes: fewer repeats and steps, a shrunk sweep")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--out", default=None,
                   help="markdown report path (default: BENCHMARKS.md in full mode, none in "
                        "quick mode); '-' for none")
    p.add_argument("--json", default=None, help="also write every row (with samples) as JSON")
    p.add_argument("--dqn-steps", type=int, default=None, help="env steps per DQN seed")
    p.add_argument("--repeats", type=int, default=None, help="tabular repeats (R=1 contenders)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: 0, 1 if a section failed, 2 for a bad command line."""
    args = parse_args(argv)
    return exit_status(PROG, lambda: run(args, argv))


def run(args: argparse.Namespace, argv: list[str] | None) -> int:
    """Measure the sections asked for, print the table, write the reports."""
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"--sections: unknown section(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(SECTIONS)}")
    import mlflow  # noqa: F401  (it sets its loggers up on import; quiet them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    os.environ.pop("QLAB_PARENT_RUN_ID", None)
    os.environ.pop("QLAB_SWEEP_ID", None)
    plan = {k: dict(v) for k, v in (QUICK if args.quick else FULL).items()}
    if args.dqn_steps:
        plan["dqn"]["steps"] = args.dqn_steps
    if args.repeats:
        plan["tabular"]["repeats"] = args.repeats
    mode = "quick" if args.quick else "full"
    out = args.out if args.out is not None else (None if args.quick else "BENCHMARKS.md")
    command = "qlab-bench" + ("" if argv is None and len(sys.argv) <= 1 else
                              " " + shlex.join(sys.argv[1:] if argv is None else argv))

    info = common.machine_info()
    start = time.perf_counter()

    def progress(msg: str) -> None:
        log.info("[%6.1fs] %s", time.perf_counter() - start, msg)

    log.info("%s mode on %s, %s, %s RAM; load %s", mode, info["cpu"], info["cores"],
             info["ram"], info["load_before"])
    rows: list[common.Row] = []
    failures: list[str] = []
    from benchmarks import dqn, sweeps, tabular, tracking

    modules = {"tabular": tabular, "dqn": dqn, "tracking": tracking, "sweeps": sweeps}
    for name in SECTIONS:
        if name not in wanted:
            continue
        try:
            rows += modules[name].measure(**plan[name], progress=progress)
        except Exception as exc:  # one broken section must not lose the others
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            progress(f"{name} FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
    took = time.perf_counter() - start
    info["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

    notes = list(QUICK_NOTES) if args.quick else []
    notes += [f"Section failed: {f.splitlines()[0]}" for f in failures]
    print()
    print(f"qlab-bench ({mode}), {info['date']}, took {took:.0f} s; qlab {info['qlab']}, "
          f"python {info['python']}, numpy {info['numpy']}, torch {info['torch']}, "
          f"mlflow {info['mlflow']}, gymnasium {info['gymnasium']}, "
          f"stable-baselines3 {info['stable-baselines3']}")
    for n in notes:
        print(f"NOTE: {n}")
    print()
    print(report.text_table(rows))
    if out and out != "-":
        Path(out).write_text(report.markdown(rows, info, command, mode, took, notes))
        print(f"wrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"mode": mode, "command": command, "took_seconds": took, "machine": info,
             "notes": notes, "rows": [r.as_dict() for r in rows]}, indent=1))
        print(f"wrote {args.json}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
