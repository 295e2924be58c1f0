"""NextLat objective: gradient paths, identity start, roll-out, single forward pass."""
import pytest
import torch
import torch.nn.functional as F

from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.dynamics import LatentDynamics
from nextlat_probe.models.objective import (
    Batch,
    ObjectiveConfig,
    compute_losses,
    masked_cross_entropy,
    nextlat_latent_losses,
    normalize_latent,
)
from nextlat_probe.models.transformer import build_transformer, final_hook_name


def make(n_layers=1, vocab=7, seed=0):
    cfg = ModelConfig(n_layers=n_layers, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=vocab)
    torch.manual_seed(seed)
    model = build_transformer(cfg, seed=seed)
    dyn = LatentDynamics(cfg.d_model)
    return cfg, model, dyn


def randomize(dyn, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in dyn.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def batch(vocab=7, n=3, length=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, vocab, (n, length), generator=g)
    tm = torch.ones_like(t, dtype=torch.bool)
    tm[:, 0] = False
    return t, tm, torch.ones_like(tm)


def as_batch(t, tm, pm):
    """The next-token Batch of tokens ``t`` whose token i is a target where ``tm[:, i]``
    (written here, not via World.output_targets, so the test checks that alignment)."""
    targets = torch.zeros_like(t)
    targets[:, :-1] = t[:, 1:]
    scored = torch.zeros_like(tm)
    scored[:, :-1] = tm[:, 1:]
    return Batch(t, targets, scored, pm)


def test_p_psi_starts_as_identity():
    dyn = LatentDynamics(8, d_hidden=5)
    h, e = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    assert torch.equal(dyn(h, e), h)
    assert dyn.d_hidden == 5 and LatentDynamics(8, d_hidden=0).d_hidden == 8


def test_zero_lambdas_equal_gpt_loss_exactly():
    cfg, model, dyn = make(n_layers=2)
    randomize(dyn)
    b = as_batch(*batch())
    gpt = compute_losses(model, None, b, ObjectiveConfig("gpt"), final_hook_name(cfg))["loss"]
    nl = compute_losses(model, dyn, b, ObjectiveConfig("nextlat", 3, 0.0, 0.0), final_hook_name(cfg))
    assert torch.equal(nl["loss"], gpt)
    assert nl["next_h"] > 0  # the term is computed, just weighted by 0


def test_ce_matches_hand_computation():
    cfg, model, _ = make()
    t, tm, _ = batch()
    tm[1, 4] = False
    logits = model(t)
    b = as_batch(t, tm, torch.ones_like(tm))
    ce = masked_cross_entropy(logits, b.targets, b.scored)
    lp = logits.log_softmax(-1)
    vals = [-lp[b, i - 1, t[b, i]] for b in range(t.shape[0]) for i in range(1, t.shape[1]) if tm[b, i]]
    assert torch.allclose(ce, torch.stack(vals).mean(), atol=1e-6)


def _live_h(model, cfg, t):
    store = {}
    with model.hooks(fwd_hooks=[(final_hook_name(cfg), lambda x, hook: store.__setitem__("h", x) or x)]):
        model(t)
    return normalize_latent(store["h"])


def test_regression_target_receives_no_gradient():
    cfg, model, dyn = make()
    randomize(dyn)
    t, _, pm = batch()
    h_leaf = _live_h(model, cfg, t).detach().requires_grad_(True)
    loss_h, _ = nextlat_latent_losses(model, dyn, h_leaf, t, pm, horizon=1, with_kl=False)
    (g_ours,) = torch.autograd.grad(loss_h, h_leaf)

    e = model.W_E[t].detach()
    pred = dyn(h_leaf[:, :-1], e[:, 1:])
    ref = F.smooth_l1_loss(pred, h_leaf[:, 1:].detach())
    (g_ref,) = torch.autograd.grad(ref, h_leaf)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)
    # the last position is only ever a target: no gradient may reach it
    assert torch.count_nonzero(g_ours[:, -1]) == 0
    # sanity: with a non-detached target the gradient would differ (the test can fail)
    bad = F.smooth_l1_loss(dyn(h_leaf[:, :-1], e[:, 1:]), h_leaf[:, 1:])
    (g_bad,) = torch.autograd.grad(bad, h_leaf)
    assert not torch.allclose(g_bad, g_ref)


def test_kl_head_gets_no_gradient_and_psi_does():
    cfg, model, dyn = make()
    randomize(dyn)
    t, _, pm = batch()
    h = _live_h(model, cfg, t)
    _, kl = nextlat_latent_losses(model, dyn, h, t, pm, horizon=2, with_kl=True)
    assert kl > 0
    kl.backward()
    head = [model.W_U, model.ln_final._original_component.weight, model.ln_final._original_component.bias]
    for p in [*model.unembed.parameters(), *model.ln_final.parameters()]:
        assert p.grad is None or torch.count_nonzero(p.grad) == 0
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in head if p.is_leaf)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dyn.parameters())
    # the transformer body does receive gradient through p_psi's input h_t
    assert model.blocks[0].attn.q.weight.grad.abs().sum() > 0


