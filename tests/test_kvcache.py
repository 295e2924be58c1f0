"""The key/value cache (models.kvcache): logits equal to the full forward at every step."""
import numpy as np
import pytest
import torch

from nextlat_probe.models import kvcache
from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.transformer import build_transformer

ATOL = 1e-5


def _perturbed(model, scale=0.2, seed=0):
    """Random weights away from the initialisation (LayerNorm affines too), so that a
    mistake in any of them shows; the frozen zero position table of ``none`` stays zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def replay(model, seqs, plan, atol=ATOL):
    """Run ``plan`` (a list of ``(rows, k)`` appends and ``("back", rows, n)`` roll-backs) on a
    ``CachedDecoder``, feeding each row its own next tokens of ``seqs``; every returned logit
    and residual is compared with the full forward over the same prefix, computed here
    (``model(prefix)`` and the last block's hook). Returns how many positions were checked."""
    B = seqs.shape[0]
    dec = kvcache.CachedDecoder(model, B)
    assert dec.regime == "kv_cache"
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    store = {}
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, lambda a, hook: store.__setitem__("h", a))]):
        full = model(seqs)
    checked = 0
    for step in plan:
        if step[0] == "back":
            _, rows, n = step
            dec.truncate(dec.lengths[rows] - n, rows)
            continue
        rows, k = step
        rows = torch.as_tensor(rows)
        start = dec.lengths[rows].clone()
        toks = torch.stack([seqs[r, s:s + k] for r, s in zip(rows.tolist(), start.tolist())])
        logits, resid = dec.append(toks, rows, resid=True)
        for j, (r, s) in enumerate(zip(rows.tolist(), start.tolist())):
            torch.testing.assert_close(logits[j], full[r, s:s + k], atol=atol, rtol=atol)
            torch.testing.assert_close(resid[j], store["h"][r, s:s + k], atol=atol, rtol=atol)
            checked += k
        assert dec.lengths[rows].tolist() == (start + k).tolist()
    return checked


def random_plan(B, n_ctx, rng, steps=12):
    """Random prefixes (ragged first appends), then appends of 1-4 tokens to random row
    subsets and roll-backs of different lengths per row, never past the context."""
    lengths = np.zeros(B, dtype=np.int64)
    plan = []
    first = rng.integers(1, n_ctx // 2, size=B)
    for r in range(B):  # each row its own prefix length
        plan.append(([r], int(first[r])))
        lengths[r] += first[r]
    for _ in range(steps):
        rows = np.flatnonzero(rng.random(B) < 0.7)
        if rows.size == 0:
            continue
        if rng.random() < 0.3:
            for r in rows:  # a different roll-back per row
                n = int(rng.integers(0, lengths[r]))
                plan.append(("back", [int(r)], n))
                lengths[r] -= n
            continue
        k = int(rng.integers(1, 5))
        rows = rows[lengths[rows] + k <= n_ctx]
        if rows.size:
            plan.append((rows.tolist(), k))
            lengths[rows] += k
    return plan


@pytest.mark.parametrize("positional", ["learned", "rotary", "none"])
@pytest.mark.parametrize("normalization", ["LN", "RMS"])
def test_cached_logits_equal_the_full_forward(positional, normalization):
    cfg = ModelConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=24, d_vocab=11,
                      positional=positional, normalization=normalization)
    model = _perturbed(build_transformer(cfg, seed=1))
    assert kvcache.supports(model)
    if positional == "none":
        assert float(model.pos_embed._original_component.weight.abs().max()) == 0.0
    rng = np.random.default_rng(7)
    seqs = torch.as_tensor(rng.integers(0, 11, size=(6, 24)))
    assert replay(model, seqs, random_plan(6, 24, rng)) > 60


def test_the_comparison_can_fail():
    """A cache that ignored one position shift (rotary) or a stale row would be caught."""
    cfg = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=7, positional="rotary")
    model = _perturbed(build_transformer(cfg, seed=2))
    seqs = torch.as_tensor(np.random.default_rng(0).integers(0, 7, size=(2, 12)))
    dec = kvcache.CachedDecoder(model, 2)
    dec.append(seqs[:, :5])
    dec.truncate(torch.tensor([5, 3]))  # row 1 forgets two tokens ...
    logits = dec.append(seqs[:, 5:6])  # ... so its token 5 is read at position 3
    full = model(seqs)
    torch.testing.assert_close(logits[0, 0], full[0, 5], atol=ATOL, rtol=ATOL)
    assert (logits[1, 0] - full[1, 5]).abs().max() > 1e-3


def test_ragged_appends_and_capacity():
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10, d_vocab=5)
    model = _perturbed(build_transformer(cfg, seed=3))
    seqs = torch.as_tensor(np.random.default_rng(1).integers(0, 5, size=(3, 10)))
    dec = kvcache.CachedDecoder(model, 3)
    counts = torch.tensor([4, 1, 7])
    logits = dec.append(seqs[:, :7], counts=counts)  # row i takes its first counts[i] tokens
    assert dec.lengths.tolist() == [4, 1, 7]
    full = model(seqs)
    for i, c in enumerate(counts.tolist()):
        torch.testing.assert_close(logits[i, :c], full[i, :c], atol=ATOL, rtol=ATOL)
    more = dec.append(torch.stack([seqs[0, 4:7], seqs[1, 1:4], seqs[2, 7:10]]))
    for i, s in enumerate([4, 1, 7]):
        torch.testing.assert_close(more[i], full[i, s:s + 3], atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match="capacity"):
        dec.append(seqs[:, :1])  # row 2 is full (10 = n_ctx)


