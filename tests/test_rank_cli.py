"""`python -m nextlat_probe.rank` end to end, and hidden-state collection."""
import json

import numpy as np
import pytest
import torch
from helpers import run_cli

from nextlat_probe.activations import (
    EMBED_HOOK,
    LN_FINAL_HOOK,
    collect,
    collect_stats,
    hidden_states,
)
from nextlat_probe.checkpoint import load_checkpoint


def test_collect_matches_run_with_cache(tiny_mess3_ckpts):
    ck = load_checkpoint(tiny_mess3_ckpts["nextlat"])
    tokens = ck.world.sample(9, 12, seed=1).tokens
    hooks = [EMBED_HOOK, "blocks.1.hook_resid_post", LN_FINAL_HOOK]
    acts = collect(ck.model, tokens, hooks, batch_size=4)
    _, cache = ck.model.run_with_cache(torch.as_tensor(tokens))
    emb = (cache["hook_embed"] + cache["hook_pos_embed"]).numpy()
    np.testing.assert_allclose(acts[EMBED_HOOK], emb, atol=1e-6)
    np.testing.assert_allclose(acts["blocks.1.hook_resid_post"], cache["blocks.1.hook_resid_post"].numpy(), atol=1e-6)
    np.testing.assert_allclose(acts[LN_FINAL_HOOK], cache["ln_final.hook_normalized"].numpy(), atol=1e-6)
    # streamed statistics equal the dense Gram of the masked rows
    mask = np.zeros(tokens.shape, bool)
    mask[:, 3:] = True
    st = collect_stats(ck.model, tokens, hooks, mask=mask, batch_size=2)
    X = acts[LN_FINAL_HOOK][mask].astype(np.float64)
    np.testing.assert_allclose(st[LN_FINAL_HOOK].gram(), X.T @ X, rtol=1e-9, atol=1e-9)
    assert st[LN_FINAL_HOOK].count == mask.sum()


def test_hidden_states_alignment(tiny_mess3_ckpts):
    ck = load_checkpoint(tiny_mess3_ckpts["gpt"])
    hs = hidden_states(ck.model, ck.world, n_seqs=5, seq_len=10, seed=3)
    sample = ck.world.sample(5, 10, seed=3)
    assert np.array_equal(hs.tokens, sample.tokens) and np.array_equal(hs.states, sample.states)
    rows = hs.flat(LN_FINAL_HOOK)
    assert rows.shape == (50, ck.model_config.d_model)
    b = ck.world.beliefs(hs.tokens)
    assert np.array_equal(hs.rows(b), b.reshape(50, -1))


def test_rank_cli_json_matches_dense_svd(tiny_mess3_ckpts):
    gpt, nl = str(tiny_mess3_ckpts["gpt"]), str(tiny_mess3_ckpts["nextlat"])
    r = run_cli("nextlat_probe.rank", gpt, nl, "--layers", "all", "--n-seqs", "16", "--json")
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)  # stdout is one JSON document and nothing else
    assert len(recs) == 2 * 3 and {x["objective"] for x in recs} == {"gpt", "nextlat"}
    from nextlat_probe.compare import Inputs
    from nextlat_probe.records import check_record

    for x in recs:
        check_record(x)
    fields = {"effective_rank", "participation_ratio", "n90", "n99", "d_model", "spectrum"}
    assert all(fields <= x["metrics"].keys() and x["val_loss"] is not None for x in recs)
    # recompute the last layer of the GPT model by a dense SVD of the same sequences
    ck = load_checkpoint(gpt)
    tokens = Inputs([ck], 16).tokens(0)
    H = collect(ck.model, tokens, ["blocks.1.hook_resid_post"])["blocks.1.hook_resid_post"].reshape(-1, ck.model_config.d_model)
    s = np.linalg.svd(H.astype(np.float64), compute_uv=False)
    s = s[s > 1e-12]
    p = s / s.sum()
    dense = float(np.exp(-(p * np.log(p)).sum()))
    got = [x for x in recs if x["objective"] == "gpt" and x["layer"] == "L1"][0]["metrics"]["effective_rank"]
    assert got == pytest.approx(dense, rel=1e-6)


def test_rank_cli_table_plot_and_center(tiny_mess3_ckpts, tmp_path):
    out = tmp_path / "rank.html"
    r = run_cli("nextlat_probe.rank", str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--plot", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "eff. rank" in r.stdout and "gpt" in r.stdout
    html = out.read_text()
    assert "plotly" in html and '<script src="http' not in html
    a = json.loads(run_cli("nextlat_probe.rank", str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--json").stdout)[0]
    b = json.loads(run_cli("nextlat_probe.rank", str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--json", "--center").stdout)[0]
    assert b["params"]["center"] and not a["params"]["center"]
    assert a["metrics"]["effective_rank"] != pytest.approx(b["metrics"]["effective_rank"])
    # -1 counts from the end (the last block), as in Python; embed names the embeddings
    last = json.loads(run_cli("nextlat_probe.rank", str(tiny_mess3_ckpts["gpt"]), "--n-seqs", "8", "--json", "--layers", "-1").stdout)
    assert [x["layer"] for x in last] == ["L1"] and last[0]["metrics"] == a["metrics"]


def test_rank_cli_errors(tmp_path, tiny_mess3_ckpts):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"\x00" * 100)
    for args in ([str(tmp_path / "missing.pt")], [str(bad)], [str(tiny_mess3_ckpts["gpt"]), "--layers", "7"], [str(tiny_mess3_ckpts["gpt"]), "--layers", "x"],
                 [str(tiny_mess3_ckpts["gpt"]), "--device", "tpu"], [str(tiny_mess3_ckpts["gpt"]), "--seq-len", "0"],
                 [str(tiny_mess3_ckpts["gpt"]), "--plot", str(tmp_path)]):
        r = run_cli("nextlat_probe.rank", *args)
        assert r.returncode == 2, args
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:"), r.stderr
    r = run_cli("nextlat_probe.rank", "--help")
    assert r.returncode == 0 and "--layers" in r.stdout