def test_horizon_two_consumes_first_prediction():
    cfg, model, dyn = make(n_layers=1)
    randomize(dyn)
    t, _, pm = batch(length=8)
    _, cache = model.run_with_cache(t)
    h = normalize_latent(cache[final_hook_name(cfg)])
    e = model.W_E[t].detach()
    # hand unrolled
    h1 = dyn(h[:, :-1], e[:, 1:])  # ĥ_{t+1}
    h2 = dyn(h1[:, :-1], e[:, 2:])  # ĥ_{t+2} from ĥ_{t+1}
    hand = (F.smooth_l1_loss(h1, h[:, 1:]) + F.smooth_l1_loss(h2, h[:, 2:])) / 2
    ours, _ = nextlat_latent_losses(model, dyn, h, t, pm, horizon=2, with_kl=False)
    assert torch.allclose(ours, hand, atol=1e-6)
    # teacher-forced second step (the wrong recursion) gives a different number
    h2_tf = dyn(h[:, 1:-1], e[:, 2:])
    wrong = (F.smooth_l1_loss(h1, h[:, 1:]) + F.smooth_l1_loss(h2_tf, h[:, 2:])) / 2
    assert not torch.allclose(wrong, hand, atol=1e-6)


def test_kl_matches_hand_computation():
    cfg, model, dyn = make(n_layers=1)
    randomize(dyn)
    t, _, pm = batch(length=6)
    _, cache = model.run_with_cache(t)
    h = normalize_latent(cache[final_hook_name(cfg)])
    e = model.W_E[t].detach()
    pred = dyn(h[:, :-1], e[:, 1:])
    ln = model.ln_final._original_component

    def head(x):
        return (F.layer_norm(x, (16,), ln.weight, ln.bias, 1e-5) @ model.W_U + model.b_U).log_softmax(-1)

    lp_true, lp_pred = head(h[:, 1:]), head(pred)
    hand = (lp_true.exp() * (lp_true - lp_pred)).sum(-1).mean()
    _, ours = nextlat_latent_losses(model, dyn, h, t, pm, horizon=1, with_kl=True)
    assert torch.allclose(ours, hand, atol=1e-6)
    # the true distribution is the model's own next-token distribution at t+1
    assert torch.allclose(head(h).exp(), model(t).softmax(-1), atol=1e-4)


def test_padding_pairs_are_excluded():
    cfg, model, dyn = make()
    randomize(dyn)
    t, _, pm = batch(length=8)
    h = _live_h(model, cfg, t).detach()
    pm2 = pm.clone()
    pm2[:, 5:] = False
    ours, _ = nextlat_latent_losses(model, dyn, h, t, pm2, horizon=1, with_kl=False)
    e = model.W_E[t]
    ref = F.smooth_l1_loss(dyn(h[:, :4], e[:, 1:5]), h[:, 1:5])
    assert torch.allclose(ours, ref, atol=1e-6)


def test_single_forward_pass_per_step(monkeypatch):
    from nextlat_probe.models import fastpath

    cfg, model, dyn = make(n_layers=2)
    b = as_batch(*batch())
    real, fast_calls = fastpath.forward, []
    monkeypatch.setattr(fastpath, "forward", lambda *a: fast_calls.append(1) or real(*a))
    for fast in (False, True):
        calls = []
        handle = model.blocks[0].register_forward_hook(lambda *a, calls=calls: calls.append(1))
        try:
            out = compute_losses(model, dyn, b, ObjectiveConfig("nextlat", 4), final_hook_name(cfg), fast=fast)
        finally:
            handle.remove()
        assert len(calls) + len(fast_calls) == 1  # one forward, through the bridge or the fast path
        assert len(fast_calls) == int(fast)
        fast_calls.clear()
        model.zero_grad()
        out["loss"].backward()
        assert model.blocks[0].attn.q.weight.grad is not None


@pytest.mark.parametrize("objective", ["gpt", "nextlat"])
def test_fast_and_hooked_forward_give_the_same_losses_and_gradients(objective):
    cfg, model, dyn = make(n_layers=2)
    randomize(dyn)
    b = as_batch(*batch())
    got = []
    for fast in (False, True):
        model.zero_grad()
        dyn.zero_grad()
        out = compute_losses(model, dyn if objective == "nextlat" else None, b, ObjectiveConfig(objective, 2),
                             final_hook_name(cfg), fast=fast)
        out["loss"].backward()
        got.append((out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (slow, g_slow), (quick, g_quick) = got
    for k in slow:
        torch.testing.assert_close(quick[k], slow[k], atol=1e-5, rtol=1e-4)
    for n in g_slow:
        torch.testing.assert_close(g_quick[n], g_slow[n], atol=1e-5, rtol=1e-3, msg=n)


@pytest.mark.parametrize("bad", [dict(objective="bert"), dict(objective="nextlat", horizon=0), dict(objective="nextlat", lambda_h=-1.0)])
def test_objective_config_validation(bad):
    with pytest.raises(ValueError):
        ObjectiveConfig(**bad)
