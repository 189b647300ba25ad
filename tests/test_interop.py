"""Checkpoint interop: official V-JEPA / I-JEPA layouts load into our encoder with identical features,
bad ones fail naming every bad key, and export -> load rebuilds identical feature extractors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from arjepa_pl.interop import (InteropError, export_feature_extractor, halves_swapped, load_feature_extractor,
                               read_feature_extractor)
from arjepa_pl.models import FeatureExtractor, VisionTransformer, patchify, sincos_pos_embed
from arjepa_pl.objectives.ar_video_tokens import ARVideoTokens
from tests.test_vjepa import RandomClipData, tiny_vjepa, trainer

REPO = Path(__file__).resolve().parents[1]
CLIP = (2, 3, 4, 16, 16)  # 4 frames of 16x16: a (2, 2, 2) token grid under tubelet 2, patch 8
IMAGE = (2, 3, 32, 32)  # a (4, 4) token grid under patch 8


def tiny_vit(video: bool = True, seed: int = 0, **kw) -> VisionTransformer:
    """A tiny ViT whose every weight is random (LayerNorms included), so a wrongly mapped or wrongly
    permuted tensor changes the features."""
    torch.manual_seed(seed)
    vit = VisionTransformer(**{**dict(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, video=video), **kw})
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vit.eval()


def features(extractor: FeatureExtractor, x: torch.Tensor, layers=(0, -1)) -> list[torch.Tensor]:
    with torch.no_grad():
        return extractor(x, layers)


def assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


# -- official checkpoints, built from our own models by the documented mapping ---------------------

def official_weights(vit: VisionTransformer, x_shape, prefix="module.backbone.", columns_first=False) -> dict:
    """vit's weights under official names: prefixes, plus the (1, N, D) pos_embed parameter. With
    columns_first the network is rewritten to I-JEPA's 2-D table (column channels first), as an
    I-JEPA checkpoint of the same function would store it."""
    weights = dict(vit.state_dict())
    table = sincos_pos_embed(vit.token_grid(x_shape), vit.embed_dim, vit.config["uniform_power"])
    if columns_first:
        from arjepa_pl.interop import permute_residual_channels

        perm = halves_swapped(vit.embed_dim)
        weights, table = permute_residual_channels(weights, perm), table[:, perm]
    weights = {prefix + k: v.clone() for k, v in weights.items()}
    weights[prefix + "pos_embed"] = table[None]
    return weights


def official_forward(weights: dict, config: dict, x: torch.Tensor, layers=(0, -1)) -> list[torch.Tensor]:
    """The official encoder's computation written out: patches + the *stored* pos_embed, blocks, norm."""
    weights = {k.split("backbone.")[-1]: v for k, v in weights.items()}
    vit = VisionTransformer(**config)
    pos_embed = weights.pop("pos_embed")
    vit.load_state_dict(weights)
    with torch.no_grad():
        tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2) + pos_embed
        out = []
        for block in vit.blocks:
            tokens = block(tokens)
            out.append(vit.norm(tokens))
    return [out[layer] for layer in layers]


def official_checkpoint(video: bool = True, columns_first: bool = False, **vit_kw) -> tuple[dict, dict]:
    """(checkpoint dict in the official layout, the two source encoders)."""
    shape = CLIP if video else IMAGE
    encoder, target = tiny_vit(video, seed=1, **vit_kw), tiny_vit(video, seed=2, **vit_kw)
    checkpoint = {
        "encoder": official_weights(encoder, shape, columns_first=columns_first),
        "target_encoder": official_weights(target, shape, columns_first=columns_first),
        "predictor": {"module.backbone.predictor_embed.weight": torch.randn(16, 32),
                      "module.backbone.mask_tokens.0": torch.zeros(1, 1, 16)},
        "opt": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "scaler": {"scale": 65536.0, "growth_factor": 2.0}, "epoch": 3, "loss": 0.25,
        "batch_size": 4, "world_size": 1, "lr": 1e-3,
    }
    return checkpoint, {"encoder": encoder, "target_encoder": target}


