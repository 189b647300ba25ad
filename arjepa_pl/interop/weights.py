"""State-dict helpers every loader shares: prefix stripping, and one shape check that names every
missing, unexpected and wrongly shaped key at once (never a silent strict=False)."""

from __future__ import annotations

import torch

from arjepa_pl.models import FeatureExtractor

WHICH = ("auto", "target_encoder", "encoder")
OFFICIAL_PREFIXES = ("module.", "backbone.")


class InteropError(ValueError):
    """A checkpoint that cannot become a FeatureExtractor; the message says why and what to do."""


def strip_prefixes(state_dict: dict, prefixes: tuple[str, ...] = OFFICIAL_PREFIXES) -> dict:
    """Keys without any leading run of `prefixes` (`module.backbone.blocks.0...` -> `blocks.0...`)."""
    out = {}
    for key, value in state_dict.items():
        stripped = key
        while stripped.startswith(prefixes):
            stripped = stripped[len(next(p for p in prefixes if stripped.startswith(p))):]
        if stripped in out:
            raise InteropError(f"keys {key!r} and another one both become {stripped!r} once prefixes are stripped")
        out[stripped] = value
    return out


def check_shapes(expected: dict[str, tuple], got: dict[str, tuple], source: str, what: str = "encoder") -> None:
    """Raise one InteropError naming every missing, unexpected and wrongly shaped key."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    wrong = [f"  {k}: expected {tuple(expected[k])}, got {tuple(got[k])}"
             for k in sorted(set(expected) & set(got)) if tuple(expected[k]) != tuple(got[k])]
    if not (missing or unexpected or wrong):
        return
    lines = [f"the weights in {source} do not fit the {what}"]
    if wrong:
        lines += [f"{len(wrong)} key(s) with the wrong shape:"] + wrong
    if missing:
        lines += [f"{len(missing)} missing key(s): {', '.join(missing)}"]
    if unexpected:
        lines += [f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}"]
    lines.append("(is the architecture right? an official checkpoint's is inferred from its shapes; "
                 "pass num_heads / encoder_config if the inference is wrong)")
    raise InteropError("\n".join(lines))


def load_weights(module: torch.nn.Module, state_dict: dict, source: str, what: str = "encoder") -> None:
    """`module.load_state_dict(state_dict)` after a check that reports every problem at once."""
    check_shapes({k: v.shape for k, v in module.state_dict().items()},
                 {k: tuple(v.shape) for k, v in state_dict.items()}, source, what)
    module.load_state_dict(state_dict)


def frozen(extractor: FeatureExtractor) -> FeatureExtractor:
    return extractor.eval().requires_grad_(False)
