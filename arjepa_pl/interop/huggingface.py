"""Hugging Face transformers' V-JEPA 2 <-> arjepa_pl, both ways (`pip install -e .[hf]`).

`load_huggingface(name_or_path)` reads a `VJEPA2Model` (or `VJEPA2ForVideoClassification`) directory or
hub id with `from_pretrained` (a hub id downloads, so it needs the network) into our VisionTransformer
(positions "rope_vjepa2"), JepaPredictor and, for a classifier, an AttentiveClassifier head.
`export_huggingface(encoder, predictor, out_dir, crop_size)` writes a directory that
`VJEPA2Model.from_pretrained(out_dir)` loads. Every tensor is mapped by name, both ways, and checked:
a key the other side lacks, a key nobody reads or a wrong shape is one InteropError naming both names.

Key mapping (transformers' names under `encoder.` / `predictor.`, and `vjepa2.` first in a classifier):

    ours (VisionTransformer)            transformers VJEPA2Model encoder.*
    patch_embed.proj                    embeddings.patch_embeddings.proj
    blocks.i.attn.qkv (fused q, k, v)   layer.i.attention.query / key / value (split in three)
    blocks.i.attn.proj                  layer.i.attention.proj
    blocks.i.norm1/norm2/mlp.fc1/fc2    layer.i.norm1/norm2/mlp.fc1/fc2
    norm                                layernorm
    ours (JepaPredictor)                transformers VJEPA2Model predictor.*
    predictor_embed                     embeddings.predictor_embeddings
    mask_tokens [n, 1, 1, D]            embeddings.mask_tokens [n, 1, 1, D]
    predictor_blocks.i.*                layer.i.* (as the encoder's blocks)
    predictor_norm / predictor_proj     layernorm / proj
    ours (AttentiveClassifier)          transformers VJEPA2ForVideoClassification
    pooler.query                        pooler.query_tokens
    pooler.blocks.i.attn.qkv / proj     pooler.self_attention_layers.i.self_attn.q_proj,k_proj,v_proj / out_proj
    pooler.blocks.i.norm1/2, mlp        pooler.self_attention_layers.i.layer_norm1/2, mlp
    pooler.norm1/2, xattn.q, xattn.kv   pooler.cross_attention_layer.layer_norm1/2, cross_attn.q_proj, k_proj+v_proj
    pooler.mlp / linear                 pooler.cross_attention_layer.mlp / classifier

Behaviour to know (transformers' model, not ours): it decodes token positions with the grid of its
config's `crop_size` whatever the input's size, so feed it clips of that size (ours uses the input's
grid); its predictor uses mask token 1 unless told otherwise (the official training used token 0 for
clips of one length); its weights are the official checkpoint's context `encoder`, not the
`target_encoder` the papers' probes read.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from arjepa_pl.interop.weights import InteropError
from arjepa_pl.models import AttentiveClassifier, JepaPredictor, VisionTransformer

log = logging.getLogger("arjepa_pl.interop")

HF_POSITIONS = "rope_vjepa2"  # the only position scheme transformers' VJEPA2 implements

_QKV, _KV = ("query", "key", "value"), ("k_proj", "v_proj")
# (our key pattern, the transformers keys it is made of: several = a fused projection, split in equal parts)
ENCODER_RULES = [
    (r"patch_embed\.proj\.(\w+)", ["embeddings.patch_embeddings.proj.{0}"]),
    (r"blocks\.(\d+)\.attn\.qkv\.(\w+)", [f"layer.{{0}}.attention.{n}.{{1}}" for n in _QKV]),
    (r"blocks\.(\d+)\.attn\.proj\.(\w+)", ["layer.{0}.attention.proj.{1}"]),
    (r"blocks\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.(\w+)", ["layer.{0}.{1}.{2}"]),
    (r"norm\.(\w+)", ["layernorm.{0}"]),
]
PREDICTOR_RULES = [
    (r"predictor_embed\.(\w+)", ["embeddings.predictor_embeddings.{0}"]),
    (r"mask_tokens", ["embeddings.mask_tokens"]),
    *[("predictor_" + ours, theirs) for ours, theirs in ENCODER_RULES[1:-1]],
    (r"predictor_norm\.(\w+)", ["layernorm.{0}"]),
    (r"predictor_proj\.(\w+)", ["proj.{0}"]),
]
POOLER_RULES = [  # ours: AttentivePooler (cross_attn_proj=False); theirs under "pooler."
    (r"query", ["query_tokens"]),
    (r"blocks\.(\d+)\.attn\.qkv\.(\w+)", [f"self_attention_layers.{{0}}.self_attn.{n}_proj.{{1}}" for n in "qkv"]),
    (r"blocks\.(\d+)\.attn\.proj\.(\w+)", ["self_attention_layers.{0}.self_attn.out_proj.{1}"]),
    (r"blocks\.(\d+)\.norm(\d)\.(\w+)", ["self_attention_layers.{0}.layer_norm{1}.{2}"]),
    (r"blocks\.(\d+)\.mlp\.(fc\d)\.(\w+)", ["self_attention_layers.{0}.mlp.{1}.{2}"]),
    (r"norm(\d)\.(\w+)", ["cross_attention_layer.layer_norm{0}.{1}"]),
    (r"xattn\.q\.(\w+)", ["cross_attention_layer.cross_attn.q_proj.{0}"]),
    (r"xattn\.kv\.(\w+)", [f"cross_attention_layer.cross_attn.{n}.{{0}}" for n in _KV]),
    (r"mlp\.(fc\d)\.(\w+)", ["cross_attention_layer.mlp.{0}.{1}"]),
]
CLASSIFIER_RULES = [(r"(weight|bias)", ["{0}"])]  # ours: AttentiveClassifier.linear; theirs under "classifier."


def key_map(our_keys, rules, prefix: str) -> dict[str, list[str]]:
    """Our state-dict key -> the transformers keys (1, or 2-3 for a fused projection) it is made of."""
    out = {}
    for key in our_keys:
        for pattern, templates in rules:
            m = re.fullmatch(pattern, key)
            if m:
                out[key] = [prefix + t.format(*m.groups()) for t in templates]
                break
        else:
            raise InteropError(f"{key!r} has no transformers VJEPA2 counterpart (this module is not a V-JEPA 2 "
                               "architecture transformers implements)")
    return out


def import_state(module: nn.Module, theirs: dict, rules, prefix: str, source: str,
                 owns: Optional[tuple[str, ...]] = None) -> set:
    """Load transformers' tensors under `prefix` into `module`; returns the keys used. Raises one
    InteropError naming, for each problem, our key and theirs; a key under `owns` (default: prefix)
    that nothing takes is one."""
    ours = module.state_dict()
    mapping = key_map(ours, rules, prefix)
    problems, new = [], {}
    for key, names in mapping.items():
        absent = [n for n in names if n not in theirs]
        if absent:
            problems.append(f"  {key} (arjepa_pl) <- {' + '.join(names)} (transformers): missing {', '.join(absent)}")
            continue
        value = torch.cat([theirs[n] for n in names]) if len(names) > 1 else theirs[names[0]]
        if tuple(value.shape) != tuple(ours[key].shape):
            problems.append(f"  {key} (arjepa_pl) <- {' + '.join(names)} (transformers): expected shape "
                            f"{tuple(ours[key].shape)}, got {tuple(value.shape)} "
                            f"({' + '.join(str(tuple(theirs[n].shape)) for n in names)})")
        new[key] = value
    used = {n for names in mapping.values() for n in names}
    unused = sorted(k for k in theirs if k.startswith(owns or prefix) and k not in used)
    problems += [f"  {k} (transformers): no arjepa_pl weight takes it" for k in unused]
    if problems:
        raise InteropError(f"the transformers weights in {source} do not fit arjepa_pl's {type(module).__name__}:\n"
                           + "\n".join(problems))
    module.load_state_dict(new)
    return used


def export_state(module: nn.Module, rules, prefix: str) -> dict[str, torch.Tensor]:
    """`module`'s tensors under transformers' names (fused projections split)."""
    out = {}
    for key, value in module.state_dict().items():
        names = key_map([key], rules, prefix)[key]
        for name, part in zip(names, value.chunk(len(names)) if len(names) > 1 else [value]):
            out[name] = part.detach().clone().contiguous()
    return out


# -- configurations -----------------------------------------------------------------------------------

def _check_config(config: Any, source: str) -> int:
    patch = config.patch_size
    if not isinstance(patch, int):
        if len(set(patch)) != 1:
            raise InteropError(f"{source}: patch_size {patch} is not square; arjepa_pl's ViT needs square patches")
        patch = patch[0]
    for key, want in (("hidden_act", "gelu"), ("qkv_bias", True)):
        if getattr(config, key) != want:
            raise InteropError(f"{source}: config {key}={getattr(config, key)!r}; arjepa_pl implements {want!r} only")
    return int(patch)


def encoder_kwargs(config: Any, source: str = "the config") -> dict:
    """VisionTransformer kwargs of a transformers VJEPA2Config."""
    return dict(embed_dim=config.hidden_size, depth=config.num_hidden_layers, num_heads=config.num_attention_heads,
                mlp_ratio=float(config.mlp_ratio), patch_size=_check_config(config, source),
                tubelet_size=config.tubelet_size, in_chans=config.in_chans, video=True, qkv_bias=True,
                norm_eps=config.layer_norm_eps, positions=HF_POSITIONS)


def predictor_kwargs(config: Any, source: str = "the config") -> dict:
    """JepaPredictor kwargs of a transformers VJEPA2Config."""
    _check_config(config, source)
    return dict(encoder_dim=config.hidden_size, embed_dim=config.pred_hidden_size, depth=config.pred_num_hidden_layers,
                num_heads=config.pred_num_attention_heads, mlp_ratio=float(config.pred_mlp_ratio),
                num_mask_tokens=config.pred_num_mask_tokens, norm_eps=config.layer_norm_eps, positions=HF_POSITIONS)


def predictor_sizes(predictor: JepaPredictor) -> dict:
    """What JepaPredictor(...) was built with, read off the module."""
    block: Any = predictor.predictor_blocks[0]
    width = predictor.predictor_embed.out_features
    return dict(encoder_dim=predictor.predictor_embed.in_features, embed_dim=width,
                depth=len(predictor.predictor_blocks), num_heads=block.attn.num_heads,
                mlp_ratio=block.mlp.fc1.out_features / width, num_mask_tokens=predictor.mask_tokens.size(0),
                norm_eps=predictor.predictor_norm.eps,
                positions=predictor.rope.positions if predictor.rope is not None else "sincos")


def hf_config(encoder: VisionTransformer, predictor: JepaPredictor, crop_size: int, frames_per_clip: int = 64):
    """The transformers VJEPA2Config of our encoder + predictor (positions "rope_vjepa2" only)."""
    from transformers import VJEPA2Config

    enc, pred = encoder.config, predictor_sizes(predictor)
    for what, positions in (("encoder", enc["positions"]), ("predictor", pred["positions"])):
        if positions != HF_POSITIONS:
            raise InteropError(f"the {what} has positions={positions!r}: transformers' VJEPA2 implements "
                               f"{HF_POSITIONS!r} only, so its weights would compute other features there")
    if not enc["video"] or not enc["qkv_bias"] or enc["norm_eps"] != pred["norm_eps"]:
        raise InteropError("transformers' VJEPA2 needs a video encoder with qkv biases and one LayerNorm eps for "
                           f"encoder and predictor (got video={enc['video']}, qkv_bias={enc['qkv_bias']}, "
                           f"eps {enc['norm_eps']} / {pred['norm_eps']})")
    if crop_size % enc["patch_size"]:
        raise InteropError(f"crop_size {crop_size} is not a multiple of the patch size {enc['patch_size']}")
    return VJEPA2Config(
        patch_size=enc["patch_size"], crop_size=crop_size, frames_per_clip=frames_per_clip,
        tubelet_size=enc["tubelet_size"], hidden_size=enc["embed_dim"], in_chans=enc["in_chans"],
        num_attention_heads=enc["num_heads"], num_hidden_layers=enc["depth"], mlp_ratio=enc["mlp_ratio"],
        layer_norm_eps=enc["norm_eps"], qkv_bias=True, hidden_act="gelu", pred_hidden_size=pred["embed_dim"],
        pred_num_attention_heads=pred["num_heads"], pred_num_hidden_layers=pred["depth"],
        pred_num_mask_tokens=pred["num_mask_tokens"], pred_mlp_ratio=pred["mlp_ratio"],
    )


# -- the two directions -------------------------------------------------------------------------------

@dataclass
class HuggingFaceJEPA:
    """What a transformers V-JEPA 2 directory holds, as arjepa_pl modules."""

    encoder: VisionTransformer
    predictor: JepaPredictor
    head: Optional[AttentiveClassifier]  # VJEPA2ForVideoClassification's pooler + classifier
    config: Any  # the transformers VJEPA2Config (crop_size, frames_per_clip, id2label, ...)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise InteropError("reading or writing Hugging Face V-JEPA 2 models needs transformers: "
                           "`pip install -e .[hf]`") from e
    if not hasattr(transformers, "VJEPA2Model"):
        raise InteropError(f"transformers {transformers.__version__} has no VJEPA2Model: `pip install -e .[hf]` "
                           "installs a version that has")
    return transformers


def read_huggingface_state(name_or_path: Union[str, Path]) -> tuple[dict, Any]:
    """(state dict, config) of a transformers V-JEPA 2 directory or hub id, via from_pretrained."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(name_or_path))
    except Exception as e:
        raise InteropError(f"{name_or_path}: not a transformers model directory or hub id "
                           f"({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if config.model_type != "vjepa2":
        raise InteropError(f"{name_or_path} is a transformers {config.model_type!r} model, not V-JEPA 2 ('vjepa2')")
    classifier = "VJEPA2ForVideoClassification" in (config.architectures or [])
    cls = transformers.VJEPA2ForVideoClassification if classifier else transformers.VJEPA2Model
    model = cls.from_pretrained(str(name_or_path), config=config)
    return model.state_dict(), config


def huggingface_from_state(state: dict, config: Any, source: str) -> HuggingFaceJEPA:
    """Our modules holding a transformers V-JEPA 2 state dict; every one of its tensors is used."""
    base = "vjepa2." if any(k.startswith("vjepa2.") for k in state) else ""
    with torch.device("cpu"):
        encoder = VisionTransformer(**encoder_kwargs(config, source))
        predictor = JepaPredictor(**predictor_kwargs(config, source))
    used = import_state(encoder, state, ENCODER_RULES, base + "encoder.", source)
    used |= import_state(predictor, state, PREDICTOR_RULES, base + "predictor.", source)
    head = None
    if base:
        head = AttentiveClassifier(config.hidden_size, config.num_labels, config.num_attention_heads,
                                   self_attn_blocks=config.num_pooler_layers, cross_attn_proj=False)
        used |= import_state(head.pooler, state, POOLER_RULES, "pooler.", source)
        used |= import_state(head.linear, state, CLASSIFIER_RULES, "classifier.", source)
    left = sorted(set(state) - used)
    if left:
        raise InteropError(f"{source}: {len(left)} transformers weight(s) no arjepa_pl module takes: "
                           f"{', '.join(left[:8])}")
    return HuggingFaceJEPA(encoder.eval(), predictor.eval(), None if head is None else head.eval(), config)


def load_huggingface(name_or_path: Union[str, Path]) -> HuggingFaceJEPA:
    """A transformers `VJEPA2Model` / `VJEPA2ForVideoClassification` (directory or hub id) as our
    encoder, predictor and (classifier only) attentive head."""
    state, config = read_huggingface_state(name_or_path)
    return huggingface_from_state(state, config, str(name_or_path))


def export_huggingface(encoder: VisionTransformer, predictor: JepaPredictor, out_dir: Union[str, Path],
                       crop_size: int, frames_per_clip: int = 64) -> Path:
    """Write `encoder` + `predictor` as a directory `transformers.VJEPA2Model.from_pretrained` loads.

    crop_size: the clips' side in pixels; transformers decodes RoPE positions with crop_size // patch
    columns per row, so it must be the size the model will be fed."""
    transformers = _transformers()
    config = hf_config(encoder, predictor, crop_size, frames_per_clip)
    theirs = {**export_state(encoder, ENCODER_RULES, "encoder."),
              **export_state(predictor, PREDICTOR_RULES, "predictor.")}
    model = transformers.VJEPA2Model(config)
    expected = model.state_dict()
    problems = [f"  {k}: missing" for k in sorted(set(expected) - set(theirs))]
    problems += [f"  {k}: not a VJEPA2Model weight" for k in sorted(set(theirs) - set(expected))]
    problems += [f"  {k}: transformers expects {tuple(expected[k].shape)}, arjepa_pl gives {tuple(v.shape)}"
                 for k, v in theirs.items() if k in expected and v.shape != expected[k].shape]
    if problems:
        raise InteropError("arjepa_pl's encoder + predictor do not fill a transformers VJEPA2Model:\n"
                           + "\n".join(problems))
    model.load_state_dict(theirs, strict=True)
    out = Path(out_dir)
    model.save_pretrained(str(out))
    return out


def export_checkpoint_to_huggingface(ckpt_path: Union[str, Path], out_dir: Union[str, Path], crop_size: int,
                                     frames_per_clip: int = 64, which: str = "encoder",
                                     weights_only: bool = True) -> Path:
    """An arjepa_pl V-JEPA 2 checkpoint (positions rope_vjepa2) as a transformers VJEPA2Model directory:
    its `which` encoder ("encoder", the context encoder, as transformers' published models hold; or
    "target_encoder") and its predictor."""
    from arjepa_pl.interop.pretrained import jepa_from_checkpoint

    if which not in ("encoder", "target_encoder"):
        raise InteropError(f"which must be 'encoder' or 'target_encoder' for a transformers export, got {which!r}")
    encoder, predictor, _ = jepa_from_checkpoint(ckpt_path, which, weights_only)
    return export_huggingface(encoder, predictor, out_dir, crop_size, frames_per_clip)


@dataclass
class HuggingFaceProbeHead:
    """The attentive head of a transformers VJEPA2ForVideoClassification, to start probes from."""

    state: dict
    config: Any
    source: str

    @property
    def self_attn_blocks(self) -> int:
        return int(self.config.num_pooler_layers)

    def init(self, heads) -> None:
        """Start every head from this pooler (all of it, checked) and classifier (where the class count
        agrees; otherwise it stays fresh, logged)."""
        for head in heads:
            if not isinstance(head, AttentiveClassifier):
                raise InteropError(f"head_init ({self.source}) starts attentive probes only, not {type(head).__name__}")
            pooler = head.pooler
            ours = (pooler.xattn.num_heads, pooler.norm1.eps)
            theirs = (self.config.num_attention_heads, self.config.layer_norm_eps)
            if ours != theirs:
                raise InteropError(f"the probe's pooler has (heads, LayerNorm eps) {ours}; {self.source}'s has "
                                   f"{theirs}: set the probe's num_heads to {theirs[0]}")
            import_state(pooler, self.state, POOLER_RULES, "pooler.", self.source)
            if tuple(head.linear.weight.shape) == tuple(self.state["classifier.weight"].shape):
                import_state(head.linear, self.state, CLASSIFIER_RULES, "classifier.", self.source)
            else:
                log.warning(f"head_init: {self.source}'s classifier is {tuple(self.state['classifier.weight'].shape)}"
                            f", the probe's {tuple(head.linear.weight.shape)}: the probe's classifier starts fresh")


def read_probe_head(source: str) -> HuggingFaceProbeHead:
    """The pooler + classifier of a VJEPA2ForVideoClassification directory or `hf:<hub id>`."""
    name = source[3:] if source.startswith("hf:") else source
    state, config = read_huggingface_state(name)
    if "classifier.weight" not in state:
        raise InteropError(f"{source} is a VJEPA2Model without a classification head: head_init needs a "
                           "VJEPA2ForVideoClassification")
    return HuggingFaceProbeHead(state, config, source)