@pytest.mark.parametrize("uniform_power", [True, False])
def test_official_video_checkpoint_gives_identical_features(tmp_path, uniform_power):
    checkpoint, sources = official_checkpoint(video=True, uniform_power=uniform_power)
    path = tmp_path / "vjepa.pth.tar"
    torch.save(checkpoint, path)
    x = torch.randn(*CLIP)
    for which, name in (("auto", "target_encoder"), ("target_encoder", "target_encoder"), ("encoder", "encoder")):
        loaded = load_feature_extractor(path, which=which, num_heads=2)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        assert loaded.encoder.config == sources[name].config  # architecture inferred from the shapes
        ours = features(loaded, x)
        assert_same(ours, official_forward(checkpoint[name], sources[name].config, x))
        assert_same(ours, features(FeatureExtractor(sources[name]), x))
    target = features(load_feature_extractor(path, num_heads=2), x)[-1]
    assert not torch.allclose(target, ours[-1], atol=1e-3), "which='encoder' read the target encoder"
    # A table stored in half precision is still recognised (and dropped: ours is exact).
    checkpoint["target_encoder"]["module.backbone.pos_embed"] = checkpoint["target_encoder"]["module.backbone.pos_embed"].half()
    torch.save(checkpoint, path)
    assert_same(features(load_feature_extractor(path, num_heads=2), x), features(FeatureExtractor(sources["target_encoder"]), x))


@pytest.mark.parametrize("columns_first", [False, True])
def test_official_image_checkpoint(tmp_path, columns_first):
    """I-JEPA: a 2-D encoder; its own table order (columns first) is converted exactly, up to the
    documented swap of the two channel halves."""
    checkpoint, sources = official_checkpoint(video=False, columns_first=columns_first)
    path = tmp_path / "ijepa.pth.tar"
    torch.save(checkpoint, path)
    x = torch.randn(*IMAGE)
    loaded = load_feature_extractor(path, num_heads=2)
    assert loaded.encoder.video is False and loaded.encoder.patch_size == 8
    official = official_forward(checkpoint["target_encoder"], sources["target_encoder"].config, x)
    ours = features(loaded, x)
    if columns_first:
        ours = [f[..., halves_swapped(32)] for f in ours]
    assert_same(ours, official)


def test_bare_encoder_state_dict_and_standard_heads(tmp_path):
    """A lone encoder state dict (prefixes in another order) loads too; a standard width gives its heads."""
    vit = tiny_vit(embed_dim=192, depth=1, num_heads=3)
    path = tmp_path / "encoder.pt"
    torch.save(official_weights(vit, CLIP, prefix="backbone.module.backbone."), path)
    loaded = load_feature_extractor(path)  # width 192 = ViT-Tiny: 3 heads
    assert loaded.encoder.num_heads == 3
    x = torch.randn(*CLIP)
    assert_same(features(loaded, x, (0,)), features(FeatureExtractor(vit), x, (0,)))
    with pytest.raises(InteropError, match="which='encoder' cannot choose"):
        load_feature_extractor(path, which="encoder")


def test_mismatched_missing_and_unexpected_keys_are_all_named(tmp_path):
    checkpoint, _ = official_checkpoint()
    weights = checkpoint["target_encoder"]
    weights["module.backbone.blocks.1.mlp.fc1.weight"] = torch.zeros(64, 31)
    weights["module.backbone.norm.bias"] = torch.zeros(33)
    del weights["module.backbone.blocks.0.norm2.bias"]
    weights["module.backbone.cls_token"] = torch.zeros(1, 1, 32)
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(InteropError) as error:
        load_feature_extractor(tmp_path / "bad.pt", num_heads=2)
    message = str(error.value)
    assert "blocks.1.mlp.fc1.weight: expected (128, 32), got (64, 31)" in message
    assert "norm.bias: expected (32,), got (33,)" in message
    assert "missing key(s): blocks.0.norm2.bias" in message
    assert "unexpected key(s): cls_token" in message
    assert "Traceback" not in message


def test_position_scheme_and_heads_errors(tmp_path):
    checkpoint, _ = official_checkpoint()
    path = tmp_path / "ckpt.pt"
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match="width-32 ViT.*pass num_heads"):
        load_feature_extractor(path)
    weights = checkpoint["target_encoder"]
    weights["module.backbone.pos_embed"] = torch.randn(1, 8, 32)  # learned positions
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match="another position scheme"):
        load_feature_extractor(path, num_heads=2)
    weights["module.backbone.pos_embed"] = torch.randn(1, 8, 48)
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match=r"pos_embed has shape \(1, 8, 48\): expected \(1, N, 32\)"):
        load_feature_extractor(path, num_heads=2)
    del weights["module.backbone.pos_embed"]
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match="no pos_embed.*rotary"):
        load_feature_extractor(path, num_heads=2)
    del checkpoint["target_encoder"]
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match="no 'target_encoder' entry"):
        load_feature_extractor(path, which="target_encoder", num_heads=2)


def test_pickled_numpy_scalars_need_weights_only_false(tmp_path):
    checkpoint, sources = official_checkpoint()
    checkpoint["loss"] = np.float64(0.25)  # as some official checkpoints store it
    path = tmp_path / "numpy.pt"
    torch.save(checkpoint, path)
    with pytest.raises(InteropError, match="weights_only=False"):
        load_feature_extractor(path, num_heads=2)
    loaded = load_feature_extractor(path, num_heads=2, weights_only=False)
    x = torch.randn(*CLIP)
    assert_same(features(loaded, x), features(FeatureExtractor(sources["target_encoder"]), x))


