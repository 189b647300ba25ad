"""A discrete patch tokenizer: k-means over patch vectors, k-means++ initialisation.

Plain k-means from random points leaves dead codes; k-means++ seeds every centre far
from the ones already chosen (D^2 sampling), and Lloyd iterations then move each centre to the mean of
its patches. A centre that still ends up with no patch is moved onto the patch that is worst
represented, so every code is used on the data it was fitted on.
"""

import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from arjepa_pl.models.patches import patchify, unpatchify


def nearest(x: torch.Tensor, centres: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of the nearest centre, squared distance to it) for every row of x [N, D]; chunked so
    the [N, K] distance matrix never has to exist at once."""
    index, dist = [], []
    # fp32 even under bf16 autocast: a low-precision distance would pick the wrong code in near-ties.
    with torch.autocast(x.device.type, enabled=False):
        x, centres = x.float(), centres.float()
        c_sq = centres.pow(2).sum(1)
        for part in x.split(chunk):
            d = part.pow(2).sum(1, keepdim=True) - 2 * part @ centres.T + c_sq
            best, i = d.min(1)
            index.append(i)
            dist.append(best.clamp_min(0))
    return torch.cat(index), torch.cat(dist)


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k rows of x chosen by D^2 sampling: each next centre with probability proportional to its
    squared distance to the nearest centre chosen so far."""
    centres = x[torch.randint(len(x), (1,), generator=generator, device=x.device)]
    dist = (x - centres).pow(2).sum(1)
    for _ in range(1, k):
        if dist.sum() <= 0:  # fewer distinct points than codes: duplicate centres, later revived
            pick = torch.randint(len(x), (1,), generator=generator, device=x.device)
        else:
            pick = torch.multinomial(dist, 1, generator=generator)
        centres = torch.cat([centres, x[pick]])
        dist = torch.minimum(dist, (x - x[pick]).pow(2).sum(1))
    return centres


class PatchKMeans(nn.Module):
    """num_codes centres in patch space; encode = nearest centre, decode = the centre.

    The codebook is a buffer (saved in every checkpoint) and `fitted` says whether it holds a fit.
    """

    codebook: torch.Tensor  # buffers (register_buffer)
    fitted: torch.Tensor

    def __init__(self, num_codes: int, dim: int):
        super().__init__()
        if num_codes < 2:
            raise ValueError(f"num_codes must be >= 2, got {num_codes}")
        self.num_codes, self.dim = num_codes, dim
        self.register_buffer("codebook", torch.zeros(num_codes, dim))
        self.register_buffer("fitted", torch.tensor(False))

    def _check(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError("the tokenizer has not been fitted: run `fit` first (or load a fitted one)")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> long codes [...]."""
        self._check()
        if x.size(-1) != self.dim:
            raise ValueError(f"tokenizer expects vectors of {self.dim} values, got {x.size(-1)}")
        codes, _ = nearest(x.reshape(-1, self.dim), self.codebook)
        return codes.view(x.shape[:-1])

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """long codes [...] -> [..., dim]."""
        self._check()
        return self.codebook[codes]

    @torch.no_grad()
    def fit(self, x: torch.Tensor, iters: int = 20, seed: int = 0) -> dict:
        """k-means++ then `iters` Lloyd iterations on x [N, dim]; returns fit statistics."""
        if x.ndim != 2 or x.size(1) != self.dim:
            raise ValueError(f"fit expects [N, {self.dim}] vectors, got {tuple(x.shape)}")
        if len(x) < self.num_codes:
            raise ValueError(f"cannot fit {self.num_codes} codes on {len(x)} vectors: give more data")
        x = x.to(self.codebook.device, torch.float32)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        centres = kmeans_plusplus(x, self.num_codes, generator)
        for _ in range(iters):
            codes, dist = nearest(x, centres)
            counts = torch.bincount(codes, minlength=self.num_codes)
            sums = torch.zeros_like(centres).index_add_(0, codes, x)
            moved = sums / counts.clamp_min(1)[:, None]
            centres = torch.where(counts[:, None] > 0, moved, centres)
            # Revive dead codes on the worst-represented vectors (one each, distinct).
            dead = (counts == 0).nonzero().flatten()
            if len(dead):
                centres[dead] = x[dist.topk(len(dead)).indices]
        codes, dist = nearest(x, centres)
        self.codebook.copy_(centres)
        self.fitted.fill_(True)
        used = torch.bincount(codes, minlength=self.num_codes) > 0
        return {"vectors": len(x), "mse": dist.mean().item() / self.dim, "codes_used": int(used.sum())}

    # -- files: the tokenizer is fitted once and reused by later runs --------------------------------
    def save(self, path: str | os.PathLike, stats: Optional[dict] = None) -> None:
        """Atomic write (temp file + rename), so a crash never leaves a half-written tokenizer."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"codebook": self.codebook.cpu(), "num_codes": self.num_codes, "dim": self.dim,
                    "stats": dict(stats or {})}, tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if (state.get("num_codes"), state.get("dim")) != (self.num_codes, self.dim):
            raise ValueError(f"tokenizer {path} has {state.get('num_codes')} codes of {state.get('dim')} values; "
                             f"this model needs {self.num_codes} of {self.dim} "
                             "(delete it or point tokenizer_path elsewhere)")
        self.codebook.copy_(state["codebook"])
        self.fitted.fill_(True)
        return state.get("stats", {})


def tokenize_clip(tokenizer: PatchKMeans, video: torch.Tensor, tubelet: int,
                  patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [B, N], the tokenized clip [B, C, T, H, W]: every (tubelet, patch, patch) patch replaced by its
    code's centre) — what a token model's encoder sees."""
    B, C, T, H, W = video.shape
    codes = tokenizer.encode(patchify(video, tubelet, patch))
    return codes, unpatchify(tokenizer.decode(codes), (T // tubelet, H // patch, W // patch), tubelet, patch)
