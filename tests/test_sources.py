"""Models from anywhere: worlds from spec strings, models in memory, token maps, every
sequence of a small world, and the published in-sample probe protocol."""
import json

import numpy as np
import pytest
import torch

from nextlat_probe import compare
from nextlat_probe.checkpoint import load_checkpoint
from nextlat_probe.errors import UsageError, WorldError
from nextlat_probe.sources import load_model, world_from_text


def test_world_from_text_builds_the_named_worlds(tmp_path):
    w = world_from_text("mess3:x=0.05,a=0.85")
    assert w.spec()["params"] == {"x": 0.05, "a": 0.85}
    assert world_from_text("rrxor").vocab_size == 2
    T = world_from_text("mess3").T
    np.save(tmp_path / "T.npy", T)
    hmm = world_from_text(f"hmm:T={tmp_path / 'T.npy'}")
    np.testing.assert_array_equal(hmm.T, T)
    for bad in ("mess3:x", "nosuchworld", "mess3:q=1", "hmm", f"hmm:T={tmp_path / 'missing.npy'}"):
        with pytest.raises(WorldError):
            world_from_text(bad)


def test_a_model_in_memory_is_analysed_like_a_checkpoint(tiny_mess3_ckpts):
    ck = load_checkpoint(tiny_mess3_ckpts["gpt"])
    mine = compare.run_rank([ck], n_seqs=16, layers="all")
    foreign = load_model(ck.model, world="mess3")  # just the bridge and a world
    theirs = compare.run_rank([foreign], n_seqs=16, layers="all")
    for a, b in zip(mine, theirs):
        assert a["metrics"]["effective_rank"] == pytest.approx(b["metrics"]["effective_rank"], rel=1e-9)
    assert theirs[0]["objective"] == "external" and theirs[0]["val_loss"] is None and theirs[0]["step"] is None
    with pytest.raises(UsageError):
        load_model(ck.model)  # no world: one line saying so
    with pytest.raises(UsageError):
        load_model(ck.model, world="rrxor:p1=0.5")  # 2 tokens vs the model's 3: needs --vocab


def test_a_token_map_feeds_and_reads_the_model_in_its_own_numbering(tiny_mess3_ckpts, tmp_path):
    """A model trained on permuted token ids, given the permutation, analyses like the
    original: same hidden states, same next-token distribution over world tokens."""
    from nextlat_probe.activations import collect

    ck = load_checkpoint(tiny_mess3_ckpts["gpt"])
    perm = [2, 0, 1]  # world token k is model token perm[k]
    permuted = load_checkpoint(tiny_mess3_ckpts["gpt"]).model
    with torch.no_grad():
        permuted.W_E[perm] = ck.model.W_E.clone()
        permuted.W_U[:, perm] = ck.model.W_U.clone()
        permuted.b_U[perm] = ck.model.b_U.clone()
    names = ck.world.token_names
    (tmp_path / "vocab.json").write_text(json.dumps({n: perm[k] for k, n in enumerate(names)}))
    mapped = load_model(permuted, world=ck.world, vocab=tmp_path / "vocab.json")
    tokens = ck.world.sample(8, 10, seed=3).tokens
    hook = "blocks.1.hook_resid_post"
    np.testing.assert_allclose(collect(mapped.model, tokens, [hook])[hook], collect(ck.model, tokens, [hook])[hook],
                               atol=1e-5)
    with torch.no_grad():
        t = torch.as_tensor(tokens)
        np.testing.assert_allclose(mapped.model(t).numpy(), ck.model(t).numpy(), atol=1e-5)
    # and without the map the permuted model is a different model
    with torch.no_grad():
        assert not np.allclose(permuted(t).numpy(), ck.model(t).numpy(), atol=1e-3)
    (tmp_path / "bad.json").write_text(json.dumps({names[0]: 0, names[1]: 0, names[2]: 1}))
    with pytest.raises(UsageError, match="same model token"):
        load_model(permuted, world=ck.world, vocab=tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({names[0]: 0}))
    with pytest.raises(UsageError, match="no model token"):
        load_model(permuted, world=ck.world, vocab=tmp_path / "short.json")


def _filter(T, initial, seq):
    """Belief after each token by the plain Bayes update b' = b T[x] / |b T[x]|."""
    b, out = np.asarray(initial, dtype=np.float64), []
    for x in seq:
        b = b @ T[x]
        b = b / b.sum()
        out.append(b)
    return np.array(out)


def test_all_sequences_enumerates_every_sequence_once(tiny_mess3_ckpts):
    ck = load_checkpoint(tiny_mess3_ckpts["gpt"])
    inputs = compare.Inputs([ck], n_seqs=1, seq_len=4, all_sequences=True)
    tokens = inputs.tokens(0)
    assert tokens.shape == (81, 4) and inputs.n_seqs == 81
    assert len({tuple(r) for r in tokens}) == 81  # each once
    beliefs = ck.world.beliefs(tokens)
    for row, b in zip(tokens, beliefs):
        np.testing.assert_allclose(b, _filter(ck.world.T, ck.world.initial, row), atol=1e-12)
    assert inputs.params()["sequences"] == "all"
    with pytest.raises(UsageError, match="exceed the limit"):
        compare.Inputs([ck], n_seqs=1, seq_len=12, all_sequences=True)  # 3^12 = 531441


def test_in_sample_protocol_is_ols_fitted_and_scored_on_the_same_rows(tiny_mess3_ckpts):
    from sklearn.linear_model import LinearRegression

    from nextlat_probe.activations import collect

    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    inputs = compare.Inputs([ck], n_seqs=1, seq_len=5, all_sequences=True)
    (rec,) = compare.run_probe(None, inputs=inputs, layers="1", protocol="in_sample", alpha=0.0, classifier=False)
    tokens = inputs.tokens(0)
    hook = "blocks.1.hook_resid_post"
    H = collect(ck.model, tokens, [hook])[hook].reshape(-1, ck.model_config.d_model).astype(np.float64)
    B = ck.world.beliefs(tokens).reshape(-1, 3)
    pred = LinearRegression().fit(H, B).predict(H)
    m = rec["metrics"]
    assert rec["params"]["protocol"] == "in_sample" and rec["params"]["sequences"] == "all"
    assert m["n_rows"] == m["fit_rows"] == m["score_rows"] == 3 ** 5 * 5
    assert m["mse"] == pytest.approx(float(((pred - B) ** 2).mean()), rel=1e-6)
    held = compare.run_probe(None, inputs=inputs, layers="1", n_test=60, alpha=0.0, classifier=False)[0]
    assert held["params"]["protocol"] == "held_out" and held["metrics"]["fit_rows"] + held["metrics"]["score_rows"] == m["n_rows"]


def test_probe_cli_on_a_foreign_state_dict_needs_its_config(tiny_mess3_ckpts, tmp_path, capsys):
    from nextlat_probe.cli import run_main
    from nextlat_probe.probe import main

    sd = load_checkpoint(tiny_mess3_ckpts["gpt"]).model.state_dict()
    torch.save({k: v for k, v in sd.items()}, tmp_path / "model.pt")
    with pytest.raises(SystemExit) as exc:
        run_main(main, [str(tmp_path / "model.pt"), "--world", "mess3"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--tl-config" in err
