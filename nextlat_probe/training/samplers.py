"""Every world's sampler in torch, on the training device: batches made where the model is.

The numpy samplers of ``worlds`` (``World.sample``) are the definition of each world's
distribution, and the test oracle; the samplers here draw from exactly the same
distribution (``tests/test_samplers.py`` compares per-position token frequencies and the
exact loss floor) with torch's generator on the device, vectorised over sequences, so a
training step on a GPU never waits for the host to sample:

- HMMs (Mess3, RRXOR, Z1R, any ``HMM``): the joint (token, next state) of each step by
  inverse CDF through the cumulative transition table ``cumsum_{x, j} T[x, i, j]``, as the
  reference does;
- A5, tagging and interleaved: uniform inputs, running products through the
  multiplication table;
- path-star: uniform labels without replacement and a uniform edge order (argsort of
  uniforms), a uniform goal arm;
- taxi: random walks through the walk's neighbour table (uniform among a node's walkable
  turns); shortest paths through the next-hop table (the first turn, in ``DIRECTIONS``
  order, on a shortest path); noisy ones add, with probability ``noise``, a turn uniform
  among those after which the destination stays within ``max_len``; held-out pairs through
  each origin's table of allowed destinations (uniform among them, as the reference's
  redraws are).

The same draws are not the same numbers: a device sampler and ``World.sample`` with one
seed give different sequences, and so do a CPU and a CUDA generator. ``output_targets`` and
``position_mask`` are the worlds' ``World.output_targets`` / ``position_mask`` on tensors
(checked against them), so a batch is completed on the device too. Both return None for a
world they do not know (a user's own ``World`` subclass): the trainer then samples on the
host, with the world's own code.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..worlds.a5 import A5
from ..worlds.base import World
from ..worlds.hmm import HMM
from ..worlds.pathstar import PathStar
from ..worlds.taxi import Taxi

#: rows of the next-hop table built per block (bounds the [block, 8, N] temporary)
_BLOCK = 256


def _uniform(n: int, gen: torch.Generator, device: torch.device, *shape: int) -> Tensor:
    """Float64 uniforms on [0, 1): inverse-CDF draws as fine as the reference's."""
    return torch.rand((n, *shape), generator=gen, device=device, dtype=torch.float64)


def _own(world: World, base: type, names: tuple[str, ...]) -> bool:
    """Whether ``world`` uses ``base``'s own methods ``names`` (a subclass that overrides one
    has other targets or another distribution: not ours to imitate)."""
    return all(getattr(type(world), n) is getattr(base, n) for n in names)


class DeviceSampler:
    """``draw(n, generator)``: int64 ``[n, length]`` tokens on ``device``."""

    def __init__(self, world: World, length: int, device: torch.device) -> None:
        self.world, self.length, self.device = world, int(length), torch.device(device)

    def draw(self, n: int, gen: torch.Generator) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _tensor(self, a, dtype=torch.int64) -> Tensor:
        return torch.as_tensor(np.array(a, order="C"), dtype=dtype, device=self.device)  # a copy: world arrays are read-only


class HMMSampler(DeviceSampler):
    """``HMM.sample``: hidden start ~ ``initial``, then per position the joint (token, next
    state) by inverse CDF over the flattened ``[x, j]`` row of the current state."""

    def __init__(self, world: HMM, length: int, device: torch.device) -> None:
        super().__init__(world, length, device)
        V, S, _ = world.T.shape
        cum = np.cumsum(world._Tcat, axis=1)  # the reference's table, bit for bit
        cum /= cum[:, -1:]
        init = np.cumsum(world.initial)
        init /= init[-1]
        self.V, self.S = V, S
        self._cum = self._tensor(cum, torch.float64)
        self._init = self._tensor(init, torch.float64)

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        V, S = self.V, self.S
        state = (_uniform(n, gen, self.device)[:, None] >= self._init).sum(1).clamp_max(S - 1)
        tokens = torch.empty((n, self.length), dtype=torch.int64, device=self.device)
        for t in range(self.length):
            k = (_uniform(n, gen, self.device)[:, None] >= self._cum[state]).sum(1).clamp_max(V * S - 1)
            tokens[:, t] = torch.div(k, S, rounding_mode="floor")
            state = k % S
        return tokens


