"""Run by tests/test_collapse.py as a subprocess: 2 gloo processes hold unequal shares of one batch of
token rows and compute the VICReg terms across ranks.

Prints "vicreg across ranks = one process" when both terms equal those of one process holding every
row, and each rank's gradient (divided by the number of processes, as DDP's averaging divides it)
equals that process's gradient on its rows; and "per rank differs" when the same call without
across_ranks gives each rank's own statistics instead.
"""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from arjepa_pl.feature_stats import vicreg_covariance, vicreg_variance

ROWS, SPLIT, DIM = 40, 13, 6  # rank 0 holds 13 rows, rank 1 holds 27: context lengths differ per rank


def batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    scales = torch.linspace(0.2, 2.0, DIM)
    return torch.randn(ROWS, DIM, generator=g) * scales + 3.0  # an offset mean: the centring must be global


def terms(z: torch.Tensor, across_ranks: bool) -> torch.Tensor:
    return vicreg_variance(z, across_ranks=across_ranks) + 0.04 * vicreg_covariance(z, across_ranks=across_ranks)


def worker(rank: int, world: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["VICREG_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    full = batch()
    mine = (full[:SPLIT] if rank == 0 else full[SPLIT:]).clone().requires_grad_(True)
    value = terms(mine, across_ranks=True)
    value.backward()
    per_rank = terms(mine.detach(), across_ranks=False)
    queue.put((rank, value.item(), (mine.grad / world).tolist(), per_rank.item()))
    dist.barrier()  # both ranks done before either tears down gloo
    dist.destroy_process_group()


def main() -> None:
    full = batch().requires_grad_(True)
    expected = terms(full, across_ranks=True)  # one process: across_ranks changes nothing
    expected.backward()
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        os.environ["VICREG_PORT"] = str(s.getsockname()[1])
    procs = [ctx.Process(target=worker, args=(r, 2, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get() for _ in procs)
    for p in procs:
        p.join(60)
    grads = torch.tensor(results[0][2] + results[1][2])
    same = all(abs(v - expected.item()) < 1e-5 for _, v, _, _ in results) and \
        torch.allclose(grads, full.grad, atol=1e-6, rtol=1e-4)
    error = (grads - full.grad).abs().max()
    mismatch = f"MISMATCH: {[v for _, v, _, _ in results]} vs {expected.item()}, gradients off by {error}"
    print("vicreg across ranks = one process" if same else mismatch)
    if all(abs(p - expected.item()) > 1e-3 for _, _, _, p in results):
        print("per rank differs")


if __name__ == "__main__":
    main()
