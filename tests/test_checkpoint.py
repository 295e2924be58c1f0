"""Checkpoints load safely: bad files give one clear error and never run code."""
import os
import pickle

import pytest
import torch

from nextlat_probe.checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

MARKER = "nextlat_probe_pwned_marker"


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"format": "nextlat_probe.checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert not (tmp_path / MARKER).exists()
    # a raw (non-zip) pickle too
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        read_checkpoint(raw)
    assert not (tmp_path / MARKER).exists()


def test_bad_files_raise_checkpoint_error(tmp_path):
    cases = {
        "missing.pt": None,
        "empty.pt": b"",
        "garbage.pt": os.urandom(300),
    }
    for name, data in cases.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    plain_tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), plain_tensor)
    for path in [*(tmp_path / n for n in cases), foreign, plain_tensor]:
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        msg = str(info.value)
        assert msg.startswith(str(path)) and "\n" not in msg


def test_truncated_checkpoint(tiny_mess3_ckpts, tmp_path):
    data = tiny_mess3_ckpts["gpt"].read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(cut)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"objective": "gpt", "x": torch.ones(2)}, path)
    before = path.read_bytes()

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk on fire")

    with pytest.raises((RuntimeError, pickle.PicklingError), match="disk on fire"):
        save_checkpoint({"objective": "gpt", "x": Boom()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left


def test_load_round_trip_both_objectives(tiny_mess3_ckpts):
    for obj, path in tiny_mess3_ckpts.items():
        ck = load_checkpoint(path)
        raw = torch.load(path, weights_only=True)  # the plain contract
        assert raw["objective"] == obj == ck.objective
        assert (ck.dynamics is not None) == (obj == "nextlat")
        sd = ck.model.state_dict()
        for k, v in raw["model"].items():
            assert torch.equal(sd[k], v)
        assert ck.world.spec() == raw["world_spec"]
        assert ck.name == obj


def test_wrong_weights_for_config(tiny_mess3_ckpts, tmp_path):
    raw = torch.load(tiny_mess3_ckpts["gpt"], weights_only=True)
    raw["model_config"]["d_model"] = 32
    raw["model_config"]["d_head"] = 8
    bad = tmp_path / "bad.pt"
    torch.save(raw, bad)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(bad)


def test_parameter_bound_counts_no_position_table_for_rotary():
    """The bound's count, written out here: blocks + embed + unembed (+ the position table
    of learned positions only)."""
    from nextlat_probe import checkpoint as C
    from nextlat_probe import limits
    from nextlat_probe.models.config import ModelConfig

    learned = ModelConfig.from_preset("tiny", d_vocab=50, n_ctx=64)
    rotary = ModelConfig.from_preset("tiny", d_vocab=50, n_ctx=64, positional="rotary")
    d = learned.d_model
    blocks = learned.n_layers * (4 * d * learned.n_heads * learned.d_head + 2 * d * learned.d_mlp)
    with limits.using(max_params=blocks + d * 2 * 50):  # room for everything but a table
        assert C.model_config_problem(rotary) is None
        assert "parameters" in C.model_config_problem(learned)
    assert C.parameter_count(learned) == blocks + d * (2 * 50 + 64) and C.model_config_problem(learned) is None


def test_metrics_say_gap_to_floor_for_old_and_new_files(tiny_mess3_ckpts, tmp_path):
    """0.2 named the gap to the exact floor ``gap_to_floor``; checkpoints say so, and an older
    file's ``val_gap`` is read under the new name (same number, no second key)."""
    from nextlat_probe.records import identity

    raw = torch.load(tiny_mess3_ckpts["gpt"], weights_only=True)
    m = raw["metrics"]
    assert "val_gap" not in m and m["gap_to_floor"] == pytest.approx(m["val_loss"] - m["val_floor"])
    new = load_checkpoint(tiny_mess3_ckpts["gpt"])
    old_metrics = {k: v for k, v in m.items() if k != "gap_to_floor"} | {"val_gap": m["gap_to_floor"]}
    old = tmp_path / "old.pt"
    torch.save({**raw, "metrics": old_metrics}, old)
    ck = load_checkpoint(old)
    assert ck.metrics == new.metrics and "val_gap" not in ck.metrics
    assert identity(ck)["gap_to_floor"] == pytest.approx(m["val_loss"] - m["val_floor"])
