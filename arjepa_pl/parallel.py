"""Parallelism and memory/speed transforms, applied from outside to plain nn.Modules (torchtitan style).

The models know nothing of any of this. An objective applies, in this order (the order matters):

1. `apply_activation_checkpointing`: each transformer Block of the trainable networks recomputes its
   activations in backward instead of keeping them (memory for ~1/3 more compute);
2. `compile_blocks`: each Block (with its checkpointing) is compiled by torch.compile; never the
   LightningModule, whose `self.log` breaks whole-module compilation;
3. `apply_fsdp2`: FSDP2 (`fully_shard`) per Block, then per top-level network. Every network is
   sharded by the same calls, so the EMA teacher is sharded exactly like the student: each teacher
   parameter is a DTensor with the same mesh, placement and local shape as its student twin, and the
   EMA update is a shard-local lerp with no communication.

Parameter names are unchanged by all three (state dicts and checkpoints stay interchangeable).
"""

from typing import Iterator, Optional

import torch
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.tensor import DTensor

from arjepa_pl.models import Block


def block_units(module: nn.Module) -> Iterator[nn.Module]:
    """Each transformer Block of `module`, or the activation-checkpoint wrapper around it: the unit
    that is compiled and sharded."""
    wrapped = {id(m._checkpoint_wrapped_module) for m in module.modules() if isinstance(m, CheckpointWrapper)}
    for m in module.modules():
        if isinstance(m, CheckpointWrapper) and isinstance(m._checkpoint_wrapped_module, Block):
            yield m
        elif isinstance(m, Block) and id(m) not in wrapped:
            yield m


def has_trainable_parameters(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def apply_activation_checkpointing(module: nn.Module) -> int:
    """Wrap every Block of `module` in a (non-reentrant) activation checkpoint; returns how many.

    Apply it to the networks that are trained only: a network run under no_grad (the EMA teacher)
    keeps no activations, so there is nothing to save. Parameter names are unchanged in state dicts
    (the wrapper strips its own prefix)."""
    count = 0
    for parent in list(module.modules()):
        if isinstance(parent, CheckpointWrapper):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, Block):
                setattr(parent, name, checkpoint_wrapper(child))
                count += 1
    return count


def compile_blocks(module: nn.Module, **compile_kwargs) -> int:
    """torch.compile every Block unit of `module` in place (names of parameters unchanged); returns how many.

    Blocks, not whole networks: they are where the time goes, they compile once and are reused by
    every layer, and the code around them (token gathering, several mask configurations) stays eager."""
    units = list(block_units(module))
    for unit in units:
        unit.compile(**compile_kwargs)
    return len(units)


def fsdp_mixed_precision(precision: Optional[str]):
    """FSDP2's MixedPrecisionPolicy for a Lightning precision setting: with "bf16-mixed" the weights are
    all-gathered in bf16 (half the traffic and memory of fp32) and gradients reduced in fp32; the
    sharded master weights and the optimizer stay fp32. None for anything else (fp32 all-gathers)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision is not None and str(precision).startswith("bf16-mixed"):
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return None


def fsdp_roots(model: nn.Module) -> Iterator[nn.Module]:
    """The networks of `model` that become FSDP2 roots: each top-level child with parameters, and for a
    container (nn.ModuleDict / nn.ModuleList: a probe's heads) each member in its place. A container has
    no forward of its own for FSDP2 to hook: its members are called one by one."""
    for child in model.children():
        if not any(True for _ in child.parameters()):
            continue
        if isinstance(child, (nn.ModuleDict, nn.ModuleList)):
            yield from fsdp_roots(child)
        else:
            yield child


def apply_fsdp2(model: nn.Module, mesh, mp_policy=None) -> list[nn.Module]:
    """fully_shard every Block unit, then every network of `model` (fsdp_roots).

    Each network (encoder, predictor, target encoder, head, a probe's heads...) becomes its own
    FSDP2 root: the objective calls the networks, never `model` itself, so there is no forward on
    `model` for a single root to hook. Block-level units make FSDP2 gather one layer's weights at a
    time (and free them after), overlapped with the previous layer's compute. Every use of a network
    must go through its forward (VisionTransformer.forward takes masks, KV caches and the layers to
    return for that reason). Returns the sharded networks.
    """
    from torch.distributed.fsdp import fully_shard

    kwargs = {"mesh": mesh} if mp_policy is None else {"mesh": mesh, "mp_policy": mp_policy}
    roots = list(fsdp_roots(model))
    for root in roots:
        for unit in block_units(root):
            fully_shard(unit, **kwargs)
        fully_shard(root, **kwargs)
    return roots


def parallelize(model: nn.Module, activation_checkpointing: bool = False, compile: bool = False, mesh=None,
                mp_policy=None) -> None:
    """Everything above, in order, on the child networks of `model` (an objective): activation
    checkpointing of the trainable ones, compile of every block unit, FSDP2 when a mesh is given."""
    if activation_checkpointing:
        for network in model.children():
            if has_trainable_parameters(network):  # the EMA teacher keeps no activations
                apply_activation_checkpointing(network)
    if compile:
        compile_blocks(model)
    if mesh is not None:
        apply_fsdp2(model, mesh, mp_policy)


def co_sharded(a: nn.Module, b: nn.Module) -> bool:
    """Whether the parameters of `a` and `b` pair up one to one with the same shapes, meshes,
    placements and local shard shapes (what a shard-local EMA update needs)."""
    pa, pb = list(a.parameters()), list(b.parameters())
    if len(pa) != len(pb):
        return False
    for x, y in zip(pa, pb):
        if x.shape != y.shape or type(x) is not type(y):
            return False
        if isinstance(x, DTensor) and isinstance(y, DTensor):  # (the same type, checked above)
            if (x.placements != y.placements or x.device_mesh != y.device_mesh
                    or x.to_local().shape != y.to_local().shape):
                return False
    return True
