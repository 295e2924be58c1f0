"""The hook-free training forward (models.fastpath) computes what the bridge computes."""
import pytest
import torch

from nextlat_probe.models import fastpath
from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.transformer import build_transformer, last_resid_hook


def bridge_forward(model, cfg, tokens):
    store = {}

    def keep(resid, hook):
        store["resid"] = resid
        return resid

    with model.hooks(fwd_hooks=[(last_resid_hook(cfg), keep)]):
        logits = model(tokens)
    return logits, store["resid"]


@pytest.mark.parametrize("overrides", [{}, {"normalization": "RMS"}, {"act_fn": "relu", "n_layers": 3}])
def test_logits_residual_and_gradients_match_the_bridge(overrides):
    cfg = ModelConfig(**{**dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=20, d_vocab=11),
                         **overrides})
    model = build_transformer(cfg, seed=3)
    assert fastpath.supports(model)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, cfg.d_vocab, (4, 17), generator=g)
    ref_logits, ref_resid = bridge_forward(model, cfg, tokens)
    logits, resid = fastpath.forward(model, tokens)
    torch.testing.assert_close(logits, ref_logits, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(resid, ref_resid, atol=2e-5, rtol=1e-4)
    w = torch.randn(ref_logits.shape, generator=g)
    v = torch.randn(ref_resid.shape, generator=g)
    grads = []
    for lo, re in ((ref_logits, ref_resid), (logits, resid)):
        model.zero_grad()
        ((lo * w).sum() + (re * v).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-4, rtol=1e-3, msg=name)


def test_unfamiliar_configs_fall_back_to_the_bridge():
    model = build_transformer(ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=5))
    assert fastpath.supports(model)
    for name, value in (("attention_dir", "bidirectional"), ("act_fn", "silu"),
                        ("positional_embedding_type", "rotary"), ("attn_scale", 2.0)):
        old = getattr(model.cfg, name)
        setattr(model.cfg, name, value)
        try:
            assert not fastpath.supports(model), name
        finally:
            setattr(model.cfg, name, old)
    assert not fastpath.supports(torch.nn.Linear(2, 2))
