"""Compiled (numba) kernels of the tabular agents' stepper: the driver's lock-step loop for tabular
Q-learning (``update = step`` / ``episode``), Monte-Carlo, SARSA, Expected SARSA and Double
Q-learning on an env with a tabular model, one replica at a time.

They compute exactly what the numpy reference computes (:class:`qlab.core.driver.NumpyStepper`
with :mod:`qlab.core.agents.qlearning`, :mod:`qlab.core.agents.mc`,
:mod:`qlab.core.agents.sarsa`, :mod:`qlab.core.agents.expected_sarsa`,
:mod:`qlab.core.agents.double_q`, :class:`qlab.core.envs.vector.TabularVecEnv` and
:class:`qlab.core.exploration.Schedule`), bit for bit:

- replica k's steps run in order over replica k's own pre-drawn uniforms: its agent stream
  gives ``2 + A`` numbers per step (explore?, random action, A tie-breakers) — SARSA
  another ``2 + A`` for the a' its ``learn`` draws, Double Q one more for its coin — its
  env stream 2 (outcome, restart) — as the reference takes them per lock-step while k is
  active. What a replica does after it has finished never mattered, so it is not run;
- the same float64 operations in the same order: no fastmath (LLVM then neither reorders
  nor fuses a multiply-add), ``max`` propagates NaN as ``numpy.max`` does, greedy ties go to
  the largest tie-breaker (first index on equality) as ``numpy.argmax`` does, and the
  exponential schedule's ``decay ** t`` is libm's ``pow``, as ``numpy.float_power`` is;
  a sum over a row of actions (Expected SARSA's mean, Double Q's mean over tied actions) is
  numpy's pairwise summation (:func:`row_sum`), and per-step |ΔQ| sums are formed in the
  order the reference adds its ``Updates``.

A kernel call is resumable: all per-replica state lives in the arrays passed in. Replica k
stops, with a status saying why, when it has finished an episode that must be evaluated,
run ``limit`` episodes, finished or failed, or needs more uniforms or a larger episode
buffer; the stepper (:mod:`qlab.core.compiled`) does what the status asks and calls again.
"""

from __future__ import annotations

import numba
import numpy as np

# Agents.
Q_STEP, Q_EPISODE, MC, SARSA, EXPECTED_SARSA, DOUBLE_Q = range(6)
EPISODIC = (Q_EPISODE, MC)  # agents that store the episode and learn at its end
MAX_SUM_ACTIONS = 128  # row_sum follows numpy's pairwise summation up to this many actions
# Schedules (exploration.KINDS).
EXPONENTIAL, LINEAR, CONSTANT = 0, 1, 2

# Columns of ``istate`` (R, N_INT), the per-replica integer state.
STATE = 0  # current env state
ELAPSED = 1  # steps into the current episode (the env's time limit counter)
EP = 2  # episodes finished
STEPS = 3  # env steps taken
BUF_LEN = 4  # transitions stored of the current episode (episodic updates)
AGENT_POS = 5  # next unused agent uniform
ENV_POS = 6  # next unused env uniform
STATUS = 7  # see below
EVAL_EP = 8  # episode to evaluate now, or -1
N_INT = 9
# Columns of ``fstate`` (R, N_FLOAT): sums over the current episode.
RET, QD_SUM, QD_CNT = 0, 1, 2
N_FLOAT = 3
# Columns of ``params`` (R, N_PARAM).
LR, GAMMA, START, DECAY, MINIMUM, DURATION = range(6)
N_PARAM = 6
# Rows of the ``train`` block written here (the driver fills train/sps, row 4).
LENGTH_ROW, RETURN_ROW, QDELTA_ROW, EPSILON_ROW = 0, 1, 2, 3

# Replica status.
RUN = 0  # run on
EVALUATE = 1  # finished episode istate[EVAL_EP], which must be evaluated before it goes on
PAUSED = 2  # ran ``limit`` episodes in this call
NEED_AGENT_U = 3  # fewer than 2 + A agent uniforms left
NEED_ENV_U = 4  # fewer than 2 env uniforms left
BUFFER_FULL = 5  # the episode buffer is full
FINISHED = 6  # all episodes done, or the step budget spent
FAILED = 7  # the last episode's q_delta is not finite


@numba.njit(cache=True)
def epsilon(kind: int, t: float, start: float, decay: float, minimum: float,
            duration: float) -> float:
    """:meth:`qlab.core.exploration.Schedule.__call__` for one replica and one t."""
    if kind == EXPONENTIAL:
        eps = start * decay ** t
    elif kind == LINEAR:
        frac = t / duration
        if frac > 1.0:
            frac = 1.0
        eps = start + frac * (minimum - start)
    else:
        eps = start
    return eps if eps >= minimum or np.isnan(eps) else minimum  # numpy.maximum


