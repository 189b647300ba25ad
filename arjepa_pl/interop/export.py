"""Exports: a feature extractor as a plain file that torch alone loads, and the `export` command.

Exported files (`export_feature_extractor`) are plain dicts that torch alone loads, no arjepa_pl needed:

    d = torch.load("enc.pt", weights_only=True)
    d["format"] == "arjepa_pl.feature_extractor"; d["version"] == 1
    d["spec"]         # JSON-able: {"encoder": ViT kwargs, "tokenizer": None | {num_codes, dim},
                      #             "block_causal": bool, "prefix_steps": int}
    d["state_dict"]   # tensors: "encoder.<official ViT name>" (no pos_embed: sin-cos of the
                      #   input's token grid, see arjepa_pl.models.pos_embed) and, for token models,
                      #   "tokenizer.codebook" [num_codes, dim], "tokenizer.fitted"
    d["source"]       # JSON-able: checkpoint path, kind, objective class, global_step, which

The `.safetensors` twin holds the same tensors; its metadata holds "format", "version" and "spec",
"source" as JSON strings (`safetensors.safe_open(path, "pt").metadata()`).

`python -m arjepa_pl export --ckpt_path CKPT --huggingface --crop_size 256 --out DIR`: a V-JEPA 2
checkpoint of ours (positions rope_vjepa2) as a directory transformers' `VJEPA2Model.from_pretrained(DIR)`
loads: its encoder (`--which auto` / `encoder`: the context encoder, which transformers' published
models hold; or `target_encoder`) and its predictor (arjepa_pl.interop.huggingface).

`python -m arjepa_pl export --ckpt_path CKPT --out FILE`: a checkpoint's encoder as a plain file.

CKPT is anything arjepa_pl.interop reads: one of our Lightning checkpoints (file or sharded
directory), `last` (the newest checkpoint of `--run_dir`), an earlier export, or an official
V-JEPA / I-JEPA checkpoint (which is thereby converted to our format). FILE gets the torch dict
described above; FILE with suffix `.safetensors` gets the same tensors with the spec
in its metadata.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

from arjepa_pl.checkpoints import CheckpointLoadError, atomic_save, find_resume_checkpoint
from arjepa_pl.interop.load import read_feature_extractor
from arjepa_pl.interop.native import FORMAT, VERSION
from arjepa_pl.interop.weights import WHICH, InteropError
from arjepa_pl.models import FeatureExtractor


def _write_safetensors(path: Path, state_dict: dict, spec: dict, source: dict) -> None:
    from safetensors.torch import save

    metadata = {"format": FORMAT, "version": str(VERSION), "spec": json.dumps(spec), "source": json.dumps(source)}
    atomic_save(save(state_dict, metadata), path, write=lambda data, f: f.write(data))


def _safetensors_wanted(safetensors: Union[bool, str]) -> bool:
    """"auto" -> whether the package is installed; True without it is an error."""
    if safetensors not in (True, False, "auto"):
        raise InteropError(f"safetensors must be True, False or 'auto', got {safetensors!r}")
    if safetensors is False:
        return False
    try:
        import safetensors as _  # noqa: F401
    except ImportError as e:
        if safetensors == "auto":
            return False
        raise InteropError("safetensors output was asked for but the package is not installed: "
                           "`pip install safetensors`") from e
    return True


def _check_out(out: Path) -> None:
    if out.suffix == ".safetensors":
        raise InteropError(f"--out {out}: give the torch file's name (e.g. {out.with_suffix('.pt')}); "
                           "the .safetensors file is written beside it")


def save_feature_extractor(extractor: FeatureExtractor, out: Union[str, os.PathLike], source: Optional[dict] = None,
                           safetensors: Union[bool, str] = "auto") -> list[Path]:
    """Write `extractor` to `out` (the torch dict of the module docstring) and, with safetensors True
    (or "auto" and the package installed), to `out` with suffix `.safetensors`; both atomically.
    `source`: JSON-able provenance stored with it. Returns the paths written."""
    out = Path(out)
    _check_out(out)
    with_safetensors = _safetensors_wanted(safetensors)
    spec, source = extractor.spec(), dict(source or {})
    # Clones: no tensor shares storage with another (safetensors refuses that) or with a memory map.
    state_dict = {k: v.detach().cpu().contiguous().clone() for k, v in extractor.state_dict().items()}
    atomic_save({"format": FORMAT, "version": VERSION, "spec": spec, "state_dict": state_dict, "source": source}, out)
    written = [out]
    if with_safetensors:
        _write_safetensors(out.with_suffix(".safetensors"), state_dict, spec, source)
        written.append(out.with_suffix(".safetensors"))
    return written


def export_feature_extractor(ckpt_path: Union[str, os.PathLike], out: Union[str, os.PathLike], which: str = "auto",
                             safetensors: Union[bool, str] = "auto", num_heads: Optional[int] = None,
                             weights_only: bool = True, encoder_config: Optional[dict] = None) -> list[Path]:
    """The feature extractor of `ckpt_path` (any kind load_feature_extractor reads, with the same
    arguments) written by save_feature_extractor, with its provenance. Returns the paths written."""
    _check_out(Path(out))
    _safetensors_wanted(safetensors)  # fail before a long load, not after
    extractor, source = read_feature_extractor(ckpt_path, which, num_heads, weights_only, encoder_config)
    source["checkpoint"] = str(Path(ckpt_path).resolve())
    return save_feature_extractor(extractor, out, source, safetensors)


# -- the command -----------------------------------------------------------------------------------

def _bool_or_auto(value: str):
    choices = {"auto": "auto", "true": True, "false": False}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, true or false, got {value!r}")
    return choices[value.lower()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m arjepa_pl export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt_path", required=True, help="checkpoint file or directory, or `last` (with --run_dir)")
    p.add_argument("--out", required=True, help="torch file to write (e.g. encoder.pt)")
    p.add_argument("--which", choices=WHICH, default="auto",
                   help="auto: what probes read (JEPA / official: target_encoder; AR: its encoder)")
    p.add_argument("--safetensors", type=_bool_or_auto, default="auto",
                   help="also write FILE.safetensors: auto (if the package is installed), true, false")
    p.add_argument("--run_dir", help="with --ckpt_path last: the run directory (trainer.default_root_dir)")
    p.add_argument("--num_heads", type=int,
                   help="official checkpoints: attention heads (default: standard ViT for the width)")
    p.add_argument("--weights_only", type=_bool_or_auto, default=True,
                   help="torch.load's weights_only (false only for trusted files with other pickled objects)")
    p.add_argument("--positions", choices=["auto", "rope", "rope_vjepa2"], default="auto",
                   help="official checkpoints: auto = sin-cos, checked against the stored pos_embed table; "
                   "rope_vjepa2 for V-JEPA 2 encoders (any stored table is dropped)")
    p.add_argument("--huggingface", action="store_true",
                   help="write a transformers VJEPA2Model directory (encoder + predictor) to --out instead")
    p.add_argument("--crop_size", type=int, help="--huggingface: the clips' side in pixels (transformers decodes "
                   "rotary positions with the grid of this size)")
    p.add_argument("--frames_per_clip", type=int, default=64, help="--huggingface: the config's frames_per_clip")
    return p


def _main_huggingface(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    from arjepa_pl.interop.huggingface import export_checkpoint_to_huggingface

    if args.crop_size is None:
        p.error("--huggingface needs --crop_size (the clips' side in pixels)")
    which = "encoder" if args.which == "auto" else args.which
    try:
        ckpt = resolve_last(args.run_dir) if args.ckpt_path == "last" else Path(args.ckpt_path)
        out = export_checkpoint_to_huggingface(ckpt, args.out, args.crop_size, args.frames_per_clip, which,
                                               args.weights_only)
    except (InteropError, CheckpointLoadError, FileNotFoundError) as e:
        p.exit(2, f"export: error: {e}\n")
    print(f"exported the {which} and predictor of {ckpt} as a transformers VJEPA2Model: {out} "
          f"(crop_size {args.crop_size}; load with transformers.VJEPA2Model.from_pretrained({str(out)!r}))")


def resolve_last(run_dir: Optional[str]) -> Path:
    if run_dir is None:
        raise InteropError("--ckpt_path last needs --run_dir (the run's trainer.default_root_dir)")
    found = find_resume_checkpoint([run_dir, Path(run_dir) / "checkpoints"])
    if found is None:
        raise InteropError(f"--ckpt_path last: no complete checkpoint in {run_dir} or {Path(run_dir) / 'checkpoints'}")
    return found


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = parser()
    args = p.parse_args(argv)
    if args.weights_only == "auto":
        p.error("--weights_only: expected true or false")
    if args.huggingface:
        return _main_huggingface(p, args)
    if Path(args.out).suffix == ".safetensors":
        p.error(f"--out {args.out}: give the torch file's name (e.g. {Path(args.out).with_suffix('.pt')}); "
                "the .safetensors file is written beside it")
    try:
        ckpt = resolve_last(args.run_dir) if args.ckpt_path == "last" else Path(args.ckpt_path)
        config = None if args.positions == "auto" else {"positions": args.positions}
        extractor, source = read_feature_extractor(ckpt, args.which, args.num_heads, args.weights_only, config)
        source["checkpoint"] = str(ckpt.resolve())
        written = save_feature_extractor(extractor, args.out, source, args.safetensors)
    except (InteropError, CheckpointLoadError, FileNotFoundError) as e:
        p.exit(2, f"export: error: {e}\n")
    spec = extractor.spec()
    params = sum(p.numel() for p in extractor.encoder.parameters())
    encoder = spec["encoder"]
    kind = "video" if encoder["video"] else "image"
    print(f"exported {source.get('which') or 'encoder'} of {ckpt} ({source.get('objective') or source.get('kind')}, "
          f"step {source.get('global_step')}): {kind} ViT width {encoder['embed_dim']}, depth {encoder['depth']}, "
          f"{encoder['num_heads']} heads, patch {encoder['patch_size']}, {params:,} parameters"
          + (f", tokenizer {spec['tokenizer']['num_codes']} codes" if spec["tokenizer"] else "")
          + (", block-causal" if spec["block_causal"] else ""))
    for path in written:
        print(f"  wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv[1:])
