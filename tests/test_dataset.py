"""Token datasets on disk (training.dataset, python -m nextlat_probe.data): write -> train
--data round trip, bit-exact resume of a dataset run, import-trips counts on a hand-written
file, and one-line refusals of broken or changed datasets."""
import json

import numpy as np
import pytest
import torch

from nextlat_probe import cli
from nextlat_probe import data as data_cli
from nextlat_probe import train as train_cli
from nextlat_probe.checkpoint import read_checkpoint
from nextlat_probe.training.batches import DataBatches, stream_seed
from nextlat_probe.training.config import TrainConfig
from nextlat_probe.training.dataset import drawn_rows, open_dataset, write_dataset
from nextlat_probe.training.trainer import train
from nextlat_probe.worlds import make_world
from nextlat_probe.worlds.streetmap import DIRECTIONS, synthetic_manhattan


def run(main, argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_write_then_train_on_it_and_the_checkpoint_names_the_dataset(tmp_path, capsys):
    """The acceptance commands: data write --world taxi --map-size 4 --n-seqs 2000, then
    train --data --preset tiny --steps 20."""
    D, R = tmp_path / "D", tmp_path / "R"
    code, out, err = run(data_cli.main, ["write", "--world", "taxi", "--map-size", "4", "--n-seqs", "2000", "--out", D,
                                         "--device", "cpu"], capsys)
    assert code == 0, err
    ds = open_dataset(D)
    world = make_world("taxi", map_size=4)
    assert ds.world.spec() == world.spec() and ds.seq_len == world.default_length == 43
    assert ds.train.shape == (2000, 43) and ds.val.shape == (256, 43) and ds.meta["dtype"] == "uint16"
    assert ds.meta["source"] == "world" and ds.meta["made"]["sampler"] == "device"
    # the rows are the device sampler's draws of the split's seeds, and valid trips
    gen = torch.Generator().manual_seed(stream_seed(0, 4, 0))
    from nextlat_probe.training.samplers import sampler_for

    assert np.array_equal(np.asarray(ds.train), sampler_for(world, 43, "cpu").draw(2000, gen).numpy())
    assert world.check_sequences(np.asarray(ds.train, dtype=np.int64))["valid"].all()
    code, out, err = run(train_cli.main, ["--data", D, "--preset", "tiny", "--steps", "20", "--out", R, "--no-progress",
                                          "--device", "cpu", "--eval-every", "10"], capsys)
    assert code == 0, err
    assert "exact floor" in out
    saved = read_checkpoint(R / "ckpt.pt")
    tc = saved["train_config"]
    assert saved["step"] == 20 and tc["sampler_used"] == "data" and tc["data"] == str(D.resolve())
    assert tc["dataset"]["fingerprint"] == ds.fingerprint and tc["dataset"]["n_train"] == 2000
    assert saved["world_spec"] == world.spec()
    # the validation set is val.bin's rows, and its floor the world's exact one
    assert saved["metrics"]["val_floor"] == pytest.approx(world.exact_cross_entropy(np.asarray(ds.val, np.int64)))
    # --data describes the world: world options beside it are refused in one line
    code, _, err = run(train_cli.main, ["--data", D, "--map-size", "5", "--out", tmp_path / "x", "--no-progress"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--map-size" in err


def small_dataset(path, n=100, seed=0):
    world = make_world("mess3")
    splits = {s: drawn_rows(world, k, 10, seed, s, "device", "cpu") for s, k in (("train", n), ("val", 32))}
    return write_dataset(path, world, 10, splits, source="world", made={"command": "test"})


def test_a_dataset_run_resumes_bit_exactly_and_reads_every_row_once_per_epoch(tmp_path):
    ds = small_dataset(tmp_path / "D")
    src = DataBatches(ds, 8, seed=0, device=torch.device("cpu"))
    rows = np.concatenate([src.rows(s) for s in range(1, 26)])  # 25 steps x 8 = 200 rows = two epochs
    assert sorted(rows[:100]) == list(range(100)) and sorted(rows[100:]) == list(range(100))
    assert not np.array_equal(rows[:100], rows[100:])  # a new order each epoch
    assert np.array_equal(src.tokens(3).numpy(), np.asarray(ds.train)[src.rows(3)])
    c = TrainConfig(data=str(ds.path), objective="nextlat", horizon=2, steps=30, batch_size=8, eval_every=5,
                    save_every=5, n_val=16, device="cpu", warmup_steps=3)
    straight = train(c, tmp_path / "straight", progress=False).checkpoint
    half = train(c, tmp_path / "resumed", progress=False, stop_at=17).checkpoint
    resumed = train(None, tmp_path / "resumed", resume=half, progress=False).checkpoint
    a, b = read_checkpoint(straight), read_checkpoint(resumed)
    assert a["step"] == b["step"] == 30
    for part in ("model", "dynamics"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # a changed dataset is refused on resume, in one line
    (ds.path / "meta.json").write_text((ds.path / "meta.json").read_text().replace('"command": "test"', '"command": "x"'))
    with pytest.raises(ValueError, match="no longer holds the dataset"):
        train(None, tmp_path / "resumed", resume=half, progress=False)


def test_broken_datasets_are_refused_in_one_line(tmp_path, capsys):
    ds = small_dataset(tmp_path / "D", n=20)
    raw = (ds.path / "train.bin").read_bytes()
    (ds.path / "train.bin").write_bytes(raw[:-2])
    with pytest.raises(ValueError, match="truncated"):
        open_dataset(ds.path)
    bad = np.frombuffer(raw, dtype="<u2").copy()
    bad[7] = 3  # mess3 has tokens 0..2
    (ds.path / "train.bin").write_bytes(bad.tobytes())
    with pytest.raises(ValueError, match="row 0, position 7 holds token id 3"):
        open_dataset(ds.path)
    (ds.path / "train.bin").write_bytes(raw[:-2] + b"\x01\x00")
    with pytest.raises(ValueError, match="SHA-256"):
        open_dataset(ds.path)
    code, _, err = run(data_cli.main, ["write", "--world", "mess3", "--n-seqs", "5", "--out", ds.path], capsys)
    assert code == 2 and "already holds a dataset" in err
    code, _, err = run(data_cli.main, ["info", tmp_path], capsys)
    assert code == 2 and "meta.json is missing" in err and len(err.strip().splitlines()) == 1


def hand_written_trips(street_map):
    """Lines of every kind, with the line numbers each kind must be reported at."""
    world = make_world("taxi", map_size=4, min_len=3, max_len=5)
    assert world.map.to_dict() == street_map.to_dict()
    good = world.to_text(world.sample(4, seed=1).tokens)
    names = street_map.node_names
    first = good[0].split()
    node = names.index(first[0])
    missing = next(d for k, d in enumerate(DIRECTIONS) if street_map.succ[node, k] < 0)
    illegal = " ".join([first[0], first[1], missing] + first[2:])  # a turn that is no street from the origin
    wrong_end = " ".join([first[0], next(n for n in names if n not in (first[0], first[1]))] + first[2:])
    short = world.to_text(make_world("taxi", map_size=4, min_len=1, max_len=1).sample(1, seed=0).tokens)[0]
    lines = [good[0], "", good[1], illegal, "1 2 N foo end", wrong_end, "  ", good[2],
             " ".join(good[3].split()[:-1]), good[3] + " N", short]
    # line numbers (1-based, blank lines counted): good 1, 3, 8, short 11; illegal 4; malformed 5, 9, 10; wrong end 6
    return lines


def test_import_trips_counts_every_kind_of_line_exactly(tmp_path, capsys):
    street_map = synthetic_manhattan(4, 4, seed=0)
    street_map_file = tmp_path / "map.json"
    street_map_file.write_text(json.dumps(street_map.to_dict()))
    trips = tmp_path / "trips.txt"
    trips.write_text("\n".join(hand_written_trips(street_map)) + "\n")
    D = tmp_path / "D"
    code, out, err = run(data_cli.main, ["import-trips", trips, "--map", street_map_file, "--max-len", "4",
                                         "--n-val", "1", "--out", D, "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    # lines 1, 3, 8 have 3..5 turns: those with more than --max-len 4 are too long
    turns = [len(line.split()) - 3 for line in trips.read_text().splitlines()]
    long_ = [i + 1 for i in (0, 2, 7) if turns[i] > 4]
    assert long_ == [8]  # the sample drawn above has one such trip: every kind is exercised
    assert got["lines"] == 9 and got["illegal"] == 1 and got["wrong_end"] == 1 and got["malformed"] == 3
    assert got["too_long"] == len(long_) and got["kept"] == 4 - len(long_)
    assert got["left_out_lines"] == {"malformed": [5, 9, 10], "illegal": [4], "wrong_end": [6], "too_long": long_}
    ds = open_dataset(D)
    assert ds.source == "imported" and not ds.exact_floor
    assert ds.train.shape[0] + ds.val.shape[0] == got["kept"] and ds.val.shape[0] == 1
    kept = np.concatenate([np.asarray(ds.train, np.int64), np.asarray(ds.val, np.int64)])
    assert ds.world.check_sequences(kept)["valid"].all()  # nothing but valid trips is trained on
    assert ds.meta["made"]["counts"] == {k: got[k] for k in ("kept", "malformed", "illegal", "wrong_end", "too_long")}
    # the text report names the kinds and their lines
    code, out, _ = run(data_cli.main, ["import-trips", trips, "--map", street_map_file, "--out", tmp_path / "E"], capsys)
    assert code == 0 and "malformed   3" in out and "line 5, 9, 10" in out and "no exact loss floor" in out
    # a run on imported trips has no exact floor, and says so
    R = tmp_path / "R"
    code, out, err = run(train_cli.main, ["--data", tmp_path / "E", "--steps", "2", "--batch-size", "2", "--out", R,
                                          "--no-progress", "--device", "cpu", "--warmup", "1"], capsys)
    assert code == 0, err
    assert "no exact floor (imported trips" in out
    assert read_checkpoint(R / "ckpt.pt")["train_config"]["dataset"]["source"] == "imported"


def test_cli_help_is_fast_and_imports_no_torch():
    from helpers import assert_light_help

    assert_light_help("nextlat_probe.data", "write", "import-trips", "info")
    assert_light_help("nextlat_probe.train", "--data", "--sampler", "--compile", "--no-tf32")
