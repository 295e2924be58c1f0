"""Where a training run's batches come from: the batch of every step, as a function of the
run's seed and the step alone, so a resumed run sees exactly the batches the uninterrupted
run would have seen and nothing about the stream needs saving.

Three sources (``TrainConfig.sampler`` / ``TrainConfig.data``; the checkpoint records which
one a run used in ``train_config.sampler_used``):

- ``device`` (the default for new runs): the world's torch sampler (``training.samplers``)
  on the training device. Steps are drawn ``chunk`` at a time: the generator is seeded with
  ``(seed, chunk index)`` and draws ``chunk x batch`` sequences in one call (a taxi draw is a
  loop over turns: one call per chunk instead of one per step), and step ``s`` takes its
  rows of chunk ``(s - 1) // chunk``. The chunk is recorded (``sampler_chunk``) and a resume
  uses the recorded one. CPU and CUDA generators draw different numbers from one seed, so
  a run resumed on the other kind of device continues with other (equally distributed)
  batches; the trainer says so.
- ``host``: the world's numpy sampler, the batch of step ``s`` being
  ``world.sample(batch, seq_len, seed=(seed, 0, s))``: every run before device sampling
  existed (a checkpoint without ``sampler_used``) resumes with it.
- ``data``: rows of a token dataset (``training.dataset``), in a random order per epoch:
  the global row ``i = (s - 1) x batch + j`` of step ``s`` is row ``perm_e[i mod n]`` of
  epoch ``e = i // n``, ``perm_e`` a permutation drawn from ``(seed, 3, e)``. Rows are read
  from the memory map, pinned and copied asynchronously on CUDA.

``batch`` completes tokens into a ``models.objective.Batch`` (targets, scored, valid) on the
device: with the worlds' target rules in torch where ``training.samplers`` has them, else on
the host with the world's own. In a multi-process run every rank draws the same global batch
and keeps its own rows, each loss divided by the global batch's counts.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import UsageError
from ..models.objective import Batch
from ..worlds import World
from . import samplers
from .dataset import TokenDataset

SOURCES = ("device", "host", "data")
#: a device chunk holds at most this many tokens (int64: 8 MiB) and at most MAX_CHUNK steps
CHUNK_TOKENS = 1 << 20
MAX_CHUNK = 64


def default_chunk(batch_size: int, seq_len: int) -> int:
    """Steps drawn per device-sampler call (``CHUNK_TOKENS``, ``MAX_CHUNK``)."""
    return max(1, min(MAX_CHUNK, CHUNK_TOKENS // max(1, batch_size * seq_len)))


def stream_seed(*key: int) -> int:
    """A 63-bit generator seed from integers (numpy's SeedSequence hashing): independent
    streams for distinct keys, the same on every machine."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The host sampler's generator for the batch of ``step``."""
    return np.random.default_rng([int(seed), 0, int(step)])


def val_rng(seed: int) -> np.random.Generator:
    """The validation set's generator (never one of the training stream's)."""
    return np.random.default_rng([int(seed), 1])


def to_device(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host data on ``device`` (on CUDA through pinned memory, without blocking)."""
    t = torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a
    if device.type == "cuda" and t.device.type == "cpu":
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def host_batch(world: World, tokens: np.ndarray, device: torch.device) -> Batch:
    """Tokens and the world's per-position targets (``World.output_targets``), computed on
    the host with the world's own code, as tensors on ``device``."""
    targets, scored = world.output_targets(tokens)
    arrays = (np.asarray(tokens, dtype=np.int64), targets, scored, world.position_mask(tokens))
    return Batch(*(to_device(a, device) for a in arrays))


def device_batch(world: World, tokens: torch.Tensor) -> Batch:
    """``host_batch`` for tokens already on the device: the targets are computed there
    (``training.samplers``), or on the host for a world it does not know."""
    got = samplers.output_targets(world, tokens)
    valid = samplers.position_mask(world, tokens)
    if got is None or valid is None:
        return host_batch(world, tokens.cpu().numpy(), tokens.device)
    return Batch(tokens, got[0], got[1], valid)


class HostBatches:
    """``host``: the world's numpy sampler, one call per step (``batch_rng``)."""

    kind = "host"
    prefetchable = True  # a background thread can draw ahead (``BatchPrefetcher``)

    def __init__(self, world: World, batch_size: int, seq_len: int, seed: int, device: torch.device) -> None:
        self.world, self.batch_size, self.seq_len, self.seed, self.device = world, batch_size, seq_len, seed, device

    def tokens(self, step: int) -> np.ndarray:
        return self.world.sample(self.batch_size, self.seq_len, seed=batch_rng(self.seed, step)).tokens

    def batch(self, tokens: Any) -> Batch:
        return host_batch(self.world, tokens, self.device)

    def settings(self) -> dict[str, Any]:
        return {"sampler_used": self.kind}


class DeviceBatches:
    """``device``: the world's torch sampler on the training device, ``chunk`` steps a call."""

    kind = "device"
    prefetchable = False  # sampling is queued on the device like the step itself

    def __init__(self, world: World, batch_size: int, seq_len: int, seed: int, device: torch.device,
                 chunk: int | None = None) -> None:
        sampler = samplers.sampler_for(world, seq_len, device)
        if sampler is None:
            why = samplers.unsupported(world) or "a World subclass of its own"
            raise UsageError(f"the {world.name} world has no device sampler ({why}); use sampler='host' (--sampler host)")
        self.world, self.sampler, self.batch_size, self.seed, self.device = world, sampler, batch_size, seed, device
        self.chunk = int(chunk) if chunk else default_chunk(batch_size, seq_len)
        if self.chunk < 1:
            raise UsageError(f"invalid sampler chunk {chunk!r}")
        self._gen = torch.Generator(device=device)
        self._index: int | None = None
        self._block: torch.Tensor | None = None

    def tokens(self, step: int) -> torch.Tensor:
        index, slot = divmod(int(step) - 1, self.chunk)
        if index != self._index:
            self._gen.manual_seed(stream_seed(self.seed, 2, index))
            self._block = self.sampler.draw(self.batch_size * self.chunk, self._gen)
            self._index = index
        return self._block[slot * self.batch_size:(slot + 1) * self.batch_size]

    def batch(self, tokens: torch.Tensor) -> Batch:
        return device_batch(self.world, tokens)

    def settings(self) -> dict[str, Any]:
        return {"sampler_used": self.kind, "sampler_chunk": self.chunk, "sampler_device": self.device.type}


class DataBatches:
    """``data``: rows of a token dataset in a per-epoch random order."""

    kind = "data"
    prefetchable = True

    def __init__(self, dataset: TokenDataset, batch_size: int, seed: int, device: torch.device) -> None:
        n = dataset.train.shape[0]
        if n == 0:
            raise UsageError(f"{dataset.path}: train.bin holds no rows")
        self.dataset, self.world, self.batch_size, self.seed, self.device = dataset, dataset.world, batch_size, seed, device
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 1:
                self._perms.pop(min(self._perms))
            n = self.dataset.train.shape[0]
            self._perms[epoch] = np.random.default_rng([int(self.seed), 3, int(epoch)]).permutation(n)
        return self._perms[epoch]

    def rows(self, step: int) -> np.ndarray:
        """The dataset rows of ``step`` (see the module docstring)."""
        n = self.dataset.train.shape[0]
        g = (int(step) - 1) * self.batch_size + np.arange(self.batch_size)
        epoch, pos = g // n, g % n
        out = np.empty(self.batch_size, dtype=np.int64)
        for e in np.unique(epoch):
            out[epoch == e] = self._perm(int(e))[pos[epoch == e]]
        return out

    def tokens(self, step: int) -> torch.Tensor:
        rows = self.rows(step)
        order = np.argsort(rows)  # read the memory map in file order
        block = np.empty((rows.size, self.dataset.seq_len), dtype=np.int64)
        block[order] = self.dataset.train[rows[order]]
        t = torch.from_numpy(block)
        return t.pin_memory() if self.device.type == "cuda" else t

    def batch(self, tokens: torch.Tensor) -> Batch:
        return device_batch(self.world, to_device(tokens, self.device))

    def settings(self) -> dict[str, Any]:
        return {"sampler_used": self.kind, "dataset": self.dataset.identity()}


def make_batches(kind: str, world: World, batch_size: int, seq_len: int, seed: int, device: torch.device,
                 chunk: int | None = None, dataset: TokenDataset | None = None):
    """The batch source of a run (``SOURCES``)."""
    if kind == "device":
        return DeviceBatches(world, batch_size, seq_len, seed, device, chunk)
    if kind == "host":
        return HostBatches(world, batch_size, seq_len, seed, device)
    if kind == "data":
        if dataset is None:
            raise UsageError("sampler 'data' needs a dataset (TrainConfig.data)")
        return DataBatches(dataset, batch_size, seed, device)
    raise UsageError(f"unknown batch source {kind!r}; choose one of {', '.join(SOURCES)}")


__all__ = ["SOURCES", "CHUNK_TOKENS", "MAX_CHUNK", "default_chunk", "stream_seed", "batch_rng", "val_rng", "to_device",
           "host_batch", "device_batch", "HostBatches", "DeviceBatches", "DataBatches", "make_batches"]
