"""Calls and wall-clock per sample of two-call ASSD (the paper's), one-call rounds and adaptive k, on a trained model.

A trained model is needed (random weights accept nearly everything and say
nothing): the quickstart's (``asarm quickstart`` -> ``outputs/quickstart/train/model``)
or any AS-ARM directory. Every sampler completes the same prompts (chunks of
``--seq-len`` tokens from WikiText-2 keeping ``--visible`` positions, sorted
random orders) one sample at a time (batch 1, as the paper times them), with the
same seeds, for each ``k``.

Prints one markdown table per order kind: sampler, k, calls per sample, tokens
per call, per-draft acceptance (kept / drafted, draft 0 of a self draft
included), seconds per sample, and calls relative to paper ASSD at the same k.

    python benchmarks/one_call.py --model outputs/quickstart/train/model
    python benchmarks/one_call.py --model DIR --ks 2 4 8 --rows 8 --orders sorted random

``--random-config small|base`` instead times the cost of the extra queries: a
RANDOM-weight model of ``benchmarks/decode.py``'s config (it accepts nearly
every draft, so the samplers make about the same calls and differ in the work
per call) on random prompts, sorted orders, ``--visible`` of ``--seq-len``:

    python benchmarks/one_call.py --random-config base --seq-len 128 --visible 6 --ks 5 8 --rows 2 --seeds 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sampler_variants import chunks_of  # noqa: E402

import asarm  # noqa: E402
from asarm import orders  # noqa: E402

SAMPLERS = {
    "assd (paper: draft call + oracle call)": dict(method="assd"),
    "assd + bonus": dict(method="assd", bonus=True),
    "assd + bonus, adaptive k": dict(method="assd", bonus=True, adaptive_k=True),
    "one-call, full": dict(method="assd", lookahead="full"),
    "one-call, full, adaptive k": dict(method="assd", lookahead="full", adaptive_k=True),
    "one-call, cheap": dict(method="assd", lookahead="cheap"),
    "one-call, cheap, adaptive k": dict(method="assd", lookahead="cheap", adaptive_k=True),
}
BASELINE = "assd (paper: draft call + oracle call)"


def prompts(text: torch.Tensor, visible: int, kind: str, mask_id: int, seed: int = 0):
    """``(x, sigma, m)`` for every chunk: ``visible`` random positions kept, the rest masked."""
    rows, n = text.shape
    g = torch.Generator().manual_seed(seed)
    if kind == "sorted":
        sigma = orders.random_sorted_order(rows, n, visible, generator=g)
    else:
        sigma = orders.random_order(rows, n, generator=g)
    x = torch.where(sigma < visible, text, torch.full_like(text, mask_id))
    return x, sigma, torch.full((rows,), visible)


def measure(model, batch, options: dict, seeds: int) -> dict:
    """Totals over every row and seed, one row per ``sample`` call: calls, tokens, drafts, seconds."""
    x, sigma, m = batch
    tot = dict(calls=0, tokens=0, drafted=0, accepted=0, seconds=0.0, samples=0)
    for seed in range(seeds):
        for r in range(len(x)):
            t0 = time.perf_counter()
            out = asarm.sample(model, x[r:r + 1], sigma[r:r + 1], m[r:r + 1],
                               generator=torch.Generator().manual_seed(seed), **options)
            tot["seconds"] += time.perf_counter() - t0
            tot["calls"] += int(out.nfe.sum())
            tot["tokens"] += int(x.shape[1] - m[r])
            tot["drafted"] += int(out.drafted.sum())
            tot["accepted"] += int(out.accepted.sum())
            tot["samples"] += 1
    return tot


def table(model, batch, ks, seeds: int) -> list[str]:
    """Markdown lines: sequential once, then every sampler at every k."""
    seq = measure(model, batch, dict(method="sequential"), seeds)
    lines = ["| sampler | k | calls / sample | tokens / call | acceptance | s / sample | calls vs paper ASSD |",
             "|---|---|---|---|---|---|---|",
             row_line("sequential", "-", seq, None)]
    for k in ks:
        base = None
        for name, options in SAMPLERS.items():
            res = measure(model, batch, dict(options, k=k), seeds)
            base = res if name == BASELINE else base
            lines.append(row_line(name, k, res, base))
    return lines


def row_line(name, k, res, base) -> str:
    n = res["samples"]
    acc = f"{res['accepted'] / res['drafted']:.2f}" if res["drafted"] else "-"
    vs = f"{100 * (res['calls'] / base['calls'] - 1):+.0f}%" if base else "-"
    return (f"| {name} | {k} | {res['calls'] / n:.1f} | {res['tokens'] / res['calls']:.2f} | {acc} | "
            f"{res['seconds'] / n:.3f} | {vs} |")


def load(args):
    """``(model, text (rows, seq_len))``: the trained model and WikiText chunks, or a random-weight model of
    ``decode.CONFIGS[--random-config]`` and random ids."""
    if args.random_config:
        from decode import CONFIGS

        model = asarm.ASARM.from_config(CONFIGS[args.random_config], seed=0).eval()
        g = torch.Generator().manual_seed(0)
        return model, torch.randint(10, model.vocab_size, (args.rows, args.seq_len), generator=g)
    tokenizer = asarm.load_tokenizer(args.model)
    model = asarm.ASARM.from_pretrained(args.model, tokenizer=tokenizer).eval()
    return model, chunks_of(args.data, tokenizer, args.seq_len, args.rows, code=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a trained AS-ARM directory (with its tokenizer)")
    ap.add_argument("--random-config", choices=["tiny", "small", "base"],
                    help="a random-weight model of this decode.py config instead of --model (cost per call)")
    ap.add_argument("--data", default=os.path.join(os.environ.get("ASARM_EVAL_DATA", "eval_datasets"),
                                                   "wikitext-2-raw", "wiki.test.raw"))
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--visible", type=int, default=4)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 3, 4, 5, 6, 8])
    ap.add_argument("--orders", nargs="+", default=["sorted", "random"], choices=["sorted", "random"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if not (args.model or args.random_config):
        ap.error("give --model DIR (a trained model) or --random-config NAME")
    torch.set_num_threads(args.threads)
    model, text = load(args)
    for kind in args.orders:
        t0 = time.perf_counter()
        lines = table(model, prompts(text, args.visible, kind, model.mask_token_id), args.ks, args.seeds)
        print(f"\n{kind} orders: N = {args.seq_len}, {args.visible} visible, {args.rows} chunks x {args.seeds} seeds, "
              f"batch 1, cached backend; model {args.model or args.random_config + ' (random weights)'}; {platform.machine()}, {os.cpu_count()} CPUs, "
              f"{args.threads} thread(s), {time.perf_counter() - t0:.0f} s\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
