"""Activation checkpointing and compile are applied from outside, per transformer block, without
changing parameter names or results; the objective applies them (and FSDP2) from its config flags."""

import copy

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

from arjepa_pl import parallel
from arjepa_pl.masks import MaskCollator
from arjepa_pl.models import Block
from tests.test_vjepa import RandomClips, tiny_vjepa


def _batch(model):
    samples = [RandomClips()[i] for i in range(4)]
    return MaskCollator(model.masks, tubelet_size=2, patch_size=8, seed=0)(samples)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss, _ = model.jepa_loss(batch)
    loss.backward()
    return loss.detach(), {n.replace("._checkpoint_wrapped_module", ""): p.grad.clone()
                           for n, p in model.named_parameters() if p.grad is not None}


def test_activation_checkpointing_keeps_names_loss_and_gradients():
    torch.manual_seed(0)
    plain = tiny_vjepa()
    checkpointed = copy.deepcopy(plain)
    parallel.parallelize(checkpointed, activation_checkpointing=True)
    wrapped = [m for m in checkpointed.modules() if isinstance(m, CheckpointWrapper)]
    # Encoder (2) and predictor (1) blocks; the teacher runs under no_grad and is left alone.
    assert len(wrapped) == 3 and not any(isinstance(m, CheckpointWrapper) for m in checkpointed.target_encoder.modules())
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
    batch = _batch(plain)
    loss_a, grads_a = _loss_and_grads(plain, batch)
    loss_b, grads_b = _loss_and_grads(checkpointed, batch)
    assert torch.equal(loss_a, loss_b) and grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=1e-7)
    checkpointed.update_target(0.5)  # the EMA pairs parameters by order: unchanged by the wrappers
    plain.update_target(0.5)
    assert all(torch.equal(a, b) for a, b in zip(plain.target_encoder.parameters(), checkpointed.target_encoder.parameters()))


def test_compile_every_block_unit_including_checkpointed_ones():
    torch.manual_seed(0)
    model = tiny_vjepa()
    reference = copy.deepcopy(model)
    parallel.apply_activation_checkpointing(model.encoder)
    units = list(parallel.block_units(model))
    assert len(units) == 2 + 1 + 2  # encoder (wrapped), predictor, teacher
    assert sum(isinstance(u, CheckpointWrapper) for u in units) == 2 and all(
        isinstance(u, (Block, CheckpointWrapper)) for u in units)
    # The eager backend checks the wiring quickly; the GPU check times the real (inductor) compile.
    assert parallel.compile_blocks(model, backend="eager") == 5
    assert all(u._compiled_call_impl is not None for u in units)
    assert model.state_dict().keys() == reference.state_dict().keys()
    batch = _batch(model)
    assert torch.equal(model.jepa_loss(batch)[0], reference.jepa_loss(batch)[0])


def test_configure_model_applies_the_config_flags_once():
    model = tiny_vjepa(activation_checkpointing=True, compile=True)
    model.configure_model()
    model.configure_model()  # Lightning calls it for every fit / validate / test
    wrappers = [m for m in model.modules() if isinstance(m, CheckpointWrapper)]
    assert len(wrappers) == 3 and not any(isinstance(m._checkpoint_wrapped_module, CheckpointWrapper) for m in wrappers)
    assert all(u._compiled_call_impl is not None for u in parallel.block_units(model))
    assert not any(isinstance(m, CheckpointWrapper) for m in tiny_vjepa().modules())  # off by default


def test_bf16_mixed_precision_gathers_bf16_and_reduces_fp32():
    policy = parallel.fsdp_mixed_precision("bf16-mixed")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert parallel.fsdp_mixed_precision("32-true") is None and parallel.fsdp_mixed_precision(None) is None
