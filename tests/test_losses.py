"""Per-position loss vs the exact floor, and the matched-validation-loss comparison."""
import math

import numpy as np
import pytest

from nextlat_probe.analysis.losses import matched_loss_comparison, position_losses


def _rank_record(name, step, val_loss, erank):
    from nextlat_probe.records import make_record

    ident = {"name": name, "objective": name, "step": step, "val_loss": val_loss}
    return make_record(ident, "rank", {"effective_rank": erank}, {"n_seqs": 8}, layer="L1")


def test_matched_loss_picks_first_checkpoint_at_the_common_loss():
    traj = {
        "gpt": [_rank_record("gpt", 1, 1.0, 10), _rank_record("gpt", 2, 0.8, 20), _rank_record("gpt", 3, 0.7, 30)],
        "nextlat": [_rank_record("nextlat", 1, 1.1, 5), _rank_record("nextlat", 2, 0.85, 7),
                    _rank_record("nextlat", 3, float("nan"), 9)],
    }
    out = matched_loss_comparison(traj)
    # NextLat's best finite loss is 0.85: GPT first reaches it at step 2 (0.8)
    assert out["target_val_loss"] == pytest.approx(0.85)
    assert out["runs"]["gpt"] == {"step": 2, "val_loss": 0.8, "effective_rank": 20}
    assert out["runs"]["nextlat"]["step"] == 2
    assert matched_loss_comparison({"gpt": traj["gpt"]}) == {"target_val_loss": None, "runs": {}}


def test_position_losses_floor_equals_exact_cross_entropy(tiny_mess3_ckpts):
    from nextlat_probe.checkpoint import load_checkpoint

    ck = load_checkpoint(tiny_mess3_ckpts["gpt"])
    tokens = ck.world.sample(32, 12, seed=5).tokens
    r = position_losses(ck.model, ck.world, tokens)
    counts = np.asarray(r["count"])
    assert r["positions"] == list(range(1, 12))
    # the count-weighted mean of the per-position floor is the world's exact cross-entropy
    assert float((np.asarray(r["floor"]) * counts).sum() / counts.sum()) == pytest.approx(ck.world.exact_cross_entropy(tokens), rel=1e-9)
    assert r["mean_floor"] == pytest.approx(ck.world.exact_cross_entropy(tokens), rel=1e-9)
    assert all(math.isfinite(x) for x in r["loss"]) and r["mean_loss"] > r["mean_floor"] - 0.05
