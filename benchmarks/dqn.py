"""DQN section: qlab against Stable-Baselines3 on CartPole-v1 with the same hyperparameters,
and R replicas in one job against R runs one after another. Both update through torch
autograd and ``torch.optim.Adam`` (qlab's fused, over its replica rows; SB3's default).

The hyperparameters are qlab's composed config for ``agent=dqn env=cartpole`` (rl-zoo's tuned
SB3 settings, ``conf/hparams/dqn_cartpole.yaml``), handed to SB3's ``DQN`` key by key: lr,
buffer, batch, learning_starts, train_freq, gradient_steps, target_update_interval, tau,
gamma, max_grad_norm, net_arch, and the linear epsilon schedule (SB3's
``exploration_fraction`` = qlab's ``duration`` / the step budget, so both anneal over the same
env steps). Both use the same number of torch threads (qlab's ``agent.threads``).

Each contender runs in a fresh process. Steps/s is env steps over training time: qlab's
greedy evaluation (only at the end of the budget here) is not counted, and SB3 trains
without evaluating. The final greedy return is the mean of ``eval_episodes`` (10) greedy
episodes on fresh CartPole copies seeded as qlab's evaluator seeds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from benchmarks.common import (
    Row,
    TimedEvaluator,
    add_ratios,
    check_target,
    compose,
    median,
    run_worker,
    worker_main,
)
from qlab.core import driver

SB3, QLAB1 = "Stable-Baselines3", "qlab R=1"
BASE = ["env=cartpole", "agent=dqn", "tracking.enabled=false"]


def run_qlab(seed: int, replicas: int, steps: int, overrides: Sequence[str] = ()) -> dict:
    """One qlab job of ``replicas`` replicas (seeds seed..), ``steps`` env steps each."""
    from qlab.app.build import build
    from qlab.config import validate

    c = validate(compose([*BASE, f"seed={seed}", f"replicas={replicas}",
                          f"total_steps={steps}", *overrides]))
    c.eval_every = c.episodes  # evaluate once, when the step budget ends
    job = build(c)
    ev = job.evaluator = TimedEvaluator(job.evaluator)
    ev.start()
    hist = driver.train(job, flush_seconds=c.tracking.flush_seconds)
    seconds = time.perf_counter() - ev.t0 - ev.spent
    final = [float(hist.evals["eval/return"][k, max(int(hist.evals_done[k]) - 1, 0)])
             for k in range(c.replicas)]
    import torch

    return {"steps": float(np.nansum(hist.train["train/episode_length"])), "seconds": seconds,
            "final_returns": final, "threads": torch.get_num_threads()}


def sb3_kwargs(c, steps: int) -> dict:
    """SB3 ``DQN`` keyword arguments equal to qlab's composed config ``c``."""
    a, x = c.agent, c.exploration
    if x.name != "linear" or x.unit != "step":
        raise ValueError(f"SB3 needs a linear per-step schedule, got {x.name}/{x.unit}")
    return dict(learning_rate=a.lr, buffer_size=a.buffer_size, learning_starts=a.learning_starts,
                batch_size=a.batch_size, tau=a.tau, gamma=a.gamma, train_freq=a.train_freq,
                gradient_steps=a.gradient_steps, target_update_interval=a.target_update,
                exploration_fraction=x.duration / steps, exploration_initial_eps=x.start,
                exploration_final_eps=x.min, max_grad_norm=a.max_grad_norm,
                policy_kwargs={"net_arch": list(a.hidden)})


def run_sb3(seed: int, steps: int, overrides: Sequence[str] = ()) -> dict:
    """Stable-Baselines3's DQN with qlab's hyperparameters, ``steps`` env steps."""
    import torch
    from stable_baselines3 import DQN

    from qlab.config import validate
    from qlab.core.envs.gym_vector import make_gym
    from qlab.core.rng import EVAL_STREAM, derive_seed

    c = validate(compose([*BASE, *overrides]))
    if c.agent.threads > 0:
        torch.set_num_threads(c.agent.threads)
    env = make_gym(c.env.id, c.env.max_steps, c.env.kwargs)
    model = DQN("MlpPolicy", env, seed=seed, verbose=0, device="cpu", **sb3_kwargs(c, steps))
    t = time.perf_counter()
    model.learn(total_timesteps=steps)
    seconds = time.perf_counter() - t
    returns = []
    for i in range(c.eval_episodes):
        e = make_gym(c.env.id, c.env.max_steps, c.env.kwargs)
        obs, _ = e.reset(seed=derive_seed(seed, EVAL_STREAM, i))
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = e.step(int(action))
            total += r
            done = term or trunc
        returns.append(total)
    return {"steps": float(model.num_timesteps), "seconds": seconds,
            "final_returns": [float(np.mean(returns))], "threads": torch.get_num_threads()}


