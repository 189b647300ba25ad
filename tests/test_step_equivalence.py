"""The optimised training step against the plain computation it replaces, a few steps on a tiny model
per objective: the same losses and the same weights to float tolerance.

Optimised: the fused AdamW kernel (arjepa_pl.optim.adamw_kernel), the EMA as one foreach lerp, and
autoregressive training that leaves the last step's tokens out of the encoder (training_outputs).
Reference: torch.optim.AdamW as a per-tensor loop, a per-parameter EMA, and the next-step outputs of
the whole clip. (The FlexAttention form of the mask is CUDA-only in training; tests/test_attention.py
compares its outputs with the dense mask's.)"""

import copy

import pytest
import torch

from arjepa_pl.masks import MaskCollator, MaskConfig
from arjepa_pl.models import VisionTransformer, patchify
from arjepa_pl.objectives import VJEPA
from arjepa_pl.objectives.ar_video import ARVideo
from arjepa_pl.objectives.ar_video_tokens import ARVideoTokens

STEPS = 3


def tiny_encoder() -> VisionTransformer:
    return VisionTransformer(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2)


def reference_adamw(optimizer: torch.optim.Optimizer, params_of: dict) -> torch.optim.AdamW:
    """The same parameter groups and hyper-parameters (on the reference model's parameters), as the
    plain per-tensor loop."""
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [params_of[id(p)] for p in g["params"]]}
              for g in optimizer.param_groups]
    for g in groups:
        g.update(foreach=False, fused=False)
    return torch.optim.AdamW(groups)


def twin(model: torch.nn.Module):
    """(model, reference copy, the optimised optimiser, the reference optimiser)."""
    reference = copy.deepcopy(model)
    optimizer = model.configure_optimizers()
    assert optimizer.defaults.get("fused"), "the optimised step should take the fused AdamW kernel on the CPU"
    for group in optimizer.param_groups:
        group["lr"] = 1e-2  # large enough that a wrong update shows after a few steps
    params_of = {id(p): q for p, q in zip(model.parameters(), reference.parameters())}
    return model, reference, optimizer, reference_adamw(optimizer, params_of)


def train(model, optimizer, loss_of, batches, after_step=None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(the losses of each step, the gradients of the first)."""
    losses, grads = [], []
    for i, batch in enumerate(batches):
        loss = loss_of(model, batch)
        loss.backward()
        if i == 0:
            grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if after_step is not None:
            after_step(model, i)
        losses.append(loss.detach())
    return losses, grads


def assert_same_training(model, reference, trained, reference_trained):
    (losses, grads), (reference_losses, reference_grads) = trained, reference_trained
    torch.testing.assert_close(torch.stack(losses), torch.stack(reference_losses), atol=1e-6, rtol=1e-5)
    names = [name for name, _ in model.named_parameters()]
    for name, g, h in zip(names, grads, reference_grads):
        torch.testing.assert_close(g, h, atol=1e-7, rtol=1e-5, msg=lambda m, name=name: f"gradient of {name}: {m}")
    for name, p, q in zip(names, model.parameters(), reference.parameters()):
        # Adam divides by the gradient's running RMS, so float rounding in a gradient entry near zero can
        # move that weight by a fraction of one step (lr 1e-2); a wrong update moves weights by ~1e-2.
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
    for (name, b), c in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, c, msg=lambda m, name=name: f"{name}: {m}")


def test_vjepa_fused_adamw_and_foreach_ema_equal_the_plain_loops():
    torch.manual_seed(0)
    model = VJEPA(tiny_encoder(), predictor_embed_dim=16, predictor_depth=1, predictor_num_heads=2,
                  masks=[MaskConfig(2, (0.3, 0.3)), MaskConfig(1, (0.6, 0.6))], total_steps=10)
    model, reference, optimizer, reference_optimizer = twin(model)
    collate = MaskCollator(model.masks, tubelet_size=2, patch_size=8, seed=0)
    batches = [collate([{"video": torch.randn(3, 4, 16, 16), "label": 0, "index": i, "epoch": 0, "position": i}
                        for i in range(4)]) for _ in range(STEPS)]

    def ema(m, i):
        m.update_target(0.9)

    @torch.no_grad()
    def plain_ema(m, i):
        for t, o in zip(m.target_encoder.parameters(), m.encoder.parameters()):
            t.mul_(0.9).add_(o, alpha=0.1)

    trained = train(model, optimizer, lambda m, b: m.jepa_terms(b)["loss"], batches, ema)
    reference_trained = train(reference, reference_optimizer, lambda m, b: m.jepa_terms(b)["loss"], batches, plain_ema)
    assert_same_training(model, reference, trained, reference_trained)
    # The teacher moved (the EMA is compared, not skipped).
    assert not torch.allclose(model.target_encoder.blocks[0].attn.qkv.weight,
                              model.encoder.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("tokens", [False, True], ids=["ar_video", "ar_video_tokens"])
@pytest.mark.parametrize("prefix", [0, 2, 3])
def test_ar_training_without_the_last_step_equals_the_whole_clip(tokens, prefix):
    torch.manual_seed(0)
    batches = [torch.randn(2, 3, 8, 16, 16) for _ in range(STEPS)]  # 4 steps of 2 x 2 tokens
    if tokens:
        model = ARVideoTokens(tiny_encoder(), num_codes=16, prefix_steps=prefix)
        model.tokenizer.fit(patchify(torch.cat(batches), 2, 8).reshape(-1, 384), iters=3)
    else:
        model = ARVideo(tiny_encoder(), residual=True, prefix_steps=prefix)
    model, reference, optimizer, reference_optimizer = twin(model)
    # The reference pairs every output but the last step's with its target, from the whole clip.
    reference.training_outputs = reference.outputs
    trained = train(model, optimizer, lambda m, v: m.step_loss(v), batches)
    reference_trained = train(reference, reference_optimizer, lambda m, v: m.step_loss(v), batches)
    assert_same_training(model, reference, trained, reference_trained)
