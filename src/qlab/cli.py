"""``qlab-train`` (also ``python -m qlab``): check every job of the command line, then let
Hydra compose and launch them; each job trains through :func:`qlab.app.train.run`.

    qlab-train env.height=8 env.width=8 seed=3 replicas=5 episodes=300 exploration.decay=0.99
"""

from __future__ import annotations

import os
import sys

import hydra
from omegaconf import DictConfig

from qlab.app.stopping import Terminated
from qlab.app.train import ReplicaFailure, run
from qlab.config import CONF_DIR, CONFIG_DIRS_ENV, options, register, search_dirs
from qlab.core.errors import QlabError, console, fail, job_log, run_cli
from qlab.core.secrets import hide_in_overrides
from qlab.sweeps import callback as sweep

PROG = "qlab-train"
console(PROG)  # qlab's log records on stderr as "qlab-train: ..." lines
run_cli(PROG, register)  # qlab's schemas (and, in sweep workers, $QLAB_CONFIG_DIRS's)
GROUPS = ("agent", "env", "exploration")  # the config groups a user chooses from
RUN_IDS_SHOWN = 5  # a job of more replicas prints its first run ids and the count


def _sweep_summary(uri: str, parent_run_id: str):
    """The report's own summary of a finished sweep (see :mod:`qlab.analysis.summary`)."""
    from qlab.analysis.summary import sweep_summary

    return sweep_summary(uri, parent_run_id)


sweep.summarizer = _sweep_summary


def next_steps(run_ids: list[str], experiment: str, in_sweep: bool) -> str:
    """The lines a job ends with: its run ids and where to look next."""
    if not run_ids:
        return ""
    shown = " ".join(run_ids[:RUN_IDS_SHOWN])
    more = f" ... ({len(run_ids)} runs)" if len(run_ids) > RUN_IDS_SHOWN else ""
    label = "run" if len(run_ids) == 1 else "runs"
    text = f"{PROG}: {label} {shown}{more} in MLflow experiment {experiment!r}"
    if not in_sweep:  # a sweep says where to look once, at its end
        text += (f"\n{PROG}: next: qlab-play {run_ids[0]} (or qlab-play last) to watch it; "
                 "make ui to compare runs")
    return text


def help_text() -> str:
    """``qlab-train --help``: how to call it, and the real choices of each config group."""
    lines = [f"{PROG} [KEY=VALUE ...] [+experiment=NAME] [-m]  (also: python -m qlab)",
             "",
             "Train value-based agents, logged to MLflow. Every config key is a Hydra override:",
             "  qlab-train agent=dqn env=griddy8 seed=3 replicas=5 episodes=300",
             "  qlab-train -m exploration.decay=0.99,0.999     (a sweep; one run per seed)",
             "  qlab-train +experiment=epsilon_decay          (a named sweep of experiments/)",
             "", "Config groups (choose one with GROUP=NAME):"]
    lines += [f"  {g}: {', '.join(options(g))}" for g in GROUPS]
    lines += ["", "Every key and its value: qlab-train --cfg job.  Hydra's own options: "
              "qlab-train --hydra-help."]
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    with job_log(PROG):  # qlab's records on stderr and in the job log Hydra has set up
        try:
            result = run(cfg, tags=sweep.job_tags())
        except ReplicaFailure as exc:
            if sweep.in_sweep():
                raise  # Hydra records the failed job; the sweep goes on
            fail(PROG, f"stopped {exc}", exc.exit_code)
        except QlabError as exc:  # a StoreError ended the runs first, metrics kept
            fail(PROG, exc)
        steps = next_steps(result.run_ids, str(cfg.experiment_name), sweep.in_sweep())
        if steps:
            print(steps, file=sys.stderr)


def main() -> None:
    """Console entry point: check every job's config first, then hand over to Hydra."""
    from hydra._internal.utils import get_args_parser

    from qlab.sweeps.preflight import check

    # A password in an override (tracking.uri=postgresql://u:pw@...) moves into an env var
    # before Hydra records the command line anywhere (outputs/, multirun/, its job line).
    argv, secret_env = hide_in_overrides(sys.argv[1:])
    os.environ.update(secret_env)
    sys.argv[1:] = argv
    args = get_args_parser().parse_args(sys.argv[1:])
    dirs = search_dirs(args.overrides)
    if dirs:  # a user's agents and envs: registered here and in every worker process
        os.environ[CONFIG_DIRS_ENV] = os.pathsep.join(map(str, dirs))
        run_cli(PROG, lambda: register(dirs))
    if args.help:  # Hydra's lists the schemas (base_*) as choices: ours lists the real ones
        print(help_text())
        return
    if not (args.help or args.hydra_help or args.info or args.shell_completion):
        overrides = args.overrides
        errors = check(overrides)
        if errors:
            for line in errors[:-1]:
                print(f"{PROG}: error: {line}", file=sys.stderr)
            fail(PROG, errors[-1], 2)
    try:
        _hydra_main()
    except KeyboardInterrupt as exc:  # Ctrl-C / SIGTERM: the job stopped cleanly, say so
        sweep.finish(failed=True)
        sigterm = isinstance(exc, Terminated)
        fail(PROG, f"stopped by {'SIGTERM' if sigterm else 'Ctrl-C'}: tracked runs end KILLED "
             "after a last checkpoint; the same command with resume=last continues the job",
             143 if sigterm else 130)
    except BaseException:
        sweep.finish(failed=True)
        raise
    sweep.finish()  # a sweep whose on_multirun_end Hydra skipped


if __name__ == "__main__":
    main()