def bursts(replicas: list[int], repeats: int, overrides: list[str]) -> list[dict]:
    """Where a DQN gradient step's time goes, for each R in ``replicas``: an agent with qlab's
    CartPole config, its replay buffers holding 5,000 random transitions, times ``repeats``
    bursts (``gradient_steps`` steps of every replica), then one burst under torch's
    profiler gives the time spent in matrix products (baddbmm, bmm, mm, addmm)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from qlab.config import validate
    from qlab.core import agents, envs

    c = validate(compose([*BASE, *overrides]))
    out = []
    for R in replicas:
        seeds = list(range(R))
        agent = agents.make(c.agent, envs.make(c.env, seeds), seeds)  # sets torch's threads
        rng = np.random.default_rng(0)
        D, every = agent.obs_dim, np.ones(R, dtype=bool)
        horizon = None if agent.buffer.horizon is None else np.full(R, agent.n_step)
        for _ in range(5000):
            agent.buffer.add(rng.standard_normal((R, D)).astype(np.float32),
                             rng.integers(0, agent.n_actions, R), np.ones(R, np.float32),
                             rng.standard_normal((R, D)).astype(np.float32),
                             rng.random(R) < 0.05, every, horizon)
        agent._train(every)  # warm-up: the optimiser's construction, first calls
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            agent._train(every)
            times.append(time.perf_counter() - t)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            agent._train(every)
        matmul = sum(e.self_cpu_time_total for e in prof.key_averages()
                     if e.key in ("aten::baddbmm", "aten::bmm", "aten::mm", "aten::addmm"))
        steps = agent.gradient_steps * R
        out.append({"replicas": R, "step_us": [1e6 * x / steps for x in times],
                    "matmul_us": matmul / steps, "threads": torch.get_num_threads(),
                    "gradient_steps": agent.gradient_steps, "batch": agent.batch_size,
                    "net": "-".join(map(str, agent.net.sizes))})
    return out


def qlab_runs(seeds: list[int], replicas: int, steps: int, overrides: list[str]) -> list[dict]:
    return [run_qlab(s, replicas, steps, overrides) for s in seeds]


def sb3_runs(seeds: list[int], steps: int, overrides: list[str]) -> list[dict]:
    return [run_sb3(s, steps, overrides) for s in seeds]


HANDLERS = {"qlab": qlab_runs, "sb3": sb3_runs, "bursts": bursts}


def have_sb3() -> bool:
    import importlib.util

    return importlib.util.find_spec("stable_baselines3") is not None


def measure(steps: int = 50_000, sb3_repeats: int = 3, replicas: int = 8,
            overrides: Sequence[str] = (), in_process: bool = False,
            progress=None) -> list[Row]:
    """SB3 (``sb3_repeats`` seeds), ``replicas`` qlab R=1 runs one after another (seeds
    0..replicas-1; they are both the R=1 repeats and the sequential baseline), and one qlab
    job with R = ``replicas`` (the same seeds); ``steps`` env steps per seed everywhere."""
    say = progress or (lambda msg: None)

    def call(kind: str, **spec) -> list[dict]:
        spec = {**spec, "steps": steps, "overrides": list(overrides)}
        if in_process:
            return HANDLERS[kind](**spec)
        return run_worker("benchmarks.dqn", {"kind": kind, **spec})

    section = "DQN CartPole-v1"
    rows: list[Row] = []
    sb3: list[dict] = []
    if have_sb3() and sb3_repeats > 0:
        say(f"DQN: Stable-Baselines3, {sb3_repeats} run(s) x {steps} steps")
        sb3 = call("sb3", seeds=list(range(sb3_repeats)))
    say(f"DQN: qlab R=1, {replicas} runs one after another x {steps} steps")
    seq = call("qlab", seeds=list(range(replicas)), replicas=1)
    say(f"DQN: qlab R={replicas} in one job x {steps} steps")
    batch = call("qlab", seeds=[0], replicas=replicas)[0]

    threads = f"torch threads: qlab {seq[0]['threads']}" + (
        f", SB3 {sb3[0]['threads']}" if sb3 else "")
    sps = [Row(section, "env steps/s (one seed)", QLAB1,
               median([r["steps"] / r["seconds"] for r in seq]), "steps/s",
               [r["steps"] / r["seconds"] for r in seq],
               note=f"{len(seq)} runs x {steps} steps; autograd + fused torch.optim.Adam; "
                    f"{threads}")]
    ret = [Row(section, f"final greedy return at {steps} steps", QLAB1,
               median([r["final_returns"][0] for r in seq]), "",
               [r["final_returns"][0] for r in seq], note=f"{len(seq)} seeds, 10 episodes each"),
           Row(section, f"final greedy return at {steps} steps", f"qlab R={replicas}",
               median(batch["final_returns"]), "", batch["final_returns"],
               note=f"its {replicas} replicas")]
    if sb3:
        sps.insert(0, Row(section, "env steps/s (one seed)", SB3,
                          median([r["steps"] / r["seconds"] for r in sb3]), "steps/s",
                          [r["steps"] / r["seconds"] for r in sb3],
                          note=f"{len(sb3)} runs x {steps} steps"))
        ret.insert(0, Row(section, f"final greedy return at {steps} steps", SB3,
                          median([r["final_returns"][0] for r in sb3]), "",
                          [r["final_returns"][0] for r in sb3],
                          note=f"{len(sb3)} seeds, 10 episodes each"))
        add_ratios(sps, SB3, higher_is_better=True)
        add_ratios(ret, SB3, higher_is_better=True)
        for r in sps:
            if r.who == QLAB1:
                check_target(r, ">=", 1.5)
    else:
        sps[0].note += "; SB3 not installed (pip install -e '.[bench]'): no SB3 rows"
    seq_tput = sum(r["steps"] for r in seq) / sum(r["seconds"] for r in seq)
    tput = [Row(section, f"throughput, {replicas} seeds",
                f"{replicas} x qlab R=1 one after another", seq_tput, "steps/s",
                note=f"{replicas} x {steps} steps"),
            Row(section, f"throughput, {replicas} seeds", f"qlab R={replicas} in one job",
                batch["steps"] / batch["seconds"], "steps/s",
                note=f"{replicas} x {steps} steps")]
    add_ratios(tput, tput[0].who, higher_is_better=True)
    check_target(tput[1], ">=", 4)
    rows += sps + ret + tput
    say(f"DQN: where a gradient step's time goes, R=1 and R={replicas}")
    spec = {"replicas": [1, replicas], "repeats": 5, "overrides": list(overrides)}
    prof = (bursts(**spec) if in_process
            else run_worker("benchmarks.dqn", {"kind": "bursts", **spec}))
    rows += burst_rows(section, prof, replicas)
    return rows


def burst_rows(section: str, prof: list[dict], replicas: int) -> list[Row]:
    """Per replica, a gradient step's wall time and its matrix products' time at R = 1 and R =
    ``replicas``, and the bound that puts on batching: R replicas in one job can only save
    what is not matrix products (their flops grow with R), so one replica-step of the batch
    costs at least its matmul time."""
    one, many = prof
    metric = f"gradient step per replica ({one['net']} net, batch {one['batch']})"
    wall = [Row(section, metric, f"qlab R={p['replicas']}", median(p["step_us"]), "us",
                p["step_us"], note=f"{len(p['step_us'])} bursts of {p['gradient_steps']} "
                                   f"steps; {p['threads']} torch thread(s)") for p in prof]
    add_ratios(wall, "qlab R=1", higher_is_better=False)
    mm = [Row(section, "of which matrix products", f"qlab R={p['replicas']}", p["matmul_us"],
              "us", note=f"{100 * p['matmul_us'] / median(p['step_us']):.0f}% of the step "
                         "(torch profiler, one burst)") for p in prof]
    bound = median(one["step_us"]) / many["matmul_us"]
    ceiling = Row(section, f"ceiling of R={replicas}'s gain over R=1 (same threads)",
                  f"R=1 step / R={replicas} matmul time", bound, "x",
                  note=f"an R={replicas} job still does every replica's matrix products; "
                       "batching saves only the rest of the step")
    return wall + mm + [ceiling]


if __name__ == "__main__":
    worker_main(HANDLERS)