def test_sparse_row_subsets_compact_the_cache():
    """Appending to a few rows of a wide batch (rows of a batch that finished early) moves
    them to contiguous slots once; their logits stay those of the full forward, and the
    rows left behind can no longer be appended to."""
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=5,
                      positional="rotary")
    model = _perturbed(build_transformer(cfg, seed=6))
    seqs = torch.as_tensor(np.random.default_rng(6).integers(0, 5, size=(10, 12)))
    full = model(seqs)
    dec = kvcache.CachedDecoder(model, 10)
    dec.append(seqs[:, :4])
    keep = np.array([7, 2, 9])  # 3 of 10 rows, out of order
    out = dec.append(seqs[keep, 4:6], keep)
    assert sorted(dec.slot[keep].tolist()) == [0, 1, 2] and (dec.slot[[0, 1, 3]] == -1).all()
    torch.testing.assert_close(out, full[keep, 4:6], atol=ATOL, rtol=ATOL)
    dec.truncate(torch.tensor([5, 6]), [2, 9])  # per-row roll-back after the move
    out = dec.append(torch.stack([seqs[2, 5:7], seqs[9, 6:8]]), [2, 9])
    torch.testing.assert_close(out, torch.stack([full[2, 5:7], full[9, 6:8]]), atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match="no longer"):
        dec.append(seqs[[0], 4:5], [0])


def _trained_ckpts(tmp_path_factory, tiny_taxi_ckpts):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "max_len": 12, "min_len": 2}, objective="mtp",
                      horizon=2, steps=6, batch_size=16, eval_every=6, save_every=6, n_val=16, device="cpu",
                      warmup_steps=2, lr=3e-3)
    mtp = train(cfg, out_dir=tmp_path_factory.mktemp("mtp"), progress=False).checkpoint
    return {**tiny_taxi_ckpts, "mtp": mtp}


@pytest.mark.parametrize("objective", ["gpt", "nextlat", "mtp"])
def test_trained_checkpoints(objective, tiny_taxi_ckpts, tmp_path_factory):
    from nextlat_probe.sources import load_model

    if objective == "mtp":
        ckpts = _trained_ckpts(tmp_path_factory, tiny_taxi_ckpts)
    else:
        ckpts = tiny_taxi_ckpts
    m = load_model(ckpts[objective])
    assert m.objective_config.objective == objective
    rng = np.random.default_rng(3)
    n_ctx = int(m.model.cfg.n_ctx)
    seqs = torch.as_tensor(m.world.sample(5, seed=rng).tokens[:, :n_ctx])
    assert replay(m.model, seqs, random_plan(5, seqs.shape[1], rng)) > 40


def test_legacy_transformer_lens_model(tmp_path):
    """A HookedTransformer state dict (LNPre: no norm parameters; a custom attention
    scale) loaded through sources.load_model is cached like our own models."""
    from test_foreign_models import legacy_state_dict, save_legacy

    from nextlat_probe.sources import load_model

    cfg = dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=10, d_vocab=5, act_fn="gelu",
               normalization_type="LNPre", attn_scale=3.0)
    sd_path, cfg_path = save_legacy(tmp_path, legacy_state_dict(cfg, seed=4), cfg)
    m = load_model(sd_path, config=cfg_path, world="hmm:T=" + str(_hmm(tmp_path)))
    assert kvcache.supports(m.model)
    rng = np.random.default_rng(5)
    seqs = torch.as_tensor(rng.integers(0, 5, size=(4, 10)))
    assert replay(m.model, seqs, random_plan(4, 10, rng)) > 20


def _hmm(tmp_path):
    """A 5-token, 2-state HMM file (the legacy model's world: only its vocabulary matters)."""
    T = np.full((5, 2, 2), 0.1)
    path = tmp_path / "T.npy"
    np.save(path, T)
    return path


def test_other_models_fall_back_to_full_forwards(tmp_path):
    from test_foreign_models import tiny_gpt2

    from nextlat_probe.models.foreign import load_hf_folder

    folder = tmp_path / "gpt2"
    folder.mkdir()
    ref = tiny_gpt2()
    ref.save_pretrained(folder, safe_serialization=True)
    bridge = load_hf_folder(folder)
    assert not kvcache.supports(bridge) and "architecture" in kvcache.unsupported_reason(bridge)
    dec = kvcache.decoder(bridge, 2)
    assert dec.regime == "full_forward"
    seqs = torch.as_tensor(np.random.default_rng(2).integers(0, 7, size=(2, 12)))
    dec.append(seqs[:, :5])
    dec.truncate(torch.tensor([5, 2]))
    logits = dec.append(torch.stack([seqs[0, 5:8], seqs[1, 2:5]]))
    full = bridge(seqs)
    torch.testing.assert_close(logits, torch.stack([full[0, 5:8], full[1, 2:5]]), atol=ATOL, rtol=ATOL)
    with pytest.raises(ValueError, match="no key/value cache"):
        kvcache.decoder(bridge, 2, regime="kv_cache")
    small = build_transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=5))
    assert kvcache.decoder(small, 4, max_cache_bytes=10).regime == "full_forward"
    assert "exceeds" in kvcache.fallback_reason(small, 4, max_cache_bytes=10)
    refused = [name for name, value in (("attention_dir", "bidirectional"), ("gated_mlp", True),
                                        ("n_key_value_heads", 1), ("output_logits_soft_cap", 30.0))
               if not _supported_with(small, name, value)]
    assert len(refused) == 4 and kvcache.supports(small)


def _supported_with(model, name, value) -> bool:
    """``kvcache.supports`` with one config field changed (restored after)."""
    old = getattr(model.cfg, name)
    setattr(model.cfg, name, value)
    try:
        return kvcache.supports(model)
    finally:
        setattr(model.cfg, name, old)
