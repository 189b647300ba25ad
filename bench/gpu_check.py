"""GPU check: V-JEPA ViT-L/16 training steps in bf16 on one CUDA device.

Times eager vs torch.compile'd blocks, each with and without per-block activation checkpointing,
and FSDP2 (fully_shard per block, bf16 all-gathers) on a single-rank process group with the EMA
teacher sharded like the student, alone and with compile + checkpointing (configs/trainer/fsdp2.yaml). Reports step time, clips/s, peak memory and MFU (FLOPs counted by torch.utils.flop_counter,
peak bf16 FLOP/s from a table of common GPUs). Results are printed and appended as JSON lines to
--out. Parallelism and checkpointing are applied from outside by arjepa_pl.parallel.parallelize, as in
training: the model code knows nothing of them.

    python bench/gpu_check.py --out results.jsonl [--batch 24] [--steps 10] [--only eager,compile,...]
"""

import argparse
import json
import os
import time

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.utils.flop_counter import FlopCounterMode

from arjepa_pl.callbacks.performance import peak_tflops
from arjepa_pl.models import VisionTransformer
from arjepa_pl.objectives import VJEPA
from arjepa_pl.parallel import co_sharded, fsdp_mixed_precision, parallelize
from bench.train_step import bench_batches, make_step, time_steps


def peak_flops(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU, from the table the training runs' MFU uses."""
    tflops = peak_tflops(name, "bf16")
    return None if tflops is None else tflops * 1e12


def vitl_vjepa(device: str, tiny: bool = False) -> VJEPA:
    """V-JEPA ViT-L/16 as in the paper; `tiny` is a 2-layer stand-in to smoke-test this script on a CPU."""
    if tiny:
        encoder = VisionTransformer(embed_dim=64, depth=2, num_heads=4, patch_size=16, tubelet_size=2)
        return VJEPA(encoder, predictor_embed_dim=32, predictor_depth=1, total_steps=100).to(device)
    encoder = VisionTransformer("large", patch_size=16, tubelet_size=2)
    return VJEPA(encoder, predictor_embed_dim=384, predictor_depth=12, predictor_num_heads=16,
                 total_steps=90000).to(device)


def count_flops(step, batch: dict) -> float:
    with FlopCounterMode(display=False) as counter:
        step(batch, 0)
    return float(counter.get_total_flops())


def run(name: str, args, fsdp: bool = False, ac: bool = False, compiled: bool = False) -> dict:
    torch.manual_seed(0)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = vitl_vjepa(args.device, args.tiny)
    # What ScheduledModule.configure_model does under the trainer (there with the strategy's mesh):
    # per-block activation checkpointing, compile, FSDP2 with bf16 all-gathers and the teacher
    # sharded exactly like the student.
    mesh = init_device_mesh(args.device, (1,)) if fsdp else None
    parallelize(model, activation_checkpointing=ac, compile=compiled, mesh=mesh,
                mp_policy=fsdp_mixed_precision("bf16-mixed") if fsdp else None)
    optimizer = model.configure_optimizers()
    step = make_step(model, optimizer, autocast_dtype=torch.bfloat16)
    batches = bench_batches(args.warmup + args.steps, batch=args.batch, frames=16, size=args.size, patch=16,
                            tubelet=2, device=args.device, distinct=2)
    t0 = time.perf_counter()
    rate, loss = time_steps(step, batches, args.warmup)
    flops = count_flops(step, batches[-1]) if not compiled else None
    result = {"name": name, "batch": args.batch, "steps_per_s": rate, "ms_per_step": 1000 / rate,
              "clips_per_s": rate * args.batch, "loss": loss, "wall_s": time.perf_counter() - t0,
              "flops_per_step": flops}
    if cuda:
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if fsdp:
        result["teacher_sharded_like_student"] = co_sharded(model.encoder, model.target_encoder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.jsonl")
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", default="eager,eager_ac,fsdp2,compile,compile_ac,fsdp2_compile_ac")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--tiny", action="store_true", help="2-layer model: smoke-test the script on a CPU")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    env = {"name": "env", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
           "peak_bf16_tflops": (peak_flops(name) or 0) / 1e12}
    print(json.dumps(env), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(env) + "\n")
    runs = {"eager": {}, "eager_ac": {"ac": True}, "compile": {"compiled": True},
            "compile_ac": {"compiled": True, "ac": True}, "fsdp2": {"fsdp": True},
            "fsdp2_compile_ac": {"fsdp": True, "compiled": True, "ac": True}}  # configs/trainer/fsdp2.yaml
    flops = None
    for key in args.only.split(","):
        if key.startswith("fsdp2") and not torch.distributed.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29512")
            backend = "nccl" if args.device == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, rank=0, world_size=1)
        try:
            result = run(key, args, **runs[key])
        except Exception as e:  # report and go on: one failing mode must not hide the others
            result = {"name": key, "error": f"{type(e).__name__}: {e}"[:2000]}
        if not runs[key].get("ac"):  # with checkpointing the counter also sees the recomputation
            flops = result.get("flops_per_step") or flops
        if flops and "steps_per_s" in result and env["peak_bf16_tflops"]:
            # Recomputation (AC) is extra work, not useful FLOPs: MFU counts the model's FLOPs only.
            result["mfu"] = flops * result["steps_per_s"] / (env["peak_bf16_tflops"] * 1e12)
        print(json.dumps(result), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(result) + "\n")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
