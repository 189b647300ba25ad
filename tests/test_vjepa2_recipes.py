"""V-JEPA 2's recipes: the warm-up / constant / cooldown schedule, the ViT-L and ViT-g configs (both
phases, on the meta device), the RoPE demo config training on the demo set, and the cooldown phase
resuming the first phase's checkpoint with longer clips and another batch size."""

import csv
from pathlib import Path

import pytest
import torch
import yaml

from arjepa_pl import schedules
from arjepa_pl.cli import ArJepaCLI
from tests.test_cli import ON_CPU

REPO = Path(__file__).resolve().parents[1]


def test_warmup_constant_cooldown_schedule():
    f = schedules.warmup_constant_cooldown
    args = dict(warmup_steps=10, cooldown_steps=20, total_steps=100, start=1.0, peak=5.0, final=0.0)
    assert [f(s, **args) for s in (0, 5, 10, 50, 80, 90, 100, 120)] == [1.0, 3.0, 5.0, 5.0, 5.0, 2.5, 0.0, 0.0]
    assert f(10**6, 10, 0, 100, 1.0, 5.0, 0.0) == 5.0  # no cooldown: constant to the end (and after)
    # V-JEPA 2's cooldown: the decay spans 15 K steps, the run stops after 12 K (official ipe_scale 1.25).
    assert f(252_000, 12_000, 15_000, 255_000, 1e-4, 5.25e-4, 1e-6) == pytest.approx(1.058e-4, rel=1e-3)


def test_schedule_arguments_are_checked():
    from arjepa_pl.models import VisionTransformer
    from arjepa_pl.objectives import VJEPA

    encoder = VisionTransformer(embed_dim=32, depth=1, num_heads=2, patch_size=8)
    for kw, match in [(dict(cooldown_steps=5), "used only by"), (dict(lr_schedule="cosine"), "lr_schedule"),
                      (dict(lr_schedule="warmup_constant_cooldown", warmup_steps=8, cooldown_steps=5, total_steps=10),
                       "plus the 5 cooldown steps is longer than the run")]:
        with pytest.raises(ValueError, match=match):
            VJEPA(encoder, predictor_depth=1, **kw)


def build(config: str, demo_manifests, *extra: str) -> ArJepaCLI:
    with torch.device("meta"):
        return ArJepaCLI(args=["--config", str(REPO / "configs" / config), *ON_CPU, "--data.train_manifest",
                               str(demo_manifests.train), *extra], run=False)


@pytest.mark.parametrize("size,millions,heads", [("vitl16", 303.9, 16), ("vitg16", 1012.0, 22)])
def test_vjepa2_recipes_are_the_papers(size, millions, heads, demo_manifests):
    first, cooldown = (build(f"vjepa2_{size}{phase}.yaml", demo_manifests) for phase in ("", "_cooldown"))
    # One model and one schedule for both phases: the second continues the first.
    assert first.config.model == cooldown.config.model
    m = first.model
    encoder_params = sum(p.numel() for n, p in m.named_parameters() if n.startswith("encoder."))
    assert encoder_params / 1e6 == pytest.approx(millions, abs=1.0)
    assert (m.encoder.num_heads, m.encoder.positions, m.predictor.rope.positions) == (heads, *["rope_vjepa2"] * 2)
    assert m.predictor.mask_tokens.shape == (10, 1, 1, 384) and m.predictor.predictor_blocks[0].attn.num_heads == 12
    assert not m.mask_token_per_config and m.ema_momentum == (0.99925, 0.99925)
    lrs = [m.lr_at(s) for s in (0, 12_000, 239_999, 240_000, 246_000, 252_000)]
    cooling = 5.25e-4 - 0.4 * (5.25e-4 - 1e-6)  # 6 K of the 15 K cooldown steps
    assert lrs == pytest.approx([1e-4, 5.25e-4, 5.25e-4, 5.25e-4, cooling, 1.058e-4], rel=1e-3)
    assert m.weight_decay_at(0) == m.weight_decay_at(250_000) == 0.04
    assert [(c.num_blocks, c.spatial_scale) for c in m.masks] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    data = [c.config.data.init_args for c in (first, cooldown)]
    assert [(d.frames_per_clip, d.fps, d.iterations_per_epoch) for d in data] == [(16, 4.0, 300), (64, 4.0, 300)]
    assert data[0].crop_size == 256 and data[1].crop_size == (384 if size == "vitg16" else 256)
    assert (first.config.trainer.max_steps, cooldown.config.trainer.max_steps) == (240_000, 252_000)
    for cli, phase in ((first, ""), (cooldown, "_cooldown")):  # global batch 3072 (per GPU x 8 GPUs x nodes)
        text = (REPO / "configs" / f"vjepa2_{size}{phase}.yaml").read_text()  # nodes: before ON_CPU
        nodes = int(text.split("num_nodes: ")[1].split()[0])
        assert cli.config.data.init_args.batch_size * 8 * nodes == 3072