# -- our checkpoints and exports ---------------------------------------------------------------------

def check_export(ckpt: Path, out: Path, reference: FeatureExtractor, x: torch.Tensor, **kw) -> dict:
    """export -> both files -> load: the reference's features exactly; returns the torch file's dict."""
    written = export_feature_extractor(ckpt, out, **kw)
    assert written == [out, out.with_suffix(".safetensors")]
    for path in written:
        loaded = load_feature_extractor(path)
        assert loaded.spec() == reference.spec()
        assert_same(features(loaded, x), features(reference, x))
    plain = torch.load(out, weights_only=True)  # plain torch, no arjepa_pl classes
    assert plain["format"] == "arjepa_pl.feature_extractor" and plain["version"] == 1
    assert json.loads(json.dumps(plain["spec"])) == plain["spec"] and json.dumps(plain["source"])
    from safetensors import safe_open

    with safe_open(str(out.with_suffix(".safetensors")), "pt") as f:
        assert json.loads(f.metadata()["spec"]) == plain["spec"]
        assert set(f.keys()) == set(plain["state_dict"])
    return plain


def test_export_jepa_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = tiny_vjepa()
    trainer(tmp_path, max_steps=2, enable_checkpointing=True).fit(model, RandomClipData())
    (ckpt,) = (tmp_path / "checkpoints").glob("*.ckpt")
    model.eval()
    x = torch.randn(*CLIP)
    assert not torch.equal(model.encoder.blocks[0].attn.qkv.weight, model.target_encoder.blocks[0].attn.qkv.weight)
    plain = check_export(ckpt, tmp_path / "target.pt", FeatureExtractor(model.target_encoder), x)
    assert plain["source"]["objective"] == f"{type(model).__module__}.{type(model).__qualname__}" and plain["source"]["global_step"] == 2
    assert plain["source"]["which"] == "target_encoder"
    assert all(k.startswith("encoder.") for k in plain["state_dict"])
    assert "encoder.blocks.0.attn.qkv.weight" in plain["state_dict"]  # the official names under "encoder."
    check_export(ckpt, tmp_path / "context.pt", FeatureExtractor(model.encoder), x, which="encoder")
    assert_same(features(load_feature_extractor(ckpt), x), features(FeatureExtractor(model.target_encoder), x))
    with pytest.raises(InteropError, match="holds only the 'target_encoder' encoder"):
        load_feature_extractor(tmp_path / "target.pt", which="encoder")


def lightning_checkpoint(model, global_step: int) -> dict:
    """What Lightning's checkpoint connector writes for these keys (model state + the module's hook)."""
    checkpoint = {"state_dict": model.state_dict(), "global_step": global_step, "pytorch-lightning_version": "2.6.0"}
    model.on_save_checkpoint(checkpoint)
    return checkpoint


def test_export_token_model_roundtrip(tmp_path):
    """Tokenizer + block-causal attention travel with the export and give the same features."""
    torch.manual_seed(0)
    model = ARVideoTokens(tiny_vit(embed_dim=48, num_heads=3), num_codes=16, rollout_context_frames=2, prefix_steps=1)
    video = torch.randn(*CLIP)
    model.tokenizer.fit(patchify(video, 2, 8).reshape(-1, 3 * 2 * 8 * 8), iters=2)
    ckpt = tmp_path / "tokens.ckpt"
    torch.save(lightning_checkpoint(model, 5), ckpt)
    reference = model.feature_extractor().eval()
    plain = check_export(ckpt, tmp_path / "tokens.pt", reference, video)
    assert plain["spec"]["block_causal"] is True and plain["spec"]["prefix_steps"] == 1
    assert plain["spec"]["tokenizer"] == {"num_codes": 16, "dim": 384}
    torch.testing.assert_close(plain["state_dict"]["tokenizer.codebook"], model.tokenizer.codebook)
    assert plain["source"]["objective"].endswith("ARVideoTokens") and plain["source"]["global_step"] == 5
    # The block-causal mask matters: the same encoder under full attention gives other features.
    assert not torch.allclose(features(FeatureExtractor(model.encoder, model.tokenizer), video)[-1],
                              features(reference, video)[-1])
    with pytest.raises(InteropError, match="no weights under 'target_encoder.'"):
        load_feature_extractor(ckpt, which="target_encoder")


