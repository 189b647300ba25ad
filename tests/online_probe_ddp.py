"""Run by tests/test_online_probe.py as a subprocess: 2 gloo processes probe halves of the same batches.

Prints "heads identical and equal to one process" when every rank's linear head ends equal to the head
one process trains on the whole batches (the gradients are averaged, as DDP averages the model's), and
"banks identical" when every rank's kNN bank holds every rank's clips in the same order, and "fsdp2
the same under FSDP2" when the probe of an encoder sharded by FSDP2 (as configure_model shards it) ends with
the same head.
"""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_online_probe import TASKS, FixedEncoder, factor_images

STEPS, BATCH = 3, 8


def batches():
    data = torch.utils.data.default_collate(factor_images(STEPS * BATCH))
    return [(data["image"][i * BATCH:(i + 1) * BATCH], data["label"][i * BATCH:(i + 1) * BATCH]) for i in range(STEPS)]


def train(rank: int = 0, world: int = 1, shard: bool = False):
    """(head weights, kNN bank) after STEPS batches, each rank probing its share of every batch;
    with `shard`, the encoder sharded by FSDP2 over the ranks first."""
    from arjepa_pl.callbacks import OnlineProbe

    module = FixedEncoder()
    if shard:
        from torch.distributed.device_mesh import init_device_mesh

        from arjepa_pl.parallel import apply_fsdp2

        apply_fsdp2(module, init_device_mesh("cpu", (world,)))
        assert all(hasattr(p, "placements") for p in module.encoder.parameters())  # DTensors
    probes = {m: OnlineProbe(TASKS, method=m, lr=0.05, k=3, bank_size=64) for m in ("linear", "knn")}
    for probe in probes.values():
        probe.setup(None, module, "fit")
        probe.on_fit_start(None, module)
    share = BATCH // world
    for images, labels in batches():
        images, labels = images[rank * share:(rank + 1) * share], labels[rank * share:(rank + 1) * share]
        with torch.no_grad():
            features = probes["linear"]._extractor(images)[0].mean(1)
        features = torch.nn.functional.layer_norm(features, features.shape[-1:])
        probes["linear"]._linear_step(features, probes["linear"]._targets(labels))
        probes["knn"]._remember(*probes["knn"]._gather(features, labels))
    return torch.cat([p.detach().flatten() for p in probes["linear"].head.parameters()]), probes["knn"].bank


def worker(rank: int, world: int, reference: torch.Tensor, reference_bank: torch.Tensor):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PROBE_PORT", "29533"))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    head, bank = train(rank, world)
    heads, banks = [torch.empty_like(head) for _ in range(world)], [torch.empty_like(bank) for _ in range(world)]
    dist.all_gather(heads, head)
    dist.all_gather(banks, bank)
    if rank == 0:
        assert all(torch.equal(h, heads[0]) for h in heads), "ranks' heads differ"
        # Averaging two half-batch gradients equals the whole batch's up to float rounding.
        torch.testing.assert_close(head, reference, rtol=1e-5, atol=1e-6)
        print("heads identical and equal to one process", flush=True)
        assert all(torch.equal(b, banks[0]) for b in banks), "ranks' banks differ"
        torch.testing.assert_close(bank, reference_bank)
        print("banks identical", flush=True)
    # FSDP2: the probe reads the sharded encoder through its forward (FSDP2 gathers the weights).
    sharded_head, sharded_bank = train(rank, world, shard=True)
    if rank == 0:
        torch.testing.assert_close(sharded_head, head, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sharded_bank, bank, rtol=1e-5, atol=1e-6)
        print("the same under FSDP2", flush=True)
    # Both ranks past their last collective before either tears down gloo: a rank that destroys the
    # group while its peer is still using it can abort at exit.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    reference, reference_bank = train()
    mp.spawn(worker, args=(2, reference, reference_bank), nprocs=2)
