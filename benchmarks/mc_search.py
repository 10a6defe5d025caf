"""Hyperparameter search for tabular Monte-Carlo control against its targets: an optimal
greedy policy on griddy, griddy8 and cliffwalking, within 0.02 of V* on frozenlake
(docs/research_notes.md).

Trains on the compiled fast path (:class:`qlab.core.compiled.CompiledStepper`), one batch per
(first_visit, init): every (lr, gamma, schedule) point of the grid x every seed is one
replica (the agent and the schedule take per-replica parameters). At the end each replica's
greedy policy is scored exactly on the env's model, as tests/test_solves.py scores it:

- ``opt``: the greedy action (argmax, lowest index on ties) is optimal (Q* by value
  iteration, the configured gamma) in every state where the agent acts;
- ``gap``: V*(start) - V^greedy(start), both exact within the env's time limit.

    python benchmarks/mc_search.py griddy8 --episodes 3000 --seeds 0:40 \
        --lr 0.05,0.1 --gamma 0.9 --init 1 --first-visit 0,1 \
        --schedule exponential:start=1,decay=0.99,min=0.2

prints one line per grid point: the share of seeds with an optimal policy, with gap <= 0.02,
the worst gap, and the batch's wall time.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from hydra import compose, initialize_config_dir

from qlab.config import CONF_DIR, register, validate
from qlab.core import driver, envs
from qlab.core.agents.mc import TabularMC
from qlab.core.compiled import CompiledStepper
from qlab.core.driver import Job
from qlab.core.exploration import Schedule
from qlab.core.oracle import policy_value, value_iteration

TOLERANCE = 0.02


def env_config(name: str):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"env={name}", "agent=tabular_mc",
                                                       "tracking.enabled=false"])
    return validate(cfg).env


def parse_schedule(text: str) -> dict:
    """``kind:key=value,...`` (keys start, decay, min, duration, unit)."""
    kind, _, rest = text.partition(":")
    out = {"kind": kind, "start": 1.0, "decay": 1.0, "min": 0.0, "duration": 1.0,
           "unit": "episode"}
    for item in filter(None, rest.split(",")):
        k, v = item.split("=")
        out[k] = v if k == "unit" else float(v)
    return out


def score(model, q: np.ndarray, gamma: np.ndarray) -> tuple[np.ndarray, ...]:
    """(R,) optimal everywhere the agent acts, (R,) V*(start) - V^greedy(start), (R,) number
    of acting states whose greedy action is not optimal."""
    acting = model.acting_states
    opt, gap, n_bad = np.zeros(len(q), bool), np.zeros(len(q)), np.zeros(len(q), int)
    cache: dict[float, tuple] = {}
    for k, qk in enumerate(q):
        g = float(gamma[k])
        if g not in cache:
            cache[g] = (value_iteration(model, g),
                        model.initial @ value_iteration(model, g, horizon=model.max_steps).v)
        sol, v_star = cache[g]
        pi = qk.argmax(axis=1)
        n_bad[k] = (~sol.is_optimal(pi) & acting).sum()
        opt[k] = n_bad[k] == 0
        gap[k] = v_star - model.initial @ policy_value(model, pi, g)
    return opt, gap, n_bad


def run_batch(env_cfg, first_visit: bool, init: float, points: list[dict], seeds: list[int],
              episodes: int):
    """Train every point x seed as one batch; returns (opt, gap) shaped (points, seeds), secs."""
    rows = list(itertools.product(range(len(points)), seeds))
    replica_seeds = [s for _, s in rows]
    vec = envs.make(env_cfg, replica_seeds)
    col = lambda key: np.array([float(points[i][key]) for i, _ in rows])  # noqa: E731
    agent = TabularMC(vec.n_states, vec.n_actions, replica_seeds, lr=col("lr"),
                      gamma=col("gamma"), first_visit=first_visit, init=init)
    units = {p["unit"] for p in points}
    kinds = {p["kind"] for p in points}
    assert len(units) == 1 and len(kinds) == 1, "one schedule kind and unit per batch"
    schedule = Schedule(kind=kinds.pop(), start=col("start"), decay=col("decay"),
                        minimum=col("min"), duration=col("duration"), unit=units.pop())
    t0 = time.perf_counter()
    driver.train(Job(vec, agent, schedule, episodes, episodes, compiled=CompiledStepper), fast="on")
    secs = time.perf_counter() - t0
    opt, gap, n_bad = score(vec.model, agent.q, agent.gamma)
    shape = (len(points), len(seeds))
    return opt.reshape(shape), gap.reshape(shape), n_bad.reshape(shape), secs


def eps_soft_q(model, gamma: float, eps: float, horizon: int | None = None,
               tol: float = 1e-12, max_iter: int = 1_000_000) -> np.ndarray:
    """Q of the best epsilon-soft policy (what on-policy epsilon-greedy Monte-Carlo control
    converges to): value iteration with V(s) = (1 - eps) max_a Q(s, a) + eps mean_a Q(s, a).
    With ``horizon`` H, the values of the first step of an H-step episode."""
    v = np.zeros(model.n_states)
    cont_mask = ~model.terminal
    for _ in range(horizon if horizon is not None else max_iter):
        q = (model.prob * (model.reward + gamma * np.where(cont_mask, v[model.next_state], 0.0))
             ).sum(-1)
        v_new = (1 - eps) * q.max(1) + eps * q.mean(1)
        done = horizon is None and np.abs(v_new - v).max() < tol
        v = v_new
        if done:
            break
    return q


def expected_visits(model, policy: np.ndarray, eps: float) -> np.ndarray:
    """(S, A) expected visits per episode (within the model's time limit) of every (s, a)
    under the epsilon-greedy policy around the deterministic ``policy``."""
    S, A = model.n_states, model.n_actions
    pi = np.full((S, A), eps / A)
    pi[np.arange(S), policy] += 1 - eps
    d, total = model.initial.copy(), np.zeros((S, A))
    live = model.prob * ~model.terminal  # (S, A, K) mass that continues
    for _ in range(model.max_steps):
        sa = d[:, None] * pi
        total += sa
        d = np.zeros(S)
        np.add.at(d, model.next_state.ravel(), (sa[..., None] * live).ravel())
    return total


def eps_soft_report(env_name: str, gamma: float, epsilons: list[float],
                    around: float | None = None) -> None:
    """For each eps: states where the greedy action of Q^{pi_eps} is not optimal (vs Q*),
    and how rarely epsilon-greedy visits things. With ``around`` = eps0: also how often
    epsilon-greedy around pi0 (the greedy policy of Q^{pi_eps0}, e.g. the safe path learned
    while epsilon was large) tries the optimal actions pi0 lacks — the (s, a) whose returns
    Monte-Carlo must sample for the greedy policy to switch to the optimal one."""
    model = envs.make_model(env_config(env_name))
    sol = value_iteration(model, gamma)
    acting = model.acting_states
    v_star = model.initial @ value_iteration(model, gamma, horizon=model.max_steps).v
    for eps in epsilons:
        q = eps_soft_q(model, gamma, eps, horizon=model.max_steps)
        pi = q.argmax(1)
        bad = np.flatnonzero(~sol.is_optimal(pi) & acting)
        gap = v_star - model.initial @ policy_value(model, pi, gamma)
        visits = expected_visits(model, sol.q.argmax(1), eps)[acting]
        rare = np.unravel_index(visits.argmin(), visits.shape)
        print(f"{env_name} gamma={gamma:g} eps={eps:g}: greedy of Q^pi_eps non-optimal in "
              f"{bad.size}/{int(acting.sum())} acting states {bad.tolist()}, "
              f"V*-V^greedy(start) = {gap:.4f}; acting eps-greedy around pi*, the rarest "
              f"(s, a) is visited {visits.min():.3g} times per episode (state "
              f"{np.flatnonzero(acting)[rare[0]]}, action {rare[1]}), the rarest state "
              f"{visits.sum(1).min():.3g}", flush=True)
        if around is not None:
            pi0 = eps_soft_q(model, gamma, around, horizon=model.max_steps).argmax(1)
            wrong = ~sol.is_optimal(pi0) & acting
            need = sol.optimal & wrong[:, None]  # optimal (s, a) in the states pi0 gets wrong
            v0 = expected_visits(model, pi0, eps)[need]
            print(f"  around pi0 = greedy of Q^pi_{around:g} (wrong in {int(wrong.sum())} "
                  f"states, V^pi0(start) = {model.initial @ policy_value(model, pi0, gamma):.4g})"
                  f": eps-greedy at eps={eps:g} tries the {v0.size} optimal (s, a) pi0 lacks "
                  f"{v0.min():.3g}..{v0.max():.3g} times per episode (total {v0.sum():.3g})",
                  flush=True)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("env")
    ap.add_argument("--episodes", type=int, default=0)
    ap.add_argument("--seeds", default="0:5", help="lo:hi (hi excluded)")
    ap.add_argument("--lr", type=floats, default=[0.05])
    ap.add_argument("--gamma", type=floats, default=[0.9])
    ap.add_argument("--init", type=floats, default=[0.0])
    ap.add_argument("--first-visit", type=lambda t: [bool(int(x)) for x in t.split(",")],
                    default=[False])
    ap.add_argument("--eps-soft", type=floats, default=None,
                    help="only print the exact eps-soft analysis for these epsilons")
    ap.add_argument("--around", type=float, default=None,
                    help="with --eps-soft: visits around the greedy policy of Q^pi_AROUND")
    ap.add_argument("--schedule", action="append", default=[],
                    help="kind:start=..,decay=..,min=..,duration=..,unit=.. (repeatable)")
    args = ap.parse_args()
    lo, hi = (int(x) for x in args.seeds.split(":"))
    seeds = list(range(lo, hi))
    if args.eps_soft is not None:
        for gamma in args.gamma:
            eps_soft_report(args.env, gamma, args.eps_soft, args.around)
        return
    env_cfg = env_config(args.env)
    scheds = [parse_schedule(s) for s in args.schedule]
    for fv, init in itertools.product(args.first_visit, args.init):
        by_kind: dict[tuple, list[dict]] = {}
        for sch, lr, gamma in itertools.product(scheds, args.lr, args.gamma):
            by_kind.setdefault((sch["kind"], sch["unit"]), []).append(
                {**sch, "lr": lr, "gamma": gamma})
        for points in by_kind.values():
            opt, gap, n_bad, secs = run_batch(env_cfg, fv, init, points, seeds, args.episodes)
            for i, p in enumerate(points):
                sch = ",".join(f"{k}={p[k]:g}" for k in ("start", "decay", "min", "duration"))
                print(f"{args.env} ep={args.episodes} fv={int(fv)} init={init:g} "
                      f"lr={p['lr']:g} gamma={p['gamma']:g} {p['kind']}[{sch},{p['unit']}]: "
                      f"optimal {opt[i].sum()}/{len(seeds)} "
                      f"near {(gap[i] <= TOLERANCE).sum()}/{len(seeds)} "
                      f"max_gap {gap[i].max():.4f} median_gap {np.median(gap[i]):.4f} "
                      f"mean_nonopt_states {n_bad[i].mean():.1f} "
                      f"first5 opt={opt[i][:5].sum()} "
                      f"near={(gap[i][:5] <= TOLERANCE).sum()}  [{secs:.1f}s batch]",
                      flush=True)


if __name__ == "__main__":
    main()
