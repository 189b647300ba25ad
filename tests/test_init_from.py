"""Continued pretraining: `JEPA(init_from=...)` starts the encoder, target encoder and / or predictor from
official V-JEPA / V-JEPA 2 training checkpoints (predictor and mask tokens included), our checkpoints or a
transformers directory, with every tensor checked."""

import pytest
import torch

from arjepa_pl.interop import InteropError
from arjepa_pl.masks import MaskConfig
from arjepa_pl.models import VisionTransformer, sincos_pos_embed
from arjepa_pl.objectives import VJEPA
from tests.test_vjepa import RandomClipData, trainer

MASKS = [MaskConfig(2, (0.3, 0.3)), MaskConfig(1, (0.6, 0.6))]


def jepa(positions="rope_vjepa2", seed=0, **kw) -> VJEPA:
    torch.manual_seed(seed)
    encoder = VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, tubelet_size=2, positions=positions)
    args = dict(predictor_embed_dim=24, predictor_depth=1, predictor_num_heads=2, masks=MASKS, lr=1e-3,
                start_lr=1e-3, warmup_steps=0)
    model = VJEPA(encoder, **{**args, **kw})
    with torch.no_grad():  # every weight random, mask tokens included
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def official_checkpoint(model: VJEPA, grid=(2, 2, 2), pos_tables=False) -> dict:
    """`model` in the official training layout: DDP / wrapper prefixes, one mask_tokens.i per token,
    sin-cos tables stored as parameters (V-JEPA; V-JEPA 2 files may carry them too), optimiser state."""
    prefix = "module.backbone."
    predictor = {prefix + k: v.clone() for k, v in model.predictor.state_dict().items() if k != "mask_tokens"}
    for i, token in enumerate(model.predictor.mask_tokens):
        predictor[f"{prefix}mask_tokens.{i}"] = token.clone()
    encoders = {name: {prefix + k: v.clone() for k, v in getattr(model, name).state_dict().items()}
                for name in ("encoder", "target_encoder")}
    if pos_tables:
        uniform = model.encoder.config["uniform_power"]
        for weights in encoders.values():
            weights[prefix + "pos_embed"] = sincos_pos_embed(grid, 48, uniform)[None]
        predictor[prefix + "predictor_pos_embed"] = sincos_pos_embed(grid, 24, uniform)[None]
    return {**encoders, "predictor": predictor, "opt": {}, "scaler": None, "epoch": 10, "loss": 0.3}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("positions,pos_tables", [("rope_vjepa2", False), ("rope_vjepa2", True), ("sincos", True)])
def test_official_training_checkpoint_with_predictor(tmp_path, positions, pos_tables):
    source = jepa(positions, seed=1)
    torch.save(official_checkpoint(source, pos_tables=pos_tables), tmp_path / "official.pt")
    fresh = jepa(positions, seed=2)
    fresh.load_pretrained(str(tmp_path / "official.pt"), ("encoder", "target_encoder", "predictor"))
    for name in ("encoder", "target_encoder", "predictor"):
        assert_same_weights(getattr(fresh, name), getattr(source, name))


def test_parts_and_the_teacher_copy(tmp_path):
    source = jepa(seed=1)
    torch.save(official_checkpoint(source), tmp_path / "official.pt")
    only_predictor = jepa(seed=2)
    before = {k: v.clone() for k, v in only_predictor.encoder.state_dict().items()}
    only_predictor.load_pretrained(str(tmp_path / "official.pt"), ["predictor"])
    assert_same_weights(only_predictor.predictor, source.predictor)
    assert all(torch.equal(v, before[k]) for k, v in only_predictor.encoder.state_dict().items())
    # An encoder without its teacher: the teacher starts as a copy of it (as at initialisation).
    student = jepa(seed=2)
    student.load_pretrained(str(tmp_path / "official.pt"), ["encoder"])
    assert_same_weights(student.encoder, source.encoder)
    assert_same_weights(student.target_encoder, source.encoder)