@numba.njit(cache=True)
def td_update(table: np.ndarray, k: int, s: int, a: int, target: float, lr: float) -> float:
    """Move ``table[k, s, a]`` a step ``lr`` towards ``target`` (numpy's own order of
    operations); the step's size, for Q-delta."""
    old = table[k, s, a]
    step = lr * (target - old)
    table[k, s, a] = old + step
    return abs(step)


@numba.njit(cache=True)
def row_max(q: np.ndarray, k: int, s: int) -> float:
    """``numpy.max`` of Q[k, s]: NaN if any entry is NaN."""
    m = q[k, s, 0]
    for a in range(1, q.shape[2]):
        v = q[k, s, a]
        if np.isnan(m):
            break
        if v > m or np.isnan(v):
            m = v
    return m


@numba.njit(cache=True)
def row_sum(x: np.ndarray) -> float:
    """``numpy.sum`` of a row of at most ``MAX_SUM_ACTIONS`` numbers, bit for bit: numpy's
    pairwise summation, which below 8 numbers adds them in order and from 8 to 128 keeps 8
    partial sums."""
    n = x.shape[0]
    if n < 8:
        res = 0.0
        for i in range(n):
            res += x[i]
        return res
    r0, r1, r2, r3 = x[0], x[1], x[2], x[3]
    r4, r5, r6, r7 = x[4], x[5], x[6], x[7]
    i = 8
    while i < n - n % 8:
        r0 += x[i]
        r1 += x[i + 1]
        r2 += x[i + 2]
        r3 += x[i + 3]
        r4 += x[i + 4]
        r5 += x[i + 5]
        r6 += x[i + 6]
        r7 += x[i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += x[i]
        i += 1
    return res


@numba.njit(cache=True)
def act(q: np.ndarray, k: int, s: int, u: np.ndarray, pos: int, eps: float) -> int:
    """:meth:`qlab.core.agents.tabular.TabularAgent.act` for replica k in state s: ``u[k, pos]``
    decides exploring, ``u[k, pos + 1]`` the random action, ``u[k, pos + 2 + a]`` breaks
    greedy ties (the largest wins, the first of equals)."""
    n_actions = q.shape[2]
    m = row_max(q, k, s)
    best = u[k, pos + 2] if q[k, s, 0] == m else -1.0
    greedy = 0
    for a in range(1, n_actions):
        v = u[k, pos + 2 + a] if q[k, s, a] == m else -1.0
        if v > best:
            best = v
            greedy = a
    if u[k, pos] < eps:
        return np.int64(u[k, pos + 1] * n_actions)
    return greedy


@numba.njit(cache=True)
def outcome(cum: np.ndarray, s: int, a: int, u: float, deterministic: bool) -> int:
    """The outcome slot of (s, a) that uniform ``u`` picks (TabularVecEnv.step)."""
    if deterministic:
        return 0
    k = 0
    for j in range(cum.shape[2]):
        if u >= cum[s, a, j]:
            k += 1
    return k


@numba.njit(cache=True)
def q_episode_sweep(q: np.ndarray, k: int, buf_i: np.ndarray, buf_r: np.ndarray, n: int,
                    lr: float, gamma: float) -> float:
    """Q-learning's backward sweep over replica k's stored episode of ``n`` steps (the
    ``update = episode`` learner); returns the sum of |ΔQ|."""
    total = 0.0
    for t in range(n - 1, -1, -1):
        s, a, s2, term = buf_i[k, 0, t], buf_i[k, 1, t], buf_i[k, 2, t], buf_i[k, 3, t]
        nxt = row_max(q, k, s2)
        target = buf_r[k, t] + gamma * (0.0 if term else nxt)
        step = lr * (target - q[k, s, a])
        q[k, s, a] += step
        total += abs(step)
    return total


@numba.njit(cache=True)
def mc_sweep(q: np.ndarray, k: int, buf_i: np.ndarray, buf_r: np.ndarray, n: int, lr: float,
             gamma: float, first_visit: bool, seen: np.ndarray, first: np.ndarray,
             stamp: int) -> tuple[float, float]:
    """Monte-Carlo's backward return sweep over replica k's stored episode
    (:mod:`qlab.core.agents.mc`);
    returns (sum of |ΔQ|, number of updates). ``seen`` (S * A) holds, per (s, a), the
    ``stamp`` of the last sweep that saw it: a fresh stamp per call marks first visits."""
    n_actions = q.shape[2]
    if first_visit:
        for t in range(n):
            key = buf_i[k, 0, t] * n_actions + buf_i[k, 1, t]
            first[t] = seen[key] != stamp
            seen[key] = stamp
    G, total, count = 0.0, 0.0, 0.0
    for t in range(n - 1, -1, -1):
        G = buf_r[k, t] + gamma * G
        if first_visit and not first[t]:
            continue
        s, a = buf_i[k, 0, t], buf_i[k, 1, t]
        old = q[k, s, a]
        step = lr * (G - old)
        q[k, s, a] = old + step
        total += abs(step)
        count += 1.0
    return total, count


@numba.njit(cache=True)
def run(agent: int, first_visit: bool, schedule: int, per_step: bool, deterministic: bool,
        max_steps: int, episodes: int, budget: int, limit: int,
        cum: np.ndarray, next_state: np.ndarray, reward: np.ndarray, terminal: np.ndarray,
        init_cum: np.ndarray, q: np.ndarray, tables: np.ndarray, pend_i: np.ndarray,
        pend_r: np.ndarray, params: np.ndarray, istate: np.ndarray,
        fstate: np.ndarray, u_agent: np.ndarray, u_env: np.ndarray, buf_i: np.ndarray,
        buf_r: np.ndarray, eval_at: np.ndarray, train: np.ndarray) -> None:
    """Run every replica whose status is RUN until it has to stop (see the module docstring).

    Model arrays are the env's (S, A, K) tables with ``cum`` the cumulative outcome
    probabilities and ``init_cum`` the cumulative start distribution; ``max_steps`` < 0
    means no time limit; ``budget`` is the env-step budget per replica. ``buf_i`` (R, 4, C)
    stores (state, action, next state, terminated) and ``buf_r`` (R, C) the rewards of each
    replica's current episode. ``train`` (>= 4, R, episodes) receives each finished
    episode's length, return, q_delta and epsilon. Double Q: ``tables`` (2, R, S, A) holds
    Q1 and Q2 and ``q`` their sum. SARSA: ``pend_i`` (R, 3) each replica's pending update
    (pending?, state, action) and ``pend_r`` (R,) its reward.
    """
    n_replicas, n_states, n_actions = q.shape
    need_act = 2 + n_actions
    need_a = (2 * need_act if agent == SARSA else need_act + 1 if agent == DOUBLE_Q
              else need_act)
    episodic = agent == Q_EPISODE or agent == MC
    scratch = np.zeros(n_actions)
    capacity = buf_r.shape[1]
    seen = np.full(n_states * n_actions if agent == MC else 0, -1, dtype=np.int64)
    first = np.zeros(capacity if agent == MC else 0, dtype=np.bool_)
    stamp = 0
    for k in range(n_replicas):
        if istate[k, STATUS] != RUN:
            continue
        lr, gamma = params[k, LR], params[k, GAMMA]
        start, decay = params[k, START], params[k, DECAY]
        minimum, duration = params[k, MINIMUM], params[k, DURATION]
        # The replica's state in locals, written back when it stops.
        s, elapsed = istate[k, STATE], istate[k, ELAPSED]
        ep, steps = istate[k, EP], istate[k, STEPS]
        n, apos, epos = istate[k, BUF_LEN], istate[k, AGENT_POS], istate[k, ENV_POS]
        ret, qd_sum, qd_cnt = fstate[k, RET], fstate[k, QD_SUM], fstate[k, QD_CNT]
        eps_t, eps = -1, 0.0  # epsilon is a function of t only: computed when t changes
        run_here = 0
        status = RUN
        while status == RUN:
            if elapsed == 0 and run_here >= limit:
                status = PAUSED
            elif apos + need_a > u_agent.shape[1]:
                status = NEED_AGENT_U
            elif epos + 2 > u_env.shape[1]:
                status = NEED_ENV_U
            elif episodic and n >= capacity:
                status = BUFFER_FULL
            if status != RUN:
                break
            # --- act (agent stream)
            t = steps if per_step else ep
            if t != eps_t:
                eps = epsilon(schedule, np.float64(t), start, decay, minimum, duration)
                eps_t = t
            ua = apos  # this step's numbers: act's, then learn's
            a = act(q, k, s, u_agent, ua, eps)
            apos += need_a
            # --- env step (env stream)
            j = outcome(cum, s, a, u_env[k, epos], deterministic)
            s2 = next_state[s, a, j]
            r = reward[s, a, j]
            term = terminal[s, a, j]
            restart_u = u_env[k, epos + 1]
            epos += 2
            elapsed += 1
            trunc = max_steps >= 0 and elapsed >= max_steps and not term
            done = term or trunc
            steps += 1
            ret += r
            # --- learn
            if agent == Q_STEP:
                bootstrap = 0.0 if term else row_max(q, k, s2)
                qd_sum += td_update(q, k, s, a, r + gamma * bootstrap, lr)
                qd_cnt += 1.0
            elif agent == SARSA:
                delta, cnt = 0.0, 0.0
                if pend_i[k, 0]:  # the previous step's update: its a' (a, from s) is known
                    ps, pa = pend_i[k, 1], pend_i[k, 2]
                    delta += td_update(q, k, ps, pa, pend_r[k] + gamma * q[k, s, a], lr)
                    cnt += 1.0
                    pend_i[k, 0] = 0
                a2 = act(q, k, s2, u_agent, ua + need_act, eps)  # drawn used or not
                if done:
                    bootstrap = 0.0 if term else q[k, s2, a2]
                    delta += td_update(q, k, s, a, r + gamma * bootstrap, lr)
                    cnt += 1.0
                else:
                    pend_i[k, 0], pend_i[k, 1], pend_i[k, 2] = 1, s, a
                    pend_r[k] = r
                qd_sum += delta
                qd_cnt += cnt
            elif agent == EXPECTED_SARSA:
                bootstrap = 0.0
                if not term:
                    mean = row_sum(q[k, s2]) / n_actions
                    bootstrap = eps * mean + (1.0 - eps) * row_max(q, k, s2)
                qd_sum += td_update(q, k, s, a, r + gamma * bootstrap, lr)
                qd_cnt += 1.0
            elif agent == DOUBLE_Q:
                upd = 1 if u_agent[k, ua + need_act] >= 0.5 else 0  # the coin: Q1 or Q2
                bootstrap = 0.0
                if not term:
                    m = row_max(tables[upd], k, s2)
                    ties = 0
                    for j in range(n_actions):
                        best = tables[upd, k, s2, j] == m
                        scratch[j] = tables[1 - upd, k, s2, j] if best else 0.0
                        if best:
                            ties += 1
                    bootstrap = row_sum(scratch) / ties if ties else np.nan
                step = td_update(tables[upd], k, s, a, r + gamma * bootstrap, lr)
                q[k, s, a] = tables[0, k, s, a] + tables[1, k, s, a]
                qd_sum += step
                qd_cnt += 1.0
            else:
                buf_i[k, 0, n], buf_i[k, 1, n], buf_i[k, 2, n] = s, a, s2
                buf_i[k, 3, n] = term
                buf_r[k, n] = r
                n += 1
                if done:
                    if agent == Q_EPISODE:
                        total = q_episode_sweep(q, k, buf_i, buf_r, n, lr, gamma)
                        count = np.float64(n)
                    else:
                        stamp += 1
                        total, count = mc_sweep(q, k, buf_i, buf_r, n, lr, gamma, first_visit,
                                                seen, first, stamp)
                    qd_sum += total
                    qd_cnt += count
                    n = 0
            s = s2
            if not (done or steps >= budget):
                continue
            # --- the episode ended (or the budget cut it): record it
            train[LENGTH_ROW, k, ep] = elapsed
            train[RETURN_ROW, k, ep] = ret
            q_delta = qd_sum / qd_cnt if qd_cnt else 0.0
            train[QDELTA_ROW, k, ep] = q_delta
            train[EPSILON_ROW, k, ep] = eps
            ret, qd_sum, qd_cnt = 0.0, 0.0, 0.0
            run_here += 1
            if done:  # TabularVecEnv.restart
                s = np.searchsorted(init_cum, restart_u, side="right")
                elapsed = 0
            last = ep + 1 >= episodes or steps >= budget
            if not np.isfinite(q_delta):
                status = FAILED
            else:
                if eval_at[ep] or last:
                    istate[k, EVAL_EP] = ep
                if last:
                    status = FINISHED
                elif eval_at[ep]:
                    status = EVALUATE
            ep += 1
        istate[k, STATE], istate[k, ELAPSED] = s, elapsed
        istate[k, EP], istate[k, STEPS] = ep, steps
        istate[k, BUF_LEN], istate[k, AGENT_POS], istate[k, ENV_POS] = n, apos, epos
        istate[k, STATUS] = status
        fstate[k, RET], fstate[k, QD_SUM], fstate[k, QD_CNT] = ret, qd_sum, qd_cnt
