"""What a comparison costs, measured, for `python -m arjepa_pl compare --dry_run` to estimate from.

Runs the comparison of CONFIG on a short budget — one seed, --steps pretraining steps (validated once,
at the end), every probe stage as configured — then reads its timings.jsonl and run summaries
(arjepa_pl.evaluation.compare_costs.measure): seconds per pretraining step of each objective, seconds
per probe / predict job of each stage, start-up per run, wall and CPU, with the load average seen.
Writes them to --costs (default bench/results/compare_costs.json), or only measures an existing
comparison directory with --measure_only.

    python bench/compare_costs.py [--config configs/compare.yaml] [--steps 40] [--out runs/compare_costs]
    python bench/compare_costs.py --measure_only runs/compare       # from a full comparison instead

On a shared machine the wall time depends on the load; the CPU seconds much less. Set
OMP_NUM_THREADS=1 to keep OpenMP from spinning on oversubscribed cores (the CPU seconds are then a
one-core measurement); the estimate prints both.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from arjepa_pl.evaluation.compare import main as compare_main
from arjepa_pl.evaluation.compare_costs import DEFAULT_COSTS, measure


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/compare.yaml")
    parser.add_argument("--steps", type=int, default=40, help="pretraining steps of the short comparison")
    parser.add_argument("--out", default="runs/compare_costs", help="where the short comparison runs")
    parser.add_argument("--costs", default=str(DEFAULT_COSTS), help="where the measured costs are written")
    parser.add_argument("--measure_only", metavar="OUT_DIR", help="measure this finished comparison, run nothing")
    args, overrides = parser.parse_known_args(argv)
    out = args.measure_only
    if out is None:
        out = args.out
        compare_main(["--config", args.config, "--seeds=[0]", f"--steps={args.steps}", f"--out_dir={out}",
                      "--wandb_project=null", f"--pretrain_args+=--trainer.val_check_interval={args.steps}",
                      *overrides])
    costs = {**measure(out), "config": args.config, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    Path(args.costs).parent.mkdir(parents=True, exist_ok=True)
    Path(args.costs).write_text(json.dumps(costs, indent=2) + "\n")
    json.dump(costs, sys.stdout, indent=2)
    print(f"\nwritten to {args.costs}")


if __name__ == "__main__":
    main()
