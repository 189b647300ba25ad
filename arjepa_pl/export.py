"""`python -m arjepa_pl export --ckpt_path CKPT --out FILE`: a checkpoint's encoder as a plain file.

CKPT is anything arjepa_pl.interop reads: one of our Lightning checkpoints (file or sharded
directory), `last` (the newest checkpoint of `--run_dir`), an earlier export, or an official
V-JEPA / I-JEPA checkpoint (which is thereby converted to our format). FILE gets the torch dict
described in arjepa_pl.interop; FILE with suffix `.safetensors` gets the same tensors with the spec
in its metadata.
"""

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from arjepa_pl.checkpoints import CheckpointLoadError, find_resume_checkpoint
from arjepa_pl.interop import WHICH, InteropError, read_feature_extractor, save_feature_extractor


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
    p.add_argument("--num_heads", type=int, help="official checkpoints: attention heads (default: standard ViT for the width)")
    p.add_argument("--weights_only", type=_bool_or_auto, default=True,
                   help="torch.load's weights_only (false only for trusted files with other pickled objects)")
    return p


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
    if Path(args.out).suffix == ".safetensors":
        p.error(f"--out {args.out}: give the torch file's name (e.g. {Path(args.out).with_suffix('.pt')}); "
                "the .safetensors file is written beside it")
    try:
        ckpt = resolve_last(args.run_dir) if args.ckpt_path == "last" else Path(args.ckpt_path)
        extractor, source = read_feature_extractor(ckpt, args.which, args.num_heads, args.weights_only)
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
