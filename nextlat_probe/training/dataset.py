"""Token datasets on disk (nanoGPT style): ``train.bin`` / ``val.bin`` and ``meta.json``.

A dataset folder holds fixed-length token rows, written once and read through ``np.memmap``
(only the rows a batch needs are read)::

    DIR/train.bin   the training rows: [n_train, seq_len] little-endian integers, row-major
    DIR/val.bin     the validation rows, the same layout
    DIR/meta.json   what the rows are and how they were made (written last: a folder whose
                    meta.json is missing holds no finished dataset)

``meta.json``: ``format`` / ``format_version``; ``world_spec`` (``World.spec()``: the world
the tokens belong to, e.g. the taxi map itself), ``vocab_size`` and ``token_names``;
``dtype`` (``uint16`` when the vocabulary fits, else ``uint32``) and ``seq_len``; ``splits``
(per split its file, ``n_seqs`` and the SHA-256 of the file); ``source`` — ``world`` (drawn
from the world's own distribution: its exact loss floor applies) or ``imported`` (trips
read from a file: no generating process is known, so there is no exact floor); ``made``
(the command, its parameters, the sampler and device, the package version, the time, and
for imported trips the counts of every kind of line that was left out).

``open_dataset`` checks all of it before training reads a row (sizes, the vocabulary, that
every token id lies inside it), so a crafted or truncated file fails with one line, never
with an out-of-range index on a GPU. A run trained on a dataset records ``identity()`` in
its checkpoint (the folder and a fingerprint of ``meta.json``, which holds the files'
hashes); resuming checks that the folder still holds the same dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .. import __version__
from ..checkpoint import atomic_write_bytes
from ..errors import NextLatError, UsageError
from ..worlds import World, world_from_spec

FORMAT = "nextlat_probe.tokens"
FORMAT_VERSION = 1
META = "meta.json"
SPLITS = ("train", "val")
SOURCES = ("world", "imported")
#: rows checked (vocabulary range) and hashed per read while opening a dataset
_CHUNK_ROWS = 1 << 16


def token_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer that holds every id of the vocabulary."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


@dataclass
class TokenDataset:
    """An opened dataset: the world, the row length and the memory-mapped splits."""

    path: Path
    meta: dict[str, Any]
    world: World
    seq_len: int
    train: np.ndarray  # memmap [n_train, seq_len]
    val: np.ndarray  # memmap [n_val, seq_len]

    @property
    def source(self) -> str:
        return self.meta["source"]

    @property
    def exact_floor(self) -> bool:
        """Whether the world's exact loss floor applies (tokens drawn from the world)."""
        return self.source == "world"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of ``meta.json`` as stored (it holds the SHA-256 of both files)."""
        return hashlib.sha256((self.path / META).read_bytes()).hexdigest()

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the dataset it was trained on."""
        return {"path": str(self.path), "fingerprint": self.fingerprint, "source": self.source,
                "n_train": int(self.train.shape[0]), "n_val": int(self.val.shape[0]), "seq_len": self.seq_len}


def _bad(path: Path, reason: str) -> UsageError:
    return UsageError(f"{path}: {reason}")


