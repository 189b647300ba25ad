"""The benchmark scripts a lent GPU runs (bench/gpu_check.py, bench/profile_step.py) work before the GPU
time is spent: their logic here, a tiny model through every CPU-capable path in a subprocess."""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from bench import gpu_check
from bench.gpu_check import largest_batch

REPO = Path(__file__).resolve().parents[1]


def test_largest_batch_doubles_then_bisects_to_a_multiple_of_8():
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= 100

    assert largest_batch(fits, start=24, limit=512) == 96
    assert tried[:4] == [24, 48, 96, 192] and len(tried) == len(set(tried))  # each batch once
    assert all(b % 8 == 0 for b in tried)


def test_largest_batch_stops_at_the_limit_and_reports_when_nothing_fits():
    assert largest_batch(lambda b: True, start=24, limit=300) == 300
    assert largest_batch(lambda b: b < 24, start=24, limit=512) is None
    assert largest_batch(lambda b: True, start=32, limit=16) is None
    # A batch between two tries that is not a multiple of 8 is never tried; every multiple of 8 may be.
    assert largest_batch(lambda b: b <= 60, start=24, limit=512) == 56
    assert largest_batch(lambda b: b <= 59, start=24, limit=60) == 56  # the failing bound is no multiple
    assert largest_batch(lambda b: b <= 498, start=24, limit=500) == 496
    assert largest_batch(lambda b: b <= 49, start=25, limit=512) == 48


def test_the_batch_search_treats_running_out_of_memory_as_not_fitting(tmp_path, monkeypatch):
    def run(objective, name, args, batch, *a, **kw):
        if batch > 40:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"clips_per_s": 10.0 * batch, "ms_per_step": 100.0}

    monkeypatch.setattr(gpu_check, "run", run)
    args = argparse.Namespace(out=str(tmp_path / "x.jsonl"), tiny=False, batch=24, max_batch_limit=512, device="cpu")
    result = gpu_check.max_batch("vjepa", "large", True, args)
    assert result["largest_batch"] == 40 and result["clips_per_s"] == 400.0 and result["mode"] == "eager"
    tries = [json.loads(line) for line in (tmp_path / "x.jsonl").read_text().splitlines()]
    assert [(t["batch"], t["fits"]) for t in tries] == [(24, True), (48, False), (32, True), (40, True)]

    def broken(*a, **kw):  # anything but memory is an error, not "does not fit"
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "run", broken)
    try:
        gpu_check.max_batch("vjepa", "large", False, args)
        raise AssertionError("a non-memory error was taken for not fitting")
    except RuntimeError as e:
        assert "illegal memory access" in str(e)


def test_gpu_check_runs_every_cpu_path_on_a_tiny_model(tmp_path):
    """Both objectives eager and under FSDP2 (gloo, one rank), the MFU inputs, and the batch search."""
    out = tmp_path / "check.jsonl"
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--size", "64",
                           "--batch", "2", "--steps", "1", "--warmup", "1", "--only", "eager,fsdp2",
                           "--max-batch", "large", "--max-batch-limit", "4", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["name"] == "env" and not [r for r in lines if "error" in r], lines
    runs = {(r["objective"], r["name"]): r for r in lines[1:]}
    for objective in ("vjepa", "ar_video"):
        assert runs[objective, "eager"]["flops_per_step"] > 0 and runs[objective, "fsdp2"]["steps_per_s"] > 0
    assert runs["vjepa", "fsdp2"]["teacher_sharded_like_student"] is True
    searches = [r for r in lines if r["name"] == "max_batch"]
    assert len(searches) == 4 and all(r["largest_batch"] == 4 and r["tried"] == [2, 4] for r in searches)
    assert len([r for r in lines if r["name"] == "max_batch_try"]) == 8  # each try recorded as it ends
    assert any("attention" in op for op in runs["vjepa", "eager"]["flops_by_op"]), runs["vjepa", "eager"]


def test_gpu_check_refuses_an_unknown_mode_before_building_anything(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--tiny", "--device", "cpu", "--only", "eagr",
                           "--out", str(tmp_path / "x.jsonl")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown mode or preset ['eagr']" in done.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_host_overhead_times_each_mode_against_eager():
    done = subprocess.run([sys.executable, "bench/host_overhead.py", "--objectives", "ar_video", "--modes", "eager",
                           "fsdp2", "--steps", "1", "--warmup", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines() if line.strip().startswith("ar_video")]
    assert [r[1] for r in rows] == ["eager", "fsdp2"] and float(rows[0][2]) > 0 and rows[1][-1] == "ms"
