import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_mess3_ckpts(tmp_path_factory):
    """A GPT and a NextLat checkpoint trained briefly on Mess3 (shared by CLI tests)."""
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    base = tmp_path_factory.mktemp("mess3")
    out = {}
    for obj in ("gpt", "nextlat"):
        cfg = TrainConfig(world="mess3", objective=obj, steps=60, batch_size=32, seq_len=12, eval_every=30, save_every=60, n_val=64, device="cpu", warmup_steps=10, lr=3e-3)
        out[obj] = train(cfg, out_dir=base / obj, progress=False).checkpoint
    return out


@pytest.fixture(scope="session")
def tiny_taxi_ckpts(tmp_path_factory):
    """A GPT and a NextLat checkpoint trained briefly on a small synthetic taxi map."""
    from nextlat_probe.training.config import TrainConfig
    from nextlat_probe.training.trainer import train

    base = tmp_path_factory.mktemp("taxi")
    out = {}
    for obj in ("gpt", "nextlat"):
        cfg = TrainConfig(world="taxi", world_options={"map_size": 4, "max_len": 12, "min_len": 2}, objective=obj, steps=60, batch_size=32, eval_every=30, save_every=60, n_val=64, device="cpu", warmup_steps=10, lr=3e-3)
        out[obj] = train(cfg, out_dir=base / obj, progress=False).checkpoint
    return out
