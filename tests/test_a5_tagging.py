"""A5 in tagging form, the position schemes, and the A5 length / p_psi roll-out analyses.

Expected values are computed here independently: products by composing permutation tuples
by hand, roll-outs by a hand-written loop over the same modules."""
from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli

from nextlat_probe.analysis.a5eval import length_accuracy, rollout_accuracy, rollout_predictions
from nextlat_probe.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from nextlat_probe.errors import AnalysisError, CheckpointError
from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.dynamics import LatentDynamics
from nextlat_probe.models.transformer import build_transformer
from nextlat_probe.sources import world_from_text
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.trainer import train
from nextlat_probe.worlds import A5, WorldError, make_world, world_from_spec


def compose(g, h):
    """(g h)(i) = g(h(i)): apply h first, then g."""
    return tuple(g[h[i]] for i in range(5))


def products_by_hand(world: A5, tokens: np.ndarray) -> np.ndarray:
    """Running products of the token rows, composing the permutation tuples one by one."""
    el = world.elements
    index = {p: i for i, p in enumerate(el)}
    out = np.empty(tokens.shape, dtype=np.int64)
    for r, row in enumerate(tokens):
        s = (0, 1, 2, 3, 4)
        for t, g in enumerate(row):
            s = compose(s, el[int(g)])
            out[r, t] = index[s]
    return out


@pytest.fixture(scope="module")
def a5() -> A5:
    return A5()


# --------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------
def test_default_is_tagging(a5):
    assert a5.form == "tagging" and a5.tagging and make_world("a5").tagging
    assert a5.spec() == {"kind": "a5", "form": "tagging"}
    assert a5.default_length == 12 and a5.default_n_ctx == 64 and a5.default_lambda_kl == 0.0
    inter = A5(form="interleaved")
    assert not inter.tagging and inter.default_length == 16 and inter.default_positional == "learned"
    assert inter.default_lambda_kl == 1.0


def test_no_input_token_reveals_the_target(a5):
    """In tagging form the target at t is not a function of tokens (t-1, t): the same pair
    occurs with different targets. In the interleaved form it is (the test can tell)."""
    tokens = a5.sample(4000, 12, seed=0).tokens
    targets, scored = a5.output_targets(tokens)
    assert scored.all()
    seen: dict[tuple[int, int], set[int]] = {}
    for t in range(1, 12):
        for a, b, y in zip(tokens[:, t - 1], tokens[:, t], targets[:, t]):
            seen.setdefault((int(a), int(b)), set()).add(int(y))
    clashes = sum(len(v) > 1 for v in seen.values())
    assert clashes > 100, clashes
    # ... and no single token either, nor its position
    by_token = {}
    for t in range(1, 12):
        for b, y in zip(tokens[:, t], targets[:, t]):
            by_token.setdefault((t, int(b)), set()).add(int(y))
    assert all(len(v) > 1 for v in by_token.values())

    inter = A5(form="interleaved")
    tok = inter.sample(4000, 12, seed=0).tokens
    tgt, sc = inter.output_targets(tok)
    pairs: dict[tuple[int, int], set[int]] = {}
    for t in range(1, 11):
        for r in np.nonzero(sc[:, t])[0]:
            pairs.setdefault((int(tok[r, t - 1]), int(tok[r, t])), set()).add(int(tgt[r, t]))
    assert pairs and all(len(v) == 1 for v in pairs.values())


def test_targets_floor_and_probabilities(a5):
    s = a5.sample(50, 9, seed=1)
    assert s.tokens.shape == s.states.shape == (50, 9)
    expected = products_by_hand(a5, s.tokens)
    np.testing.assert_array_equal(s.states, expected)
    targets, scored = a5.output_targets(s.tokens)
    np.testing.assert_array_equal(targets, expected)
    assert scored.all() and not a5.target_mask(s.tokens).any()
    probs = a5.target_probs(s.tokens)
    np.testing.assert_array_equal(probs.argmax(-1), expected)
    np.testing.assert_array_equal(probs.max(-1), 1.0)
    np.testing.assert_array_equal(probs.sum(-1), 1.0)
    np.testing.assert_array_equal(a5.beliefs(s.tokens).argmax(-1), expected)
    np.testing.assert_allclose(a5.next_token_probs(s.tokens), 1 / 60)
    assert a5.exact_cross_entropy(s.tokens) == 0.0
    counts = np.bincount(a5.sample(30_000, 1, seed=2).tokens[:, 0], minlength=60)  # uniform inputs
    assert abs(counts - 500).max() < 5 * np.sqrt(500)


