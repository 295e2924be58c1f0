"""Self-speculative decoding (NextLat's p_psi drafts, the transformer verifies): the output
must be plain greedy decoding's, and the accounting must follow the drafter's quality."""
import json

import numpy as np
import pytest
import torch

from nextlat_probe.analysis.speculative import (
    LatentDrafter,
    greedy_decode,
    parse_policy,
    speculative_decode,
    summary,
)
from nextlat_probe.checkpoint import load_checkpoint
from nextlat_probe.compare.speculative import prompts_for
from nextlat_probe.errors import AnalysisError
from nextlat_probe.records import check_record

POLICIES = ("fixed:1", "fixed:3", "adaptive")


def _setup(path, n=24, seed=0):
    m = load_checkpoint(path)
    prompts, new, stop, _ = prompts_for(m.world, m.model, n, seed)
    return m, prompts, new, stop


def _untrained(seed=0, n_ctx=20, V=7):
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.dynamics import LatentDynamics
    from nextlat_probe.models.transformer import build_transformer

    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=n_ctx, d_vocab=V)
    model = build_transformer(cfg, seed=seed).eval()
    torch.manual_seed(seed)
    dyn = LatentDynamics(32)
    with torch.no_grad():
        dyn.fc3.weight.normal_(0.0, 0.3)
        dyn.fc3.bias.normal_(0.0, 0.3)
    assert dyn.fc3.weight.abs().sum() > 0
    return model, dyn


@pytest.mark.parametrize("world", ["taxi", "mess3"])
def test_identical_to_greedy_trained(world, tiny_taxi_ckpts, tiny_mess3_ckpts):
    ckpt = (tiny_taxi_ckpts if world == "taxi" else tiny_mess3_ckpts)["nextlat"]
    m, prompts, new, stop = _setup(ckpt)
    ref = greedy_decode(m.model, prompts, new, stop_mask=stop, batch_size=7)
    assert all(len(t) >= 1 for t in ref.tokens)
    if world == "taxi":  # greedy trips stop after a non-turn token, within the turn budget
        assert all(len(t) <= new for t in ref.tokens)
    drafter = LatentDrafter(m.model, m.dynamics)
    for pol in POLICIES:
        res = speculative_decode(m.model, drafter, prompts, new, policy=pol, stop_mask=stop, batch_size=5)
        for a, b in zip(res.tokens, ref.tokens):
            np.testing.assert_array_equal(a, b)
        s = summary(res, ref, parse_policy(pol).k)
        assert s["identical_to_greedy"] and s["tokens_generated"] == sum(len(t) for t in ref.tokens)
        assert s["tokens_per_forward"] >= 1.0
        assert sum(s["accepted_histogram"]) == s["verifications"]


@pytest.mark.parametrize("seed", [0, 1])
def test_identical_to_greedy_untrained(seed):
    model, dyn = _untrained(seed)
    rng = np.random.default_rng(seed)
    prompts = rng.integers(0, 7, size=(16, 3))
    stop = np.zeros(7, dtype=bool)
    stop[int(rng.integers(0, 7))] = True  # one stop token
    drafter = LatentDrafter(model, dyn)
    for stop_mask, max_new in ((None, 100), (stop, 100), (None, 5)):
        ref = greedy_decode(model, prompts, max_new, stop_mask=stop_mask, batch_size=16)
        lengths = [len(t) for t in ref.tokens]
        assert max(lengths) <= min(max_new, 20 + 1 - 3)  # the context bounds generation
        for pol in POLICIES + ("fixed:8",):
            res = speculative_decode(model, drafter, prompts, max_new, policy=pol, stop_mask=stop_mask, batch_size=6)
            for a, b in zip(res.tokens, ref.tokens):
                np.testing.assert_array_equal(a, b)


