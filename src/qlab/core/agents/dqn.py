"""Deep Q-network on the replica axis: R independent MLPs trained in lock-step.

The algorithm (Mnih et al. 2015, as in CleanRL / Stable-Baselines3), per replica:
  - act epsilon-greedily on the online network Q(x; theta), x the flattened observation
    (``observations[state]`` on envs with a state table, the env's float vector otherwise);
  - store every transition in the replica's own replay buffer (:mod:`qlab.core.agents.replay`);
  - after ``learning_starts`` env steps, every ``train_freq`` steps take ``gradient_steps``
    Adam steps, each on a fresh minibatch of ``batch_size``, on the Huber (smooth-L1) loss
    between Q(x, a; theta) and y = r + gamma * (1 - terminated) * max_a' Q(x', a'; theta⁻)
    (double DQN: Q(x', argmax_a' Q(x', a'; theta); theta⁻)), with the gradient's norm clipped
    to ``max_grad_norm`` per replica;
  - every ``target_update`` env steps refresh the target theta⁻: a hard copy (``tau = 1``)
    or Polyak averaging theta⁻ <- tau * theta + (1 - tau) * theta⁻.
Truncated episodes bootstrap (only ``terminated`` stops it).

Two variants, each a few lines on the same update, composable with each other and ``double``:
  - ``dueling`` (Wang et al. 2016): the network's last layer has 1 + A outputs, a state value
    V(x) and advantages A(x, a), combined as Q(x, a) = V(x) + A(x, a) - mean_a' A(x, a')
    (:func:`dueling_q`); subtracting the mean makes V and A identifiable (mean_a Q = V).
    The last layer is the two streams' linear heads side by side, initialised as two
    ``torch.nn.Linear`` would be.
  - ``n_step`` = n (Sutton 1988; Hessel et al. 2018): the replay stores n-step transitions
    (:mod:`qlab.core.agents.nstep`) with a target G + gamma^m (1 - terminated)
    max_a' Q(x_{t+m}, a'; theta⁻), G the discounted sum of the m <= n rewards up to x_{t+m};
    an episode's end cuts the sum (m < n): a termination stops bootstrapping, a truncation
    bootstraps from the truncated step's successor. The n-step target is off-policy
    uncorrected (as in Rainbow): it follows the behaviour policy's actions for n - 1 steps.

The replica axis: all R networks' parameters live in one float32 tensor ``params`` of
shape (R, P') (replica k's P weights and biases in row k, zero-padded to P'); layer l's
weight is an (R, in, out) view of it, so one forward is a chain of ``torch.baddbmm`` over
the replica axis and one autograd backward serves all replicas (measured faster on CPU than
``torch.func.vmap`` over stacked modules, whose per-call batching overhead dominates for
nets this small, and than a Python loop of R modules). The update (:meth:`DQN._update`) is
the textbook one: targets from the target network, Huber loss, ``backward()``, gradient
clipping, ``torch.optim.Adam.step()``. Losses are summed over replicas, so replica k's
gradient is its own loss's; clipping scales replica k's gradient by its own norm. Adam is
elementwise, so one Adam over the rows of several replicas is each replica's own Adam as
long as they share lr and step count: the optimiser groups the replicas that train into
runs that do (:meth:`DQN._optimizer`), and replicas outside them (finished ones) are never
touched. ``lr`` and ``gamma`` may differ per replica (a param group's lr, an (R, 1)
discount in the targets): a fused sweep trains points with different values in one batch
(:mod:`qlab.sweeps.fused`). Replica k's weights are initialised from a torch.Generator
seeded from seed k, its epsilon-greedy numbers come from its agent stream and its
minibatches from its replay stream, and every kernel computes a replica's row the same
whatever the number of rows: replica k of a batch reproduces a run of R = 1 with seed k
(bit for bit on the CPU with one torch thread; tests/agents/test_dqn.py).

``device`` (``agent.device``): where the networks, Adam's state and the minibatches live,
``cpu`` or ``cuda``; replay storage stays in numpy, and acting on the CPU goes through
numpy (cheaper than torch's dispatch for one observation per replica).

Metrics (``Updates.stats``, logged per episode as ``train/<name>``): ``td_loss`` (the Huber
loss of each gradient step) and ``q_mean`` (mean Q(s, a) of the sampled pairs before the step).

Q-delta, defined to compare with the tabular agents' curves. Tabular: the mean |ΔQ(s, a)|
over the updates made in an episode, an update changing one entry Q(s, a). DQN: one
gradient step changes Q everywhere; we measure it where the step was aimed — for each
sampled (s, a) of the minibatch, |Q(x, a; theta_after) - Q(x, a; theta_before)| on the
same input x — and ``train/q_delta`` is the mean over all sampled pairs of all gradient
steps in the episode (0 in an episode without gradient steps).

Artifact: ``q_network.pt``, replica k's weights as plain tensors in ``torch.nn.Linear``
layout (``{"state_dict": {"0.weight": (out, in), "0.bias": ..., "2.weight": ...},
"hidden_sizes": [...], "obs_dim": D, "n_actions": A, "dueling": bool}``; a dueling
network's last layer has 1 + A outputs, V first), loadable with
``torch.load(path, weights_only=True)``; :func:`load_q_network` rebuilds it as an
``nn.Sequential`` (ending in a :class:`DuelingHead` for a dueling network).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qlab.core.agents.nstep import NStepWindow
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.replay import ReplayBuffer
from qlab.core.agents.tabular import Transition, Updates
from qlab.core.checks import check_in, check_range, fail
from qlab.core.rng import AGENT_STREAM, NETWORK_STREAM, REPLAY_STREAM, ReplicaUniforms, derive_seed
from qlab.core.statedict import load_array

BURST_VALUES = 1 << 24  # observation values of a burst's minibatches drawn at once (64 MB)
# torch's note (once per process) that a layer's gradient, a strided view of the flat one,
# is not laid out as it would allocate it: intended here (see DQN._optimizer).
LAYOUT_WARNING = "grad and param do not obey the gradient layout contract"
DEVICES = ("cpu", "cuda")
ROW_ALIGN = 16  # float32 values per 64-byte cache line, the widest SIMD vector (AVX-512)


class BatchedMLP:
    """The layout of R MLPs ``sizes[0] -> ... -> sizes[-1]`` (ReLU between layers) in one flat
    parameter row per replica, its first P = ``n_params`` values; functions of (R, >= P)
    parameters, no state."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = [int(s) for s in sizes]
        self.layers: list[tuple[int, int, int, int]] = []  # (weight offset, bias offset, in, out)
        off = 0
        for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:], strict=True):
            self.layers.append((off, off + n_in * n_out, n_in, n_out))
            off += n_in * n_out + n_out
        self.n_params = off
        # The row length DQN allocates: P rounded up to whole 64-byte lines of float32 (zeros
        # after P). torch's fused CPU Adam runs whole SIMD vectors over 64-byte units and ends a
        # tensor's remainder with scalar code, which may round differently; with rows of whole
        # units no element of any replica falls in a remainder, whatever R.
        self.row_size = -(-off // ROW_ALIGN) * ROW_ALIGN

    def views(self, flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(weight (R, in, out), bias (R, 1, out)) views of ``flat`` (R, P), per layer."""
        R = flat.shape[0]
        return [(flat[:, w:b].view(R, n_in, n_out), flat[:, b:b + n_out].view(R, 1, n_out))
                for w, b, n_in, n_out in self.layers]

    @staticmethod
    def forward(layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
                x: torch.Tensor) -> torch.Tensor:
        """x (R, B, in) -> (R, B, out) through the (weight, bias) ``layers`` (:meth:`views`):
        replica k's inputs through replica k's network."""
        for i, (w, b) in enumerate(layers):
            x = torch.baddbmm(b, x, w)
            if i < len(layers) - 1:
                x = x.relu_()  # in place: x is baddbmm's fresh output
        return x

    def forward_numpy(self, flat: np.ndarray, x: np.ndarray) -> np.ndarray:
        """:meth:`forward` in numpy, for acting: one observation per replica costs ~3x less
        through numpy's matmul than through torch's per-call dispatch (measured, R = 1)."""
        R = flat.shape[0]
        for i, (w, b, n_in, n_out) in enumerate(self.layers):
            x = np.matmul(x, flat[:, w:b].reshape(R, n_in, n_out))
            x += flat[:, b:b + n_out].reshape(R, 1, n_out)
            if i < len(self.layers) - 1:
                np.maximum(x, 0.0, out=x)
        return x

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """One replica's parameters (P,), each layer as ``torch.nn.Linear`` initialises it:
        U(-1/sqrt(in), 1/sqrt(in)) for weights and biases."""
        row = torch.empty(self.n_params)
        for w, b, n_in, n_out in self.layers:
            bound = 1.0 / np.sqrt(n_in)
            end = b + n_out
            row[w:end] = (torch.rand(end - w, generator=generator) * 2.0 - 1.0) * bound
        return row

    def state_dict(self, row: torch.Tensor) -> dict[str, torch.Tensor]:
        """One replica's (P,) parameters in ``nn.Sequential(Linear, ReLU, ...)`` layout."""
        out = {}
        for i, (w, b, n_in, n_out) in enumerate(self.layers):
            out[f"{2 * i}.weight"] = row[w:b].view(n_in, n_out).T.contiguous().clone()
            out[f"{2 * i}.bias"] = row[b:b + n_out].clone()
        return out


def dueling_q(out: torch.Tensor) -> torch.Tensor:
    """Q (..., A) from a dueling network's outputs (..., 1 + A) = [V, A(., 1..A)]:
    Q(x, a) = V(x) + A(x, a) - mean_a' A(x, a')."""
    adv = out[..., 1:]
    return adv - adv.mean(dim=-1, keepdim=True) + out[..., :1]


def dueling_q_numpy(out: np.ndarray) -> np.ndarray:
    """:func:`dueling_q` in numpy (acting)."""
    adv = out[..., 1:]
    return adv - adv.mean(axis=-1, keepdims=True) + out[..., :1]


class DuelingHead(torch.nn.Module):
    """The last module of a single-replica dueling network: (B, 1 + A) -> Q (B, A)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dueling_q(x)


def mlp(sizes: Sequence[int], dueling: bool = False) -> torch.nn.Sequential:
    """A plain single-replica MLP with the same layout as :class:`BatchedMLP`; ``dueling``:
    its last layer's ``sizes[-1]`` outputs are [V, advantages], combined by a
    :class:`DuelingHead` into ``sizes[-1] - 1`` action values."""
    mods: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        mods.append(torch.nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            mods.append(torch.nn.ReLU())
    if dueling:
        mods.append(DuelingHead())
    return torch.nn.Sequential(*mods)


def load_q_network(path: str | Path) -> torch.nn.Sequential:
    """Rebuild a saved replica's Q-network (``q_network.pt``) as a single-replica MLP."""
    blob = torch.load(path, weights_only=True)
    dueling = bool(blob.get("dueling", False))
    net = mlp([blob["obs_dim"], *blob["hidden_sizes"], blob["n_actions"] + dueling], dueling)
    net.load_state_dict(blob["state_dict"])
    return net


class DQN:
    """R independent DQN learners (see the module docstring), one per seed of ``seeds``.

    ``obs_dim``/``n_actions``: the network's input size and its number of action values;
    ``observations``: the (S, obs_dim) inputs of a state table (envs with discrete states),
    or None to take the env's observation vectors. ``lr`` and ``gamma``: a number, or (R,)
    values per replica. The other keys are :class:`DQNConfig`'s.
    """

    stat_keys = ("td_loss", "q_mean")

    def __init__(self, obs_dim: int, n_actions: int, seeds: Sequence[int], *,
                 observations: np.ndarray | None = None, lr: float | np.ndarray = 1e-3,
                 gamma: float | np.ndarray = 0.99,
                 hidden: Sequence[int] = (64, 64), buffer_size: int = 10_000,
                 batch_size: int = 64, learning_starts: int = 500, train_freq: int = 1,
                 gradient_steps: int = 1, target_update: int = 100, tau: float = 1.0,
                 double: bool = False, dueling: bool = False, n_step: int = 1,
                 max_grad_norm: float = 10.0, device: str = "cpu") -> None:
        R = len(seeds)
        self.replicas, self.n_actions, self.obs_dim = R, int(n_actions), int(obs_dim)
        self.hidden = [int(h) for h in hidden]
        self.observations = (None if observations is None
                             else np.ascontiguousarray(observations, dtype=np.float32))
        if self.observations is not None and self.observations.shape[1] != self.obs_dim:
            raise ValueError(f"observations of shape {self.observations.shape}: expected "
                             f"(S, {self.obs_dim})")
        # A number for all replicas, or (R,) per-replica values (a fused sweep's).
        self.lr = np.broadcast_to(np.asarray(lr, dtype=np.float64), (R,)).copy()
        self.gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (R,)).copy()
        self.batch_size, self.learning_starts = int(batch_size), int(learning_starts)
        self.train_freq, self.gradient_steps = int(train_freq), int(gradient_steps)
        self.target_update, self.tau = int(target_update), float(tau)
        self.double, self.max_grad_norm = bool(double), float(max_grad_norm)
        self.dueling, self.n_step = bool(dueling), int(n_step)
        if self.n_step < 1 or self.learning_starts < self.n_step - 1:
            raise ValueError(f"n_step={self.n_step}, learning_starts={self.learning_starts}: "
                             "need n_step >= 1 and learning_starts >= n_step - 1")
        self.device = torch.device(device)
        self.net = BatchedMLP([self.obs_dim, *self.hidden, self.n_actions + self.dueling])
        rows = [self.net.init(torch.Generator().manual_seed(derive_seed(s, NETWORK_STREAM)))
                for s in seeds]
        self.params = torch.zeros(R, self.net.row_size)  # (R, P') online network: row_size
        self.params[:, :self.net.n_params] = torch.stack(rows)
        self.params = self.params.to(self.device)
        self.target = self.params.clone()  # (R, P') target network
        self._m = torch.zeros_like(self.params)  # Adam's exp_avg, per replica
        self._v = torch.zeros_like(self.params)  # Adam's exp_avg_sq, per replica
        self._t = np.zeros(R, dtype=np.int64)  # Adam's step count, per replica
        self._opt: tuple | None = None  # (rows, optimiser, layers): see _optimizer
        self._gamma_t = torch.tensor(self.gamma, dtype=torch.float32,
                                     device=self.device)[:, None]
        self.steps = np.zeros(R, dtype=np.int64)  # env steps learned from, per replica
        self._rows = np.arange(R)
        self._rand = ReplicaUniforms(seeds, AGENT_STREAM)
        n = self.n_step
        self.buffer = ReplayBuffer(R, int(buffer_size), (self.obs_dim,),
                                   ReplicaUniforms(seeds, REPLAY_STREAM,
                                                   block=max(4096, int(batch_size))),
                                   horizons=n > 1)
        # n-step: the transitions waiting for their n rewards, and gamma^m (m = 0..n) per replica
        self.window = NStepWindow(R, n, self.obs_dim, self.gamma) if n > 1 else None
        self._discounts = torch.tensor(self.gamma[:, None] ** np.arange(n + 1),
                                       dtype=torch.float32, device=self.device)

    # ---- acting ----
    def features(self, state: np.ndarray) -> np.ndarray:
        """(R, D) network inputs: the state table's rows, or the env's observation vectors."""
        if self.observations is not None:
            return self.observations[state]
        return np.asarray(state, dtype=np.float32).reshape(self.replicas, self.obs_dim)

    def act(self, state: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
        """Epsilon-greedy actions (R,) on the online network (greedy ties: lowest index)."""
        u = self._rand.take(2)
        x = self.features(state)[:, None, :]
        if self.device.type == "cpu":
            q = self.net.forward_numpy(self.params.numpy(), x)
            if self.dueling:
                q = dueling_q_numpy(q)
        else:
            with torch.no_grad():
                q = self._forward(self.params, torch.from_numpy(x).to(self.device)).cpu().numpy()
        greedy = q[:, 0].argmax(axis=1)
        random = (u[:, 1] * self.n_actions).astype(np.int64)
        return np.where(u[:, 0] < epsilon, random, greedy)

    def _forward(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Q (n, B, A) of the networks of parameter rows ``flat`` (n, P') on inputs ``x``
        (n, B, D)."""
        return self._q(self.net.views(flat), x)

    def _q(self, layers: Sequence[tuple[torch.Tensor, torch.Tensor]],
           x: torch.Tensor) -> torch.Tensor:
        """Q (n, B, A) of the networks of (weight, bias) ``layers`` on inputs ``x`` (n, B, D)."""
        out = self.net.forward(layers, x)
        return dueling_q(out) if self.dueling else out

    @torch.no_grad()
    def greedy_actions(self, replica: int, obs: np.ndarray) -> np.ndarray:
        """(N,) greedy actions of replica ``replica`` for observation vectors ``obs`` (N, D)."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32).reshape(1, -1, self.obs_dim))
        q = self._forward(self.params[replica:replica + 1], x.to(self.device))
        return q[0].argmax(dim=1).cpu().numpy()

    @torch.no_grad()
    def q_values(self) -> np.ndarray:
        """(R, S, A) Q of every state of the env's table (envs with a model)."""
        if self.observations is None:
            raise ValueError("DQN.q_values: this env has no state table (observations=None); "
                             "evaluate it with greedy rollouts instead")
        x = torch.from_numpy(self.observations).to(self.device)
        q = self._forward(self.params, x.expand(self.replicas, *x.shape))
        return q.double().cpu().numpy()

    # ---- learning ----
    def learn(self, tr: Transition) -> Updates:
        R = self.replicas
        active = np.asarray(tr.active, dtype=bool)
        if self.window is None:
            self.buffer.add(self.features(tr.state), tr.action, tr.reward,
                            self.features(tr.next_state), tr.terminated, active)
        else:
            for part in self.window.push(self.features(tr.state), tr.action, tr.reward,
                                         self.features(tr.next_state), tr.terminated,
                                         tr.done | tr.terminated, active):
                self.buffer.add(part.obs, part.action, part.reward, part.next_obs,
                                part.terminated, part.emit, part.horizon)
        self.steps += active
        due = active & (self.steps > self.learning_starts) & (self.steps % self.train_freq == 0)
        upd = Updates(np.zeros(R), np.zeros(R))
        if due.any():
            upd = self._train(due)
        sync = active & (self.steps % self.target_update == 0)
        if sync.any():
            self._update_target(torch.from_numpy(sync).to(self.device))
        return upd

    def _update(self, online: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]],
                target: list[tuple[torch.Tensor, torch.Tensor]], opt: torch.optim.Adam,
                gamma: torch.Tensor, obs: torch.Tensor, action: torch.Tensor,
                reward: torch.Tensor, next_obs: torch.Tensor, cont: torch.Tensor
                ) -> torch.Tensor:
        """One DQN gradient step of n replicas, each on its own minibatch of B transitions.

        ``online()``: the n online networks' (weight, bias) layers, ``opt`` their optimiser
        (:meth:`_optimizer`); ``target``: the target networks' layers; ``gamma`` (n, 1), or
        (n, B) for n-step transitions (gamma^m, m the transition's horizon);
        ``obs``/``next_obs`` (n, B, D), ``action`` (n, B, 1), ``reward`` and ``cont``
        (1 - terminated) (n, B). The losses are summed over replicas, so replica k's gradient
        is its own loss's; each replica's gradient is clipped to its own norm. Returns (3, n):
        the Huber loss, the mean of Q(s, a) before the step, and the sum of |ΔQ(s, a)|."""
        with torch.no_grad():
            if self.double:
                a_next = self._q(online(), next_obs).argmax(dim=2, keepdim=True)
                v_next = self._q(target, next_obs).gather(2, a_next)[..., 0]
            else:
                v_next = self._q(target, next_obs).amax(dim=2)
            y = reward + gamma * cont * v_next
        q = self._q(online(), obs).gather(2, action)[..., 0]
        loss = F.smooth_l1_loss(q, y, reduction="none").mean(dim=1)
        opt.zero_grad(set_to_none=False)  # zeroes the layers' gradients too: views of it
        loss.sum().backward()
        clip_grad_norm_per_replica_(opt, self.max_grad_norm)
        opt.step()
        with torch.no_grad():
            q_after = self._q(online(), obs).gather(2, action)[..., 0]
            return torch.stack([loss, q.mean(dim=1), (q_after - q).abs().sum(dim=1)])

    def _optimizer(self, rows: np.ndarray) -> tuple[
            Callable[[], list[tuple[torch.Tensor, torch.Tensor]]], torch.optim.Adam]:
        """``torch.optim.Adam`` over the online networks of replicas ``rows``, and a function
        giving their (weight, bias) layers, (len(rows), ...) each, for the forward pass.

        Adam is elementwise, so one ``torch.optim.Adam`` over the rows of several replicas is
        each replica's own Adam as long as they share lr (one per param group) and step count
        (one per parameter: it sets the bias correction). Its param groups are therefore the
        maximal runs of consecutive ``rows`` sharing both (almost always one: all replicas),
        each holding one parameter, the run's (n, P') rows of ``params``, whose state is the
        same rows of ``_m`` / ``_v`` (updated in place) and the run's count of ``_t``.
        Replicas outside ``rows`` (finished ones) are in no group: they never change, and
        their counts wait. The layers autograd differentiates are views of those rows, with
        gradients that are views of the parameter's (n, P') gradient, so the per-replica
        clip is one norm per row and Adam one fused pass per run. Rebuilt only when the rows
        change (the same rows keep the same runs: their counts advance together)."""
        if self._opt is None or not np.array_equal(self._opt[0], rows):
            breaks = ((np.diff(rows) != 1) | (np.diff(self.lr[rows]) != 0)
                      | (np.diff(self._t[rows]) != 0))
            starts = np.r_[0, np.flatnonzero(breaks) + 1]
            runs = [(int(rows[i]), int(rows[j - 1]) + 1)
                    for i, j in zip(starts, np.r_[starts[1:], len(rows)], strict=True)]
            groups, state, layers = [], {}, []
            for a, b in runs:
                flat = self.params[a:b]
                flat.grad = torch.zeros_like(flat)
                leaves = []
                for (w, bias), (gw, gb) in zip(self.net.views(flat), self.net.views(flat.grad),
                                               strict=True):
                    w.requires_grad_(), bias.requires_grad_()
                    w.grad, bias.grad = gw, gb  # backward accumulates into the flat gradient
                    leaves.append((w, bias))
                layers.append(leaves)
                groups.append({"params": [flat], "lr": float(self.lr[a])})
                state[flat] = {"step": torch.tensor(float(self._t[a]), device=self.device),
                               "exp_avg": self._m[a:b], "exp_avg_sq": self._v[a:b]}
            opt = torch.optim.Adam(groups, fused=True)  # one pass per run
            opt.state.update(state)
            self._opt = (rows.copy(), opt, layers)
        _, opt, layers = self._opt
        if len(layers) == 1:
            return lambda: layers[0], opt
        return lambda: [(torch.cat([run[i][0] for run in layers]),
                         torch.cat([run[i][1] for run in layers]))
                        for i in range(len(layers[0]))], opt

    def _train(self, due: np.ndarray) -> Updates:
        """``gradient_steps`` steps (:meth:`_update`) for the replicas in ``due``; sums of the
        metrics.

        Only the rows in ``due`` are computed: replicas that finished (or wait) cost nothing,
        which matters when replicas run for very different step counts (a fused sweep's
        epsilon decays); each row's arithmetic is the same either way. No env step and no
        target refresh happen inside a burst, so its minibatches are drawn many steps at once
        (the same numbers as drawing them one by one: a replica's stream is sequential and
        its buffer does not change; up to ``BURST_VALUES`` observation values at a time)."""
        R, G, B, D = self.replicas, self.gradient_steps, self.batch_size, self.obs_dim
        rows = np.arange(R) if due.all() else np.flatnonzero(due)
        subset = len(rows) < R
        n, dev = len(rows), self.device
        idx = torch.from_numpy(rows).to(dev)
        per = max(1, min(G, BURST_VALUES // (n * B * max(D, 1))))  # steps drawn at once
        gamma = self._gamma_t[idx] if subset else self._gamma_t  # (n, 1)
        target = self.net.views(self.target[idx] if subset else self.target)
        online, opt = self._optimizer(rows)
        stats = torch.empty(G, 3, n, device=dev)  # loss, mean Q(s, a), sum |ΔQ(s, a)|
        for g0 in range(0, G, per):
            k = min(per, G - g0)
            s = self.buffer.sample(k * B, used=due, only_used=subset)
            obs = torch.from_numpy(s.obs).to(dev).view(n, k, B, D)
            next_obs = torch.from_numpy(s.next_obs).to(dev).view(n, k, B, D)
            action = torch.from_numpy(s.action).to(dev).view(n, k, B, 1)
            reward = torch.from_numpy(s.reward).to(dev).view(n, k, B)
            cont = (~torch.from_numpy(s.terminated)).to(dev).float().view(n, k, B)
            discount = None  # n-step: gamma^m of each transition's horizon m
            if s.horizon is not None:
                m = torch.from_numpy(s.horizon).to(dev).view(n, k * B)
                table = self._discounts[idx] if subset else self._discounts
                discount = table.gather(1, m).view(n, k, B)
            with warnings.catch_warnings():  # accumulating into the flat gradient's views
                warnings.filterwarnings("ignore", LAYOUT_WARNING, UserWarning)
                for j in range(k):
                    disc = gamma if discount is None else discount[:, j]
                    stats[g0 + j] = self._update(online, target, opt, disc, obs[:, j],
                                                 action[:, j], reward[:, j], next_obs[:, j],
                                                 cont[:, j])
        self._t[rows] += G
        sums = stats.double().sum(dim=0).cpu().numpy()  # (3, n)
        out = np.zeros((3, R))
        out[:, rows] = sums
        count = np.zeros(R)
        count[rows] = G
        return Updates(out[2], count * B, {"td_loss": out[0], "q_mean": out[1]}, count)

    @torch.no_grad()
    def _update_target(self, mask: torch.Tensor) -> None:
        if self.tau >= 1.0:
            new = self.params
        else:
            new = self.tau * self.params + (1.0 - self.tau) * self.target
        self.target = torch.where(mask[:, None], new, self.target)

    # ---- checkpoints ----
    def state_dict(self) -> dict:
        """Online and target networks, Adam's state per replica (``adam``: torch.optim.Adam's
        ``exp_avg``, ``exp_avg_sq`` and ``step``, (R, P), (R, P) and (R,)), env-step counters,
        the acting stream, the replay buffer and (n-step) the transitions waiting for their
        rewards; tensors as numpy arrays."""
        a = lambda x: x[..., :self.net.n_params].detach().cpu().numpy().copy()  # noqa: E731
        out = {"params": a(self.params), "target": a(self.target),
               "adam": {"exp_avg": a(self._m), "exp_avg_sq": a(self._v),
                        "step": self._t.copy()},
               "steps": self.steps.copy(), "rand": self._rand.state(),
               "buffer": self.buffer.state_dict()}
        if self.window is not None:
            out["nstep"] = self.window.state_dict()
        return out

    @torch.no_grad()
    def load_state_dict(self, d: dict) -> None:
        """Continue from :meth:`state_dict` (an agent built with the same config)."""
        for name, x in (("params", self.params), ("target", self.target),
                        ("adam.exp_avg", self._m), ("adam.exp_avg_sq", self._v)):
            node = d["adam"][name[5:]] if name.startswith("adam.") else d[name]
            x = x[:, :self.net.n_params]
            x.copy_(torch.from_numpy(load_array(f"agent.{name}", node, x.cpu().numpy())))
        self._t = load_array("agent.adam.step", d["adam"]["step"], self._t, 0)
        self._opt = None  # rebuilt with the loaded step counts
        self.steps = load_array("agent.steps", d["steps"], self.steps, 0)
        self._rand.load_state(d["rand"])
        self.buffer.load_state_dict(d["buffer"], self.n_actions, self.n_step)
        if self.window is not None:
            if "nstep" not in d:
                raise ValueError(f"agent.nstep: missing; the checkpoint is not of an agent "
                                 f"with n_step={self.n_step}")
            self.window.load_state_dict(d["nstep"], self.n_actions)

    # ---- artifacts ----
    def save(self, replica: int, directory: Path) -> None:
        """Write replica ``replica``'s online network as ``q_network.pt`` (see module docstring)."""
        torch.save(self.weights(replica), Path(directory) / "q_network.pt")

    def weights(self, replica: int) -> dict:
        """Replica ``replica``'s network as plain tensors and sizes (what ``save`` writes)."""
        return {"state_dict": self.net.state_dict(self.params[replica].detach().cpu()),
                "hidden_sizes": list(self.hidden), "obs_dim": self.obs_dim,
                "n_actions": self.n_actions, "dueling": self.dueling}


def clip_grad_norm_per_replica_(opt: torch.optim.Optimizer, max_norm: float) -> None:
    """``torch.nn.utils.clip_grad_norm_`` for each replica: every parameter of ``opt`` is
    (n, P) rows of n replicas; row k of its gradient is scaled by
    ``min(1, max_norm / (||row k|| + 1e-6))``."""
    for group in opt.param_groups:
        for p in group["params"]:
            norm = torch.linalg.vector_norm(p.grad, dim=1, keepdim=True)
            p.grad.mul_((max_norm / (norm + 1e-6)).clamp_(max=1.0))


@dataclass
class DQNConfig(AgentConfig):
    """Deep Q-network: an MLP over the flattened observation, replay, target network."""

    name: str = "dqn"
    lr: float = 1e-3  # Adam learning rate, > 0
    hidden: list[int] = field(default_factory=lambda: [64, 64])  # hidden layer widths ([]: linear)
    buffer_size: int = 10_000  # replay capacity per replica, in transitions, >= 1
    batch_size: int = 64  # minibatch per gradient step, >= 1
    learning_starts: int = 500  # env steps before the first gradient step, >= 0
    train_freq: int = 1  # take gradient steps every this many env steps, >= 1
    gradient_steps: int = 1  # gradient steps each time, >= 1
    target_update: int = 100  # refresh the target network every this many env steps, >= 1
    tau: float = 1.0  # target refresh: 1 = hard copy, < 1 = Polyak weight of the online net
    double: bool = False  # double DQN: the online net picks the bootstrap action
    dueling: bool = False  # dueling head: Q = V + A - mean(A) (one extra output, V)
    n_step: int = 1  # n-step returns: sum n rewards, then bootstrap with gamma^n; >= 1
    max_grad_norm: float = 10.0  # clip each replica's gradient to this L2 norm, > 0
    threads: int = 1  # torch CPU threads (0: torch's default); 1 is fastest for small nets
    device: str = "cpu"  # where the networks, minibatches and optimiser live: cpu | cuda

    def check(self) -> None:
        super().check()
        for i, h in enumerate(self.hidden):
            check_range(f"agent.hidden[{i}]", h, 1)
        for key in ("buffer_size", "batch_size", "train_freq", "gradient_steps",
                    "target_update"):
            check_range(f"agent.{key}", getattr(self, key), 1)
        check_range("agent.learning_starts", self.learning_starts, 0)
        if isinstance(self.n_step, bool) or not isinstance(self.n_step, int):
            fail("agent.n_step", self.n_step, "must be an integer >= 1")
        check_range("agent.n_step", self.n_step, 1)
        if self.learning_starts < self.n_step - 1:
            fail("agent.learning_starts", self.learning_starts,
                 f"must be >= agent.n_step - 1 = {self.n_step - 1} (the first "
                 f"{self.n_step}-step transition is stored after {self.n_step} env steps)")
        check_range("agent.tau", self.tau, 0, 1, lo_open=True)
        check_range("agent.max_grad_norm", self.max_grad_norm, 0, lo_open=True)
        check_range("agent.threads", self.threads, 0)
        check_in("agent.device", self.device, DEVICES)
        if self.device == "cuda" and not torch.cuda.is_available():
            fail("agent.device", self.device, "no CUDA device here "
                 "(torch.cuda.is_available() is False); use agent.device=cpu")


def build(cfg: DQNConfig, env, seeds: Sequence[int]) -> DQN:
    """DQN over ``env.observations[state]`` (envs with a state table) or the env's float
    observation vectors (``env.obs_dim``)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # per job: launcher workers are reused
    obs = env.observations
    obs_dim = obs.shape[1] if obs is not None else env.obs_dim
    return DQN(obs_dim, env.n_actions, seeds, observations=obs, lr=cfg.lr, gamma=cfg.gamma,
               hidden=list(cfg.hidden), buffer_size=cfg.buffer_size, batch_size=cfg.batch_size,
               learning_starts=cfg.learning_starts, train_freq=cfg.train_freq,
               gradient_steps=cfg.gradient_steps, target_update=cfg.target_update, tau=cfg.tau,
               double=cfg.double, dueling=cfg.dueling, n_step=cfg.n_step,
               max_grad_norm=cfg.max_grad_norm, device=cfg.device)


register(AgentSpec("dqn", DQNConfig, build))
