"""The multi-token-prediction (MTP) baseline: heads, loss, training, checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from nextlat_probe import cli
from nextlat_probe import train as train_cli
from nextlat_probe.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from nextlat_probe.errors import UsageError
from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.mtp import MTPHeads, shared_head_logits
from nextlat_probe.models.objective import (
    Batch,
    ObjectiveConfig,
    compute_losses,
    masked_cross_entropy,
)
from nextlat_probe.models.transformer import build_transformer, frozen_head_params, last_resid_hook
from nextlat_probe.records import identity, make_record
from nextlat_probe.sources import load_model
from nextlat_probe.training import trainer as trainer_mod
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.worlds import make_world

VOCAB = 7


def small(horizon=3, seed=0):
    cfg = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=12, d_vocab=VOCAB)
    model = build_transformer(cfg, seed=seed)
    torch.manual_seed(seed + 1)
    return cfg, model, MTPHeads(cfg.d_model, horizon)


def holey_batch(n=3, length=10, seed=0):
    """Random tokens and targets; ``scored`` has holes, so that the shift by k matters."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (n, length), generator=g)
    targets = torch.randint(0, VOCAB, (n, length), generator=g)
    scored = torch.rand(n, length, generator=g) > 0.3
    scored[:, -1] = False
    return Batch(tokens, targets, scored, torch.ones_like(scored))


def residual(model, tokens, hook):
    got = {}

    def keep(resid, hook):
        got["r"] = resid.detach().clone()
        return resid

    with torch.no_grad(), model.hooks(fwd_hooks=[(hook, keep)]):
        logits = model(tokens)
    return logits, got["r"]


def hand_ce(logits, targets, mask):
    """Mean CE over the positions of ``mask``, written out."""
    lp = logits[mask].double().log_softmax(-1)
    return -lp[torch.arange(len(lp)), targets[mask]].mean()


