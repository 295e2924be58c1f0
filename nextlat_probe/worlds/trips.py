"""The taxi trip automaton (visible origin): read, trace and check trips on a street map.

A trip is a token row::

    <origin> <destination> d_1 ... d_k end pad pad ...

in the visible vocabulary of ``Taxi(street_map)``: node ids ``0..N-1``, the turns
``N..N+7`` (``DIRECTIONS`` order), ``end = N+8``, ``pad = N+9``; any other id (such as -1,
what ``parse_sequences`` writes for an unknown word) is *malformed*. A row is
*well formed* when it has exactly that shape; a well-formed row is *on the map* when every
turn is a street (an entry of the successor table ``succ[node, direction]``, -1 = none).

One core, ``trace``, follows token rows position by position (a loop over positions,
vectorised over rows) and reports per position the current intersection, the turns made,
the phase and a cumulative "bad" flag; everything else reads its output:

- **strict** (``check_sequences``; ``Taxi`` beliefs trace its walkable successor table):
  a turn missing from ``succ`` makes the row illegal, leaves the taxi where it is and is
  not counted, and tracing goes on. ``end`` may come anywhere (``valid`` then asks
  whether it came at the destination).
- **tolerant** (``trace_tolerant``, model output; ``analysis.worldmodel.trace_trips``):
  ``ok[t]`` says that tokens ``0..t`` are a legal trip prefix *including* "``end`` only
  at the destination"; from the first position that is not ok on, node, turns and
  ``ended`` stay frozen (the offending turn itself is counted).
- **parser** (``parse_trips``, map reconstruction): well-formed rows as arrays of turns,
  whether or not their turns are streets (a reconstruction may invent them).

``parse_sequences`` reads the text format (one trip per line, the map's node ids and
direction names).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import WorldError
from .streetmap import DIRECTIONS, StreetMap

#: phases of a traced position
AFTER_ORIGIN, WALKING, ENDED, PAST_END = 0, 1, 2, 3
_FILL = -2  # fills the short rows of ragged token lists (positions past ``lengths``)
_BOM = "\ufeff"


def as_token_matrix(tokens_or_lists: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ``[n, width]``, int64 ``[n]`` row lengths) from a 1-D or 2-D integer array
    (every row full length) or from ragged lists of ids (short rows filled with -2, which
    ``trace`` never reads because it stops at each row's length)."""
    if isinstance(tokens_or_lists, np.ndarray):
        arr = tokens_or_lists
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise WorldError(f"taxi: tokens must be a 2-D integer array, got {arr.dtype} {arr.shape}")
        arr = arr.astype(np.int64, copy=False)
        return arr, np.full(arr.shape[0], arr.shape[1], dtype=np.int64)
    rows = [list(r) for r in tokens_or_lists]
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), _FILL, dtype=np.int64)
    for i, r in enumerate(rows):
        try:
            out[i, :len(r)] = r
        except (TypeError, ValueError, OverflowError):
            raise WorldError(f"taxi: token row {i} is not a list of integer ids: {r[:8]!r}") from None
    return out, np.array([len(r) for r in rows], dtype=np.int64)


