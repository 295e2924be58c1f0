"""The one generation API (analysis.generation): cached decoding makes the decisions that
full-forward decoding made, down to near-ties, and every record names its regime."""
import numpy as np
import pytest
import torch

from nextlat_probe.analysis import generation as gen
from nextlat_probe.analysis.worldmodel import Predictor, as_predictor


@pytest.mark.slow
def test_records_equal_the_stored_full_forward_reference():
    """tests/decoding_reference.json holds the records of every decoding path as the code
    computed them before the key/value cache (full forwards; its docstring has the command).
    The same models, rebuilt from the same seeds, decoded from the cache now, give the same
    records; and the regime they name is the cache."""
    import decoding_reference as ref

    want = ref.FIXTURE.read_text()
    import json

    stored = json.loads(want)
    assert stored["command"] == ref.COMMAND and stored["seed"] == ref.SEED
    got = ref.records()
    assert ref.differences(stored["records"], got) == []
    for key in ("worldmodel/taxi_learned", "worldmodel/taxi_rotary", "worldmodel/rrxor", "mapping/taxi_learned"):
        assert got[key][0]["params"]["regime"] == "kv_cache", key
    assert got["pathstar"]["params"]["regime"] == "kv_cache"
    # the comparison is sensitive: one flipped decision shows
    flipped = json.loads(want)["records"]
    flipped["pathstar/paths"][3][2] += 1
    assert len(ref.differences(flipped, got)) == 1


@pytest.mark.slow
def test_cached_and_full_forward_world_model_metrics_agree():
    """On any machine (no stored numbers): the cached and the full-forward regime give the
    same world-model result on the same model, seed and trips."""
    import decoding_reference as ref

    from nextlat_probe.analysis.worldmodel import evaluate_world_model, model_predictor

    w = ref.worlds()["taxi"]
    with ref.one_thread():
        model = ref.train_tiny(w, w.default_length, steps=60)
        out = {}
        for regime in ("kv_cache", "full_forward"):
            res = evaluate_world_model(model_predictor(model, regime=regime), w, n_pairs=24, seed=3)
            out[regime] = res.to_dict()
    assert out["kv_cache"]["settings"].pop("regime") == "kv_cache"
    assert out["full_forward"]["settings"].pop("regime") == "full_forward"
    assert out["full_forward"]["settings"].pop("regime_note") == "full forwards requested"
    assert out["kv_cache"] == out["full_forward"]


class Tied(Predictor):
    """Tokens 1 and 2 exactly tied after every prefix (token 0 unlikely): greedy takes 1."""

    max_length = None

    def __call__(self, tokens):
        p = np.zeros(tokens.shape + (4,))
        p[..., :3] = [0.1, 0.4, 0.4]
        p[..., 3] = 0.1
        return p


class Jittered(gen.Session):
    """An approximate session (as a cache is): probabilities off by 1e-7, enough to turn
    every exact tie the other way."""

    approximate = True

    def probs(self, rows):
        p = super().probs(rows)
        p[:, 2] += 1e-7
        return p


class JitteredTied(Tied):
    def session(self, prefixes, lengths, steps, pad_id=0):
        return Jittered(self, prefixes, lengths, steps, pad_id)


def test_near_ties_are_decided_by_the_reference():
    prompts = np.zeros((5, 2), dtype=np.int64)
    exact = gen.extend(Tied(), prompts, 4, gen.Greedy())
    assert (exact[:, 2:] == 1).all()
    approx = gen.extend(JitteredTied(), prompts, 4, gen.Greedy())
    assert np.array_equal(approx, exact)
    # without the re-decision the jitter would have flipped every choice
    s = Jittered(JitteredTied(), prompts, None, 1)
    assert (s.probs(np.arange(5)).argmax(axis=1) == 2).all()


def test_near_ties_in_sampling():
    """A uniform draw on a cumulative boundary, and a probability on the epsilon cut-off, are
    decided on the reference; draws far from both are not flagged."""
    p = np.array([[0.1, 0.4, 0.4, 0.1]])
    assert gen.sample_cutoff_fragile(p, np.array([0.5]), 0.01).all()  # 0.5 * 1.0 = c[1]
    assert not gen.sample_cutoff_fragile(p, np.array([0.3]), 0.01).any()
    assert gen.sample_cutoff_fragile(p, np.array([0.3]), 0.1).all()  # 0.1 sits on the cut-off
    assert gen.sample_cutoff(p, np.array([0.3]), 0.01)[0] == 1
    prompts = np.zeros((40, 1), dtype=np.int64)
    a = gen.extend(Tied(), prompts, 3, gen.Sample(np.random.default_rng(4), 0.01))
    b = gen.extend(JitteredTied(), prompts, 3, gen.Sample(np.random.default_rng(4), 0.01))
    assert np.array_equal(a, b)


def test_greedy_pick_near_ties_take_the_full_forward():
    logits = torch.tensor([[1.0, 1.0 + 1e-6, 0.0], [3.0, 1.0, 0.0]])

    def model(tokens):  # the "full forward": token 0 wins the near-tie
        out = torch.zeros(tokens.shape + (3,))
        out[..., 0] = 2.0
        return out

    tok, k = gen.greedy_pick(model, logits, lambda i: torch.zeros((len(i), 2), dtype=torch.long), True)
    assert tok.tolist() == [0, 0] and k == 1
    tok, k = gen.greedy_pick(model, logits, lambda i: None, False)
    assert tok.tolist() == [1, 0] and k == 0
    tok, k = gen.greedy_pick(model, logits[:, [1, 0, 2]] + torch.tensor([0.0, 1.0, 0.0]), lambda i: None, True)
    assert tok.tolist() == [1, 1] and k == 0  # a clear winner is never re-decided


def test_plain_functions_recompute_and_report_no_model_regime():
    calls = []

    def fn(tokens):
        calls.append(tokens.shape)
        return Tied()(tokens)

    out = gen.extend(as_predictor(fn), np.zeros((3, 2), dtype=np.int64), 3, gen.Greedy())
    assert out.shape == (3, 5) and len(calls) == 3 and calls[-1] == (3, 4)
    assert gen.regime_of(fn) == {}


def test_model_predictor_regimes(tmp_path):
    from nextlat_probe.analysis.worldmodel import model_predictor
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.transformer import build_transformer

    model = build_transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=5))
    prompts = np.random.default_rng(0).integers(0, 5, size=(6, 3))
    runs = {}
    for regime in ("auto", "full_forward"):
        p = model_predictor(model, regime=regime)
        runs[regime] = gen.extend(p, prompts, 5, gen.Greedy())
        assert gen.regime_of(p)["regime"] == ("kv_cache" if regime == "auto" else "full_forward")
    assert np.array_equal(runs["auto"], runs["full_forward"])
    tight = model_predictor(model)
    tight.max_cache_bytes = 1
    gen.extend(tight, prompts, 2, gen.Greedy())
    info = gen.regime_of(tight)
    assert info["regime"] == "full_forward" and "exceeds" in info["regime_note"]
    # a context overflow is one clear error in both regimes
    for regime in ("auto", "full_forward"):
        with pytest.raises(ValueError, match="context"):
            gen.extend(model_predictor(model, regime=regime), prompts, 7, gen.Greedy())