def hand_head(model, head, r):
    """One extra head from its weights: r + W2 gelu(W1 LN(r) + b1) + b2, then the model's
    final LayerNorm and unembedding, read from its state dict."""
    sd = model.state_dict()
    x = F.layer_norm(r, r.shape[-1:], head.norm.weight, head.norm.bias, head.norm.eps)
    x = r + F.gelu(x @ head.fc1.weight.T + head.fc1.bias) @ head.fc2.weight.T + head.fc2.bias
    x = F.layer_norm(x, x.shape[-1:], sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    return x @ sd["unembed.weight"].T + sd["unembed.bias"]


def test_every_head_parameter_receives_gradient_and_the_shared_head_is_trained_by_the_heads():
    d = 3
    cfg, model, heads = small(horizon=d)
    b = holey_batch()
    ocfg, hook = ObjectiveConfig("mtp", d), last_resid_hook(cfg)
    compute_losses(model, heads, b, ocfg, hook)["loss"].backward()
    for name, p in heads.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # the final LayerNorm is shared: the extra heads add to the gradient the main head gives it
    ln_w = frozen_head_params(model)[0]
    with_heads = ln_w.grad.clone()
    model.zero_grad()
    (compute_losses(model, heads, b, ocfg, hook)["ce"] / (d + 1)).backward()
    assert not torch.allclose(with_heads, ln_w.grad)


def test_loss_is_the_mean_of_the_main_and_hand_computed_head_cross_entropies():
    d = 3
    cfg, model, heads = small(horizon=d)
    b = holey_batch(seed=2)
    out = compute_losses(model, heads, b, ObjectiveConfig("mtp", d), last_resid_hook(cfg), fast=False)
    logits, r = residual(model, b.tokens, last_resid_hook(cfg))
    # the main head: exactly GPT's CE of model(tokens), and a written-out CE of the same logits
    assert torch.equal(out["ce"], masked_cross_entropy(model(b.tokens), b.targets, b.scored))
    main = hand_ce(logits, b.targets, b.scored)
    assert out["ce"].item() == pytest.approx(main.item(), rel=1e-6)
    # the shared decoder is the model's own: applied to the captured residual it gives model(tokens)
    assert torch.allclose(shared_head_logits(model, r), logits, atol=1e-5)
    L = b.tokens.shape[1]
    per_head = []
    with torch.no_grad():
        for k in range(1, d + 1):  # head k at position t: targets[:, t + k] where scored[:, t + k]
            lk = hand_head(model, heads.heads[k - 1], r)[:, : L - k]
            per_head.append(hand_ce(lk, b.targets[:, k:], b.scored[:, k:]))
    assert len(set(round(x.item(), 6) for x in per_head)) == d  # the heads really differ
    assert out["loss"].item() == pytest.approx(((main + sum(per_head)) / (d + 1)).item(), rel=1e-5)
    assert out["mtp"].item() == pytest.approx((sum(per_head) / d).item(), rel=1e-5)
    assert out["next_h"].item() == 0 and out["kl"].item() == 0


def test_heads_start_close_to_the_standard_head():
    cfg, model, heads = small(horizon=2)
    b = holey_batch()
    logits, r = residual(model, b.tokens, last_resid_hook(cfg))
    with torch.no_grad():
        for head in heads.heads:
            branch = head(r) - r
            assert 0 < branch.norm() < 0.1 * r.norm()  # small, not zero (every weight gets gradient)
            p_main, p_head = logits.softmax(-1), shared_head_logits(model, head(r)).softmax(-1)
            assert (p_main - p_head).abs().max() < 0.05


def tiny_cfg(**kw):
    base = dict(world="mess3", objective="mtp", horizon=2, steps=8, batch_size=8, seq_len=10, eval_every=4,
                save_every=4, n_val=16, device="cpu", warmup_steps=2, preset="tiny")
    base.update(kw)
    return TrainConfig(**base)


def test_with_one_head_mtp_is_gpt_plus_that_head():
    world = make_world("mess3")
    built = {obj: trainer_mod._build(tiny_cfg(objective=obj, horizon=1), world, 10, torch.device("cpu"))
             for obj in ("gpt", "mtp")}
    gpt_model, mtp_model = built["gpt"][2], built["mtp"][2]
    a, c = gpt_model.state_dict(), mtp_model.state_dict()
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)  # same initial transformer
    heads = built["mtp"][3]
    assert isinstance(heads, MTPHeads) and heads.horizon == 1 and built["gpt"][3] is None
    in_opt = {id(p) for g in built["mtp"][4].param_groups for p in g["params"]}
    assert all(id(p) in in_opt for p in heads.parameters())
    b = trainer_mod.to_batch(world, world.sample(8, 10, seed=trainer_mod.batch_rng(0, 1)).tokens, torch.device("cpu"))
    hook = last_resid_hook(built["gpt"][0])
    gpt = compute_losses(gpt_model, None, b, built["gpt"][1], hook)
    mtp = compute_losses(mtp_model, heads, b, built["mtp"][1], hook)
    assert torch.equal(mtp["ce"], gpt["loss"])
    # the extra head's term removed, the loss is GPT's
    assert (2 * mtp["loss"] - mtp["mtp"]).item() == pytest.approx(gpt["loss"].item(), rel=1e-6)
    assert mtp["loss"].item() != pytest.approx(gpt["loss"].item(), rel=1e-6)


def test_horizon_is_checked_like_nextlat():
    world = make_world("mess3")
    with pytest.raises(UsageError, match="horizon 10"):
        trainer_mod._build(tiny_cfg(horizon=10), world, 10, torch.device("cpu"))
    with pytest.raises(UsageError, match="objective"):
        TrainConfig(objective="mtp2")
    with pytest.raises(ValueError, match="MTPHeads"):
        compute_losses(None, None, holey_batch(), ObjectiveConfig("mtp", 2), "x")


@pytest.fixture(scope="module")
def mtp_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("mtp")
    straight = trainer_mod.train(tiny_cfg(), base / "straight", progress=False).checkpoint
    return base, straight


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_loads_as_mtp_and_resume_is_bit_exact(mtp_run):
    base, straight = mtp_run
    raw = read_checkpoint(straight)
    assert raw["objective"] == "mtp" and raw["dynamics"] is None
    assert raw["mtp_config"] == {"d_model": 64, "horizon": 2, "d_hidden": 64}
    ck = load_model(straight)
    assert ck.objective == "mtp" and ck.horizon == 2 and ck.dynamics is None
    assert_same(ck.mtp_heads.state_dict(), raw["mtp_heads"])
    assert ck.model(torch.zeros(2, 10, dtype=torch.long)).shape == (2, 10, 3)  # an ordinary model
    rec = make_record(identity(ck), "rank", {})
    assert rec["objective"] == "mtp" and rec["horizon"] == 2
    half = trainer_mod.train(tiny_cfg(), base / "resumed", progress=False, stop_at=4).checkpoint
    at_half = read_checkpoint(half)  # before the resumed run writes over it
    assert at_half["step"] == 4
    resumed = trainer_mod.train(None, base / "resumed", resume=half, progress=False).checkpoint
    r1, r2 = read_checkpoint(straight), read_checkpoint(resumed)
    assert r1["step"] == r2["step"] == 8
    assert_same(r1["model"], r2["model"])
    assert_same(r1["mtp_heads"], r2["mtp_heads"])
    assert not torch.equal(r1["mtp_heads"]["heads.0.fc1.weight"], at_half["mtp_heads"]["heads.0.fc1.weight"])  # trained
    for k in r1["optimizer"]["state"]:
        assert torch.equal(r1["optimizer"]["state"][k]["exp_avg"], r2["optimizer"]["state"][k]["exp_avg"])


