"""GPU check: V-JEPA and autoregressive video (ARVideo) training steps at ViT-L/16, 16 x 224^2, in bf16
on one CUDA device, and the largest batch that fits.

Modes (--only, for each of --objectives): eager vs torch.compile'd blocks, each with and without
per-block activation checkpointing, and FSDP2 (fully_shard per block, bf16 all-gathers) on a
single-rank process group (V-JEPA's EMA teacher sharded like the student), alone and with compile +
checkpointing (configs/trainer/fsdp2.yaml). Reports step time, clips/s, peak memory and MFU (FLOPs
counted by torch.utils.flop_counter, peak bf16 FLOP/s from a table of common GPUs). Parallelism and
checkpointing are applied from outside by arjepa_pl.parallel.parallelize, as in training: the model
code knows nothing of them.

--max-batch large,huge: for each ViT preset and objective, with and without activation checkpointing,
the largest batch that trains (two eager steps without running out of memory; doubling from --batch,
then bisection to a multiple of 8, at most --max-batch-limit) with its clips/s and peak memory: the
numbers behind a config's batch size.

Every result is printed and appended as a JSON line to --out.

    python bench/gpu_check.py --out results.jsonl [--objectives vjepa ar_video] [--batch 24] [--steps 10]
                              [--only eager,compile,...] [--max-batch large,huge] [--max-batch-limit 512]
"""