def trace(tokens: np.ndarray, succ: np.ndarray, n_nodes: int,
          lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Follow trip rows ``origin dest d_1 ... end pad ...`` through the successor table.

    tokens: int64 ``[n, L]`` in the visible vocabulary (see the module docstring).
    succ: int64 ``[n_nodes, 8]``, ``succ[node, direction]`` = next node or -1.
    lengths: int64 ``[n]``, tokens of each row (default ``L``); later cells are not read.

    Returns, per position ``t`` (the state after token ``t``):

    - ``node`` int64 ``[n, L]``: the current intersection (the origin, or 0 when the first
      token is not a node); a turn missing from ``succ`` leaves it where it is.
    - ``turns`` int64 ``[n, L]``: turns taken so far (turns missing from ``succ`` excluded).
    - ``phase`` int8 ``[n, L]``: 0 after the origin, 1 walking (from the destination
      token on), 2 ended (``end`` seen while walking), 3 past the row's length.
    - ``malformed`` bool ``[n, L]``: tokens ``0..t`` are not a prefix of the trip shape
      (origin and destination not nodes, a non-turn token before ``end``, anything but
      ``pad`` after it; a row shorter than two tokens); cumulative, map-independent.
    - ``bad`` bool ``[n, L]``: ``malformed`` or some turn so far is missing from ``succ``.

    and per row ``dest`` int64 ``[n]`` (-1 when the second token is not a node). ``end``
    away from the destination is neither malformed nor bad here (see ``check_sequences``
    and ``trace_tolerant``).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    succ = np.asarray(succ, dtype=np.int64)
    n, L = tokens.shape
    lengths = np.full(n, L, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    dir0, end_id, pad_id = n_nodes, n_nodes + 8, n_nodes + 9
    node = np.zeros((n, L), dtype=np.int64)
    turns = np.zeros((n, L), dtype=np.int64)
    phase = np.zeros((n, L), dtype=np.int8)
    malformed = np.zeros((n, L), dtype=bool)
    bad = np.zeros((n, L), dtype=bool)
    dest = np.full(n, -1, dtype=np.int64)
    out = dict(node=node, turns=turns, phase=phase, malformed=malformed, bad=bad, dest=dest)
    if L == 0 or n == 0:
        return out
    is_node = (tokens >= 0) & (tokens < n_nodes) & (np.arange(L)[None, :] < lengths[:, None])
    cur = np.where(is_node[:, 0], tokens[:, 0], 0)
    form = ~is_node[:, 0]  # malformed so far
    off = np.zeros(n, dtype=bool)  # some turn so far is not in succ
    ph = np.where(lengths <= 0, PAST_END, AFTER_ORIGIN).astype(np.int8)
    node[:, 0], phase[:, 0], malformed[:, 0], bad[:, 0] = cur, ph, form, form
    if L > 1:
        dest = out["dest"] = np.where(is_node[:, 1], tokens[:, 1], -1)
        form = form | ~is_node[:, 1]  # also a missing destination
        ph = np.where(lengths <= 1, PAST_END, WALKING).astype(np.int8)
        node[:, 1], phase[:, 1], malformed[:, 1], bad[:, 1] = cur, ph, form, form
    t = np.zeros(n, dtype=np.int64)
    for p in range(2, L):
        tok = tokens[:, p]
        ph = np.where(p >= lengths, PAST_END, ph).astype(np.int8)
        walking, ended = ph == WALKING, ph == ENDED
        d = tok - dir0
        is_dir = (d >= 0) & (d < 8)
        nxt = succ[cur, np.clip(d, 0, 7)]
        move = walking & is_dir & (nxt >= 0)
        form = form | (walking & ~is_dir & (tok != end_id)) | (ended & (tok != pad_id))
        off = off | (walking & is_dir & (nxt < 0))
        cur = np.where(move, nxt, cur)
        t = t + move
        ph = np.where(walking & (tok == end_id), ENDED, ph).astype(np.int8)
        node[:, p], turns[:, p], phase[:, p] = cur, t, ph
        malformed[:, p], bad[:, p] = form, form | off
    return out


def trace_tolerant(tokens: np.ndarray, succ: np.ndarray, n_nodes: int,
                   lengths: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Trace model output: how far each row is a legal trip, with the state frozen there.

    Per position ``t``: ``ok`` bool ``[n, L]`` (tokens ``0..t`` are a legal trip prefix:
    nodes first, turns that are streets of ``succ``, ``end`` only at the destination,
    only padding after it), ``node`` int64 ``[n, L]`` (the intersection, frozen at the
    first position that is not ok), ``turns`` int64 ``[n, L]`` (turn tokens read while
    the prefix was ok, the first illegal turn included) and ``ended`` bool ``[n, L]``
    (``end`` read while the prefix was ok, even away from the destination); per row
    ``dest`` int64 ``[n]`` (-1 if the second token is not a node). Derived from ``trace``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    n, L = tokens.shape
    tr = trace(tokens, succ, n_nodes, lengths)
    node, phase, dest = tr["node"], tr["phase"], tr["dest"]
    ok = ~tr["bad"] & (phase != PAST_END) & ~((phase == ENDED) & (node != dest[:, None]))
    if L == 0 or n == 0:
        return dict(node=node, turns=tr["turns"], ok=ok, ended=phase == ENDED, dest=dest)
    # ok only ever falls: q = first position that is not ok (L when there is none)
    q = np.where(ok.all(axis=1), L, np.argmin(ok, axis=1))
    at = np.minimum(np.arange(L)[None, :], np.minimum(q, L - 1)[:, None])
    rows = np.arange(n)
    qc = np.clip(q, 0, L - 1)
    d = tokens[rows, qc] - n_nodes
    # the offending token is a turn read while walking: trace did not count it
    lens = np.full(n, L, dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    counted = ((q >= 2) & (q < lens) & (d >= 0) & (d < 8)
               & (phase[rows, np.maximum(qc - 1, 0)] == WALKING))
    after = np.arange(L)[None, :] >= q[:, None]
    turns = np.take_along_axis(tr["turns"], at, axis=1) + (after & counted[:, None])
    return dict(node=np.take_along_axis(node, at, axis=1), turns=turns, ok=ok,
                ended=np.take_along_axis(phase == ENDED, at, axis=1), dest=dest)


def check_sequences(street_map: StreetMap, tokens_or_lists: Any) -> dict[str, np.ndarray]:
    """Legality of visible-origin trips on ``street_map`` (token ids in the visible
    vocabulary of ``Taxi(street_map)``; ragged lists allowed; unknown ids such as -1 make a
    sequence neither legal nor valid).

    Returns bool ``[n]`` arrays ``legal`` (origin and destination are nodes, every turn is
    an edge of the map, nothing but padding after ``end``), ``ended`` (an ``end`` token
    occurs while walking) and ``valid`` (legal, ended, and ``end`` comes at the
    destination); a trip with no ``end`` is never valid.
    """
    tokens, lengths = as_token_matrix(tokens_or_lists)
    n, L = tokens.shape
    if L < 2:
        z = np.zeros(n, dtype=bool)
        return {"legal": z, "ended": z.copy(), "valid": z.copy()}
    tr = trace(tokens, street_map.succ, street_map.n_nodes, lengths)
    legal = ~tr["bad"][:, -1]
    ended = (tr["phase"] == ENDED).any(axis=1)
    valid = legal & ended & (tr["node"][:, -1] == tr["dest"])
    return {"legal": legal, "ended": ended, "valid": valid}


@dataclass
class Trips:
    """Well-formed trips as arrays: ``origin``, ``dest`` int64 ``[n]``; ``turns`` int64
    ``[n, T]`` (direction indices, -1 after the last turn); ``lengths`` ``[n]`` (turns per
    trip); ``index`` ``[n]`` (row of the input); ``n_input`` (rows read) and
    ``malformed`` (input rows that were not trips)."""

    origin: np.ndarray
    dest: np.ndarray
    turns: np.ndarray
    lengths: np.ndarray
    index: np.ndarray
    n_input: int
    malformed: list[int]


def parse_trips(street_map: StreetMap, trips: Any) -> Trips:
    """Well-formed trips of ``trips`` (a padded int array or ragged lists of token ids in
    the visible vocabulary of ``Taxi(street_map)``: nodes, the 8 turns, ``end``, ``pad``).

    A trip is ``origin dest turn* end pad*`` with node origin and destination; its turns
    need not be streets of the map. Anything else (unknown ids such as -1 from
    ``parse_sequences``, no ``end``, tokens other than padding after ``end``) is malformed
    and listed by input row."""
    N = street_map.n_nodes
    tokens, lengths = as_token_matrix(trips)
    n, L = tokens.shape
    tr = trace(tokens, street_map.succ, N, lengths)
    ended = tr["phase"] == ENDED
    good = ended.any(axis=1) & ~tr["malformed"][:, -1] if L else np.zeros(n, dtype=bool)
    index = np.flatnonzero(good)
    k = np.argmax(ended[index], axis=1) - 2 if index.size else np.zeros(0, dtype=np.int64)  # turns per trip
    T = int(k.max()) if k.size else 0
    turns = np.where(np.arange(T)[None, :] < k[:, None], tokens[index, 2:2 + T] - N, -1)
    ends = tokens[index, :2] if L >= 2 else np.zeros((0, 2), dtype=np.int64)  # no rows, or none long enough
    return Trips(origin=ends[:, 0].copy(), dest=ends[:, 1].copy(), turns=turns.astype(np.int64),
                 lengths=k.astype(np.int64), index=index.astype(np.int64), n_input=int(n),
                 malformed=[int(i) for i in np.flatnonzero(~good)])


def parse_sequences(source: str | Path | Iterable[str], street_map: StreetMap,
                    line_numbers: bool = False) -> list[list[int]] | tuple[list[list[int]], list[int]]:
    """Read trips in the text format (one per line, whitespace-separated,
    ``origin dest d_1 ... d_k end`` with the map's node ids; trailing ``pad`` allowed).

    ``source`` is a path or an iterable of lines; blank lines are skipped and a UTF-8
    byte-order mark before the first line is dropped. Returns token ids in the visible
    vocabulary of ``Taxi(street_map)``; an unknown word becomes -1 (so the line counts as
    neither legal nor valid); with ``line_numbers`` also the 1-based line of each trip. A
    path that is a directory, cannot be read, or is not UTF-8 text raises ``WorldError``
    naming it."""
    if isinstance(source, (str, Path)):
        p = Path(source)
        if p.is_dir():
            raise WorldError(f"{p}: is a directory, not a file of trips")
        try:
            with open(p, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise WorldError(f"{p}: cannot read trips ({exc.strerror or type(exc).__name__})") from None
        if b"\x00" in raw:
            raise WorldError(f"{p}: not a text file of sequences (contains NUL bytes)")
        try:
            lines: Iterable[str] = raw.decode("utf-8-sig").splitlines()
        except UnicodeDecodeError as exc:
            raise WorldError(f"{p}: not a UTF-8 text file of sequences (byte {exc.start})") from None
    else:
        lines = source
    N = street_map.n_nodes
    vocab = {name: i for i, name in enumerate(street_map.node_names)}
    vocab.update({d: N + i for i, d in enumerate(DIRECTIONS)})
    vocab.update({"end": N + 8, "pad": N + 9})
    out, numbers = [], []
    for k, line in enumerate(lines):
        if k == 0 and line.startswith(_BOM):
            line = line[len(_BOM):]
        words = line.split()
        if words:
            out.append([vocab.get(w, -1) for w in words])
            numbers.append(k + 1)
    return (out, numbers) if line_numbers else out


__all__ = ["AFTER_ORIGIN", "WALKING", "ENDED", "PAST_END", "as_token_matrix", "trace", "trace_tolerant",
           "check_sequences", "Trips", "parse_trips", "parse_sequences"]