def edit_and_save(src, dst, edit):
    raw = torch.load(src, weights_only=True)
    edit(raw)
    torch.save(raw, dst)
    return dst


def _set_heads_cfg(raw, **kw):
    raw["mtp_config"] = {**raw["mtp_config"], **kw}


CORRUPTIONS = {
    "head_shape": (lambda raw: raw["mtp_heads"].__setitem__("heads.0.fc1.weight", torch.zeros(3, 3)), "heads.0.fc1.weight"),
    "missing_heads": (lambda raw: raw.__setitem__("mtp_heads", None), "mtp_heads"),
    "missing_tensor": (lambda raw: raw["mtp_heads"].pop("heads.1.fc2.bias"), "heads.1.fc2.bias"),
    "extra_head": (lambda raw: raw["mtp_heads"].__setitem__("heads.2.fc1.weight", torch.zeros(64, 64)), "heads.2"),
    "horizon_mismatch": (lambda raw: _set_heads_cfg(raw, horizon=3), "mtp_config"),
    "huge_hidden": (lambda raw: _set_heads_cfg(raw, d_hidden=10**9), "mtp_config"),
    "p_psi_in_mtp": (lambda raw: raw.__setitem__("dynamics", {}), "p_psi"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupted_mtp_checkpoint_is_refused_before_allocation(mtp_run, tmp_path, monkeypatch, case):
    edit, words = CORRUPTIONS[case]
    bad = edit_and_save(mtp_run[1], tmp_path / "bad.pt", edit)

    def refuse(*a, **k):
        raise AssertionError("something was built from a crafted checkpoint")

    monkeypatch.setattr("nextlat_probe.models.transformer.build_transformer", refuse)
    monkeypatch.setattr(trainer_mod, "build_transformer", refuse)
    monkeypatch.setattr(MTPHeads, "__init__", refuse)
    with pytest.raises(CheckpointError, match=words) as info:
        load_checkpoint(bad)
    assert str(info.value).startswith(str(bad)) and "\n" not in str(info.value)
    with pytest.raises(CheckpointError):
        trainer_mod.train(None, tmp_path / "out", resume=bad, progress=False)


def test_gpt_checkpoint_with_heads_is_refused(mtp_run, tmp_path):
    def as_gpt(raw):
        raw["objective"] = "gpt"
        raw["objective_config"]["objective"] = "gpt"
        raw["train_config"]["objective"] = "gpt"

    bad = edit_and_save(mtp_run[1], tmp_path / "gpt.pt", as_gpt)
    with pytest.raises(CheckpointError, match="MTP heads"):
        load_checkpoint(bad)


def test_train_cli_mtp(tmp_path, capsys):
    """``python -m nextlat_probe.train --objective mtp --horizon 2``, run in-process."""
    out = tmp_path / "cli"
    argv = ["--world", "mess3", "--objective", "mtp", "--horizon", "2", "--steps", "3", "--batch-size", "4",
            "--seq-len", "8", "--n-val", "8", "--out", str(out), "--no-progress"]
    with pytest.raises(SystemExit) as info:
        cli.run_main(train_cli.main, argv)
    stdout, stderr = capsys.readouterr()
    assert info.value.code == 0, stderr
    assert "2 extra head(s)" in stdout
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck.objective == "mtp" and ck.mtp_heads.horizon == 2
    assert train_cli.build_parser().parse_args(["--objective", "mtp"]).objective == "mtp"