class OracleDrafter:
    """Returns the transformer's own hidden state and logits along the greedy continuation
    (``wrong``: a head whose top token is never the transformer's)."""

    def __init__(self, model, prompts, greedy, wrong=False):
        from nextlat_probe.analysis.speculative import _forward

        n_ctx = int(model.cfg.n_ctx)
        seqs = [np.concatenate([p, g])[:n_ctx] for p, g in zip(prompts, greedy)]
        W = max(len(s) for s in seqs)
        buf = np.zeros((len(seqs), W), dtype=np.int64)
        for i, s in enumerate(seqs):
            buf[i, :len(s)] = s
        with torch.no_grad():
            logits, h = _forward(model, torch.as_tensor(buf), f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")
        self.H, self.logits_true = h, logits.float()
        self.wrong = wrong
        self.V = int(model.cfg.d_vocab)

    def step(self, h, tok, rows, pos):
        return self.H[rows, pos]

    def logits(self, h, rows, pos):
        lg = self.logits_true[rows, pos]
        if not self.wrong:
            return lg
        bad = (lg.argmax(-1) + 1) % self.V
        return torch.nn.functional.one_hot(bad, self.V).float() * 10.0


@pytest.mark.parametrize("k", [1, 3, 5])
def test_accounting_with_a_perfect_drafter(k, tiny_taxi_ckpts):
    m, p0, n0, s0 = _setup(tiny_taxi_ckpts["nextlat"])
    for model, prompts, new, stop in ((m.model, p0, n0, s0),
                                      (_untrained(3)[0], np.random.default_rng(3).integers(0, 7, (9, 2)), 40, None)):
        ref = greedy_decode(model, prompts, new, stop_mask=stop)
        drafter = OracleDrafter(model, prompts, ref.tokens)
        res = speculative_decode(model, drafter, prompts, new, policy=f"fixed:{k}", stop_mask=stop, batch_size=4)
        for a, b in zip(res.tokens, ref.tokens):
            np.testing.assert_array_equal(a, b)
        acc, drafted = np.array(res.accepted), np.array(res.drafted)
        assert (acc == drafted).all()  # every drafted token is accepted
        # k per verification except (at most once per sequence) at its end
        assert (acc == k).sum() >= len(acc) - len(prompts)
        assert (acc < k).sum() <= len(prompts)
        n_tok = sum(len(t) for t in ref.tokens)
        # one prompt forward per row, then k + 1 tokens per verification (fewer at the end)
        assert res.forwards == len(prompts) + res.verifications
        assert n_tok <= len(prompts) + (k + 1) * res.verifications
        if k > 1:
            assert n_tok / res.forwards > 1.5


def test_accounting_with_an_always_wrong_drafter(tiny_taxi_ckpts):
    m, p0, n0, s0 = _setup(tiny_taxi_ckpts["nextlat"])
    for model, prompts, new, stop in ((m.model, p0, n0, s0),
                                      (_untrained(4)[0], np.random.default_rng(4).integers(0, 7, (9, 2)), 40, None)):
        ref = greedy_decode(model, prompts, new, stop_mask=stop)
        drafter = OracleDrafter(model, prompts, ref.tokens, wrong=True)
        for pol in ("fixed:4", "adaptive"):
            res = speculative_decode(model, drafter, prompts, new, policy=pol, stop_mask=stop, batch_size=5)
            for a, b in zip(res.tokens, ref.tokens):
                np.testing.assert_array_equal(a, b)
            assert sum(res.accepted) == 0
            assert res.forwards == res.n_tokens  # exactly one token per forward


def test_policies_parse_and_refuse():
    assert parse_policy("fixed:4").k == 4 and parse_policy("adaptive").kind == "adaptive"
    assert parse_policy("adaptive:8").name == "adaptive:8"
    assert "rule" in parse_policy("adaptive").params()
    for bad in ("fixed", "fixed:0", "fixed:x", "greedy", "adaptive:-1"):
        with pytest.raises(AnalysisError):
            parse_policy(bad)


def test_gpt_checkpoint_is_one_line_error(tiny_taxi_ckpts, capsys):
    from nextlat_probe import speculate
    from nextlat_probe.cli import run_main

    with pytest.raises(SystemExit) as exc:
        run_main(speculate.main, [str(tiny_taxi_ckpts["gpt"]), "--n-prompts", "2"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "p_psi" in err and "GPT" in err.upper()


def test_records_cli_and_figure(tiny_taxi_ckpts, tiny_mess3_ckpts, capsys, tmp_path):
    from nextlat_probe import speculate
    from nextlat_probe.cli import run_main
    from nextlat_probe.compare import run_speculative
    from nextlat_probe.plots.interactive import speculative_figure

    recs = run_speculative([tiny_taxi_ckpts["nextlat"], tiny_mess3_ckpts["nextlat"]], draft=("fixed:2", "adaptive"),
                           n_prompts=6)
    assert len(recs) == 4
    for r in recs:
        check_record(r)
        assert r["analysis"] == "speculative" and r["variant"] in ("fixed:2", "adaptive")
        assert r["params"]["regime"] == "kv_cache" and "rule" in r["params"]
        assert r["protocol"]["name"] == "kv_cache" and "cache" in r["params"]["regime_note"]
        m = r["metrics"]
        assert m["identical_to_greedy"] is True and m["n_prompts"] == 6
        for key in ("mean_accepted", "forwards_per_token", "draft_calls", "seconds_speculative", "seconds_greedy",
                    "speedup", "accepted_histogram", "tokens_generated", "draft_acceptance", "positions_per_token"):
            assert key in m
        # a cached greedy step computes one position per token after the prompt forward
        assert m["greedy_positions_per_token"] < 2.0
    speculative_figure(recs)
    out = tmp_path / "s.html"
    with pytest.raises(SystemExit) as exc:
        run_main(speculate.main, [str(tiny_taxi_ckpts["nextlat"]), "--n-prompts", "3", "--draft", "fixed:2",
                                  "--draft", "adaptive", "--json", "--plot", str(out)])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in doc] == ["fixed:2", "adaptive"] and out.exists()
    assert all(r["params"]["regime"] == "kv_cache" and r["metrics"]["identical_to_greedy"] for r in doc)
    with pytest.raises(SystemExit) as exc:  # the full-forward regime on request: same tokens
        run_main(speculate.main, [str(tiny_taxi_ckpts["nextlat"]), "--n-prompts", "3", "--draft", "fixed:2",
                                  "--regime", "full_forward", "--json"])
    assert exc.value.code == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["params"]["regime"] == "full_forward" and doc[0]["metrics"]["identical_to_greedy"]


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_identical_to_greedy_at_batch_sizes(batch_size, tiny_taxi_ckpts):
    """Speculative decoding (both policies) from the cache, at batch 1, 7 and 64, gives cached
    greedy's tokens, which are full-forward greedy's."""
    m, prompts, new, stop = _setup(tiny_taxi_ckpts["nextlat"], n=64, seed=2)
    ref = greedy_decode(m.model, prompts, new, stop_mask=stop, batch_size=64, regime="full_forward")
    assert ref.regime == "full_forward"
    cached = greedy_decode(m.model, prompts, new, stop_mask=stop, batch_size=batch_size)
    assert cached.regime == "kv_cache"
    for a, b in zip(cached.tokens, ref.tokens):
        np.testing.assert_array_equal(a, b)
    # a cached greedy step computes one position: the prompt, then one per further token
    assert cached.positions == sum(prompts.shape[1] + len(t) - 1 for t in ref.tokens)
    drafter = LatentDrafter(m.model, m.dynamics)
    for pol in ("fixed:3", "adaptive"):
        res = speculative_decode(m.model, drafter, prompts, new, policy=pol, stop_mask=stop, batch_size=batch_size)
        assert res.regime == "kv_cache" and len(res.tokens) == 64
        for a, b in zip(res.tokens, ref.tokens):
            np.testing.assert_array_equal(a, b)
        assert res.n_tokens / res.forwards > 1.0  # drafts were accepted


def test_untrained_models_of_every_position_scheme():
    """Rotary and no-position models decode from the cache too, identically to greedy."""
    from nextlat_probe.models.config import ModelConfig
    from nextlat_probe.models.dynamics import LatentDynamics
    from nextlat_probe.models.transformer import build_transformer

    for positional in ("rotary", "none"):
        cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=7,
                          positional=positional)
        model = build_transformer(cfg, seed=5).eval()
        torch.manual_seed(5)
        dyn = LatentDynamics(32)
        prompts = np.random.default_rng(5).integers(0, 7, size=(9, 2))
        ref = greedy_decode(model, prompts, 20, regime="full_forward")
        for pol in ("fixed:2", "adaptive"):
            res = speculative_decode(model, LatentDrafter(model, dyn), prompts, 20, policy=pol, batch_size=4)
            assert res.regime == "kv_cache"
            for a, b in zip(res.tokens, ref.tokens):
                np.testing.assert_array_equal(a, b)