def test_mismatches_are_errors_naming_the_keys(tmp_path):
    torch.save(official_checkpoint(jepa(seed=1, predictor_num_mask_tokens=10)), tmp_path / "ten_tokens.pt")
    with pytest.raises(InteropError, match=r"mask_tokens: expected \(2, 1, 1, 24\), got \(10, 1, 1, 24\)"):
        jepa().load_pretrained(str(tmp_path / "ten_tokens.pt"), ["predictor"])
    jepa(predictor_num_mask_tokens=10).load_pretrained(str(tmp_path / "ten_tokens.pt"), ["predictor"])  # as configured
    # A rotary checkpoint into a sin-cos model and the reverse: positions that cannot be checked.
    torch.save(official_checkpoint(jepa(seed=1)), tmp_path / "rope.pt")
    with pytest.raises(InteropError, match="positions: rope_vjepa2"):
        jepa("sincos").load_pretrained(str(tmp_path / "rope.pt"), ["encoder"])
    checkpoint = official_checkpoint(jepa("sincos", seed=1), pos_tables=True)
    checkpoint["encoder"]["module.backbone.pos_embed"] = sincos_pos_embed((2, 2, 2), 48, False)[None]
    torch.save(checkpoint, tmp_path / "other_table.pt")
    with pytest.raises(InteropError, match="uniform_power=False table"):
        jepa("sincos").load_pretrained(str(tmp_path / "other_table.pt"), ["encoder"])
    del checkpoint["predictor"]
    torch.save(checkpoint, tmp_path / "no_predictor.pt")
    with pytest.raises(InteropError, match="holds no predictor"):
        jepa("sincos").load_pretrained(str(tmp_path / "no_predictor.pt"), ["predictor"])
    with pytest.raises(ValueError, match="init_parts"):
        jepa(init_parts=["decoder"])


def test_fit_starts_from_init_from_our_checkpoint_and_a_transformers_directory(tmp_path):
    """The wiring: fitting with init_from loads before the first step; sources of our own and transformers'."""
    from transformers import VJEPA2Model

    from arjepa_pl.interop.huggingface import export_huggingface

    source = jepa(seed=1)
    t = trainer(tmp_path / "a", max_steps=0)
    t.strategy.connect(source)
    t.save_checkpoint(tmp_path / "ours.ckpt")
    model = jepa(seed=2, init_from=str(tmp_path / "ours.ckpt"))
    model.setup("fit")
    for name in ("encoder", "target_encoder", "predictor"):
        assert_same_weights(getattr(model, name), getattr(source, name))
    # transformers: one encoder (for both) and the predictor; the objective trains from there.
    hf_dir = export_huggingface(source.encoder, source.predictor, tmp_path / "hf", crop_size=16, frames_per_clip=4)
    assert VJEPA2Model.from_pretrained(str(hf_dir)) is not None
    model = jepa(seed=2, init_from=str(hf_dir))
    trainer(tmp_path / "b", max_steps=1).fit(model, RandomClipData())
    # One AdamW step (lr 1e-3) away from the source's weights, not from the seed-2 ones (0.1 away).
    for ours, theirs in zip(model.encoder.parameters(), source.encoder.parameters()):
        assert not torch.equal(ours, theirs) or ours.ndim < 2
        torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-3)
    fresh = jepa(seed=2, init_from=str(hf_dir))
    fresh.setup("fit")
    assert_same_weights(fresh.target_encoder, source.encoder)
    assert_same_weights(fresh.predictor, source.predictor)


def test_export_converts_a_vjepa2_training_checkpoint_for_probes(tmp_path, capsys):
    """`export --positions rope_vjepa2` reads V-JEPA 2's target encoder, dropping a stored table (without
    the flag such a file would pass for a sin-cos V-JEPA 1 one); probes then read the export."""
    from arjepa_pl.interop import load_feature_extractor
    from arjepa_pl.interop.export import main as export_main

    source = jepa(seed=1)
    torch.save(official_checkpoint(source, pos_tables=True), tmp_path / "vitl.pt")
    export_main(["--ckpt_path", str(tmp_path / "vitl.pt"), "--positions", "rope_vjepa2", "--num_heads", "2",
                 "--out", str(tmp_path / "target.pt")])
    assert "target_encoder" in capsys.readouterr().out
    extractor = load_feature_extractor(tmp_path / "target.pt")
    assert extractor.encoder.positions == "rope_vjepa2"
    assert_same_weights(extractor.encoder, source.target_encoder)
    # Positions are never guessed: without the flag a table is taken for sin-cos (and checked), and a
    # file without one is refused, naming the setting.
    torch.save(official_checkpoint(source), tmp_path / "no_table.pt")
    with pytest.raises(InteropError, match="positions 'rope_vjepa2'"):
        load_feature_extractor(tmp_path / "no_table.pt", num_heads=2)
