"""Samples per second of `asarm infill-code --benchmark single-line` at --batch-size 1, 8, 32 (sampling only).

    python3 benchmarks/eval_batching.py [--model DIR|tiny] [--limit 32] [--threads 1]

The model defaults to the quickstart's (``outputs/quickstart/train/model``, from
``asarm quickstart``), else a tiny random one. Each batch size generates the
same ``--limit`` tasks (one sample each, asarm's protocol, ASSD k = 5) with
``infill_code.generate_batch``, the function ``--batch-size`` runs; the tests
are not executed (they cost the same at every batch size). Per-unit samples
do not depend on the batch size; the script checks that too.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from asarm.evaluation import infill_code
from asarm.evaluation.runner import Unit, batches, unit_seed
from asarm.evaluation.sources import default_data
from asarm.loading import load_model_and_tokenizer
from asarm.sampling import SamplingConfig

QUICKSTART_MODEL = Path("outputs/quickstart/train/model")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(QUICKSTART_MODEL) if QUICKSTART_MODEL.is_dir() else "tiny")
    p.add_argument("--data", default=default_data(f"human-eval-infilling/{infill_code.BENCHMARKS['single-line']}"))
    p.add_argument("--limit", type=int, default=32, help="tasks (default: %(default)s)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    load = argparse.Namespace(model=args.model, revision=None, tokenizer=None, device="cpu", dtype="float32",
                              asarm_revision="code", banned="specials", code_whitespace=True)
    model, tokenizer = load_model_and_tokenizer(load)
    units = [Unit(t["task_id"], t) for t in infill_code.load_problems(args.data)[:args.limit]]
    cfg = {"method": "assd", "order": "sorted", "num_samples": 1, "max_length": 512, "code_whitespace": True,
           "code_encoding": "continuation", "context": "trim", "sampling": SamplingConfig(k=5)}
    rows, reference = [], None
    for b in args.batch_sizes:
        t0, got = time.perf_counter(), []
        for batch in batches(units, b):
            got += infill_code.generate_batch(batch, [unit_seed(0, u.uid) for u in batch], model, tokenizer, cfg)
        seconds = time.perf_counter() - t0
        samples = [(s["completion"], s["nfe"]) for task in got for s in task]
        reference = reference or samples
        rows.append((b, len(samples), seconds, len(samples) / seconds, samples == reference))
    print(f"model {args.model}, {len(units)} single-line tasks, 1 sample each, ASSD k=5; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}\n")
    print("| batch size | samples | seconds | samples/s | speed-up | same samples as B=1 |")
    print("|---|---|---|---|---|---|")
    for b, n, seconds, rate, same in rows:
        print(f"| {b} | {n} | {seconds:.1f} | {rate:.2f} | {rate / rows[0][3]:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
