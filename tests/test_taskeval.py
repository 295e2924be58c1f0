"""taskeval: A5 length curves (transformer and p_psi roll-out) and path-star accuracies,
checked against computations written here from the model's own forward pass."""
import json

import numpy as np
import pytest
import torch

from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.trainer import train


@pytest.fixture(scope="module")
def a5_ckpts(tmp_path_factory):
    base = tmp_path_factory.mktemp("a5-taskeval")
    out = {}
    for obj in ("gpt", "nextlat"):
        cfg = TrainConfig(world="a5", objective=obj, steps=6, batch_size=16, eval_every=6, save_every=6, n_val=16,
                          device="cpu", warmup_steps=2)
        out[obj] = train(cfg, out_dir=base / obj, progress=False).checkpoint
    return out


@pytest.fixture(scope="module")
def pathstar_ckpt(tmp_path_factory):
    cfg = TrainConfig(world="pathstar", world_options={"degree": 2, "length": 3, "nodes": 12}, objective="gpt",
                      steps=6, batch_size=16, eval_every=6, save_every=6, n_val=16, device="cpu", warmup_steps=2)
    return train(cfg, out_dir=tmp_path_factory.mktemp("ps") / "gpt", progress=False).checkpoint


def test_a5_records_match_a_direct_forward_pass(a5_ckpts):
    from nextlat_probe.compare import run_taskeval
    from nextlat_probe.sources import load_model

    recs = run_taskeval([a5_ckpts["gpt"], a5_ckpts["nextlat"]], lengths=[12, 20], n_seqs=24, seed=3)
    kinds = sorted((r["objective"], r["variant"], r["metrics"]["length"]) for r in recs)
    assert kinds == sorted([("gpt", "transformer", 12), ("gpt", "transformer", 20), ("nextlat", "transformer", 12),
                            ("nextlat", "transformer", 20), ("nextlat", "p_psi rollout", 12),
                            ("nextlat", "p_psi rollout", 20)])
    m = load_model(a5_ckpts["gpt"])
    for r in recs:
        assert r["protocol"]["name"] == "a5_length" and r["protocol"]["train_length"] == 12
        assert r["metrics"]["beyond_training"] == (r["metrics"]["length"] > 12)
    for length in (12, 20):
        tokens = m.world.sample(24, length, seed=np.random.default_rng([3, length])).tokens
        r = next(x for x in recs if x["objective"] == "gpt" and x["metrics"]["length"] == length)
        # the same words as the runner's (seeded by (seed, length)): recompute the accuracy here
        targets, scored = m.world.output_targets(tokens)
        assert scored.all()
        with torch.no_grad():
            pred = m.model(torch.as_tensor(tokens)).argmax(-1).numpy()
        right = pred == targets
        assert r["metrics"]["token_accuracy"]["count"] == int(right.sum())
        assert r["metrics"]["sequence_accuracy"]["count"] == int(right.all(axis=1).sum())
        assert [p["count"] for p in r["metrics"]["per_position"]] == right.sum(axis=0).tolist()


def test_pathstar_record_matches_a_greedy_decode_written_here(pathstar_ckpt):
    from nextlat_probe.compare import run_taskeval
    from nextlat_probe.sources import load_model

    (r,) = run_taskeval([pathstar_ckpt], n_seqs=40, seed=1)
    assert r["variant"] == "greedy" and r["protocol"]["name"] == "pathstar_greedy"
    m = load_model(pathstar_ckpt)
    w = m.world
    tokens = w.sample(40, seed=np.random.default_rng([1, 0x57A2])).tokens
    x = torch.as_tensor(tokens[:, :w.prompt_length])
    with torch.no_grad():
        for _ in range(w.path_length):
            x = torch.cat([x, m.model(x)[:, -1].argmax(-1, keepdim=True)], dim=1)
    paths = x[:, w.prompt_length:].numpy()
    exact = (paths == tokens[:, w.prompt_length:]).all(axis=1)
    assert r["metrics"]["exact_path"]["count"] == int(exact.sum()) and r["metrics"]["exact_path"]["n"] == 40
    valid, _ = w.is_path_to_leaf(tokens[:, :w.prompt_length], paths)
    assert r["metrics"]["valid_path"]["count"] == int(np.asarray(valid).sum())


def test_cli_json_table_and_figures(a5_ckpts, pathstar_ckpt, tmp_path, capsys):
    from nextlat_probe.taskeval import main

    html, stem = tmp_path / "a5.html", tmp_path / "a5fig"
    assert main([str(a5_ckpts["gpt"]), str(a5_ckpts["nextlat"]), "--lengths", "12,16", "--n-seqs", "16",
                 "--plot", str(html), "--figure", str(stem), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "len 12 (train)" in out and "p_psi rollout" in out and "a5_length" in out
    assert html.stat().st_size > 100_000 and (tmp_path / "a5fig.png").exists()
    assert main([str(pathstar_ckpt), "--n-seqs", "16", "--json", "--plot", str(tmp_path / "ps.html")]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert recs[0]["analysis"] == "taskeval" and "valid_path" in recs[0]["metrics"]


def test_cli_refuses_other_worlds_and_bad_lengths(tiny_mess3_ckpts, a5_ckpts, capsys):
    from nextlat_probe.cli import run_main
    from nextlat_probe.taskeval import main

    for argv, needle in (([str(tiny_mess3_ckpts["gpt"])], "tagging form or a path-star"),
                         ([str(a5_ckpts["gpt"]), "--lengths", "12,x"], "--lengths"),
                         ([str(a5_ckpts["gpt"]), "--lengths", "12,80"], "context")):
        with pytest.raises(SystemExit) as exc:
            run_main(main, argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1 and needle in err, err