def test_a_word_composed_by_hand(a5):
    el = a5.elements
    g1 = (1, 2, 0, 3, 4)  # 0 -> 1 -> 2 -> 0
    g2 = (0, 1, 3, 4, 2)  # 2 -> 3 -> 4 -> 2
    g3 = (1, 0, 3, 2, 4)  # (01)(23)
    e = (0, 1, 2, 3, 4)
    word = np.array([[el.index(g1), el.index(g2), el.index(g3), el.index(e)]])
    # s_2(i) = g1(g2(i)): 0->g1(0)=1, 1->g1(1)=2, 2->g1(3)=3, 3->g1(4)=4, 4->g1(2)=0
    # s_3(i) = s_2(g3(i)): 0->s_2(1)=2, 1->s_2(0)=1, 2->s_2(3)=4, 3->s_2(2)=3, 4->s_2(4)=0
    expected = [g1, (1, 2, 3, 4, 0), (2, 1, 4, 3, 0), (2, 1, 4, 3, 0)]
    targets, _ = a5.output_targets(word)
    assert [el[int(i)] for i in targets[0]] == expected


def test_specs_and_backward_compatibility(a5):
    back = world_from_spec(json.loads(json.dumps(a5.spec())))
    assert isinstance(back, A5) and back.tagging
    inter = A5(form="interleaved")
    again = world_from_spec(json.loads(json.dumps(inter.spec())))
    assert again.form == "interleaved" and inter.spec() == {"kind": "a5", "form": "interleaved"}
    old = world_from_spec({"kind": "a5"})  # checkpoints from before the tagging form
    assert old.form == "interleaved" and not old.tagging
    s = old.sample(5, 6, seed=4)
    np.testing.assert_array_equal(s.tokens[:, 1::2], products_by_hand(a5, s.tokens[:, 0::2]))
    np.testing.assert_array_equal(old.sample(5, 6, seed=4).tokens, A5(form="interleaved").sample(5, 6, seed=4).tokens)
    assert world_from_text("a5:form=interleaved").form == "interleaved"
    assert world_from_text("a5").form == "tagging"
    with pytest.raises(WorldError, match="form"):
        A5(form="both")
    with pytest.raises(WorldError, match="form"):
        world_from_spec({"kind": "a5", "form": "sideways"})


# --------------------------------------------------------------------------------------
# position schemes
# --------------------------------------------------------------------------------------
def one_layer(positional: str, seed: int = 0):
    cfg = ModelConfig(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=16, d_vocab=10, positional=positional)
    return build_transformer(cfg, seed=seed).eval()


def test_none_is_invariant_to_permuting_the_earlier_tokens():
    """With no positions, a one-layer model's last output is a symmetric function of the
    earlier tokens; learned and rotary positions break that."""
    x = torch.tensor([[1, 7, 3, 3, 9, 0, 4, 2]])
    perm = torch.tensor([5, 2, 0, 6, 1, 4, 3])
    y = torch.cat([x[:, perm], x[:, -1:]], dim=1)
    with torch.no_grad():
        for positional in ("none", "learned", "rotary"):
            m = one_layer(positional)
            diff = (m(x)[0, -1] - m(y)[0, -1]).abs().max().item()
            if positional == "none":
                assert diff < 1e-5
            else:
                assert diff > 1e-3, positional


def test_none_has_a_zero_frozen_table_and_the_embedding_hooks():
    m = one_layer("none")
    assert not m.W_pos.any() and not m.W_pos.requires_grad
    store = {}

    def keep(label):
        def grab(x, hook):
            store[label] = x.detach()
        return grab

    with torch.no_grad(), m.hooks(fwd_hooks=[("hook_embed", keep("embed")), ("blocks.0.hook_resid_pre", keep("pre"))]):
        m(torch.tensor([[1, 2, 3]]))
    assert set(store) == {"embed", "pre"} and torch.equal(store["embed"], store["pre"])  # no position added


def test_rotary_rotates_and_has_no_table():
    rot = one_layer("rotary")
    assert "pos_embed.weight" not in rot.state_dict()
    nope = one_layer("none")
    nope.load_state_dict({**rot.state_dict(), "pos_embed.weight": torch.zeros(16, 32)})
    x = torch.tensor([[1, 7, 3, 3, 9, 0]])
    with torch.no_grad():
        a, b = rot(x), nope(x)
    # the same weights: position 0 is not rotated, every later one is
    torch.testing.assert_close(a[0, 0], b[0, 0])
    assert (a[0, 1:] - b[0, 1:]).abs().amax(-1).min().item() > 1e-4


