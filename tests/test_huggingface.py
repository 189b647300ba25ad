"""Hugging Face transformers' V-JEPA 2 <-> arjepa_pl: a small random VJEPA2Config model built here (no
download) gives the same encoder features, predictor outputs and classifier logits in our modules, our
modules exported give the same again in transformers, every weight is used, and a wrong key or shape
is an error naming ours and theirs."""

import pytest
import torch
from transformers import VJEPA2Config, VJEPA2ForVideoClassification, VJEPA2Model

from arjepa_pl.interop import InteropError, load_feature_extractor
from arjepa_pl.interop.export import main as export_main
from arjepa_pl.interop.huggingface import (
    ENCODER_RULES,
    export_huggingface,
    huggingface_from_state,
    import_state,
    load_huggingface,
)
from arjepa_pl.models import VisionTransformer, gather_tokens

CROP, FRAMES = 32, 4  # a (2, 4, 4) token grid under tubelet 2, patch 8
CONTEXT = torch.tensor([[0, 3, 5, 9, 12, 20, 31], [1, 2, 4, 8, 16, 17, 30]])
TARGET = torch.tensor([[6, 7, 8, 10], [0, 3, 5, 6]])


def small_config(**kw) -> VJEPA2Config:
    return VJEPA2Config(**{**dict(crop_size=CROP, frames_per_clip=FRAMES, patch_size=8, tubelet_size=2, hidden_size=48,
                                  num_attention_heads=2, num_hidden_layers=2, pred_hidden_size=24,
                                  pred_num_attention_heads=2, pred_num_hidden_layers=2, pred_num_mask_tokens=3,
                                  num_pooler_layers=1), **kw})


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Every weight random (LayerNorms and mask tokens too): a wrongly mapped tensor changes the outputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def hf_model():
    return randomised(VJEPA2Model(small_config()))


@pytest.fixture(scope="module")
def clip():
    return torch.randn(2, 3, FRAMES, CROP, CROP, generator=torch.Generator().manual_seed(1))


def hf_outputs(model, clip):
    """(encoder features, predictor outputs) of transformers' model; its clips are [B, T, C, H, W]."""
    with torch.no_grad():
        out = model(clip.transpose(1, 2), context_mask=[CONTEXT], target_mask=[TARGET])
    return out.last_hidden_state, out.predictor_output.last_hidden_state


def our_outputs(encoder, predictor, clip):
    with torch.no_grad():
        features = encoder(clip)
        # transformers' predictor reads the full clip's features at the context positions, with mask token 1.
        predicted = predictor(gather_tokens(features, CONTEXT), CONTEXT, TARGET, encoder.token_grid(clip.shape),
                              mask_token=1)
    return features, predicted


