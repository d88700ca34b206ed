"""Decoding speed: plain vs cached backend, sequential vs ASSD, one row vs batched.

Prints one table; every ratio in it comes from the same run. Random-weight
models (XLNet's init, std 0.02; the speed of a call does not depend on the
weights, the number of calls does: see the NFE column), sorted orders over a
random ~5% visible subset, as in the paper's WikiText experiment.

Cells too slow for the budget are run for part of the decode and
extrapolated (marked ``~``):

* plain backend: every call costs the same (it recomputes all N positions), so
  seconds/sample = measured seconds per call x the NFE of the cached run with
  the same inputs and seed (same samples, hence same NFE, by contract);
* batched cached: the first call (prompt pass) + the seconds of the later calls
  x (tokens to decode / tokens decoded so far). Early calls attend to a shorter
  cache, so this slightly underestimates.

Columns: NFE and seconds per sample (a batch of B counts B samples), samples/s,
speed-up over plain ASSD (per sample, i.e. also in samples/s), and the share of
the time spent inside the decoder (the rest is the sampler: softmax over the
vocabulary, inverse-CDF draws, bookkeeping).

Usage:
    python benchmarks/decode.py --quick          # tiny + small, N = 128, a minute or two
    python benchmarks/decode.py                  # tiny, small, base at N = 128 and 512
    python benchmarks/decode.py --configs base --lengths 512 --budget 60
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import asarm
from asarm import ASARM, orders
from asarm.decoders import make_decoder

CONFIGS = {
    "tiny": dict(n_layer=2, d_model=64, n_head=2, d_inner=256, vocab_size=1000),
    "small": dict(n_layer=6, d_model=256, n_head=4, d_inner=1024, vocab_size=32000),
    "base": dict(n_layer=12, d_model=768, n_head=12, d_inner=3072, vocab_size=32000),
}
CELLS = [  # (backend, method, batch)
    ("plain", "sequential", 1),
    ("plain", "assd", 1),
    ("cached", "sequential", 1),
    ("cached", "assd", 1),
    ("cached", "assd", 16),
    ("cached", "assd", 64),
]


class OutOfBudget(Exception):
    pass


class Meter:
    """Wraps a decoder: counts calls, times them, tracks progress, stops the run when over budget."""

    def __init__(self, decoder, num_visible, budget_s):
        self.decoder, self.budget_s = decoder, budget_s
        self.known = num_visible.clone()  # latest n_known seen per row
        self.calls, self.net_s, self.t0 = 0, 0.0, time.perf_counter()
        self.setup_s = None  # time from the start to the end of the first call (prompt pass)

    def __getattr__(self, name):
        """Anything else a sampler asks of its decoder goes to the wrapped one (not counted or timed)."""
        if name == "decoder":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.decoder, name)

    def __call__(self, rows, x, n_known, queries):
        if time.perf_counter() - self.t0 > self.budget_s:
            raise OutOfBudget
        t = time.perf_counter()
        out = self.decoder(rows, x, n_known, queries)
        self.net_s += time.perf_counter() - t
        self.calls += 1
        self.known[rows] = n_known
        if self.setup_s is None:
            self.setup_s = time.perf_counter() - self.t0
        return out


def make_inputs(batch, length, vocab, mask_id, seed):
    g = torch.Generator().manual_seed(seed)
    m = max(1, round(0.05 * length))
    sigma = orders.random_sorted_order(batch, length, m, generator=g)
    x = torch.randint(10, vocab, (batch, length), generator=g)
    x = torch.where(sigma < m, x, torch.full_like(x, mask_id))
    return x, sigma, torch.full((batch,), m)


def run_cell(model, backend, method, batch, length, samples, budget_s, must_finish=False, seed=0, **sample_kwargs):
    """Decode up to ``samples`` rows, ``batch`` rows per ``asarm.sample`` call, within ``budget_s``.

    Whole calls of ``asarm.sample`` are timed. A call that runs past the budget
    is stopped at its next network call (unless ``must_finish``); it then counts
    as ``partial`` with ``done`` the fraction of its tokens decoded.
    Returns totals over the finished calls (``seconds``, ``net_s`` in the network,
    ``nfe``, ``samples``) and the ``partial`` one (or None). ``sample_kwargs`` go to
    ``asarm.sample``; the model may be on any device (inputs and generators stay on the CPU).
    """
    res = dict(seconds=0.0, net_s=0.0, nfe=0, samples=0, partial=None)
    for r in range(max(1, samples // batch)):
        x, sigma, m = make_inputs(batch, length, model.vocab_size, model.mask_token_id, seed + r)
        left = float("inf") if must_finish else budget_s - res["seconds"]
        x, sigma, m = (t.to(model.device) for t in (x, sigma, m))
        t = time.perf_counter()  # the decoder is built inside the timed region, as sample() would
        meter = Meter(make_decoder(backend, model, sigma, m), m, left)
        try:
            out = asarm.sample(model, x, sigma, m, **({"method": method, "k": 5} | sample_kwargs),
                               generator=torch.Generator().manual_seed(seed + r), decoder=meter)
        except OutOfBudget:
            res["partial"] = dict(seconds=time.perf_counter() - t, setup_s=meter.setup_s, calls=meter.calls,
                                  net_s=meter.net_s, done=float((meter.known.cpu() - m.cpu()).sum() / (length - m.cpu()).sum()))
            break
        res["seconds"] += time.perf_counter() - t
        res["net_s"] += meter.net_s
        res["nfe"] += int(out.nfe.sum())
        res["samples"] += batch
        if res["seconds"] > budget_s:
            break
    return res


def cell_stats(r, batch, ref=None):
    """``(seconds/sample, NFE/sample, note, share in network)`` of a ``run_cell`` result.

    A cell that did not finish is extrapolated: with ``ref`` (the finished cached run of
    the same method, inputs and seed: a plain cell) as seconds per call x ``ref``'s NFE;
    without, as first call + the later calls x (tokens to decode / tokens decoded).
    """
    p = r["partial"]
    if r["samples"]:
        return r["seconds"] / r["samples"], r["nfe"] / r["samples"], "", r["net_s"] / r["seconds"]
    if ref is not None:  # every plain call costs the same
        nfe = ref["nfe"] / ref["samples"]
        note = f"~ extrapolated from {p['calls']} calls"
        return p["seconds"] / p["calls"] * nfe, nfe, note, p["net_s"] / p["seconds"]
    per_sample = (p["setup_s"] + (p["seconds"] - p["setup_s"]) / p["done"]) / batch
    note = f"~ extrapolated from {p['done']:.0%} of the tokens, {p['calls']} calls"
    return per_sample, p["calls"] / p["done"], note, p["net_s"] / p["seconds"]  # rounds: an upper bound on NFE


def bench(config_name, length, args):
    model = ASARM.from_config(CONFIGS[config_name], seed=0)
    run_cell(model, "cached", "assd", 1, min(length, 32), 1, 30)  # warm-up
    res = {}
    # cached single-row cells first and always to the end: their NFE is the plain cells' NFE (same samples)
    for backend, method, batch in sorted(CELLS, key=lambda c: c[0] == "plain"):
        if batch == 1 or batch in args.batches:
            res[backend, method, batch] = run_cell(model, backend, method, batch, length, max(batch, args.samples),
                                                   args.budget, must_finish=backend == "cached" and batch == 1)
    table = {(backend, method, batch): cell_stats(r, batch, res["cached", method, 1] if backend == "plain" else None)
             for (backend, method, batch), r in res.items()}
    plain_assd = table["plain", "assd", 1][0]
    for cell in sorted(table, key=CELLS.index):
        (backend, method, batch), (per_sample, nfe, note, share) = cell, table[cell]
        name = f"{backend} {method}" + (f" B={batch}" if batch > 1 else "")
        print(f"| {config_name} | {length} | {name} | {nfe:.1f} | {per_sample:.3f} | {1 / per_sample:.2f} | "
              f"{plain_assd / per_sample:.1f}x | {share:.0%} | {note} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--lengths", nargs="+", type=int, default=[128, 512])
    ap.add_argument("--batches", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--samples", type=int, default=2, help="single-row samples per cell")
    ap.add_argument("--budget", type=float, default=120.0, help="seconds per cell before extrapolating")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny and small, N = 128, 20 s per cell")
    args = ap.parse_args()
    if args.quick:
        args.configs, args.lengths, args.budget, args.samples = ["tiny", "small"], [128], 20.0, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; random weights, ~5% visible, sorted orders, k=5, T=1")
    print("| config | N | method | NFE/sample | s/sample | samples/s | vs plain ASSD | in network | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        for length in args.lengths:
            with torch.inference_mode():
                bench(name, length, args)


if __name__ == "__main__":
    main()
