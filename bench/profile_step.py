"""Where the time of a training step goes: the bench step of bench/train_step.py under the torch
profiler, as a table of regions (and a Chrome / Perfetto trace with --trace).

    python bench/profile_step.py [--objectives vjepa ar_video] [--steps 4] [--warmup 2] [--threads N]
                                 [--device cpu|cuda] [--bf16] [--compile] [--trace DIR] [--base COMMIT]
                                 [--preset large --batch 24]

--preset profiles bench/gpu_check.py's model at its shapes (a ViT preset, 16 x 224^2, patch 16) instead
of the bench shape: the GPU's table.

--base profiles the library as it was at a git commit (this checkout's bench code), for a before /
after pair of tables.

Regions: the networks' forward passes (encoder, target encoder, predictor, head) are labelled by
forward hooks that exist only while this script profiles; their backward passes are attributed through
the autograd sequence numbers that link every backward node to the forward op that made it. The
step's phases (data to device, loss, backward, gradient clipping, optimizer, EMA) are the
`region()` labels of bench/train_step.py, which cost nothing when no profiler runs. "mask
gather/scatter" counts the token gathers and their backward scatters wherever they run (they are
also inside the rows above); "host syncs" (CUDA) counts the operations that make the host wait for the
device (.item(), blocking copies, stream synchronisations).

Columns: wall ms per step of each region (host time; on a GPU the host runs ahead, so read the
device column there) and, on CUDA, the device (kernel) ms per step.
"""

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/profile_step.py` from anywhere; a --base run puts its library first
    sys.path.insert(0, str(REPO))

from arjepa_pl.models import VIT_PRESETS  # noqa: E402
from arjepa_pl.parallel import parallelize  # noqa: E402
from bench.train_step import (  # noqa: E402
    BATCH,
    FRAMES,
    OBJECTIVES,
    PATCH,
    SIZE,
    TUBELET,
    bench_batches,
    build,
    make_step,
)

NETWORKS = {"encoder": "encoder", "target_encoder": "target encoder", "predictor": "predictor", "head": "head"}
GATHER_OPS = ("aten::gather", "aten::scatter", "aten::scatter_add", "aten::index", "aten::index_select",
              "aten::index_add", "aten::repeat_interleave", "aten::index_put", "aten::take_along_dim",
              "GatherBackward", "IndexBackward", "IndexSelectBackward")
SYNC_OPS = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
            "cudaMemcpy")  # cudaMemcpy without Async: a blocking copy
PREFIX = "region::"


@contextlib.contextmanager
def network_regions(model: nn.Module) -> Iterator[None]:
    """A profiler region around each network's forward, by hooks removed on exit."""
    handles = []
    for attr, label in NETWORKS.items():
        net = getattr(model, attr, None)
        if not isinstance(net, nn.Module):
            continue
        open_regions: list = []

        def pre(module, args, label=label, open_regions=open_regions):
            rf = torch.profiler.record_function(f"{PREFIX}forward: {label}")
            rf.__enter__()
            open_regions.append(rf)

        def post(module, args, output, open_regions=open_regions):
            open_regions.pop().__exit__(None, None, None)

        handles += [net.register_forward_pre_hook(pre), net.register_forward_hook(post)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _region_of(event, spans_by_thread: dict) -> Optional[str]:
    """The innermost region span around `event`: by its parent chain, else by time on the main thread."""
    parent = event
    while parent is not None:
        if parent.name.startswith(PREFIX) and parent is not event:
            return parent.name[len(PREFIX):]
        parent = parent.cpu_parent
    start = event.time_range.start
    inner = None
    for span in spans_by_thread.get("main", ()):
        if span.time_range.start <= start <= span.time_range.end:
            if inner is None or span.time_range.start >= inner.time_range.start:
                inner = span
    return None if inner is None else inner.name[len(PREFIX):]


def region_table(events, steps: int, cuda: bool) -> list[tuple[str, float, float]]:
    """[(row, host ms per step, device ms per step)] from the profiler's events."""
    events = list(events)
    spans = [e for e in events if e.name.startswith(PREFIX)]
    main_thread = spans[0].thread if spans else None
    spans_by_thread = {"main": [s for s in spans if s.thread == main_thread]}
    host: dict[str, float] = defaultdict(float)
    device: dict[str, float] = defaultdict(float)
    # Region spans: host time less the regions nested inside them.
    for span in spans:
        name = span.name[len(PREFIX):]
        host[name] += span.cpu_time_total
        inner = _region_of(span, spans_by_thread) if span.cpu_parent is not None else None
        if inner is not None:
            host[inner] -= span.cpu_time_total
    # Backward: each autograd node to the forward region of the op that created it.
    forward_region: dict[int, str] = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::") and not getattr(e, "is_remote", False):
            region = _region_of(e, spans_by_thread)
            if region and region.startswith("forward: "):
                forward_region.setdefault(e.sequence_nr, region)
    for e in events:
        if e.name.startswith("autograd::engine::evaluate_function"):
            label = forward_region.get(e.sequence_nr)
            name = "backward: " + (label[len("forward: "):] if label else "other (loss, glue)")
            host[name] += e.cpu_time_total
            host["backward"] -= e.cpu_time_total if _region_of(e, spans_by_thread) == "backward" else 0.0
    # Device time: every op's own kernels, to its region (backward ops through their node).
    gather_host = gather_dev = sync_host = 0.0
    syncs = 0
    for e in events:
        self_dev = getattr(e, "self_device_time_total", 0.0) if cuda else 0.0
        if e.name.startswith(GATHER_OPS):
            gather_host += e.self_cpu_time_total
            gather_dev += self_dev
        if cuda and e.name in SYNC_OPS:  # on the CPU an .item() waits for nothing (fused AdamW reads its steps so)
            syncs += 1
            sync_host += e.cpu_time_total
        if not self_dev:
            continue
        node = e
        while node is not None and not node.name.startswith("autograd::engine::evaluate_function"):
            node = node.cpu_parent
        if node is not None:
            label = forward_region.get(node.sequence_nr)
            device["backward: " + (label[len("forward: "):] if label else "other (loss, glue)")] += self_dev
        else:
            device[_region_of(e, spans_by_thread) or "outside regions"] += self_dev
    order = ["data to device", "forward + loss", "forward: encoder", "forward: target encoder", "forward: predictor",
             "forward: head", "backward", "backward: encoder", "backward: predictor", "backward: head",
             "backward: other (loss, glue)", "clip gradients", "optimizer", "EMA"]
    names = [n for n in order if n in host or n in device] + sorted(set(host) - set(order))
    rows = [(n if not n.startswith("forward + loss") else "forward: loss, glue", host[n] / 1e3 / steps,
             device[n] / 1e3 / steps) for n in names]
    rows.append(("of which mask gather/scatter", gather_host / 1e3 / steps, gather_dev / 1e3 / steps))
    if cuda:
        rows.append((f"host syncs ({syncs / steps:.0f} per step)", sync_host / 1e3 / steps, 0.0))
    return rows


def print_table(title: str, rows: list[tuple[str, float, float]], step_ms: float, cuda: bool) -> None:
    print(title)
    print(f"  {'region':<34} {'host ms':>9} {'% step':>7}" + (f" {'device ms':>10}" if cuda else ""))
    for name, host_ms, dev_ms in rows:
        line = f"  {name:<34} {host_ms:>9.1f} {100 * host_ms / step_ms:>6.1f}%"
        print(line + (f" {dev_ms:>10.1f}" if cuda else ""))
    print(f"  {'step (wall, profiled)':<34} {step_ms:>9.1f}")


def profile_objective(objective: str, args) -> None:
    if args.preset:  # the GPU check's model and shapes (16 x 224^2, patch 16)
        from bench import gpu_check

        torch.manual_seed(0)
        model = gpu_check.build_model(objective, args.device, args.preset)
        batch, frames, size, patch = args.batch, gpu_check.FRAMES, 224, gpu_check.PATCH
    else:
        model, batch, frames, size, patch = build(objective, args.device), BATCH, FRAMES, SIZE, PATCH
    if args.compile:
        parallelize(model, compile=True)
    batches = bench_batches(args.warmup + args.steps, batch, frames, size, patch, TUBELET, args.device,
                            distinct=2, masks=objective == "vjepa")
    step = make_step(model, model.configure_optimizers(), torch.bfloat16 if args.bf16 else None)
    cuda = args.device.startswith("cuda")
    for i in range(args.warmup):
        step(batches[i], i)
    if cuda:
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with network_regions(model), profile(activities=activities) as prof:
        start = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            step(batches[i], i)
        if cuda:
            torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / args.steps * 1e3
    mode = ("bf16" if args.bf16 else "fp32") + (", compiled blocks" if args.compile else "")
    shape = f"ViT-{args.preset}/16, {frames} x {size}^2" if args.preset else "bench shape"
    print_table(f"{objective}: {shape}, {args.device}, {torch.get_num_threads()} threads, {mode}, batch {batch}, "
                f"mean of {args.steps} profiled steps", region_table(prof.events(), args.steps, cuda), wall, cuda)
    if args.trace:
        Path(args.trace).mkdir(parents=True, exist_ok=True)
        path = Path(args.trace) / f"{objective}_{args.device}.json"
        prof.export_chrome_trace(str(path))
        print(f"  trace: {path} (open in https://ui.perfetto.dev or chrome://tracing)")


def main() -> None:
    # No abbreviations: --base is taken out of the arguments for the child by its full name.
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (as precision: bf16-mixed)")
    parser.add_argument("--compile", action="store_true", help="compiled blocks (as compile: true)")
    parser.add_argument("--trace", help="directory for a Chrome / Perfetto trace of each objective")
    parser.add_argument("--preset", choices=sorted(VIT_PRESETS),
                        help="profile bench/gpu_check.py's model instead: this ViT preset at 16 x 224^2, patch 16")
    parser.add_argument("--batch", type=int, default=24, help="clips per step with --preset")
    parser.add_argument("--base", help="profile the library (arjepa_pl, data_modules) of this git commit instead")
    args = parser.parse_args()
    if args.base:
        from bench.compare_steps import extract

        with tempfile.TemporaryDirectory() as tmp:
            library = extract(args.base, Path(tmp))
            print(f"library of {args.base}", flush=True)
            argv, skip = [], False
            for arg in sys.argv[1:]:  # the same arguments without --base
                if not skip and not arg.startswith("--base"):
                    argv.append(arg)
                skip = arg == "--base"
            path = [str(library), str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
            sys.exit(subprocess.run([sys.executable, __file__, *argv], env=env).returncode)
    if args.threads:
        torch.set_num_threads(args.threads)
    for objective in args.objectives:
        profile_objective(objective, args)


if __name__ == "__main__":
    main()
