"""Drawing the next token from logits: temperature and top-k, shared by text and video-token models."""

from typing import Optional

import torch


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Long [...] tokens from logits [..., V]. temperature 0 = greedy (argmax); top_k keeps the k most
    likely tokens before sampling."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    flat = torch.multinomial(probs.reshape(-1, probs.size(-1)), 1, generator=generator)
    return flat.view(probs.shape[:-1])
