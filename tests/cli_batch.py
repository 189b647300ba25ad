"""Run many `python -m arjepa_pl ...` invocations for the price of one import of torch and Lightning.

    python tests/cli_batch.py CASES.json RESULTS.json [--jobs N]

CASES.json: [{"id": str, "argv": [...], "cwd": str, "env": {...}}, ...]. Each case runs in a child
forked from this process after the CLI is imported: the child points its stdout / stderr at files,
runs the real `arjepa_pl.cli.main(argv)` and exits with the status main() gives (SystemExit), 1 for
an exception that escaped (its traceback printed, as Python would). RESULTS.json maps each id to
{"status", "stdout", "stderr", "seconds"}. Up to --jobs children run at once.
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # each child one thread: they run side by side

from arjepa_pl.cli import main  # noqa: E402  (imported once, before the children fork)


def run_child(case: dict, out: Path) -> None:
    """In the forked child: run main(argv) as `python -m arjepa_pl` would, then _exit with its status."""
    status = 0
    try:
        os.chdir(case.get("cwd") or os.getcwd())
        os.environ.update(case.get("env") or {})
        for fd, name in ((1, "stdout"), (2, "stderr")):
            target = os.open(out / f"{case['id']}.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
        sys.argv = ["python -m arjepa_pl", *case["argv"]]
        main()  # reads sys.argv, as `python -m arjepa_pl` does
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        status = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(status)


def run_all(cases: list[dict], out: Path, jobs: int) -> dict:
    results: dict[str, dict] = {}
    running: dict[int, tuple[dict, float]] = {}
    queue = list(cases)
    while queue or running:
        while queue and len(running) < jobs:
            case = queue.pop(0)
            pid = os.fork()
            if pid == 0:
                run_child(case, out)
            running[pid] = (case, time.monotonic())
        pid, wait_status = os.wait()
        case, started = running.pop(pid)
        results[case["id"]] = {"status": os.waitstatus_to_exitcode(wait_status),
                               "stdout": str(out / f"{case['id']}.stdout"), "stderr": str(out / f"{case['id']}.stderr"),
                               "seconds": round(time.monotonic() - started, 2)}
    return results


if __name__ == "__main__":
    cases_file, results_file = Path(sys.argv[1]), Path(sys.argv[2])
    jobs = int(sys.argv[sys.argv.index("--jobs") + 1]) if "--jobs" in sys.argv else 2
    out = results_file.parent / "outputs"
    out.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(run_all(json.loads(cases_file.read_text()), out, jobs), indent=1))