def open_dataset(path: str | os.PathLike, verify: bool = True) -> TokenDataset:
    """Open and check a dataset folder; every problem is one ``UsageError`` line naming the
    folder. ``verify``: also check every token id and both files' SHA-256 (one pass over
    the files; skip it only for data checked a moment ago)."""
    p = Path(path).expanduser().resolve()
    if not p.is_dir():
        raise _bad(p, "no such dataset folder" if not p.exists() else "not a folder (give a dataset folder)")
    meta_path = p / META
    if not meta_path.is_file():
        raise _bad(p, f"holds no dataset ({META} is missing; write one with python -m nextlat_probe.data write)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(p, f"{META} is not readable JSON ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _bad(p, f"{META} is not a nextlat_probe token dataset")
    if meta.get("format_version") != FORMAT_VERSION:
        raise _bad(p, f"unsupported dataset format version {meta.get('format_version')!r} (expected {FORMAT_VERSION})")
    try:
        world = world_from_spec(meta["world_spec"])
    except (NextLatError, KeyError, TypeError) as exc:
        raise _bad(p, f"invalid world spec in {META} ({str(exc)[:160]})") from None
    V = world.vocab_size
    seq_len, dtype, splits = meta.get("seq_len"), meta.get("dtype"), meta.get("splits")
    if meta.get("vocab_size") != V:
        raise _bad(p, f"{META} says vocab_size {meta.get('vocab_size')!r}, its world has {V} tokens")
    if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
        raise _bad(p, f"invalid seq_len {seq_len!r} in {META}")
    if dtype != token_dtype(V).name:
        raise _bad(p, f"dtype {dtype!r} in {META}; a vocabulary of {V} is stored as {token_dtype(V).name}")
    if meta.get("source") not in SOURCES:
        raise _bad(p, f"source {meta.get('source')!r} in {META} is not one of {', '.join(SOURCES)}")
    if not isinstance(splits, dict) or set(splits) != set(SPLITS):
        raise _bad(p, f"{META} must list the splits {', '.join(SPLITS)}")
    arrays = {}
    for name in SPLITS:
        arrays[name] = _open_split(p, name, splits[name], seq_len, token_dtype(V), V, verify)
    return TokenDataset(p, meta, world, seq_len, arrays["train"], arrays["val"])


def _open_split(p: Path, name: str, entry: Any, seq_len: int, dtype: np.dtype, V: int, verify: bool) -> np.ndarray:
    if not isinstance(entry, dict) or not isinstance(entry.get("n_seqs"), int) or entry["n_seqs"] < 0:
        raise _bad(p, f"invalid entry for split {name!r} in {META}")
    f = p / f"{name}.bin"
    if entry.get("file") != f.name:
        raise _bad(p, f"split {name!r} must be stored in {f.name}")
    if not f.is_file():
        raise _bad(p, f"{f.name} is missing")
    n = entry["n_seqs"]
    size = f.stat().st_size
    if size != n * seq_len * dtype.itemsize:
        raise _bad(p, f"{f.name} has {size} bytes; {n} rows of {seq_len} {dtype.name} tokens need "
                      f"{n * seq_len * dtype.itemsize} (truncated or not this dataset's)")
    if n == 0:
        return np.zeros((0, seq_len), dtype=dtype)
    rows = np.memmap(f, dtype=dtype, mode="r", shape=(n, seq_len))
    if verify:
        digest = hashlib.sha256()
        for lo in range(0, n, _CHUNK_ROWS):
            block = np.asarray(rows[lo:lo + _CHUNK_ROWS])
            if block.size and int(block.max()) >= V:
                r, c = np.argwhere(block >= V)[0]
                raise _bad(p, f"{f.name}: row {lo + int(r)}, position {int(c)} holds token id "
                              f"{int(block[r, c])}, outside the vocabulary [0, {V})")
            digest.update(block.tobytes())
        if digest.hexdigest() != entry.get("sha256"):
            raise _bad(p, f"{f.name} does not match the SHA-256 in {META} (changed after it was written)")
    return rows


def write_dataset(out: str | os.PathLike, world: World, seq_len: int, splits: dict[str, Iterable[np.ndarray]],
                  source: str, made: dict[str, Any], overwrite: bool = False) -> TokenDataset:
    """Write a dataset folder from blocks of token rows (``[k, seq_len]`` integer arrays per
    block, any number of blocks per split). Each file is written to a temp name and renamed
    when complete, ``meta.json`` last, so an interrupted write leaves no dataset that looks
    finished. A folder that already holds a dataset is refused unless ``overwrite``."""
    p = Path(out).expanduser()
    if p.exists() and not p.is_dir():
        raise _bad(p, "exists and is not a folder")
    if not overwrite and p.is_dir() and any((p / n).exists() for n in (META, "train.bin", "val.bin")):
        raise _bad(p, "already holds a dataset; choose another --out, or --overwrite to replace it")
    if source not in SOURCES:
        raise UsageError(f"dataset source must be one of {', '.join(SOURCES)}, got {source!r}")
    p.mkdir(parents=True, exist_ok=True)
    p = p.resolve()
    V, dtype = world.vocab_size, token_dtype(world.vocab_size)
    if overwrite and (p / META).exists():
        (p / META).unlink()  # from here on the folder holds no finished dataset
    entries = {}
    for name in SPLITS:
        final = p / f"{name}.bin"
        tmp = p / f".{name}.bin.{os.getpid()}.tmp"
        digest, n = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for block in splits.get(name, ()):
                    block = np.asarray(block)
                    if block.ndim != 2 or block.shape[1] != seq_len:
                        raise UsageError(f"{name} rows must be [k, {seq_len}], got {list(block.shape)}")
                    if block.size and (block.min() < 0 or block.max() >= V):
                        raise UsageError(f"{name} rows hold a token id outside the vocabulary [0, {V})")
                    data = block.astype(dtype).tobytes()
                    f.write(data)
                    digest.update(data)
                    n += block.shape[0]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entries[name] = {"file": final.name, "n_seqs": n, "sha256": digest.hexdigest()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "world_spec": world.spec(), "vocab_size": V,
            "token_names": world.token_names, "dtype": dtype.name, "seq_len": int(seq_len), "splits": entries,
            "source": source, "made": {**made, "package_version": __version__,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    from ..checkpoint import plain

    atomic_write_bytes(json.dumps(plain(meta), indent=1).encode("utf-8"), p / META)
    return open_dataset(p, verify=False)


#: sequences drawn per sampler call when a dataset is written
_DRAW_ROWS = 1 << 15


def drawn_rows(world: World, n: int, seq_len: int, seed: int, split: str, sampler: str = "device",
               device: Any = "cpu") -> Iterator[np.ndarray]:
    """``n`` sequences of ``world`` in blocks (what ``write_dataset`` takes): block ``k`` of
    a split is drawn with the seed ``(seed, 4 + split index, k)``, by the device sampler
    (``training.samplers``) or the host one (``World.sample``)."""
    import torch

    from . import samplers
    from .batches import stream_seed

    index = SPLITS.index(split)
    dev = torch.device(device)
    drawer = samplers.sampler_for(world, seq_len, dev) if sampler == "device" else None
    if sampler == "device" and drawer is None:
        why = samplers.unsupported(world) or "a World subclass of its own"
        raise UsageError(f"the {world.name} world has no device sampler ({why}); use --sampler host")
    gen = torch.Generator(device=dev) if drawer is not None else None
    for k, lo in enumerate(range(0, n, _DRAW_ROWS)):
        m = min(_DRAW_ROWS, n - lo)
        if drawer is not None:
            gen.manual_seed(stream_seed(seed, 4 + index, k))
            yield drawer.draw(m, gen).cpu().numpy()
        else:
            yield world.sample(m, seq_len, seed=np.random.default_rng([int(seed), 4 + index, k])).tokens


#: the kinds of line ``import_trips`` leaves out, in the order a line is classified
LEFT_OUT = {
    "malformed": "not a trip (origin destination turn ... end, with the map's node ids and turn names)",
    "illegal": "a turn that is not a street of the map",
    "wrong_end": "ends away from its destination",
    "too_long": "more turns than --max-len",
}


@dataclass
class ImportedTrips:
    """What ``import_trips`` read: the trips it kept as token rows (padded to the world's
    length), the world they belong to, and per kind of left-out line its count and the
    first line numbers (1-based, in the file)."""

    world: World
    tokens: np.ndarray
    lines: int
    counts: dict[str, int]
    examples: dict[str, list[int]]


def import_trips(path: str | os.PathLike, street_map: Any, walk: str = "random",
                 max_len: int | None = None, examples: int = 10) -> ImportedTrips:
    """Read a file of trips in the taxi-world study's text format (one trip a line:
    ``origin destination turn ... end``, the map's node ids; blank lines skipped) with the
    project's trip reader (``worlds.trips.parse_sequences``) and legality checks
    (``check_sequences``, ``parse_trips``). A line is kept only when it is a valid trip on
    ``street_map``: well formed, every turn a street, ``end`` at its destination, and at
    most ``max_len`` turns; every other line is counted under its kind (``LEFT_OUT``),
    never kept.

    The world recorded for the data is ``Taxi(street_map, walk, max_len)``, ``max_len``
    defaulting to the longest kept trip (for shortest / noisy walks at least the map's
    longest shortest path): it fixes the vocabulary and the row length, and is the world
    analyses draw prompts from. No exact loss floor applies to imported trips."""
    from ..worlds.taxi import Taxi
    from ..worlds.trips import check_sequences, parse_sequences, parse_trips

    rows, numbers = parse_sequences(path, street_map, line_numbers=True)
    n = len(rows)
    checked = check_sequences(street_map, rows)
    parsed = parse_trips(street_map, rows)
    kind = np.full(n, "", dtype=object)
    turns = np.zeros(n, dtype=np.int64)
    turns[parsed.index] = parsed.lengths
    malformed = np.zeros(n, dtype=bool)
    malformed[parsed.malformed] = True
    kind[malformed] = "malformed"
    kind[(kind == "") & ~checked["legal"]] = "illegal"
    kind[(kind == "") & ~checked["valid"]] = "wrong_end"
    if max_len is not None:
        if int(max_len) < 1:
            raise UsageError(f"--max-len must be >= 1, got {max_len}")
        kind[(kind == "") & (turns > int(max_len))] = "too_long"
    keep = kind == ""
    if not keep.any():
        raise UsageError(f"{path}: none of its {n} trips is a valid trip on the map {street_map.name!r}")
    longest = int(turns[keep].max())
    if max_len is None:
        max_len = max(longest, 1)
        if walk != "random":  # a shortest-path world needs at least the longest shortest path
            max_len = max(max_len, Taxi(street_map, walk="shortest").max_len)
    world = Taxi(street_map, walk=walk, max_len=int(max_len), min_len=1 if walk == "random" else None)
    length = world.default_length
    tokens = np.full((int(keep.sum()), length), world.pad_id, dtype=np.int64)
    for r, i in enumerate(np.flatnonzero(keep)):
        row = [t for t in rows[i] if t != world.pad_id]
        tokens[r, :len(row)] = row
    counts = {k: int((kind == k).sum()) for k in LEFT_OUT}
    shown = {k: [int(numbers[i]) for i in np.flatnonzero(kind == k)[:examples]] for k in LEFT_OUT}
    return ImportedTrips(world, tokens, n, {"kept": int(keep.sum()), **counts}, shown)


__all__ = ["FORMAT", "FORMAT_VERSION", "META", "SPLITS", "SOURCES", "LEFT_OUT", "TokenDataset", "ImportedTrips",
           "token_dtype", "open_dataset", "write_dataset", "drawn_rows", "import_trips"]
