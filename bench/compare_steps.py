"""Old code against new, on a busy machine: the bench step (bench/train_step.py) of the library at a
git commit beside the library in this working tree, interleaved in one run.

    python bench/compare_steps.py --base main [--objectives vjepa ar_video] [--rounds 8] [--steps 2]
                                  [--threads 2] [--device cpu]

Each side runs in its own process (the library of the commit is extracted with `git archive` and put
first on that process's path; the bench code is this checkout's for both), builds the same seeded
model and the same batches, and waits. The two then take turns: `--steps` steps of one, then of the
other, `--rounds` times, so both see the same machine load. Per side it prints the best and the median
wall time per step, the median CPU time per step (all threads of the process: less sensitive to other
processes than wall time) and their ratios, and the largest difference between the two sides' losses
over the same steps (0 or float rounding when the change keeps the results).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def serve(objective: str, device: str, total: int) -> None:
    """Child: build the bench model of `objective`, then run steps on request ("run k" on stdin)."""
    import torch  # this side's library comes first on PYTHONPATH (see start)

    import arjepa_pl
    from bench.train_step import BATCH, FRAMES, PATCH, SIZE, TUBELET, bench_batches, build, make_step

    model = build(objective, device)
    batches = bench_batches(total, BATCH, FRAMES, SIZE, PATCH, TUBELET, device, masks=objective == "vjepa")
    step = make_step(model, model.configure_optimizers())
    print(json.dumps({"ready": str(Path(arjepa_pl.__file__).parent), "threads": torch.get_num_threads()}), flush=True)
    i = 0
    for line in sys.stdin:
        n = int(line.split()[1])
        result: dict[str, list[float]] = {"wall": [], "cpu": [], "loss": []}
        for _ in range(n):
            wall, cpu = time.perf_counter(), time.process_time()
            loss = step(batches[i % total], i).item()  # waits for the step (also on CUDA)
            result["wall"].append(time.perf_counter() - wall)
            result["cpu"].append(time.process_time() - cpu)
            result["loss"].append(loss)
            i += 1
        print(json.dumps(result), flush=True)


def extract(commit: str, into: Path) -> Path:
    """The library (arjepa_pl, data_modules) as it is at `commit`."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "arjepa_pl", "data_modules"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def start(tree: Path, args, objective: str, total: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    return subprocess.Popen([sys.executable, __file__, "--serve", objective, "--device", args.device,
                             "--total", str(total)], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def ask(child: subprocess.Popen, n: int) -> dict:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(f"run {n}\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"a bench process ended (exit {child.wait()}); see its error above")
    return json.loads(line)


def compare(objective: str, base_tree: Path, args) -> None:
    total = args.warmup + args.rounds * args.steps
    sides = {"base": start(base_tree, args, objective, total), "new": start(REPO, args, objective, total)}
    try:
        trees = {}
        for name, child in sides.items():
            assert child.stdout is not None
            trees[name] = json.loads(child.stdout.readline())["ready"]
        results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": [], "loss": []} for name in sides}
        for name, child in sides.items():
            results[name]["loss"] += ask(child, args.warmup)["loss"]
        for r in range(args.rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]  # alternate who goes first
            for name in order:
                out = ask(sides[name], args.steps)
                for key in out:
                    results[name][key] += out[key]
    finally:
        for child in sides.values():
            assert child.stdin is not None
            child.stdin.close()
            child.wait()
    print(f"{objective}: base {args.base} ({trees['base']}) vs this checkout ({trees['new']}), "
          f"{args.threads} threads, {args.rounds} x {args.steps} steps each, interleaved")
    stats = {}
    for name, res in results.items():
        stats[name] = (min(res["wall"]), statistics.median(res["wall"]), statistics.median(res["cpu"]))
        best, median, cpu = stats[name]
        print(f"  {name:<5} best {1000 * best:7.0f} ms/step ({1 / best:.2f} steps/s)  median {1000 * median:7.0f} ms  "
              f"CPU {1000 * cpu:7.0f} ms/step")
    b, n = stats["base"], stats["new"]
    print(f"  speed-up new/base: best wall x{b[0] / n[0]:.3f}  median wall x{b[1] / n[1]:.3f}  CPU x{b[2] / n[2]:.3f}")
    diff = max(abs(x - y) for x, y in zip(results["base"]["loss"], results["new"]["loss"]))
    print(f"  largest loss difference over the same {len(results['new']['loss'])} steps: {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="git commit (or branch) whose library is the baseline")
    parser.add_argument("--objectives", nargs="+", choices=("vjepa", "ar_video"), default=["vjepa", "ar_video"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="steps per turn")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the bench processes
    parser.add_argument("--total", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return serve(args.serve, args.device, args.total)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}")
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = extract(args.base, Path(tmp))
        for objective in args.objectives:
            compare(objective, base_tree, args)
    print(f"load average after:  {Path('/proc/loadavg').read_text().strip()}")


if __name__ == "__main__":
    main()
