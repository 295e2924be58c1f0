"""The path-star planning task (Bachmann & Nagarajan 2024, "The pitfalls of next-token
prediction"; the NextLat paper's G(d, l)).

A star graph: ``degree`` arms of ``length`` nodes each hang off a centre node
(``degree * length + 1`` nodes). For every sample the node labels are drawn at random
without replacement from ``n_nodes`` labels (default 50), the start is the centre and the
goal is the leaf of an arm chosen uniformly at random. The prompt lists the edges in a
uniformly random order; the target is the path from the start to the goal.

Token layout (the prompt format of the reference generator,
gregorbachmann/Next-Token-Failures, ``data/graphs.py`` with its numeral tokenizer), with
``E = degree * length`` edges::

    u_1 v_1 | u_2 v_2 | ... | u_E v_E / s g = s a_1 ... a_l

    position        token
    3k, 3k + 1      u_{k+1}, v_{k+1}: edge k + 1 (k = 0 .. E - 1)
    3k + 2          |   (k = 0 .. E - 2)
    3E - 1          /
    3E, 3E + 1      s (the start, the centre), g (the goal, a leaf)
    3E + 2          =
    3E + 3 + j      the path: s (j = 0), then a_j (j = 1 .. l; a_l = g)

- each edge is two tokens, parent then child (``u -> v``, directed away from the centre),
  and consecutive edges are separated by ``|``; the edge order is a uniform permutation;
- ``/`` ends the edge list, then the start ``s`` (the centre), the goal ``g`` (a leaf) and
  ``=``;
- the target is the path ``s a_1 .. a_l``: the start again, then the ``l`` nodes of the goal
  arm from the centre outwards (``a_l = g``). ``prompt_length = 3E + 3`` is the index of its
  first token and ``path_length = l + 1`` its length, so every sequence has
  ``default_length = 3E + l + 4`` tokens (``sample`` refuses any other length).

Vocabulary (the reference tokenizer's ids): labels ``0 .. n_nodes - 1`` (named by their
number), then ``|`` (``n_nodes``), ``=`` (``n_nodes + 1``) and ``/`` (``n_nodes + 2``).
The reference's ``--path P`` counts the nodes of the start-to-goal path including the start:
it is ``length = P - 1`` here (its ``deg 2 path 5`` task is ``degree=2, length=4``, the
default, 32 tokens).

Targets (``target_mask``): the ``l + 1`` path tokens after ``=``, the start included, as in
the reference (its loss and its accuracy count the start copy too). GPT trains with teacher
forcing on the path alone; the prompt is never a target.

Hidden state: the index of the goal arm, arms being numbered by the order in which each
arm's *first* edge (centre -> arm node) appears in the edge list, so the index is a
function of the prompt. ``n_states = degree``. ``Sample.states[:, t]`` is that index at
every position ("after each token": the state is fixed from the first token on, but it is
only *revealed* by the goal token). ``beliefs`` is uniform over the ``degree`` arms before
the goal token (the edge order carries no information about the goal: arms and their
order are exchangeable) and one-hot on the goal arm from the goal token on.

Next-token probabilities: exact at every scored position (after ``=`` the path is unique
given the prompt: one-hot), and also exact where the grammar forces the next token
(``|``, ``/``, ``=``), after ``/`` (the start is the centre: one-hot) and after the start
(the goal is uniform over the ``degree`` leaves). At the edge labels they are NOT exact: the exact law of the
shuffled, randomly labelled edge list is a combinatorial mixture that no analysis scores;
those positions get the uniform distribution over the ``n_nodes`` labels (what the token
grammar allows there), and ``exact_prompt_probs = False`` says so. After the last path
token nothing follows (never scored): uniform over the labels. The exact cross-entropy of
sampled sequences is 0.

Like A5's targets, the path targets are a function of the prompt alone: ``beliefs`` and
``next_token_probs`` read only the prompt, so a sequence whose path tokens are wrong (a
model's own roll-out) still gets the targets of its prompt, and any token is accepted in
the path region. A prompt that no path-star graph produces (a special token where a label
belongs, a repeated node, a start that is not the centre, a goal that is not a leaf, ...)
raises a one-line ``WorldError``. Arrays shorter than ``default_length`` are prefixes: the
structure of the edge list is checked once it is complete.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from .base import Sample, World, WorldError, as_rng, check_tokens

#: the special tokens, in vocabulary order after the labels (the reference tokenizer's ids)
EDGE_SEP, EQUALS, SEP = "|", "=", "/"
DEFAULTS = {"degree": 2, "length": 4, "n_nodes": 50}


def _positive_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise WorldError(f"pathstar: {name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise WorldError(f"pathstar: {name} must be >= {minimum}, got {value}")
    return value


@dataclass
class StarGraphs:
    """Parsed prompts (``PathStar.parse``), one row per sequence.

    edges: int64 ``[n, E, 2]`` (parent, child) in prompt order; centre, start, goal: ``[n]``;
    arms: ``[n, degree, length]``, arm ``k`` the one whose first edge is the ``k``-th centre
    edge of the list, nodes from the centre outwards; goal_arm: ``[n]`` (the hidden state);
    path: ``[n, length + 1]`` the true target (centre, then the goal arm); parent: ``[n,
    n_nodes]`` the parent of every label (-1 for the centre and unused labels)."""

    edges: np.ndarray
    centre: np.ndarray
    start: np.ndarray
    goal: np.ndarray
    arms: np.ndarray
    goal_arm: np.ndarray
    path: np.ndarray
    parent: np.ndarray

    @property
    def leaves(self) -> np.ndarray:
        return self.arms[:, :, -1]


class PathStar(World):
    """Path-star graphs with ``degree`` arms of ``length`` nodes, labels drawn from
    ``n_nodes`` (``nodes`` is the same option under its CLI name:
    ``--world pathstar:degree=2,length=4,nodes=50``). See the module docstring."""

    name = "pathstar"
    #: the prompt's edge labels get a uniform stand-in, not the exact law (module docstring)
    exact_prompt_probs = False

    def __init__(self, degree: int = DEFAULTS["degree"], length: int = DEFAULTS["length"],
                 n_nodes: int | None = None, nodes: int | None = None) -> None:
        if n_nodes is not None and nodes is not None and n_nodes != nodes:
            raise WorldError(f"pathstar: nodes={nodes!r} and n_nodes={n_nodes!r} disagree (give one)")
        if n_nodes is None:
            n_nodes = DEFAULTS["n_nodes"] if nodes is None else nodes
        self.degree = _positive_int("degree", degree, 2)
        self.length = _positive_int("length", length, 1)
        need = self.degree * self.length + 1
        self.n_nodes = _positive_int("n_nodes", n_nodes, 1)
        if self.n_nodes < need:
            raise WorldError(f"pathstar: n_nodes must be >= degree*length + 1 = {need}, got {self.n_nodes}")
        N, E = self.n_nodes, self.n_edges
        self.edge_sep_id, self.equals_id, self.sep_id = N, N + 1, N + 2
        self._names = [str(i) for i in range(N)] + [EDGE_SEP, EQUALS, SEP]
        #: token expected at every prompt position: -1 a label, else a special token id
        kind = np.full(self.prompt_length, -1, dtype=np.int64)
        kind[2:3 * E - 1:3] = self.edge_sep_id
        kind[self.sep_pos] = self.sep_id
        kind[self.eq_pos] = self.equals_id
        self._kind = kind

    # --- layout (module docstring) ------------------------------------------------------
    @property
    def n_edges(self) -> int:
        return self.degree * self.length

    @property
    def sep_pos(self) -> int:
        """Index of ``/`` (the end of the edge list)."""
        return 3 * self.n_edges - 1

    @property
    def start_pos(self) -> int:
        return 3 * self.n_edges

    @property
    def goal_pos(self) -> int:
        return 3 * self.n_edges + 1

    @property
    def eq_pos(self) -> int:
        return 3 * self.n_edges + 2

    @property
    def prompt_length(self) -> int:
        """Index of the first path token (the start copy after ``=``): the prompt is
        ``tokens[:, :prompt_length]``."""
        return 3 * self.n_edges + 3

    @property
    def path_length(self) -> int:
        """Tokens of the target path: the start, then the ``length`` nodes of the goal arm."""
        return self.length + 1

    @property
    def default_length(self) -> int:
        """The one sequence length: the prompt and the path."""
        return self.prompt_length + self.path_length

    # --- vocabulary / states ----------------------------------------------------------
    @property
    def token_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_states(self) -> int:
        return self.degree

    # --- parsing ------------------------------------------------------------------------
    def _check(self, tokens: Any) -> np.ndarray:
        """Vocabulary, length and the token kinds of the prompt positions present."""
        tokens = check_tokens(tokens, self.vocab_size, self.name)
        L = tokens.shape[1]
        if L > self.default_length:
            raise WorldError(f"pathstar: sequences have {self.default_length} tokens "
                             f"(degree={self.degree}, length={self.length}), got {L}")
        kind = self._kind[:min(L, self.prompt_length)]
        seg = tokens[:, :kind.size]
        bad = np.where(kind < 0, seg >= self.n_nodes, seg != kind)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            want = "a node label" if kind[c] < 0 else repr(self._names[kind[c]])
            raise WorldError(f"pathstar: row {r}, position {c}: expected {want}, "
                             f"got {self._names[tokens[r, c]]!r}")
        return tokens

    def _structure(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Centre, parents, arms of rows whose edge list is complete; start and goal are
        checked when present. Raises ``WorldError`` naming the first malformed row."""
        n, L = tokens.shape
        N, E, d, length = self.n_nodes, self.n_edges, self.degree, self.length
        rows = np.arange(n)
        parents, children = tokens[:, 0:3 * E:3], tokens[:, 1:3 * E:3]
        is_child = np.zeros((n, N), dtype=np.int64)
        np.add.at(is_child, (np.repeat(rows, E), children.ravel()), 1)
        is_node = is_child > 0
        is_node[np.repeat(rows, E), parents.ravel()] = True
        outdeg = np.zeros((n, N), dtype=np.int64)
        np.add.at(outdeg, (np.repeat(rows, E), parents.ravel()), 1)
        problems: list[tuple[np.ndarray, str]] = []
        problems.append((is_child.max(axis=1, initial=0) > 1, "a node has two parents"))
        problems.append((is_node.sum(axis=1) != E + 1, f"the edges do not join {E + 1} distinct nodes"))
        root = is_node & (is_child == 0)
        centre = np.argmax(root, axis=1)
        parent = np.full((n, N), -1, dtype=np.int64)
        parent[np.repeat(rows, E), children.ravel()] = parents.ravel()
        child = np.full((n, N), -1, dtype=np.int64)
        child[np.repeat(rows, E), parents.ravel()] = children.ravel()
        root_deg = outdeg[rows, centre]
        other = outdeg.copy()
        other[rows, centre] = 0
        problems.append((root_deg != d, f"the centre does not have {d} arms"))
        problems.append((other.max(axis=1, initial=0) > 1, "an arm branches"))
        # every child reaches the centre within `length` steps (no cycles, no long arms)
        node = children.copy()
        for _ in range(length):
            up = parent[rows[:, None], node]
            node = np.where(node == centre[:, None], node, up)
            node = np.where(node < 0, centre[:, None], node)  # only reached on malformed rows
        problems.append(((node != centre[:, None]).any(axis=1), f"an arm is longer than {length} or a cycle"))
        self._raise_first(problems)
        first = children[parents == centre[:, None]].reshape(n, d)
        arms = np.empty((n, d, length), dtype=np.int64)
        arms[:, :, 0] = first
        for j in range(1, length):
            arms[:, :, j] = child[rows[:, None], arms[:, :, j - 1]]
        out = {"edges": np.stack([parents, children], axis=-1), "centre": centre, "parent": parent, "arms": arms}
        checks: list[tuple[np.ndarray, str]] = []
        if L > self.start_pos:
            checks.append((tokens[:, self.start_pos] != centre, "the start is not the centre"))
        if L > self.goal_pos:
            hit = arms[:, :, -1] == tokens[:, self.goal_pos][:, None]
            checks.append((~hit.any(axis=1), "the goal is not a leaf"))
            out["goal_arm"] = np.argmax(hit, axis=1)
        self._raise_first(checks)
        return out

    @staticmethod
    def _raise_first(problems: list[tuple[np.ndarray, str]]) -> None:
        bad = [(int(np.flatnonzero(m)[0]), msg) for m, msg in problems if m.any()]
        if bad:
            r, msg = min(bad)
            raise WorldError(f"pathstar: row {r}: {msg}")

    def parse(self, tokens: Any) -> StarGraphs:
        """The graphs, starts, goals and true paths of prompts (``[n, >= prompt_length - 1]``:
        at least up to the goal token; full sequences are fine, the path tokens are ignored)."""
        tokens = self._check(tokens)
        if tokens.shape[1] <= self.goal_pos:
            raise WorldError(f"pathstar: parse needs the prompt up to the goal token "
                             f"({self.goal_pos + 1} tokens), got {tokens.shape[1]}")
        s = self._structure(tokens)
        n = tokens.shape[0]
        goal_arm = s["goal_arm"]
        path = np.concatenate([s["centre"][:, None], s["arms"][np.arange(n), goal_arm]], axis=1)
        return StarGraphs(edges=s["edges"], centre=s["centre"], start=tokens[:, self.start_pos].copy(),
                          goal=tokens[:, self.goal_pos].copy(), arms=s["arms"], goal_arm=goal_arm,
                          path=path, parent=s["parent"])

    def prompts(self, tokens: Any) -> np.ndarray:
        """``tokens[:, :prompt_length]`` (checked)."""
        tokens = self._check(tokens)
        if tokens.shape[1] < self.prompt_length:
            raise WorldError(f"pathstar: a prompt has {self.prompt_length} tokens, got {tokens.shape[1]}")
        return tokens[:, :self.prompt_length].copy()

    def true_paths(self, tokens: Any) -> np.ndarray:
        """int64 ``[n, path_length]``: the path from the start to the goal of each prompt."""
        return self.parse(tokens).path

    def path_tokens(self, tokens: Any) -> np.ndarray:
        """The path region ``tokens[:, prompt_length:]`` of full sequences."""
        tokens = self._check(tokens)
        if tokens.shape[1] != self.default_length:
            raise WorldError(f"pathstar: full sequences have {self.default_length} tokens, got {tokens.shape[1]}")
        return tokens[:, self.prompt_length:].copy()

    def decode_path(self, paths: Any) -> list[str]:
        """Printable paths, e.g. ``'32 -> 34 -> 6'``, for path tokens ``[n, k]``."""
        paths = check_tokens(paths, self.vocab_size, self.name)
        return [" -> ".join(self._names[int(t)] for t in row) for row in paths]

    def is_path_to_leaf(self, prompt_tokens: Any, path_tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """(valid bool ``[n]``, reaches_goal bool ``[n]``) for generated paths
        ``[n, path_length]``: ``valid`` when the path starts at the centre and follows edges
        of the prompt's graph to SOME leaf (a whole arm); ``reaches_goal`` when it is valid
        and ends at the goal (then it is the true path). ``prompt_tokens``: prompts or full
        sequences (only the prompt is read)."""
        g = self.parse(prompt_tokens)
        paths = check_tokens(path_tokens, self.vocab_size, self.name)
        if paths.shape != (g.centre.size, self.path_length):
            raise WorldError(f"pathstar: paths must be [{g.centre.size}, {self.path_length}], got {list(paths.shape)}")
        n = paths.shape[0]
        label = paths < self.n_nodes
        safe = np.where(label, paths, 0)
        steps = g.parent[np.arange(n)[:, None], safe[:, 1:]] == paths[:, :-1]
        valid = label.all(axis=1) & (paths[:, 0] == g.centre) & steps.all(axis=1)
        valid &= (g.leaves == paths[:, -1:]).any(axis=1)
        return valid, valid & (paths[:, -1] == g.goal)

    # --- World interface --------------------------------------------------------------
    def sample(self, n: int, length: int | None = None, seed: int | np.random.Generator | None = None) -> Sample:
        """``n`` sequences of ``default_length`` tokens (``length`` None or that value).
        ``extras``: ``goal_arm_generated`` (the goal arm in generation order, before the
        edge shuffle) and ``edge_order`` (``[n, E]``: the generated edge index at each prompt
        slot; generated edge ``a * length + j`` is edge ``j`` of arm ``a``)."""
        if length is None:
            length = self.default_length
        if int(length) != self.default_length:
            raise WorldError(f"pathstar: sequences have {self.default_length} tokens "
                             f"(degree={self.degree}, length={self.length}), got length={length}")
        if n < 0:
            raise WorldError(f"pathstar: n must be >= 0, got {n}")
        rng = as_rng(seed)
        d, arm, E, N = self.degree, self.length, self.n_edges, self.n_nodes
        rows = np.arange(n)
        labels = np.argsort(rng.random((n, N)), axis=1)[:, :E + 1]  # uniform without replacement
        centre, arm_nodes = labels[:, 0], labels[:, 1:].reshape(n, d, arm)
        parent_nodes = np.concatenate([np.broadcast_to(centre[:, None, None], (n, d, 1)), arm_nodes[:, :, :-1]], axis=2)
        edges = np.stack([parent_nodes.reshape(n, E), arm_nodes.reshape(n, E)], axis=-1)  # [n, E, 2]
        goal_gen = rng.integers(0, d, size=n)
        order = np.argsort(rng.random((n, E)), axis=1)  # prompt slot k holds generated edge order[k]
        shuffled = edges[rows[:, None], order]
        tokens = self.lay_out(np.empty((n, self.default_length), dtype=np.int64), shuffled, centre,
                              arm_nodes[rows, goal_gen])
        # the arm index of the hidden state: rank of each arm's first edge in the prompt
        slot = np.argsort(order, axis=1)  # slot[r, e] = prompt position of generated edge e
        first_slot = slot[:, np.arange(d) * arm]  # [n, d]
        goal_arm = (first_slot < first_slot[rows, goal_gen][:, None]).sum(axis=1)
        states = np.repeat(goal_arm[:, None], self.default_length, axis=1).astype(np.int64)
        return Sample(tokens=tokens, states=states,
                      extras={"goal_arm_generated": goal_gen.astype(np.int64), "edge_order": order.astype(np.int64)})

    def lay_out(self, tokens: Any, shuffled: Any, centre: Any, goal_arm: Any) -> Any:
        """Fill ``tokens`` (``[n, default_length]``; numpy or torch alike) with the layout of
        the module docstring: the edges in prompt order ``shuffled`` ``[n, E, 2]``, the
        separators, the start ``centre`` ``[n]``, the goal (the last node of ``goal_arm``
        ``[n, length]``, the goal arm from the centre outwards), ``=`` and the path."""
        E = self.n_edges
        tokens[:, 0:3 * E:3] = shuffled[:, :, 0]
        tokens[:, 1:3 * E:3] = shuffled[:, :, 1]
        tokens[:, 2:3 * E - 1:3] = self.edge_sep_id
        tokens[:, self.sep_pos] = self.sep_id
        tokens[:, self.start_pos] = centre
        tokens[:, self.goal_pos] = goal_arm[:, -1]
        tokens[:, self.eq_pos] = self.equals_id
        tokens[:, self.prompt_length] = centre
        tokens[:, self.prompt_length + 1:] = goal_arm
        return tokens

    def beliefs(self, tokens: Any) -> np.ndarray:
        """float64 ``[n, L, degree]``: uniform before the goal token, one-hot on the goal arm
        (first-edge order) from it on."""
        tokens = self._check(tokens)
        n, L = tokens.shape
        out = np.full((n, L, self.degree), 1.0 / self.degree)
        if L > self.goal_pos:
            arm = self._structure(tokens)["goal_arm"]
            out[:, self.goal_pos:] = np.eye(self.degree)[arm][:, None, :]
        return out

    def next_token_probs(self, tokens: Any) -> np.ndarray:
        """float64 ``[n, L, V]`` (see the module docstring: exact except at the edge labels,
        where it is uniform over the labels)."""
        tokens = self._check(tokens)
        n, L = tokens.shape
        N, rows = self.n_nodes, np.arange(n)
        probs = np.zeros((n, L, self.vocab_size))
        nxt = np.full(L, -1, dtype=np.int64)  # kind of token t + 1 (-1: a label or the end)
        k = min(L, self.prompt_length - 1)
        nxt[:k] = self._kind[1:k + 1]
        special = nxt >= 0
        probs[:, np.flatnonzero(special), nxt[special]] = 1.0
        labels = ~special
        labels[self.start_pos - 1:] = False  # label positions of the edge list only
        probs[:, labels, :N] = 1.0 / N
        if L > self.default_length - 1:
            probs[:, self.default_length - 1, :N] = 1.0 / N  # nothing follows the goal leaf
        if L > self.sep_pos:
            s = self._structure(tokens)
            probs[rows, self.sep_pos, s["centre"]] = 1.0  # after '/': the start, the centre
            if L > self.start_pos:  # after the start: the goal, uniform over the leaves
                leaves = s["arms"][:, :, -1]
                probs[rows[:, None], self.start_pos, leaves] = 1.0 / self.degree
            if L > self.eq_pos:  # after '=', the path (a function of the prompt)
                path = np.concatenate([s["centre"][:, None], s["arms"][rows, s["goal_arm"]]], axis=1)
                stop = min(L, self.default_length - 1)
                for t in range(self.eq_pos, stop):
                    probs[rows, t, path[:, t + 1 - self.prompt_length]] = 1.0
        return probs

    def target_mask(self, tokens: Any) -> np.ndarray:
        """True at the path tokens after ``=`` (the start copy included), nowhere else."""
        tokens = np.asarray(tokens)
        if tokens.ndim == 1:
            tokens = tokens[None, :]
        mask = np.zeros(tokens.shape, dtype=bool)
        mask[:, self.prompt_length:self.default_length] = True
        return mask

    # --- the reference's text format ----------------------------------------------------
    def to_text(self, tokens: Any) -> list[str]:
        """Full sequences as lines of the reference's data files:
        ``u,v|u,v|...|u,v/s,g=s,a_1,...,a_l``."""
        tokens = self._check(tokens)
        if tokens.shape[1] != self.default_length:
            raise WorldError(f"pathstar: full sequences have {self.default_length} tokens, got {tokens.shape[1]}")
        self.parse(tokens)  # a malformed prompt raises
        E, out = self.n_edges, []
        for row in tokens:
            edges = "|".join(f"{row[3 * k]},{row[3 * k + 1]}" for k in range(E))
            path = ",".join(str(int(t)) for t in row[self.prompt_length:])
            out.append(f"{edges}/{row[self.start_pos]},{row[self.goal_pos]}={path}")
        return out

    def from_text(self, lines: Iterable[str]) -> np.ndarray:
        """int64 ``[n, default_length]`` from lines in the format of ``to_text`` (checked)."""
        seqs = []
        for i, line in enumerate(lines):
            line = line.strip()
            try:
                prefix, path = line.split("=")
                edge_text, sg = prefix.split("/")
                row: list[int] = []
                for k, edge in enumerate(edge_text.split("|")):
                    u, v = edge.split(",")
                    row += ([self.edge_sep_id] if k else []) + [int(u), int(v)]
                s, g = sg.split(",")
                row += [self.sep_id, int(s), int(g), self.equals_id] + [int(t) for t in path.split(",")]
            except ValueError:
                raise WorldError(f"pathstar: line {i + 1} is not 'u,v|...|u,v/s,g=path': {line[:60]!r}") from None
            if len(row) != self.default_length:
                raise WorldError(f"pathstar: line {i + 1} has {len(row)} tokens, expected {self.default_length}")
            seqs.append(row)
        tokens = np.array(seqs, dtype=np.int64).reshape(len(seqs), self.default_length)
        self.parse(tokens)
        return tokens

    # --- serialisation ----------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"kind": "pathstar", "degree": self.degree, "length": self.length, "n_nodes": self.n_nodes}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PathStar:
        if not isinstance(spec, dict) or spec.get("kind") != "pathstar":
            raise WorldError("PathStar.from_spec: spec must be a dict with kind 'pathstar'")
        missing = [k for k in ("degree", "length", "n_nodes") if k not in spec]
        if missing:
            raise WorldError(f"PathStar.from_spec: spec lacks {', '.join(missing)}")
        return cls(degree=spec["degree"], length=spec["length"], n_nodes=spec["n_nodes"])
