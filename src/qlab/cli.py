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
from qlab.config import CONF_DIR, CONFIG_DIRS_ENV, register, search_dirs
from qlab.core.errors import QlabError, console, fail, job_log, run_cli
from qlab.core.secrets import hide_in_overrides
from qlab.sweeps import callback as sweep

PROG = "qlab-train"
console(PROG)  # qlab's log records on stderr as "qlab-train: ..." lines
run_cli(PROG, register)  # qlab's schemas (and, in sweep workers, $QLAB_CONFIG_DIRS's)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    with job_log(PROG):  # qlab's records on stderr and in the job log Hydra has set up
        try:
            run(cfg, tags=sweep.job_tags())
        except ReplicaFailure as exc:
            if sweep.in_sweep():
                raise  # Hydra records the failed job; the sweep goes on
            fail(PROG, f"stopped {exc}", exc.exit_code)
        except QlabError as exc:  # a StoreError ended the runs first, metrics kept
            fail(PROG, exc)


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
