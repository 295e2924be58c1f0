"""Model FLOPs per token (models.flops), against counts worked out by hand, and the device
peaks MFU divides by."""
import pytest

from nextlat_probe.models.config import ModelConfig
from nextlat_probe.models.flops import mfu, peak_tflops, training_flops_per_token
from nextlat_probe.worlds import make_world

#: tiny on the default taxi world: 2 layers, d_model 64, 4 heads x 16, d_mlp 256; 26 tokens
#: (16 intersections, 8 turns, end, pad); 43 tokens a sequence
TINY = ModelConfig.from_preset("tiny", n_ctx=43, d_vocab=26)


def test_the_tiny_preset_counts_what_a_hand_count_gives():
    assert make_world("taxi", map_size=4).vocab_size == 26  # the world the hand counts are for
    # GPT. Matmul multiply-adds per token: each layer Q, K, V, O 4 x 64 x 64 = 16,384 and the
    # MLP 2 x 64 x 256 = 32,768; two layers 98,304; the unembedding 64 x 26 = 1,664: 99,968,
    # x 6 (forward 2, backward 4) = 599,808. Attention: per layer scores and values
    # 2 x 64 x (43 + 1) / 2 = 2,816 multiply-adds; two layers 5,632, x 6 = 33,792.
    gpt = training_flops_per_token(TINY, 43)
    assert gpt.transformer == 599_808 and gpt.attention == 33_792 and gpt.total == 633_600
    # NextLat d = 1 (lambda_KL 1, p_psi width 64): 42 of 43 starts are rolled out. p_psi:
    # 2*64 x 64 + 64 x 64 + 64 x 64 = 16,384 multiply-adds x 6 x 42/43. The frozen head on
    # the prediction: 64 x 26 = 1,664 x 4 (no weight gradient) x 42/43; on every target
    # latent once, forward only: 1,664 x 2.
    nl = training_flops_per_token(TINY, 43, "nextlat", horizon=1, lambda_kl=1.0)
    assert nl.p_psi == pytest.approx(98_304 * 42 / 43)
    assert nl.kl_head == pytest.approx(6_656 * 42 / 43 + 3_328)
    assert nl.total == pytest.approx(633_600 + 98_304 * 42 / 43 + 6_656 * 42 / 43 + 3_328)
    assert training_flops_per_token(TINY, 43, "nextlat", 1, lambda_kl=0.0).kl_head == 0
    # MTP d = 2: head k reads 43 - k rows; its MLP 2 x 64 x 64 and the shared unembedding
    # 64 x 26, all trained: (8,192 + 1,664) x 6 x (42 + 41) / 43.
    mtp = training_flops_per_token(TINY, 43, "mtp", horizon=2)
    assert mtp.mtp_heads == pytest.approx(9_856 * 6 * 83 / 43)
    assert mtp.to_dict()["total"] == pytest.approx(633_600 + 9_856 * 6 * 83 / 43)


def test_device_peaks_and_mfu():
    assert peak_tflops("NVIDIA H200", "bf16") == 989.5
    assert peak_tflops("NVIDIA H100 80GB HBM3", "tf32") == 494.5
    assert peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5
    assert peak_tflops("cpu (2 threads)", "fp32") is None and peak_tflops("Tesla T4", "bf16") is None
    # 1M tokens/s at 633,600 FLOPs a token on a 989.5 TFLOP/s device
    assert mfu(1e6, 633_600, 989.5) == pytest.approx(633_600 * 1e6 / 989.5e12)
    assert mfu(1e6, 633_600, None) is None