import argparse
import gc
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/gpu_check.py` from anywhere
    sys.path.insert(0, str(REPO))

from arjepa_pl.callbacks.performance import CPU_ATTENTION_FLOPS, peak_tflops  # noqa: E402
from arjepa_pl.models import VIT_PRESETS, VisionTransformer  # noqa: E402
from arjepa_pl.objectives import VJEPA  # noqa: E402
from arjepa_pl.objectives.ar_video import ARVideo  # noqa: E402
from arjepa_pl.parallel import co_sharded, fsdp_mixed_precision, parallelize  # noqa: E402
from bench.train_step import bench_batches, make_step, time_steps  # noqa: E402


def peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU, from the table the training runs' MFU uses."""
    tflops = peak_tflops(name, "bf16")
    return None if tflops is None else tflops * 1e12


OBJECTIVES = ("vjepa", "ar_video")
FRAMES, PATCH, TUBELET = 16, 16, 2  # the paper's clips (--size: 224) and ViT-*/16 tubelets
COMPILED_WARMUP = 6  # compiled blocks recompile for the first few context sizes: keep that out of the timing
# Modes: what parallelize() is asked for. fsdp2_compile_ac is configs/trainer/fsdp2.yaml.
MODES = {"eager": {}, "eager_ac": {"ac": True}, "compile": {"compiled": True},
         "compile_ac": {"compiled": True, "ac": True}, "fsdp2": {"fsdp": True},
         "fsdp2_compile_ac": {"fsdp": True, "compiled": True, "ac": True}}


def build_model(objective: str, device: str, preset: str = "large", tiny: bool = False,
                width: Optional[int] = None) -> torch.nn.Module:
    """V-JEPA (predictor 384 d x 12, as in the paper) or ARVideo on a ViT-`preset`/16 encoder; `tiny` is a
    2-layer stand-in to smoke-test this script on a CPU; `width` keeps the preset's layout (its blocks and
    parameter tensors) at that width with 2 heads, predictor included (bench/host_overhead.py)."""
    if tiny:
        encoder = VisionTransformer(embed_dim=64, depth=2, num_heads=4, patch_size=16, tubelet_size=2)
    else:
        narrow = {} if width is None else {"embed_dim": width, "num_heads": 2}
        encoder = VisionTransformer(preset, patch_size=16, tubelet_size=2, **narrow)
    if objective == "vjepa":
        if tiny:
            return VJEPA(encoder, predictor_embed_dim=32, predictor_depth=1, total_steps=100).to(device)
        predictor_width, heads = (384, 16) if width is None else (width, 2)
        return VJEPA(encoder, predictor_embed_dim=predictor_width, predictor_depth=12, predictor_num_heads=heads,
                     total_steps=90000).to(device)
    return ARVideo(encoder, total_steps=90000).to(device)


def count_flops(step, batch: dict) -> tuple[float, dict[str, float]]:
    """FLOPs of one step, in all and by op (which shows whether the attention was counted)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter:
        step(batch, 0)
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return float(counter.get_total_flops()), by_op


def free_memory(device: str) -> None:
    """Collect what an earlier run (a failed one: its traceback held its tensors) left behind."""
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def out_of_memory(error: Exception) -> bool:
    """Whether `error` is the device running out of memory (cuBLAS / cuDNN / Triton report it as a
    RuntimeError of their own)."""
    text = str(error)
    return isinstance(error, torch.OutOfMemoryError) or (isinstance(error, RuntimeError) and any(
        s in text for s in ("out of memory", "ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")))


def run(objective: str, name: str, args, batch: int, preset: str = "large", fsdp: bool = False, ac: bool = False,
        compiled: bool = False, steps: Optional[int] = None, warmup: Optional[int] = None,
        flops: bool = True, distinct: int = 2) -> dict:
    free_memory(args.device)
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    model = build_model(objective, args.device, preset, args.tiny, getattr(args, "width", None))
    # What ScheduledModule.configure_model does under the trainer (there with the strategy's mesh):
    # per-block activation checkpointing, compile, FSDP2 with bf16 all-gathers and the teacher
    # sharded exactly like the student.
    mesh = init_device_mesh(args.device, (1,)) if fsdp else None
    parallelize(model, activation_checkpointing=ac, compile=compiled, mesh=mesh,
                mp_policy=fsdp_mixed_precision("bf16-mixed") if fsdp else None)
    optimizer = model.configure_optimizers()
    step = make_step(model, optimizer, autocast_dtype=torch.bfloat16)
    steps, warmup = steps or args.steps, args.warmup if warmup is None else warmup
    if compiled:
        warmup = max(warmup, COMPILED_WARMUP)
    batches = bench_batches(warmup + steps, batch=batch, frames=FRAMES, size=args.size, patch=PATCH, tubelet=TUBELET,
                            device=args.device, distinct=distinct, masks=objective == "vjepa")
    t0 = time.perf_counter()
    rate, loss = time_steps(step, batches, warmup)
    result = {"name": name, "objective": objective, "preset": "tiny" if args.tiny else preset, "batch": batch,
              "steps_per_s": rate, "ms_per_step": 1000 / rate, "clips_per_s": rate * batch, "loss": loss,
              "wall_s": time.perf_counter() - t0, "warmup": warmup, "steps": steps, "flops_per_step": None}
    if flops and not compiled:
        try:  # a counter that cannot see an op (a compiled kernel) must not cost the timing
            result["flops_per_step"], result["flops_by_op"] = count_flops(step, batches[-1])
        except Exception as e:
            result["flops_error"] = f"{type(e).__name__}: {e}"[:500]
    if cuda:
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if fsdp and objective == "vjepa":
        result["teacher_sharded_like_student"] = co_sharded(model.encoder, model.target_encoder)
    return result


def largest_batch(fits: Callable[[int], bool], start: int, limit: int, multiple: int = 8) -> Optional[int]:
    """The largest batch b <= limit for which fits(b), assuming that what fits a batch fits every smaller
    one: doubling from `start`, then bisection over the multiples of `multiple` between the last batch
    that fitted and the first that did not. None if `start` does not fit. Every batch is tried at most once."""
    if start > limit or not fits(start):
        return None
    good, bad = start, None
    while bad is None and good < limit:
        trial = min(2 * good, limit)
        if fits(trial):
            good = trial
        else:
            bad = trial
    while bad is not None:
        first, last = good // multiple + 1, (bad - 1) // multiple  # multiples strictly between, as indices
        if first > last:
            break
        trial = multiple * ((first + last) // 2)
        if fits(trial):
            good = trial
        else:
            bad = trial
    return good


def fitting_run(objective: str, preset: str, ac: bool, batch: int, args) -> Optional[dict]:
    """Two eager steps at `batch` (one to allocate the optimizer state, one timed); None when the device
    runs out of memory."""
    try:
        return run(objective, "max_batch", args, batch, preset, ac=ac, steps=1, warmup=1, flops=False, distinct=1)
    except Exception as e:
        if out_of_memory(e):
            return None
        raise


def max_batch(objective: str, preset: str, ac: bool, args) -> dict:
    """The largest batch that trains in eager mode (compiled blocks keep less memory: a lower bound for
    them); each try is recorded as it ends, so a search cut short by a time limit still says something."""
    tried: dict[int, Optional[dict]] = {}
    preset_name = "tiny" if args.tiny else preset

    def fits(batch: int) -> bool:
        tried[batch] = fitting_run(objective, preset, ac, batch, args)
        record({"name": "max_batch_try", "objective": objective, "preset": preset_name, "activation_checkpointing": ac,
                "batch": batch, "fits": tried[batch] is not None,
                **{k: v for k, v in (tried[batch] or {}).items() if k in ("clips_per_s", "peak_mem_gib")}}, args.out)
        return tried[batch] is not None

    best = largest_batch(fits, args.batch, args.max_batch_limit)
    free_memory(args.device)
    result = {"name": "max_batch", "objective": objective, "preset": preset_name, "activation_checkpointing": ac,
              "mode": "eager", "largest_batch": best, "tried": sorted(tried), "limit": args.max_batch_limit}
    if best is not None:
        result.update({k: tried[best][k] for k in ("clips_per_s", "ms_per_step", "peak_mem_gib") if k in tried[best]})
    return result


def failed(name: str, objective: str, error: Exception, **fields) -> dict:
    """A result line for a mode or search that raised: one failure must not hide the other results."""
    return {"name": name, "objective": objective, **fields, "error": f"{type(error).__name__}: {error}"[:2000]}


def single_process_group(backend: str) -> None:
    """A process group of this process alone (FSDP2 on one device), on a free local port unless
    MASTER_PORT says which."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    torch.distributed.init_process_group(backend, rank=0, world_size=1)


def record(result: dict, path: str) -> None:
    print(json.dumps(result), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(result) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.jsonl")
    parser.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default=",".join(MODES), help=f"modes, comma-separated, of {', '.join(MODES)}; "
                        "'' for none")
    parser.add_argument("--max-batch", default="", help="ViT presets whose largest batch to find, e.g. large,huge")
    parser.add_argument("--max-batch-limit", type=int, default=512)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tiny", action="store_true", help="2-layer model: smoke-test the script on a CPU")
    args = parser.parse_args()
    modes = [m for m in args.only.split(",") if m]
    presets = [p for p in args.max_batch.split(",") if p]
    unknown = [m for m in modes if m not in MODES] + [p for p in presets if p not in VIT_PRESETS]
    if unknown:  # before any model is built
        parser.error(f"unknown mode or preset {unknown}: modes are {list(MODES)}, presets {list(VIT_PRESETS)}")
    torch.backends.cuda.matmul.allow_tf32 = True
    # Every batch size of a search, and every context size, is a new shape for the compiled FlexAttention
    # of AR video: past dynamo's default limit it would fall back to the slow reference implementation.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    env = {"name": "env", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "peak_bf16_tflops": (peak_flops(name) or 0) / 1e12}
    record(env, args.out)
    if any(m.startswith("fsdp2") for m in modes):
        single_process_group("nccl" if args.device == "cuda" else "gloo")
    for objective in args.objectives:
        flops = None
        for mode in modes:
            try:
                result = run(objective, mode, args, args.batch, **MODES[mode])
            except Exception as e:
                result = failed(mode, objective, e)
            if not MODES[mode].get("ac"):  # with checkpointing the counter also sees the recomputation
                flops = result.get("flops_per_step") or flops
            if flops and "steps_per_s" in result and env["peak_bf16_tflops"]:
                # Recomputation (AC) is extra work, not useful FLOPs: MFU counts the model's FLOPs only.
                result["mfu"] = flops * result["steps_per_s"] / (env["peak_bf16_tflops"] * 1e12)
            record(result, args.out)
    for preset in presets:
        for objective in args.objectives:
            for ac in (False, True):
                try:
                    result = max_batch(objective, preset, ac, args)
                except Exception as e:
                    result = failed("max_batch", objective, e, preset=preset, activation_checkpointing=ac)
                record(result, args.out)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