class A5Sampler(DeviceSampler):
    """``A5.sample``: uniform inputs; the interleaved form puts each running product after
    its input."""

    def __init__(self, world: A5, length: int, device: torch.device) -> None:
        super().__init__(world, length, device)
        self._mul = self._tensor(world.mul)

    def running_products(self, inputs: Tensor) -> Tensor:
        """``A5.running_products`` on tensors: s_t = g_1 ... g_t."""
        out = torch.empty_like(inputs)
        s = torch.full((inputs.shape[0],), self.world.identity, dtype=torch.int64, device=inputs.device)
        for t in range(inputs.shape[1]):
            s = self._mul[s, inputs[:, t]]
            out[:, t] = s
        return out

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        L = self.length
        if self.world.tagging:
            return torch.randint(0, 60, (n, L), generator=gen, device=self.device)
        inputs = torch.randint(0, 60, (n, (L + 1) // 2), generator=gen, device=self.device)
        prods = self.running_products(inputs)
        tokens = torch.empty((n, L), dtype=torch.int64, device=self.device)
        tokens[:, 0::2] = inputs
        tokens[:, 1::2] = prods[:, : L // 2]
        return tokens


class PathStarSampler(DeviceSampler):
    """``PathStar.sample``: the same draws, laid out by the world itself (``PathStar.lay_out``)."""

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        w, dev = self.world, self.device
        d, arm, E, N = w.degree, w.length, w.n_edges, w.n_nodes
        rows = torch.arange(n, device=dev)
        labels = _uniform(n, gen, dev, N).argsort(dim=1)[:, : E + 1]  # uniform without replacement
        centre, arm_nodes = labels[:, 0], labels[:, 1:].reshape(n, d, arm)
        parents = torch.cat([centre[:, None, None].expand(n, d, 1), arm_nodes[:, :, :-1]], dim=2)
        edges = torch.stack([parents.reshape(n, E), arm_nodes.reshape(n, E)], dim=-1)  # [n, E, 2]
        goal = torch.randint(0, d, (n,), generator=gen, device=dev)
        order = _uniform(n, gen, dev, E).argsort(dim=1)  # prompt slot k holds generated edge order[k]
        shuffled = edges[rows[:, None], order]
        tokens = torch.empty((n, w.default_length), dtype=torch.int64, device=dev)
        return w.lay_out(tokens, shuffled, centre, arm_nodes[rows, goal])


def next_hop_table(world: Taxi) -> np.ndarray:
    """int8 ``[N, N]``: ``Taxi._shortest_dir`` for every (node, destination) pair: the first
    direction (``DIRECTIONS`` order) on a shortest walkable path, -1 where there is none."""
    succ, dist = world.walk_succ, world.distances
    N = succ.shape[0]
    out = np.full((N, N), -1, dtype=np.int8)
    for lo in range(0, N, _BLOCK):
        nodes = np.arange(lo, min(N, lo + _BLOCK))
        nb = succ[nodes]  # [b, 8]
        on = (nb[:, :, None] >= 0) & (dist[np.clip(nb, 0, None)] == dist[nodes][:, None, :] - 1)  # [b, 8, N]
        out[nodes] = np.where(on.any(axis=1), np.argmax(on, axis=1), -1)
    return out


class TaxiSampler(DeviceSampler):
    """``Taxi.sample`` (tokens only): random, shortest and noisy walks, visible or hidden
    origin, held-out pairs respected. Tables on the device: the walkable successors
    ``[N, 8]``, each node's walkable turns first (``[N, 8]``), and for shortest / noisy walks
    the next-hop table (int8 ``[N, N]``), the walk distances clipped at ``max_len + 1``
    (noisy only: int16 ``[N, N]``) and, with held-out pairs, each origin's allowed
    destinations."""

    def __init__(self, world: Taxi, length: int, device: torch.device) -> None:
        super().__init__(world, length, device)
        if self.length < world.default_length:
            from ..errors import WorldError

            raise WorldError(f"taxi: length {self.length} cannot hold trips of up to {world.max_len} turns; "
                             f"need length >= {world.default_length}")
        self._succ = self._tensor(world.walk_succ)
        self._deg = self._tensor(world.walk_deg)
        self._nodes = self._tensor(world.walk_nodes)
        # legal directions of each node first, in DIRECTIONS order (the reference's ``order``)
        self._order = self._tensor(np.argsort(world.walk_succ < 0, axis=1, kind="stable"))
        if world.walk != "random":
            self._hop = self._tensor(next_hop_table(world), torch.int8)
            if world.noise > 0:
                clipped = np.minimum(world.distances, world.max_len + 1).astype(np.int16)
                self._dist = self._tensor(clipped, torch.int16)
            if world.holdout > 0:
                allowed = world._allowed_dest(world.walk_nodes)  # [S, N]
                counts = allowed.sum(axis=1)
                table = np.argsort(~allowed, axis=1, kind="stable")[:, : int(counts.max())]
                small = torch.int16 if world.map.n_nodes < 2 ** 15 else torch.int32
                self._allowed = self._tensor(table, small)
                self._counts = self._tensor(counts)

    def draw(self, n: int, gen: torch.Generator) -> Tensor:
        w = self.world
        if w.walk == "random":
            origin, dirs, L, dest = self._random(n, gen)
        else:
            origin, dirs, L, dest = self._shortest(n, gen)
        dev = self.device
        prompt = 0 if w.origin == "hidden" else 2
        k = torch.arange(self.length, device=dev)[None, :] - prompt  # the turn at each position
        turn = (k >= 0) & (k < L[:, None])
        at = k.clamp(0, max(dirs.shape[1] - 1, 0)).expand(n, -1)
        tokens = torch.where(turn, w.dir0 + dirs.gather(1, at), w.pad_id)
        tokens = torch.where(k == L[:, None], w.end_id, tokens)
        if prompt:
            tokens[:, 0], tokens[:, 1] = origin, dest
        return tokens

    def _random(self, n: int, gen: torch.Generator):
        w, dev, K = self.world, self.device, self.world.max_len
        L = torch.randint(w.min_len, K + 1, (n,), generator=gen, device=dev)
        cur = self._nodes[torch.randint(0, self._nodes.numel(), (n,), generator=gen, device=dev)]
        origin = cur
        dirs = torch.zeros((n, K), dtype=torch.int64, device=dev)
        for step in range(K):
            deg = self._deg[cur]
            pick = torch.minimum((_uniform(n, gen, dev) * deg).long(), deg - 1)
            d = self._order[cur, pick]
            dirs[:, step] = d
            cur = torch.where(step < L, self._succ[cur, d], cur)
        return origin, dirs, L, cur

    def _shortest(self, n: int, gen: torch.Generator):
        w, dev, K = self.world, self.device, self.world.max_len
        S = self._nodes.numel()
        if S < 2:
            from ..errors import WorldError

            raise WorldError("taxi: shortest-path trips need at least two connected intersections")
        a = torch.randint(0, S, (n,), generator=gen, device=dev)
        if w.holdout > 0:  # uniform among the origin's allowed destinations
            count = self._counts[a]
            pick = torch.minimum((_uniform(n, gen, dev) * count).long(), count - 1)
            dest = self._allowed[a, pick].long()
        else:  # uniform among the other intersections
            b = torch.randint(0, S - 1, (n,), generator=gen, device=dev)
            dest = self._nodes[b + (b >= a)]
        cur = origin = self._nodes[a]
        dirs = torch.zeros((n, K), dtype=torch.int64, device=dev)
        L = torch.zeros(n, dtype=torch.int64, device=dev)
        for step in range(K):
            active = cur != dest
            d = self._hop[cur, dest].long()
            if w.noise > 0:
                nb = self._succ[cur]
                left = self._dist[nb.clamp_min(0), dest[:, None]].long()
                feasible = (nb >= 0) & (step + 1 + left <= K)
                u = _uniform(n, gen, dev) * feasible.sum(1)
                rand_d = (feasible.cumsum(1) > u[:, None]).long().argmax(1)
                d = torch.where(_uniform(n, gen, dev) < w.noise, rand_d, d)
            d = torch.where(active, d, 0)
            dirs[:, step] = d
            cur = torch.where(active, self._succ[cur, d], cur)
            L = L + active
        return origin, dirs, L, dest


#: the worlds with a device sampler, each with the methods a subclass must not override
_SAMPLERS = ((Taxi, "TaxiSampler"), (HMM, "HMMSampler"), (A5, "A5Sampler"), (PathStar, "PathStarSampler"))
_METHODS = ("sample", "target_mask", "position_mask", "output_targets")


def supports(world: World) -> bool:
    """Whether ``world`` has a device sampler (``sampler_for``), without building one."""
    return any(isinstance(world, cls) and _own(world, cls, _METHODS) for cls, _ in _SAMPLERS) and \
        unsupported(world) is None


def unsupported(world: World) -> str | None:
    """What in a world of a known class has no device sampler (None: everything has one).
    Random walks conditioned on a held-out pair split are drawn by the reference sampler's
    backward recursion (``Taxi._sample_random_split``), which stays on the host."""
    if isinstance(world, Taxi) and world.walk == "random" and world.holdout > 0:
        return "taxi random walks with held-out pairs (holdout > 0)"
    return None


def sampler_for(world: World, length: int, device: torch.device | str) -> DeviceSampler | None:
    """The device sampler of ``world`` for sequences of ``length`` tokens, or None for a
    world this module does not know (a subclass that changed its sampler or targets)."""
    if unsupported(world) is not None:
        return None
    for cls, name in _SAMPLERS:
        if isinstance(world, cls) and _own(world, cls, _METHODS):
            if isinstance(world, PathStar) and int(length) != world.default_length:
                from ..errors import WorldError

                raise WorldError(f"pathstar: sequences have {world.default_length} tokens "
                                 f"(degree={world.degree}, length={world.length}), got length={length}")
            return globals()[name](world, length, torch.device(device))
    return None


def _target_mask(world: World, tokens: Tensor) -> Tensor | None:
    """``world.target_mask`` on a tensor (None for a world this module does not know)."""
    n, L = tokens.shape
    cols = torch.arange(L, device=tokens.device)[None, :]
    if isinstance(world, Taxi) and _own(world, Taxi, ("target_mask",)):
        prompt = 1 if world.origin == "hidden" else 2
        return (tokens >= world.dir0) & (tokens <= world.end_id) & (cols >= prompt)
    if isinstance(world, A5) and _own(world, A5, ("target_mask",)):
        return ((cols % 2 == 1) & (not world.tagging)).expand(n, L)  # tagging: no input is a target
    if isinstance(world, PathStar) and _own(world, PathStar, ("target_mask",)):
        return ((cols >= world.prompt_length) & (cols < world.default_length)).expand(n, L)
    if isinstance(world, HMM) and _own(world, World, ("target_mask",)):
        return (cols > 0).expand(n, L)
    return None


def output_targets(world: World, tokens: Tensor) -> tuple[Tensor, Tensor] | None:
    """``World.output_targets`` on a tensor: (targets int64, scored bool), ``[n, L]`` on the
    tokens' device; None for a world this module does not know."""
    if isinstance(world, A5):
        if not _own(world, A5, ("output_targets",)):
            return None
        if world.tagging:  # the output at t is scored against the running product s_t
            prods = A5Sampler(world, tokens.shape[1], tokens.device).running_products(tokens)
            return prods, torch.ones_like(tokens, dtype=torch.bool)
    elif not _own(world, World, ("output_targets",)):
        return None
    mask = _target_mask(world, tokens)
    if mask is None:
        return None
    targets = torch.zeros_like(tokens)
    scored = torch.zeros_like(tokens, dtype=torch.bool)
    targets[:, :-1] = tokens[:, 1:]
    scored[:, :-1] = mask[:, 1:]
    return targets, scored


def position_mask(world: World, tokens: Tensor) -> Tensor | None:
    """``World.position_mask`` on a tensor (False on taxi padding, else True); None for a
    world this module does not know."""
    if isinstance(world, Taxi) and _own(world, Taxi, ("position_mask",)):
        return tokens != world.pad_id
    if isinstance(world, (HMM, A5, PathStar)) and _own(world, World, ("position_mask",)):
        return torch.ones_like(tokens, dtype=torch.bool)
    return None


__all__ = ["DeviceSampler", "HMMSampler", "A5Sampler", "PathStarSampler", "TaxiSampler", "next_hop_table",
           "supports", "unsupported", "sampler_for", "output_targets", "position_mask"]