def test_checkpoint_without_feature_extractor_is_a_clear_error(tmp_path):
    path = tmp_path / "artext.ckpt"
    torch.save({"state_dict": {"gpt.wte.weight": torch.zeros(4, 4)}, "pytorch-lightning_version": "2.6.0"}, path)
    with pytest.raises(InteropError, match="no feature extractor.*ARText"):
        load_feature_extractor(path)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InteropError, match="not a checkpoint this loader knows"):
        load_feature_extractor(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_feature_extractor(tmp_path / "missing.ckpt")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_sharded_checkpoint_directory(tmp_path):
    """Lightning's sharded layout (torch.distributed.checkpoint shards of {"state_dict", "optimizer_0"}
    plus meta.pt), written here by one process."""
    import torch.distributed.checkpoint as dcp

    torch.manual_seed(0)
    model = tiny_vjepa()
    with torch.no_grad():
        for p in model.target_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    checkpoint = lightning_checkpoint(model, 3)
    directory = tmp_path / "last.ckpt"
    dcp.save({"state_dict": checkpoint.pop("state_dict"), "optimizer_0": {"step": torch.tensor(3)}},
             checkpoint_id=str(directory), no_dist=True)
    torch.save(checkpoint, directory / "meta.pt")
    loaded, source = read_feature_extractor(directory)
    assert source["kind"] == "sharded" and source["global_step"] == 3
    x = torch.randn(*CLIP)
    assert_same(features(loaded, x), features(FeatureExtractor(model.target_encoder.eval()), x))
    (directory / "meta.pt").unlink()
    with pytest.raises(InteropError, match="not a complete sharded checkpoint"):
        load_feature_extractor(directory)


# -- the command ---------------------------------------------------------------------------------------

def run_export(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "arjepa_pl", "export", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_export_command_converts_an_official_checkpoint(tmp_path):
    checkpoint, sources = official_checkpoint()
    torch.save(checkpoint, tmp_path / "official.pth.tar")
    out = tmp_path / "converted.pt"
    done = run_export("--ckpt_path", str(tmp_path / "official.pth.tar"), "--out", str(out), "--num_heads", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "exported target_encoder" in done.stdout and f"wrote {out}" in done.stdout
    assert f"{sum(p.numel() for p in sources['target_encoder'].parameters()):,} parameters" in done.stdout
    x = torch.randn(*CLIP)
    for path in (out, out.with_suffix(".safetensors")):
        assert_same(features(load_feature_extractor(path), x), features(FeatureExtractor(sources["target_encoder"]), x))
    missing = run_export("--ckpt_path", str(tmp_path / "nope.ckpt"), "--out", str(tmp_path / "x.pt"))
    assert missing.returncode == 2 and "export: error: no checkpoint at" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_export_main_last_and_options(tmp_path, capsys):
    """In-process: --ckpt_path last --run_dir, --safetensors false, bad arguments."""
    from arjepa_pl.interop.export import main

    checkpoint, sources = official_checkpoint()
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    model = tiny_vjepa()
    torch.save(lightning_checkpoint(model, 1), tmp_path / "run" / "checkpoints" / "last.ckpt")
    out = tmp_path / "last.pt"
    main(["--ckpt_path", "last", "--run_dir", str(tmp_path / "run"), "--out", str(out), "--safetensors", "false"])
    assert out.is_file() and not out.with_suffix(".safetensors").exists()
    assert "step 1" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["--ckpt_path", "last", "--run_dir", str(tmp_path / "empty"), "--out", str(out)])
    assert exit_.value.code == 2 and "no complete checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--ckpt_path", str(out), "--out", str(tmp_path / "x.safetensors")])
    assert "the .safetensors file is written beside it" in capsys.readouterr().err


def test_readme_export_commands_parse():
    import re
    import shlex

    from arjepa_pl.interop.export import parser

    section = (REPO / "docs/interop.md").read_text().split("## Export", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#")[0] for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("python -m arjepa_pl export")]
    assert len(commands) == 3
    for command in commands:
        args = parser().parse_args(command[4:])
        assert args.out.endswith(".pt") and (args.ckpt_path != "last" or args.run_dir)


def test_inferred_mlp_ratio_rebuilds_the_exact_width():
    """hidden / width can multiply back to a hair below hidden (int() would then build a narrower MLP)."""
    from arjepa_pl.interop import infer_encoder_config

    for width, hidden in ((152, 405), (368, 1480), (1024, 4096)):
        weights = {"patch_embed.proj.weight": torch.zeros(width, 3, 2, 16, 16), "blocks.0.mlp.fc1.weight": torch.zeros(hidden, width)}
        config = infer_encoder_config(weights, num_heads=8)
        assert int(width * config["mlp_ratio"]) == hidden and config["tubelet_size"] == 2 and config["depth"] == 1
