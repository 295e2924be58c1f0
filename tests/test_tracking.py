"""``train --log tensorboard|wandb``: the trackers show the rows of metrics.jsonl (read back
with TensorBoard's own event reader and from W&B's offline run file), a resumed run's
events hold each step once, and W&B sends nothing unless the user configured it."""
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from helpers import run_cli

from nextlat_probe.errors import UsageError
from nextlat_probe.training.log import metric_kind, read_metrics
from nextlat_probe.training.tracking import parse_trackers, wandb_mode


def _tb_scalars(folder: Path, purge: bool = True) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard's event reader gives them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0},
                           purge_orphaned_data=purge)
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _log_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The same from metrics.jsonl, computed here: tag = train/KEY or val/KEY."""
    out: dict[str, list[tuple[int, float]]] = {}
    for rec in read_metrics(folder / "metrics.jsonl"):
        kind = metric_kind(rec)
        if kind is None:
            continue
        for k, v in rec.items():
            if k != "step" and isinstance(v, (int, float)):
                out.setdefault(f"{'val' if kind == 'eval' else 'train'}/{k}", []).append((rec["step"], float(v)))
    return out


def _assert_same(got, want, rel=1e-6):
    assert sorted(got) == sorted(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        for (_, a), (_, b) in zip(got[tag], want[tag]):
            assert a == pytest.approx(b, rel=rel, abs=1e-6), tag  # TensorBoard stores float32


@pytest.mark.slow
def test_train_log_tensorboard_writes_the_metrics_log(tmp_path):
    out = tmp_path / "tb"
    res = run_cli("nextlat_probe.train", "--log", "tensorboard", "--preset", "tiny", "--steps", "20", "--out", str(out),
                  "--no-progress", timeout=600)
    assert res.returncode == 0, res.stderr
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    got, want = _tb_scalars(out), _log_scalars(out)
    assert {"train/loss", "train/ce", "train/lr", "train/tokens_per_s", "val/val_loss", "val/gap_to_floor"} <= set(want)
    _assert_same(got, want)
    assert [s for s, _ in got["train/loss"]] == [10, 20] and [s for s, _ in got["val/gap_to_floor"]] == [0, 20]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"objective": "gpt"' in config and '"steps": 20' in config


@pytest.mark.slow
def test_resume_rewrites_the_events_without_duplicated_steps(tmp_path):
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    cfg = TrainConfig(world="mess3", objective="nextlat", steps=20, batch_size=8, seq_len=8, eval_every=5,
                      save_every=5, keep_every=5, n_val=16, device="cpu", warmup_steps=2)
    out = tmp_path / "run"
    # a run killed at step 15 just before its save: the log and the events hold steps 11-15,
    # which its latest checkpoint (step 10) does not. (stop_at saves at step 15, so the kill is
    # made by putting the folder back to its checkpoints as they were at step 10.)
    train(cfg, out_dir=out, progress=False, stop_at=15, tracking=("tensorboard",))
    assert max(s for s, _ in _tb_scalars(out)["train/loss"]) == 15
    (out / "ckpt_step15.pt").unlink()
    shutil.copyfile(out / "ckpt_step10.pt", out / "ckpt.pt")
    train(cfg, out_dir=out, resume=out / "ckpt.pt", progress=False, tracking=("tensorboard",))
    want = _log_scalars(out)
    assert [s for s, _ in want["train/loss"]] == [5, 10, 15, 20]  # the log: each step once
    # the raw events too, without TensorBoard's purge of orphaned steps
    _assert_same(_tb_scalars(out, purge=False), want)
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def _wandb_records(path: Path):
    """The records of a W&B run file (``.wandb``): LevelDB-log framing (32 KiB blocks of
    [crc32 u32, length u16, type u8] + data) after a 7-byte header, each record a protobuf
    ``Record``; enough to read back what a run logged."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):  # (the checksums are not checked: a reader for tests)
        if block - pos % block < 7:  # the block's tail is padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        buf += chunk
        if kind in (1, 4):  # FULL or LAST: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec


@pytest.mark.slow
def test_wandb_offline_writes_the_run_locally(tmp_path):
    out = tmp_path / "wb"
    env_home = tmp_path / "home"
    env_home.mkdir()
    env = {"HOME": str(env_home), "WANDB_MODE": "offline", "WANDB_CONFIG_DIR": str(env_home / "cfg"),
           "WANDB_CACHE_DIR": str(env_home / "cache"), "WANDB_DATA_DIR": str(env_home / "data")}
    old = {k: os.environ.get(k) for k in [*env, "WANDB_API_KEY"]}
    os.environ.update(env)
    os.environ.pop("WANDB_API_KEY", None)
    try:
        res = run_cli("nextlat_probe.train", "--world", "mess3", "--log", "wandb", "--steps", "10", "--batch-size", "8",
                      "--n-val", "16", "--eval-every", "5", "--out", str(out), "--no-progress", timeout=600)
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert res.returncode == 0, res.stderr
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    history, config = {}, None
    for rec in _wandb_records(runs[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
            history.setdefault(items["_step"], {}).update(items)
        elif kind == "run" and rec.run.config.update:
            config = {i.key: json.loads(i.value_json) for i in rec.run.config.update}
    want = _log_scalars(out)
    for tag, points in want.items():
        for step, value in points:
            assert history[step][tag] == pytest.approx(value, rel=1e-9), (tag, step)
    assert config is not None and config["config"]["objective"] == "gpt" and config["world"] == "hmm"


def test_wandb_sends_nothing_unless_configured(tmp_path, monkeypatch):
    for k in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert wandb_mode()[0] == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == ("online", "~/.netrc (api.wandb.ai)")
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert wandb_mode()[0] == "offline"  # a login for another host is not one for this one
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode()[0] == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == ("disabled", "WANDB_MODE")


def test_tracker_names_are_checked():
    assert parse_trackers(["tensorboard,wandb", "tensorboard"]) == ("tensorboard", "wandb")
    assert parse_trackers(None) == ()
    with pytest.raises(UsageError, match="mlflow: unknown tracker"):
        parse_trackers("mlflow")
