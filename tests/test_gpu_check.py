"""benchmarks/gpu_check.sh: runs end to end (CPU, --quick), reports every cell, and its checks can fail.

The real target is a CUDA machine; here the script runs on the CPU at tiny sizes in a
subprocess, and the parts that decide n/a / error / FAIL are exercised in-process.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import asarm
from asarm.cache import CachedDecoder

ROOT = Path(__file__).resolve().parents[1]


def load_gpu_check():
    """benchmarks/gpu_check.py as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    return proc, json.loads(out.read_text()) if out.exists() else None


def rows_of(report, part):
    return {r["cell"]: r for r in report["rows"] if r["part"] == part}


@pytest.mark.slow
def test_quick_run_exits_zero_and_names_the_device(quick_run):
    proc, report = quick_run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["ok"] and report["failed"] == []
    assert report["device"] == "cpu" and report["torch"] == torch.__version__
    assert report["device_name"] in proc.stdout and f"torch {torch.__version__}" in proc.stdout
    assert proc.stdout.count("| part | cell |") == 1  # one table


@pytest.mark.slow
def test_parity_passes_in_fp32(quick_run):
    parity = rows_of(quick_run[1], "parity")
    fp32 = parity["fp32 cached vs plain"]
    assert fp32["status"] == "PASS" and fp32["max_logit_diff"] <= fp32["tol"] and fp32["calls"] > 2
    assert fp32["accepted"] < fp32["drafted"]  # some drafts rejected: the cache had to cut and recompute
    assert parity["bf16 cached vs plain"]["status"] in ("PASS", "n/a (no bf16 on this device)")


@pytest.mark.slow
def test_decode_cells_are_measured_against_one_baseline(quick_run):
    decode = rows_of(quick_run[1], "decode")
    ran = ["plain assd", "cached sequential", "cached assd", "cached assd B=2", "cached assd B=4"]
    for cell in ran:
        row = decode[cell]
        assert row["status"] == "ok" and row["nfe"] > 0 and row["s_per_sample"] > 0 and row["vs_baseline"] > 0
        assert row["samples_per_s"] == pytest.approx(1 / row["s_per_sample"])
    assert decode["plain assd"]["vs_baseline"] == 1.0
    assert decode["cached assd"]["nfe"] <= decode["cached sequential"]["nfe"]
    assert decode["plain assd"]["nfe"] == decode["cached assd"]["nfe"]  # same samples, same calls
    for la in ("full", "cheap"):  # one-call rounds: fewer calls than two-call ASSD on the same inputs
        row = decode[f"one-call assd ({la})"]
        assert row["status"] == "ok" and 0 < row["nfe"] <= decode["cached assd"]["nfe"]


@pytest.mark.slow
def test_training_rows_are_present(quick_run):
    train = rows_of(quick_run[1], "train")
    assert set(train) == {"bf16 step B=6", "bf16 step B=8"}
    for row in train.values():
        assert row["status"] in ("ok", "n/a (no bf16 on this device)")
        if row["status"] == "ok":
            assert row["compute_dtype"] == "bfloat16"  # the caller's autocast reached the network
            assert row["fits_16gib"] is None and row["peak_allocated_gib"] is None  # CPU: no CUDA counters
    assert "fits in 16 GiB" in quick_run[0].stdout


def test_a_cell_that_raises_is_an_error_row_and_fails_the_check(monkeypatch):
    """A cell that raises is an error row (the other cells still run) and fails the check."""
    gc = load_gpu_check()
    real = asarm.sample

    def sample(*args, lookahead="off", **kwargs):
        if lookahead == "cheap":
            raise RuntimeError("cheap lookahead broke")
        return real(*args, lookahead=lookahead, **kwargs)

    monkeypatch.setattr(asarm, "sample", sample)
    sizes = dict(gc.SIZES["quick"], length=24, batches=(2,), budget=10.0)
    rows = {r["cell"]: r for r in gc.run_decode(sizes, torch.device("cpu"))}
    assert rows["one-call assd (full)"]["status"] == "ok" and rows["one-call assd (full)"]["lookahead"] == "full"
    assert rows["one-call assd (cheap)"]["status"].startswith("error: RuntimeError: cheap lookahead broke")
    assert rows["cached assd B=2"]["status"] == "ok"
    assert gc.failed(list(rows.values())) == ["decode: one-call assd (cheap)"]


def test_a_wrong_cache_fails_parity():
    gc = load_gpu_check()

    class Off(CachedDecoder):
        def __call__(self, *args, **kwargs):
            return super().__call__(*args, **kwargs) + 1e-2

    row = gc.parity_row("tiny", "fp32", torch.device("cpu"), 16, candidate=Off)  # injected, as any decoder
    assert row["status"] == "FAIL" and row["max_logit_diff"] == pytest.approx(1e-2, rel=1e-3)
    assert "FAIL" in gc.table([row]) and gc.failed([row]) == ["parity: fp32 cached vs plain"]


@pytest.mark.slow
def test_cuda_requested_without_cuda_stops_with_a_message():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cuda",
                           "--out", os.devnull], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode != 0 and "no CUDA device" in proc.stderr


def test_without_cuda_the_full_sizes_are_refused_or_replaced_by_quick(capsys):
    check = load_gpu_check()
    cpu = torch.device("cpu")
    assert check.choose_sizes("auto", cpu, quick=False) == "quick"  # said on stderr
    assert "no CUDA device" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="add --quick"):
        check.choose_sizes("cpu", cpu, quick=False)
    assert check.choose_sizes("cpu", cpu, quick=True) == "quick"
    assert check.choose_sizes("cuda", torch.device("cuda"), quick=False) == "full"
