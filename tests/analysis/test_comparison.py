"""Issue 17, the comparison a researcher reads: run names that carry the swept values, the
sweep's command line and keys, the per-agent verdict, what is not like for like, the
help's choices. In process, on small frames and composed configs (no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qlab.analysis import stats, summary, verdict
from qlab.app.naming import SWEPT_TAG, run_name, run_names
from qlab.sweeps import callback, preflight
from tests.helpers import compose

DECAY = "params.exploration.decay"


# ------------------------------------------------------------------ names

def test_run_names_carry_the_swept_values() -> None:
    """A fused job of two decays x 2 seeds: four names, all different, each with its decay
    (was ``dqn-griddy-seed0`` twice)."""
    from qlab.config.batch import batch

    b = batch(compose(["agent=tabular_q", "replicas=2",
                       "+qlab_fused=[{exploration.decay:0.99},{exploration.decay:0.999}]"]))
    tags = {SWEPT_TAG: "agent,exploration.decay"}
    assert run_names(b, tags) == ["tabular_q-griddy-decay0.99-seed0",
                                  "tabular_q-griddy-decay0.99-seed1",
                                  "tabular_q-griddy-decay0.999-seed0",
                                  "tabular_q-griddy-decay0.999-seed1"]
    assert run_names(b) == ["tabular_q-griddy-seed0", "tabular_q-griddy-seed1"] * 2  # no sweep
    params = {"agent.name": "dqn", "env.name": "griddy", "seed": "3", "agent.lr": "0.01",
              "exploration.name": "linear"}
    assert run_name(params, ["agent.lr", "exploration", "seed"]) == \
        "dqn-griddy-lr0.01-linear-seed3"


def test_a_sweep_records_each_key_once() -> None:
    """``make sweep ARGS="agent=tabular_q,tabular_mc"`` over a named experiment that sweeps
    agent too: the command line wins, ``agent=`` appears once, one swept key (was: the
    summary crashed with "cannot insert agent, already exists")."""
    experiment = {"agent": "tabular_mc,tabular_q,dqn", "exploration.decay": "0.99,0.995"}
    line = callback.command_overrides(["+experiment=epsilon_decay",
                                       "agent=tabular_q,tabular_mc"], experiment)
    assert line == ["+experiment=epsilon_decay", "agent=tabular_q,tabular_mc",
                    "exploration.decay=0.99,0.995"]
    assert callback.swept_keys(line) == ["agent", "exploration.decay"]
    assert callback.swept_keys(["agent=a,b", "+agent=a,b,c", "seed=0,1"]) == ["agent"]


# ------------------------------------------------------------------ the verdict

def scores_frame(values: dict[tuple[str, float], list[float]], eval_every: int = 10,
                 budget: int = 300) -> pd.DataFrame:
    rows = []
    for (agent, decay), xs in values.items():
        for seed, x in enumerate(xs):
            rows.append({"run_id": f"{agent}{decay}{seed}", "agent": agent, DECAY: decay,
                         "params.seed": seed, "params.eval_every": eval_every,
                         "params.episodes": budget, "episodes_to_solve": float(x),
                         "solved": x < budget})
    return pd.DataFrame(rows)


def answer(scores: pd.DataFrame) -> pd.DataFrame:
    gb = ["agent", DECAY]
    agg = stats.aggregate(scores, gb, metrics=["episodes_to_solve"], n_resamples=300)
    return verdict.verdicts(scores, agg, gb, n_resamples=300).set_index("agent")


def test_verdict_names_the_best_decay_per_agent_or_says_seeds_cannot_tell() -> None:
    scores = scores_frame({
        ("dqn", 0.99): [10, 11, 12, 10, 11], ("dqn", 0.999): [50, 52, 51, 50, 53],
        ("mc", 0.99): [40, 90, 60, 120, 70], ("mc", 0.999): [50, 100, 65, 110, 80]})
    v = answer(scores)
    assert list(v.index) == ["dqn", "mc"]  # one answer per agent, within the agent
    assert v.loc["dqn", "best"] == "decay=0.99" and v.loc["dqn", "tied"] == ""
    assert v.loc["dqn", "verdict"].endswith("ahead of every other setting")
    assert v.loc["dqn", "poi"] == 1.0  # every run of 0.99 beats every run of 0.999
    assert v.loc["mc", "best"] == "decay=0.99"
    assert "not distinguishable from the other settings with 5 seeds" in v.loc["mc", "verdict"]


def test_verdict_flags_a_score_at_its_resolution_floor() -> None:
    """Every run solved at the first evaluation (episode 9 with eval_every 10): the cadence,
    not the decay, decides the number."""
    v = answer(scores_frame({("q", 0.99): [9, 9, 9], ("q", 0.999): [9, 9, 9]}))
    assert v.loc["q", "verdict"].startswith("cannot be told apart: every run solved at the "
                                            "first evaluation (eval_every=10)")
    v = answer(scores_frame({("q", 0.99): [9, 9, 9], ("q", 0.999): [9, 19, 9]}))
    assert v.loc["q", "floor"] == "" and v.loc["q", "best"] == "decay=0.99"
    assert answer(scores_frame({("q", 0.99): [29] * 3, ("q", 0.999): [29] * 3})).empty


def test_settings_that_differ_are_listed_and_confounders_flagged() -> None:
    runs = pd.DataFrame({"agent": ["mc", "mc", "q", "q", "dqn", "dqn"],
                         DECAY: [0.99, 0.999] * 3,
                         "params.agent.gamma": [0.9, 0.9, 0.9, 0.9, 0.95, 0.95],
                         "params.exploration.min": [0.2, 0.0, 0.0, 0.0, 0.0, 0.0],
                         "params.agent.batch_size": [None] * 4 + [64, 64],
                         "params.agent.init": [1.0, 1.0, 0.0, 0.0, None, None],
                         "params.seed": [0, 1] * 3})
    d = verdict.differing_settings(runs, ["agent", DECAY]).set_index("setting")
    # batch_size: DQN's own key; init: the tables' (differs between them, DQN has none)
    assert list(d.index) == ["agent.gamma", "agent.init", "exploration.min"]
    assert d.loc["agent.init", "values"] == "mc: 1; q: 0"
    assert not d.loc["agent.gamma", "within"]
    assert d.loc["agent.gamma", "values"] == "dqn: 0.95; mc: 0.9; q: 0.9"
    assert d.loc["exploration.min", "within"]  # differs between decays of one agent


def test_epsilon_floor_that_cuts_a_decay_short_is_stated() -> None:
    runs = pd.DataFrame({"agent": ["mc", "mc"], DECAY: [0.99, 0.999],
                         "params.exploration.name": "exponential",
                         "params.exploration.start": 1.0, "params.exploration.min": 0.2,
                         "params.episodes": 600})
    notes = verdict.epsilon_floors(runs, ["agent", DECAY])
    # 0.99^161 < 0.2 <= 0.99^160; 0.999 reaches 0.2 only at episode 1609
    assert notes == ["mc, decay=0.99: epsilon reaches its floor 0.2 at episode 161 of 600"]


def test_summary_text_states_solved_counts_and_censoring() -> None:
    scores = scores_frame({("mc", 0.99): [100, 300, 120], ("mc", 0.999): [80, 90, 70]})
    table = summary.summary_table(scores, ["agent", DECAY], n_resamples=300)
    text = summary.summary_text(table, summary.budget(scores))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["group", "runs", "finished", "solved"]
    assert "2/3" in lines[1] and "3/3" in lines[2]
    # the unsolved run counts as the budget: IQM of (100, 300, 120), not a median of solved
    assert table.loc[0, "episodes_to_solve"] == pytest.approx(stats.iqm(np.array([100, 300,
                                                                                   120.0])))
    assert "counts as the episode budget (300)" in text and "lower bound" in text


# ------------------------------------------------------------------ help and choices

def test_help_lists_only_real_choices() -> None:
    from qlab import cli

    text = cli.help_text()
    assert "base_" not in text
    agents = next(line for line in text.splitlines() if line.strip().startswith("agent:"))
    assert "tabular_q" in agents and "dqn" in agents
    assert preflight.group_choice(["agent=base_dqn"]).startswith(
        "agent=base_dqn: no such agent; choose one of: ")
    assert preflight.group_choice(["agent=dqn", "env=griddy"]) is None


def test_a_job_ends_with_its_run_ids_and_the_next_step() -> None:
    from qlab import cli

    text = cli.next_steps(["abc123"], "qlab", in_sweep=False)
    assert "run abc123 in MLflow experiment 'qlab'" in text
    assert "qlab-play abc123" in text and "qlab-play last" in text
    many = cli.next_steps([f"r{i}" for i in range(15)], "e", in_sweep=True)
    assert many.endswith("... (15 runs) in MLflow experiment 'e'")


@pytest.mark.parametrize("agent", ["tabular_mc", "tabular_q", "dqn"])
def test_headline_experiment_is_like_for_like(agent: str) -> None:
    """Every agent of the headline sweep decays epsilon under the same discount, floor,
    budget and evaluation cadence (was: DQN gamma 0.95, Monte-Carlo floored at 0.2, and an
    evaluation every 10 episodes that tabular Q-learning passes at the first)."""
    cfg = compose(["+experiment=epsilon_decay", f"agent={agent}"])
    assert (cfg.agent.gamma, cfg.exploration.min, cfg.exploration.start) == (0.9, 0.0, 1.0)
    assert (cfg.episodes, cfg.eval_every, cfg.exploration.name) == (300, 1, "exponential")


def test_a_named_experiment_describes_itself() -> None:
    text = callback.experiment_description(["+experiment=epsilon_decay", "agent=dqn"])
    assert text.startswith("The headline comparison: which epsilon decay") and "\n" not in text
    assert callback.experiment_description(["agent=dqn"]) == ""


@pytest.mark.integration
def test_make_help_shows_the_ui_address() -> None:
    """``make help`` expands HOST and PORT (it printed ``$(HOST):$(PORT)``)."""
    import re
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(["make", "-s", "-C", str(root), "help", "HOST=10.1.2.3", "PORT=5123"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)  # the target names' colour
    ui = next(line for line in out.splitlines() if line.split()[:1] == ["ui"])
    assert "http://10.1.2.3:5123" in ui and "$(" not in out
