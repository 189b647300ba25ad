"""How a comparison's jobs are run: each a `python -m arjepa_pl` subprocess, or in the harness's own
process(es); one at a time or on several workers; and what each cost.

Start-up is most of a short run's cost on a laptop (an interpreter, torch, Lightning: seconds before
the first step), so `in_process` runs the jobs inside long-lived Python processes instead: the harness
itself with one worker, or `workers` spawned processes that each import everything once. On a 2-core
machine two single-threaded workers keep both cores busy without OpenMP's synchronisation between
threads. A job's stage jobs (probes of its checkpoints) are queued when its pretraining finishes.

Every job's output goes to <job dir>/<kind>.log, its command line to commands.txt, and its wall and
CPU seconds with the load average to timings.jsonl (what arjepa_pl.evaluation.compare_costs reads).
The planning benchmark (arjepa_pl.planning.benchmark) runs its trainings and planning evaluations on
the same JobRunner (subprocesses), a model's planning queued when its training finishes.
"""

import concurrent.futures as futures
import contextlib
import gc
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from arjepa_pl.evaluation.compare_plan import Job, command_line


@contextlib.contextmanager
def output_to(log):
    """Everything written to stdout and stderr, by Python or C code, goes to the open file `log`."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (subprocesses, data loader workers)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def set_threads(threads: Optional[int]) -> None:
    """Intra-op threads of torch in this process (None: torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_job(command: list[str], log_path: str, in_process: bool, threads: Optional[int] = None) -> dict:
    """Run one command with its output appended to `log_path`; {"exit", "wall_seconds", "cpu_seconds"}.
    In this process (`in_process`) the command is `python -m arjepa_pl ARGS` without the interpreter."""
    start, cpu = time.perf_counter(), cpu_seconds()
    with open(log_path, "a") as log:
        if in_process:
            from arjepa_pl.cli import main as cli_main

            set_threads(threads)
            with output_to(log):
                try:
                    cli_main(command[command.index("arjepa_pl") + 1:])
                    code = 0
                except SystemExit as exit_:  # the CLI's argument errors
                    code = exit_.code if isinstance(exit_.code, int) else 1
                except Exception:  # noqa: BLE001  (the log's tail is shown by the caller)
                    traceback.print_exc()
                    code = 1
                finally:
                    import wandb

                    if wandb.run is not None:  # a run that failed before its logger finished it
                        wandb.finish(exit_code=1)
                    gc.collect()
        else:
            env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
            code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    return {"exit": code, "wall_seconds": time.perf_counter() - start, "cpu_seconds": cpu_seconds() - cpu}


def record_command(record: Path, line: str, directory: Path) -> None:
    """Creates the job's directory and appends its command line to the comparison's `record`."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(record, "a") as f:
        f.write(line + "\n")


def failure(code: int, line: str, log: Path) -> RuntimeError:
    """The error of a command that failed: its exit code, the command and the end of its log."""
    tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
    return RuntimeError(f"command failed (exit {code}): {line}\n--- end of {log} ---\n{tail}")


class JobRunner:
    """Runs jobs and the jobs they unlock, one at a time or on `workers` processes.

    Args:
        out: the comparison's directory (commands.txt, timings.jsonl).
        executor: "subprocess" or "in_process" (see the module docstring).
        workers: jobs at a time.
        threads: torch threads of every job (None: torch's default; 1 with several workers on few cores).
        tag: what its messages start with (the harness's name).
    """

    def __init__(self, out: Path, executor: str, workers: int = 1, threads: Optional[int] = None,
                 tag: str = "compare"):
        self.out, self.in_process, self.workers, self.threads = out, executor == "in_process", workers, threads
        self.tag = tag
        self.pool: Optional[futures.Executor] = None
        if workers > 1:
            # Spawned, not forked: a fork of a process that has run torch's thread pools can hang.
            self.pool = (futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
                         if self.in_process else futures.ThreadPoolExecutor(workers))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _start(self, job: Job, command: list[str]):
        line = command_line(command)
        print(f"[{self.tag}] {job.kind} {job.name}\n$ {line}", flush=True)
        record_command(self.out / "commands.txt", line, job.directory)
        log = str(job.directory / f"{job.kind}.log")
        load = os.getloadavg()
        if self.pool is None:
            result = run_job(command, log, self.in_process, self.threads)
            done: futures.Future = futures.Future()
            done.set_result(result)
        else:
            done = self.pool.submit(run_job, command, log, self.in_process, self.threads)
        return done, load, line

    def _record(self, job: Job, result: dict, load, line: str) -> None:
        timing = {"job": job.name, "kind": job.kind, "stage": job.stage.name if job.stage else None,
                  "objective": job.run.objective, "step": job.step, "in_process": self.in_process,
                  "workers": self.workers, "threads": self.threads, **result, "loadavg_start": load,
                  "loadavg_end": os.getloadavg()}
        with open(self.out / "timings.jsonl", "a") as f:
            f.write(json.dumps(timing) + "\n")
        if result["exit"]:
            raise failure(result["exit"], line, job.directory / f"{job.kind}.log")

    def run(self, jobs: list[Job], command: Callable[[Job], list[str]],
            finished: Callable[[Job], list[Job]]) -> None:
        """Run `jobs` in order (at most `workers` at a time); when one finishes, `finished(job)` checks
        it and returns the jobs it unlocks, which are queued after the others."""
        queue: list[Job] = list(jobs)
        running: dict[futures.Future, tuple] = {}
        try:
            while queue or running:
                while queue and len(running) < self.workers:
                    job = queue.pop(0)
                    done, load, line = self._start(job, command(job))
                    running[done] = (job, load, line)
                ready, _ = futures.wait(list(running), return_when=futures.FIRST_COMPLETED)
                for done in ready:
                    job, load, line = running.pop(done)
                    self._record(job, done.result(), load, line)
                    queue += finished(job)
        finally:
            for done in running:
                done.cancel()