def test_model_config_positional():
    assert ModelConfig().positional == "learned"
    assert ModelConfig.from_dict({"n_layers": 1}).positional == "learned"
    with pytest.raises(ValueError, match="positional"):
        ModelConfig(positional="sinusoidal")
    with pytest.raises(ValueError, match="even d_head"):
        ModelConfig(d_head=15, positional="rotary")


# --------------------------------------------------------------------------------------
# training and checkpoints
# --------------------------------------------------------------------------------------
def quick(**kw):
    base = dict(world="a5", objective="nextlat", steps=2, batch_size=4, eval_every=2, save_every=2, n_val=8,
                device="cpu", warmup_steps=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("a5runs")
    return {p: train(quick(positional=p), base / p, progress=False) for p in ("learned", "rotary", "none")}


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
def test_schemes_train_load_and_resume(runs, positional):
    res = runs[positional]
    assert res.model_config.positional == positional and res.model_config.n_ctx == 64  # trained at 12
    assert res.objective_config.lambda_kl == 0.0  # A5's default
    ck = load_checkpoint(res.checkpoint)
    assert ck.model_config.positional == positional and ck.world.tagging
    if positional == "none":
        assert not ck.model.W_pos.any() and not ck.model.W_pos.requires_grad
    x = torch.as_tensor(ck.world.sample(3, 36, seed=0).tokens)
    with torch.no_grad():
        assert ck.model(x).shape == (3, 36, 60)  # read past the training length
    acc = length_accuracy(ck.model, ck.world, lengths=(12, 36), n_seqs=8)
    assert [a.length for a in acc] == [12, 36] and len(acc[1].per_position) == 36
    again = train(TrainConfig(steps=3), res.checkpoint.parent, resume=res.checkpoint, progress=False)
    assert again.step == 3 and again.model_config.positional == positional


def test_positional_in_checkpoints_is_validated(runs, tmp_path):
    raw = read_checkpoint(runs["learned"].checkpoint)
    raw.pop("_path")
    del raw["model_config"]["positional"]  # a checkpoint from before the field
    save_checkpoint(raw, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").model_config.positional == "learned"
    raw["model_config"]["positional"] = "sinusoidal"
    save_checkpoint(raw, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="positional") as exc:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(exc.value)
    raw = read_checkpoint(runs["none"].checkpoint)
    raw.pop("_path")
    raw["model"]["pos_embed.weight"] = torch.ones_like(raw["model"]["pos_embed.weight"])
    save_checkpoint(raw, tmp_path / "nonzero.pt")
    with pytest.raises(CheckpointError, match="not zero"):
        load_checkpoint(tmp_path / "nonzero.pt")


def test_old_interleaved_run_loads_and_resumes(tmp_path):
    """A run from before the tagging form (spec {"kind": "a5"}, no positional) is the
    interleaved world and still resumes in its own folder."""
    folder = tmp_path / "old"
    res = train(quick(world_options={"form": "interleaved"}, objective="gpt"), folder, progress=False)
    assert res.model_config.positional == "learned" and res.model_config.n_ctx == 16
    raw = read_checkpoint(res.checkpoint)
    raw.pop("_path")
    raw["world_spec"] = {"kind": "a5"}
    del raw["model_config"]["positional"]
    del raw["train_config"]["positional"]
    raw["train_config"].update(world_options={}, lambda_kl=1.0)  # what older runs stored
    save_checkpoint(raw, res.checkpoint)
    run = json.loads((folder / "run.json").read_text())
    run["world_spec"] = {"kind": "a5"}
    del run["model_config"]["positional"]
    (folder / "run.json").write_text(json.dumps(run))
    ck = load_checkpoint(res.checkpoint)
    assert ck.world.form == "interleaved" and ck.model_config.positional == "learned"
    again = train(TrainConfig(steps=3), folder, resume=res.checkpoint, progress=False)
    assert again.step == 3


def test_lambda_kl_default_and_explicit(tmp_path):
    assert train(quick(lambda_kl=1.0), tmp_path / "kl1", progress=False).objective_config.lambda_kl == 1.0
    mess = train(quick(world="mess3", seq_len=6), tmp_path / "mess3", progress=False)
    assert mess.objective_config.lambda_kl == 1.0 and mess.model_config.positional == "learned"
    assert mess.model_config.n_ctx == 6


def test_train_cli_defaults_and_options(tmp_path):
    r = run_cli("nextlat_probe.train", "--world", "a5", "--objective", "nextlat", "--steps", "1", "--batch-size", "4",
                "--n-val", "8", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "a"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lambda_kl 0" in r.stdout and "positional rotary" in r.stdout and "n_ctx 64" in r.stdout
    r = run_cli("nextlat_probe.train", "--world", "a5", "--form", "interleaved", "--objective", "nextlat", "--lambda-kl", "1",
                "--positional", "none", "--steps", "1", "--batch-size", "4", "--n-val", "8", "--device", "cpu",
                "--no-progress", "--out", str(tmp_path / "b"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lambda_kl 1" in r.stdout and "positional none" in r.stdout
    ck = read_checkpoint(tmp_path / "b" / "ckpt.pt")
    assert ck["world_spec"] == {"kind": "a5", "form": "interleaved"} and ck["objective_config"]["lambda_kl"] == 1.0
    r = run_cli("nextlat_probe.train", "--world", "mess3", "--form", "tagging", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "--form applies only" in r.stderr


# --------------------------------------------------------------------------------------
# the analyses, on models whose answers are known
# --------------------------------------------------------------------------------------
class ProductModel(torch.nn.Module):
    """Logits one-hot on the running product (composed by hand from permutations) at every
    position < ``right_until``, and on the element after it from there on. As a stand-in
    for a solved transformer in a 60-dimensional code space it also exposes what the
    roll-out reads: a last-block residual (one-hot of s_t) through the bridge's hook
    protocol, one-hot token embeddings, and an identity output head."""

    def __init__(self, world: A5, right_until: int = 10**9):
        super().__init__()
        self.world, self.right_until = world, right_until
        self.cfg = SimpleNamespace(n_layers=1, n_ctx=64, eps=1e-5, normalization_type="LN")
        self.W_E = torch.nn.Parameter(torch.eye(60), requires_grad=False)
        self.W_U = torch.eye(60)
        self.b_U = torch.zeros(60)
        self.ln_final = SimpleNamespace(_original_component=torch.nn.LayerNorm(60))
        self.hook_dict: dict = {}
        self._hooks: list = []

    @contextlib.contextmanager
    def hooks(self, fwd_hooks=()):
        self._hooks = list(fwd_hooks)
        try:
            yield self
        finally:
            self._hooks = []

    def forward(self, tokens):
        prods = torch.as_tensor(products_by_hand(self.world, tokens.cpu().numpy()))
        resid = F.one_hot(prods, 60).float()
        for name, fn in self._hooks:
            if name == "blocks.0.hook_resid_post":
                fn(resid, SimpleNamespace(name=name))
        wrong = (prods + 1) % 60
        pos = torch.arange(tokens.shape[1])[None, :]
        return F.one_hot(torch.where(pos < self.right_until, prods, wrong), 60).float()


class GroupAction(torch.nn.Module):
    """p_psi that is exactly the group action on normalised one-hot codes: ĥ' = code(s g)
    (``order="left"`` computes code(g s) instead, the wrong convention; ``"identity"``
    ignores the input)."""

    def __init__(self, world: A5, order: str = "right"):
        super().__init__()
        mul = torch.as_tensor(np.array(world.mul))
        table = torch.zeros(60, 60, 60)
        table[torch.arange(60)[:, None], torch.arange(60)[None, :], mul if order == "right" else mul.T] = 1.0
        self.table, self.order = table, order

    def forward(self, h, e):
        if self.order == "identity":
            return h
        s = F.one_hot(h.argmax(-1), 60).float()  # the element the code names
        nxt = torch.einsum("na,nb,abc->nc", s, e, self.table)
        return F.layer_norm(nxt, (60,))


def test_length_accuracy_of_known_models(a5):
    for a in length_accuracy(ProductModel(a5), a5, lengths=(12, 18), n_seqs=32, seed=1):
        assert a.token["value"] == 1.0 and a.sequence["value"] == 1.0
        assert [p["value"] for p in a.per_position] == [1.0] * a.length
    acc = length_accuracy(ProductModel(a5, right_until=12), a5, lengths=(12, 18, 36), n_seqs=32, seed=1)
    assert [a.length for a in acc] == [12, 18, 36]
    for a in acc:
        assert [p["value"] for p in a.per_position] == [1.0 if t < 12 else 0.0 for t in range(a.length)]
        assert a.token["count"] == 32 * 12 and a.token["n"] == 32 * a.length
        assert a.positions == list(range(a.length))
    assert [a.sequence["value"] for a in acc] == [1.0, 0.0, 0.0]
    lo, hi = acc[1].per_position[0]["low"], acc[1].per_position[0]["high"]
    assert 0.85 < lo < 1.0 and hi == 1.0  # Wilson, not a degenerate interval
    with pytest.raises(AnalysisError, match="context"):
        length_accuracy(ProductModel(a5), a5, lengths=(65,), n_seqs=2)
    with pytest.raises(AnalysisError, match="tagging"):
        length_accuracy(ProductModel(a5), A5(form="interleaved"), n_seqs=2)


def test_rollout_with_the_exact_group_action(a5):
    model = ProductModel(a5)
    res = rollout_accuracy(model, GroupAction(a5), a5, lengths=(12, 24), start=3, n_seqs=32, seed=2)
    for r in res:
        assert r.start == 3 and r.rollout.positions == list(range(4, r.length))
        assert r.rollout.token["value"] == 1.0 and r.rollout.sequence["value"] == 1.0
        assert r.transformer.token["value"] == 1.0 and r.start_state["value"] == 1.0
    # the other multiplication order is wrong wherever s and g do not commute (A5 is not abelian)
    left = rollout_accuracy(model, GroupAction(a5, "left"), a5, lengths=(12,), start=3, n_seqs=64, seed=2)[0]
    assert left.rollout.token["value"] < 0.3 and left.rollout.sequence["value"] == 0.0
    assert left.transformer.token["value"] == 1.0
    frozen = rollout_accuracy(model, GroupAction(a5, "identity"), a5, lengths=(12,), start=3, n_seqs=64, seed=2)[0]
    assert frozen.rollout.token["value"] < 0.1
    with pytest.raises(AnalysisError, match="start"):
        rollout_accuracy(model, GroupAction(a5), a5, lengths=(12,), start=11, n_seqs=2)


def test_rollout_matches_a_hand_written_unrolling(a5):
    """The real bridge and the real p_psi: the predicted ids and per-position counts equal
    those of a loop written here."""
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=24, d_vocab=60, positional="rotary")
    model = build_transformer(cfg, seed=3).eval()
    torch.manual_seed(4)
    dyn = LatentDynamics(32)
    for p in dyn.fc3.parameters():  # not the identity map it starts as
        torch.nn.init.normal_(p, std=0.5)
    start, length, n = 2, 16, 48
    res = rollout_accuracy(model, dyn, a5, lengths=(length,), start=start, n_seqs=n, seed=5)[0]

    tokens = a5.sample(n, length, seed=np.random.default_rng([5, length])).tokens
    target = products_by_hand(a5, tokens)
    x = torch.as_tensor(tokens)
    with torch.no_grad():
        logits, cache = model.run_with_cache(x)
        h = F.layer_norm(cache["blocks.1.hook_resid_post"][:, start], (32,))
        ln = model.ln_final._original_component
        first = (F.layer_norm(h, (32,), ln.weight, ln.bias, 1e-5) @ model.W_U + model.b_U).argmax(-1).numpy()
        ids = []
        for t in range(start + 1, length):
            h = dyn(h, model.W_E[x[:, t]])
            ids.append((F.layer_norm(h, (32,), ln.weight, ln.bias, 1e-5) @ model.W_U + model.b_U).argmax(-1).numpy())
        ids = np.stack(ids, axis=1)
        counts = (ids == target[:, start + 1 :]).sum(0).tolist()
        own = [int((logits[:, t].argmax(-1).numpy() == target[:, t]).sum()) for t in range(start + 1, length)]
    pred, start_pred, own_pred = rollout_predictions(model, dyn, tokens, start, batch_size=20)
    np.testing.assert_array_equal(pred, ids)
    np.testing.assert_array_equal(start_pred, first)
    np.testing.assert_array_equal(own_pred, logits.argmax(-1).numpy())
    assert len(np.unique(ids)) > 10  # the roll-out moves: a loop at the wrong position would differ
    assert [p["count"] for p in res.rollout.per_position] == counts
    assert [p["count"] for p in res.transformer.per_position] == own
    assert res.rollout.token["n"] == n * (length - start - 1)