def test_huggingface_to_ours_to_huggingface_is_exact(hf_model, clip, tmp_path):
    ours = load_huggingface(save(hf_model, tmp_path / "hf"))
    assert ours.head is None and ours.encoder.positions == "rope_vjepa2"
    expected = hf_outputs(hf_model, clip)
    for a, b in zip(our_outputs(ours.encoder, ours.predictor, clip), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # ... and back: the directory transformers loads holds the same tensors and computes the same.
    out = export_huggingface(ours.encoder, ours.predictor, tmp_path / "back", crop_size=CROP, frames_per_clip=FRAMES)
    again = VJEPA2Model.from_pretrained(str(out)).eval()
    original = hf_model.state_dict()
    assert again.state_dict().keys() == original.keys()
    for key, value in again.state_dict().items():
        assert torch.equal(value, original[key]), key
    for a, b in zip(hf_outputs(again, clip), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def save(model, path):
    model.save_pretrained(str(path))
    return path


def test_ours_to_huggingface_is_exact(clip, tmp_path):
    """The other direction first: our randomly initialised RoPE modules, exported, computed by transformers."""
    start = huggingface_from_state(VJEPA2Model(small_config()).state_dict(), small_config(), "shapes")
    encoder, predictor = randomised(start.encoder), randomised(start.predictor)
    hf = VJEPA2Model.from_pretrained(str(export_huggingface(encoder, predictor, tmp_path / "hf", CROP, FRAMES))).eval()
    for a, b in zip(hf_outputs(hf, clip), our_outputs(encoder, predictor, clip)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_classifier_head_gives_the_same_logits(tmp_path, clip):
    hf = randomised(VJEPA2ForVideoClassification(small_config(num_labels=5)))
    ours = load_huggingface(save(hf, tmp_path / "cls"))
    assert ours.head is not None and len(ours.head.pooler.blocks) == 1
    with torch.no_grad():
        expected = hf(clip.transpose(1, 2)).logits
        torch.testing.assert_close(ours.head(ours.encoder(clip)), expected, rtol=0, atol=1e-5)
    # Probes read the encoder of a transformers directory (or hf:<hub id>) like any checkpoint.
    extractor = load_feature_extractor(tmp_path / "cls")
    with torch.no_grad():
        torch.testing.assert_close(extractor(clip)[0], ours.encoder(clip))
    with pytest.raises(InteropError, match="context encoder"):
        load_feature_extractor(tmp_path / "cls", which="target_encoder")


def test_mismatched_keys_and_shapes_name_both_sides(hf_model):
    state = dict(hf_model.state_dict())
    state["encoder.layer.0.attention.key.weight"] = torch.zeros(7, 48)
    del state["encoder.layer.1.mlp.fc2.bias"]
    state["encoder.layer.1.attention.rotary.weight"] = torch.zeros(1)
    encoder = VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, tubelet_size=2,
                                positions="rope_vjepa2")
    with pytest.raises(InteropError) as error:
        import_state(encoder, state, ENCODER_RULES, "encoder.", "the test model")
    message = str(error.value)
    assert ("blocks.0.attn.qkv.weight (arjepa_pl) <- encoder.layer.0.attention.query.weight + "
            "encoder.layer.0.attention.key.weight + encoder.layer.0.attention.value.weight") in message
    assert "expected shape (144, 48), got (103, 48)" in message
    assert "blocks.1.mlp.fc2.bias (arjepa_pl) <- encoder.layer.1.mlp.fc2.bias (transformers): missing" in message
    assert "encoder.layer.1.attention.rotary.weight (transformers): no arjepa_pl weight takes it" in message
    # The other direction: a sin-cos (or true-rotary) model has no transformers counterpart.
    sincos = VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, tubelet_size=2)
    ours = huggingface_from_state(hf_model.state_dict(), hf_model.config, "test")
    with pytest.raises(InteropError, match="positions='sincos'"):
        export_huggingface(sincos, ours.predictor, "unused", CROP)
    with pytest.raises(InteropError, match="hidden_act"):
        huggingface_from_state(hf_model.state_dict(), small_config(hidden_act="silu"), "silu")


def test_export_command_writes_a_transformers_directory(tmp_path, clip, capsys):
    """A JEPA checkpoint of ours (the demo config's shape of file) -> `export --huggingface` -> transformers."""
    import lightning.pytorch as L

    from arjepa_pl.objectives import VJEPA

    ours = huggingface_from_state(VJEPA2Model(small_config()).state_dict(), small_config(), "shapes")
    jepa = VJEPA(randomised(ours.encoder), predictor_embed_dim=24, predictor_depth=2, predictor_num_heads=2,
                 predictor_num_mask_tokens=3)
    randomised(jepa.predictor)
    trainer = L.Trainer(logger=False, enable_checkpointing=False, max_steps=0)
    trainer.strategy.connect(jepa)
    trainer.save_checkpoint(tmp_path / "jepa.ckpt")
    export_main(["--ckpt_path", str(tmp_path / "jepa.ckpt"), "--huggingface", "--crop_size", str(CROP),
                 "--out", str(tmp_path / "hf")])
    assert "VJEPA2Model" in capsys.readouterr().out
    hf = VJEPA2Model.from_pretrained(str(tmp_path / "hf")).eval()
    for a, b in zip(hf_outputs(hf, clip), our_outputs(jepa.encoder.eval(), jepa.predictor.eval(), clip)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    with pytest.raises(SystemExit):
        export_main(["--ckpt_path", str(tmp_path / "jepa.ckpt"), "--huggingface", "--out", str(tmp_path / "x")])
    assert "--crop_size" in capsys.readouterr().err


def test_probe_heads_start_from_a_transformers_classifier(tmp_path, clip):
    """Probe(head_init=...): every attentive head takes V-JEPA 2's pooler shape and weights; the classifier
    too where the class count agrees (else it starts fresh). Probing the classifier's own encoder then
    gives transformers' logits."""
    from arjepa_pl.evaluation import Probe
    from arjepa_pl.evaluation.tasks import ProbeTask

    hf = randomised(VJEPA2ForVideoClassification(small_config(num_labels=5)))
    save(hf, tmp_path / "cls")
    probe = Probe(tasks=[ProbeTask("action", 5), ProbeTask("other", 3)], encoder_checkpoint=str(tmp_path / "cls"),
                  head_init=str(tmp_path / "cls"))
    action, other = probe.heads["action_l1"], probe.heads["other_l1"]
    assert len(action.pooler.blocks) == 1 and isinstance(action.pooler.xattn.proj, torch.nn.Identity)
    with torch.no_grad():
        logits, views = probe.logits({"video": clip, "label": torch.zeros(2, dtype=torch.long)})
        torch.testing.assert_close(logits["action_l1"], hf(clip.transpose(1, 2)).logits, rtol=0, atol=1e-5)
    assert torch.equal(other.pooler.query, action.pooler.query) and other.linear.weight.shape == (3, 48)
    with pytest.raises(InteropError, match="num_heads to 2"):
        Probe(tasks=[ProbeTask("action", 5)], encoder_checkpoint=str(tmp_path / "cls"), head_init=str(tmp_path / "cls"),
              num_heads=4)