def _logged(run_dir: Path, key: str) -> list[float]:
    rows = [row for f in run_dir.rglob("metrics.csv") for row in csv.DictReader(f.open())]
    return [float(row[key]) for row in rows if row.get(key)]


def fit(run_dir: Path, demo_manifests, *extra: str) -> ArJepaCLI:
    """configs/vjepa2.yaml with its checkpoints only: the monitors (FLOP counting, collapse, online probe,
    media) cost more than these few steps and are tested elsewhere."""
    config = yaml.safe_load((REPO / "configs/vjepa2.yaml").read_text())
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"]
                                      if c["class_path"].endswith("ModelCheckpoint")]
    path = run_dir.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return ArJepaCLI(args=["fit", "--config", str(path), "--trainer.default_root_dir", str(run_dir),
                           "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.name",
                           "logs", "--trainer.logger.init_args.save_dir", str(run_dir), "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false",
                           "--trainer.limit_val_batches", "0", "--data.train_manifest", str(demo_manifests.train),
                           "--data.num_workers", "0", *extra])


@pytest.mark.slow
def test_rope_demo_trains_and_its_cooldown_phase_resumes_with_longer_clips(tmp_path, demo_manifests):
    """The demo config trains (finite, falling loss), then a 'cooldown' run resumes its last checkpoint
    with clips twice as long and another batch size, continuing the same schedule from its step."""
    schedule = ["--model.init_args.total_steps", "8", "--model.init_args.warmup_steps", "1",
                "--model.init_args.cooldown_steps", "4", "--data.iterations_per_epoch", "2"]
    first = tmp_path / "first"
    fit(first, demo_manifests, "--trainer.max_steps", "4", "--data.frames_per_clip", "4", "--data.batch_size", "2",
        *schedule)
    losses = _logged(first, "train/loss")
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    second = tmp_path / "second"
    cli = fit(second, demo_manifests, "--trainer.max_steps", "6", "--data.frames_per_clip", "8", "--data.batch_size",
              "1", *schedule, "--ckpt_path", str(first / "checkpoints" / "last.ckpt"))
    assert cli.trainer.global_step == 6
    assert _logged(second, "train/lr") == pytest.approx([1e-3, 1e-3 - 0.25 * (1e-3 - 1e-5)])  # steps 4 and 5
    assert cli.model.encoder.positions == "rope_vjepa2"


def test_segments_are_concatenated_per_crop_in_time_order():
    """V-JEPA 2's probe protocol: a video's temporal segments form one token sequence per spatial crop."""
    from arjepa_pl.evaluation.multiview import concatenate_segments

    B, S, E, N = 2, 3, 2, 4  # samples, segments, crops, tokens
    # feature value = (sample, segment, crop, token) encoded as digits; views are segment-major.
    f = torch.tensor([[[b * 1000 + s * 100 + e * 10 + n] for n in range(N)] for b in range(B) for s in range(S)
                      for e in range(E)], dtype=torch.float32)
    out, crops = concatenate_segments(f, S * E, S)
    assert crops == E and out.shape == (B * E, S * N, 1)
    assert out[3, :, 0].tolist() == [1010 + s * 100 + n for s in range(S) for n in range(N)]  # sample 1, crop 1
    with pytest.raises(ValueError, match="num_clips"):
        concatenate_segments(f, S * E, 4)
    # In the probe: 2 segments x 3 crops per video -> 3 scored views, each over both segments' tokens.
    from arjepa_pl.evaluation import Probe
    from arjepa_pl.evaluation.tasks import ProbeTask
    from arjepa_pl.models import VisionTransformer

    encoder = VisionTransformer(embed_dim=32, depth=1, num_heads=2, patch_size=8, positions="rope_vjepa2")
    probe = Probe(tasks=[ProbeTask("a", 4)], encoder=encoder, segments=2, self_attn_blocks=1, cross_attn_proj=False)
    logits, views = probe.logits({"video": torch.randn(2, 6, 3, 4, 16, 16), "label": torch.zeros(2, dtype=torch.long)})
    assert views == 3 and logits["a_l0"].shape == (6, 4)
