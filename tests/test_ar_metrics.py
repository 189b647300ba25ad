"""Likelihood arithmetic and rollout metrics on hand-made inputs whose answers are known."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchmetrics.text import Perplexity

from arjepa_pl.objectives.ar_metrics import BitsPerUnit, CodeUsage, HorizonMetrics
from arjepa_pl.pictures import rollout_frames, rollout_strip


def test_uniform_byte_model_is_8_bits_per_byte_and_perplexity_256():
    logits = torch.zeros(3, 10, 256)  # every byte equally likely
    targets = torch.randint(0, 256, (3, 10))
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    bpb = BitsPerUnit()
    bpb.update(nll, targets.numel())
    assert bpb.compute().item() == pytest.approx(8.0, rel=1e-6)
    ppl = Perplexity()
    ppl.update(logits, targets)
    assert ppl.compute().item() == pytest.approx(256.0, rel=1e-5)


def test_bits_and_perplexity_of_known_probabilities_over_several_batches():
    # Batch 1: the target has probability 1/2 (1 bit), batch 2: 1/8 (3 bits) on twice as many bytes.
    def logits_with_target_prob(p, n):
        logits = torch.full((1, n, 4), math.log((1 - p) / 3))
        logits[..., 0] = math.log(p)
        return logits, torch.zeros(1, n, dtype=torch.long)

    bpb, ppl = BitsPerUnit(), Perplexity()
    for p, n in ((0.5, 2), (0.125, 4)):
        logits, targets = logits_with_target_prob(p, n)
        ppl.update(logits, targets)
        bpb.update(F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"), n)
    mean_bits = (2 * 1 + 4 * 3) / 6
    assert bpb.compute().item() == pytest.approx(mean_bits, rel=1e-5)
    assert ppl.compute().item() == pytest.approx(2**mean_bits, rel=1e-5)  # exp(mean nats) = 2^(mean bits)


def test_bits_per_dim_counts_pixel_values_not_tokens():
    # 10 tokens, each a 2x8x8x3 patch (384 values), each predicted with probability 1/512 (9 bits):
    # 90 bits over 3840 values.
    bpd = BitsPerUnit()
    bpd.update(torch.tensor(10 * math.log(512)), 10 * 384)
    assert bpd.compute().item() == pytest.approx(90 / 3840, rel=1e-6)


def test_code_usage():
    usage = CodeUsage(8)
    usage.update(torch.tensor([0, 0, 1, 1]))
    usage.update(torch.tensor([[2, 3], [2, 3]]))
    out = usage.compute()
    assert out["fraction_used"].item() == pytest.approx(0.5)
    assert out["perplexity"].item() == pytest.approx(4.0, rel=1e-5)  # 4 codes equally often


def test_horizon_metrics_on_a_hand_made_case():
    truth = torch.full((2, 3, 4, 32, 32), 0.5)
    pred = truth.clone()
    pred[:, :, 1] += 0.1  # horizon 2: a constant error of 0.1
    pred[:, :, 3] = 0.0  # horizon 4: black frames
    metrics = HorizonMetrics(4)
    metrics.update(pred, truth)
    out = metrics.compute()
    torch.testing.assert_close(out["mse"], torch.tensor([0.0, 0.01, 0.0, 0.25]))
    assert out["psnr"][1].item() == pytest.approx(20.0, rel=1e-4)
    assert out["psnr"][3].item() == pytest.approx(10 * math.log10(4), rel=1e-4)
    assert out["psnr"][0].item() == 100.0  # perfect frames are capped, not infinite
    # SSIM of flat frames reduces to its luminance term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1).
    c1 = (0.01 * 1.0) ** 2
    assert out["ssim"][1].item() == pytest.approx((2 * 0.6 * 0.5 + c1) / (0.36 + 0.25 + c1), rel=1e-4)
    assert out["ssim"][0].item() == pytest.approx(1.0, abs=1e-5)


def test_copy_last_baseline_is_worse_than_a_perfect_predictor_on_motion():
    # A bright square moving right by 2 px per frame: copying the last frame errs more at every horizon.
    video = torch.zeros(1, 3, 8, 32, 32)
    for t in range(8):
        video[:, :, t, 10:18, 2 + 2 * t:10 + 2 * t] = 1.0
    context, truth = video[:, :, :4], video[:, :, 4:]
    model, baseline = HorizonMetrics(4), HorizonMetrics(4)
    model.update(truth, truth)
    baseline.update(context[:, :, -1:].expand_as(truth), truth)
    b = baseline.compute()
    assert (b["mse"] > 0).all() and (b["mse"][1:] >= b["mse"][:-1]).all()  # error grows with the horizon
    assert (model.compute()["psnr"] > b["psnr"]).all()


def test_rollout_pictures_lay_out_context_prediction_and_truth():
    context, pred, truth = torch.zeros(3, 2, 8, 8), torch.full((3, 3, 8, 8), 0.5), torch.ones(3, 3, 8, 8)
    strip = rollout_strip(context, pred, truth, gap=2)
    assert strip.shape == (8 + 2 + 8, 5 * 8 + 2, 3) and strip.dtype == np.uint8
    assert (strip[:8, 18:] == 255).all()  # top row after the gap: truth
    assert (strip[10:, 18:] == 128).all()  # bottom row after the gap: prediction
    assert (strip[:8, :16] == 0).all() and (strip[10:, :16] == 0).all()  # context in both rows
    frames = rollout_frames(context, pred, truth)
    assert frames.shape == (5, 12, 28, 3)  # even sides, as H.264 yuv420p needs
    assert (frames[4, 2:10, 18:26] == 128).all() and (frames[1, 2:10, 18:26] == 0).all()
