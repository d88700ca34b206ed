"""GPU check: cached-vs-plain parity, decoding speed and training memory of the base architecture, one table.

Runs without network: random weights (XLNet's init, std 0.02) in xlnet-base-cased's
shape (12 layers, d_model 768, 12 heads, d_inner 3072, vocab 32000). Three parts:

1. parity: ``CachedDecoder`` against ``PlainDecoder`` on every call of an ASSD decode
   (4 rows with prompts of 5-50%, sorted orders, k = 5, drafts at T = 0.5 so that some
   are rejected and the cache must cut and recompute), in fp32 and bf16 weights: the
   largest |logit| and |log-prob| gaps, PASS within ``TOLERANCE`` x max(1, max |logit|);
2. decode: ``benchmarks/decode.py``'s cells at N = 512 (plain ASSD = the baseline of
   every ratio, cached sequential / ASSD, one-call ASSD when this build has it,
   cached ASSD batched at B = 16 and 64);
3. train: one bf16-autocast step of the joint objective at length 512, batch 6 and 8
   (``benchmarks/train_memory.py``'s step), peak CUDA memory, "fits in 16 GiB".

Prints the device, torch version and one markdown table; writes the same as JSON to
``--out``. Exit status 1 if a parity check fails or a cell raised (the rest still runs).

Usage:
    bash benchmarks/gpu_check.sh --out gpu_check.json                  # CUDA: a few minutes (no CUDA: --quick)
    bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/q.json # tiny sizes, well under a minute
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402  (benchmarks/decode.py)
import train_memory  # noqa: E402  (benchmarks/train_memory.py)

import asarm  # noqa: E402
from asarm import ASARM, orders  # noqa: E402
from asarm.cache import CachedDecoder  # noqa: E402
from asarm.decoders import PlainDecoder  # noqa: E402

GIB = 2**30
CARD_GIB = 16
CUDA_CONTEXT_GIB = 0.5  # CUDA context + libraries: outside the allocator's counts
RATE = 0.92  # masking rate of the training step (the paper's final range [0.85, 0.99])
TRAIN_BATCHES = (6, 8)
PROMPT_FRACTIONS = (0.05, 0.1, 0.25, 0.5)  # one parity row each
TOLERANCE = {"fp32": 1e-4, "bf16": 0.05}  # x max(1, max |logit|)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SIZES = {
    "full": dict(config="base", parity_length=128, length=512, batches=(16, 64), samples=2, budget=60.0),
    "quick": dict(config="tiny", parity_length=32, length=64, batches=(2, 4), samples=1, budget=20.0),
}
BASELINE = "plain assd"


# ---------------------------------------------------------------------------- setup
def choose_sizes(choice: str, device: torch.device, quick: bool) -> str:
    """``quick`` or ``full``. The full sizes (base model, N = 512) are for a CUDA device: without
    one, ``--device auto`` falls back to the quick sizes (saying so) and ``--device cpu`` needs
    ``--quick``."""
    if quick or device.type == "cuda":
        return "quick" if quick else "full"
    if choice == "auto":
        print("# no CUDA device: running the quick sizes on the CPU (the full check is for a CUDA "
              "device)", file=sys.stderr, flush=True)
        return "quick"
    raise SystemExit(f"--device {choice} without --quick: the full check (base model, N = 512) is "
                     "for a CUDA device and takes hours on a CPU; add --quick for the tiny sizes")


def pick_device(choice: str) -> torch.device:
    """``auto``: CUDA when available, else the CPU."""
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    return torch.device(choice)


def device_info(device: torch.device) -> dict:
    """What the check ran on: device, card (or CPU) name, torch / CUDA versions, TF32 setting."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        total = torch.cuda.get_device_properties(device).total_memory / GIB
        name = f"{name} ({total:.0f} GiB)"
    else:
        name = f"CPU {platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return dict(device=str(device), device_name=name, torch=torch.__version__, cuda=torch.version.cuda,
                tf32_matmul=torch.backends.cuda.matmul.allow_tf32, python=platform.python_version())


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 weights / autocast run on ``device`` (tried on a tiny matmul on the CPU)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    except (RuntimeError, TypeError):
        return False


def build_model(config: str, device, dtype=torch.float32) -> ASARM:
    """A random-weight model of ``decode.CONFIGS[config]``'s shape (seed 0) on ``device`` in ``dtype``."""
    return ASARM.from_config(decode.CONFIGS[config], seed=0).to(device=device, dtype=dtype)


def release(device: torch.device) -> None:
    """Free what the previous part left, so that peak-memory counts start clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def guarded(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), None)``, or ``(None, "error: ...")`` if it raised: one cell must not end the check."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001  (reported in the table, and the exit status)
        return None, f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


# ---------------------------------------------------------------------------- 1. parity
class TwinDecoder:
    """The sampler's decoder: runs plain and cached on the same call, returns plain's logits, records the gaps.

    As ``tests/test_cache.py``'s ``TwinDecoder``, plus log-probability gaps over the allowed ids.
    """

    def __init__(self, model, sigma, num_visible, candidate=CachedDecoder):
        self.model = model
        self.plain, self.cached = PlainDecoder(model, sigma, num_visible), candidate(model, sigma, num_visible)
        self.calls, self.logit_gap, self.logp_gap, self.scale = 0, 0.0, 0.0, 0.0

    def __call__(self, rows, x, n_known, queries):
        logits = self.plain(rows, x, n_known, queries)
        other = self.cached(rows, x, n_known, queries)
        real = queries.valid  # padding: no contract
        self.calls += 1
        if not real.any():
            return logits
        a, b, allowed = logits[real], other[real], ~self.model.banned
        lp_a, lp_b = (self.model.log_probs(t)[:, allowed] for t in (a, b))
        self.logit_gap = max(self.logit_gap, (a - b).abs().max().item())
        self.logp_gap = max(self.logp_gap, (lp_a - lp_b).abs().max().item())
        self.scale = max(self.scale, a.abs().max().item())
        return logits


def parity_inputs(model: ASARM, length: int, seed: int = 0):
    """``(x, sigma, m)``: one row per prompt fraction, sorted orders, masked elsewhere (on the CPU)."""
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor([max(1, round(f * length)) for f in PROMPT_FRACTIONS])
    sigma = orders.random_sorted_order(len(m), length, m, generator=g)
    x = torch.randint(10, model.vocab_size, (len(m), length), generator=g)
    return torch.where(sigma < m[:, None], x, torch.full_like(x, model.mask_token_id)), sigma, m


def parity_row(config: str, dtype_name: str, device, length: int, candidate=CachedDecoder) -> dict:
    """Cached (``candidate``, a decoder class) vs plain logits and log-probs over every call of one ASSD
    decode, in ``dtype_name`` weights."""
    model = build_model(config, device, DTYPES[dtype_name])
    x, sigma, m = (t.to(device) for t in parity_inputs(model, length))
    t = TwinDecoder(model, sigma, m, candidate)
    out = asarm.sample(model, x, sigma, m, method="assd", k=5, temperature=0.5, temperature_mode="draft",
                       generator=torch.Generator().manual_seed(0), decoder=t)
    tol = TOLERANCE[dtype_name] * max(1.0, t.scale)
    ok = t.logit_gap <= tol and t.logp_gap <= tol
    return dict(part="parity", cell=f"{dtype_name} cached vs plain", calls=t.calls, length=length,
                max_logit_diff=t.logit_gap, max_logprob_diff=t.logp_gap, max_abs_logit=t.scale, tol=tol,
                drafted=int(out.drafted.sum()), accepted=int(out.accepted.sum()), status="PASS" if ok else "FAIL")


def run_parity(sizes: dict, device) -> list[dict]:
    """The fp32 and bf16 parity rows (bf16: n/a where the device lacks it)."""
    rows = []
    for name in DTYPES:
        cell = f"{name} cached vs plain"
        if name == "bf16" and not bf16_supported(device):
            rows.append(dict(part="parity", cell=cell, status="n/a (no bf16 on this device)"))
            continue
        row, err = guarded(parity_row, sizes["config"], name, device, sizes["parity_length"])
        rows.append(row or dict(part="parity", cell=cell, status=err))
        release(device)
    return rows


# ---------------------------------------------------------------------------- 2. decode
def decode_cells(batches) -> list[tuple]:
    """``(name, backend, method, batch, sample kwargs)`` of every decode cell."""
    cells = [(BASELINE, "plain", "assd", 1, {}), ("cached sequential", "cached", "sequential", 1, {}),
             ("cached assd", "cached", "assd", 1, {})]
    cells += [(f"one-call assd ({la})", "cached", "assd", 1, {"lookahead": la}) for la in ("full", "cheap")]
    return cells + [(f"cached assd B={b}", "cached", "assd", b, {}) for b in batches]


def time_cells(model, cells, sizes) -> dict:
    """``decode.run_cell`` for every available cell (cached ones first: the plain cell's NFE comes from
    ``cached assd``), each after a short warm-up of the same cell; name -> (result, error)."""
    raw = {}
    for name, backend, method, batch, kw in sorted(cells, key=lambda c: c[1] == "plain"):
        if kw is None:
            continue
        _, err = guarded(decode.run_cell, model, backend, method, batch, min(32, sizes["length"]), batch,
                         sizes["budget"], must_finish=True, **kw)  # warm-up: kernels, allocator, this shape
        if err:
            raw[name] = None, err
            continue
        raw[name] = guarded(decode.run_cell, model, backend, method, batch, sizes["length"],
                            max(batch, sizes["samples"]), sizes["budget"],
                            must_finish=backend == "cached" and batch == 1, **kw)
    return raw


def decode_row(cell, raw, baseline_s) -> dict:
    """One table row from ``time_cells``' result for ``cell`` (ratio: baseline seconds / this cell's, per sample)."""
    name, backend, method, batch, kw = cell
    row = dict(part="decode", cell=name, backend=backend, method=method, batch=batch, **(kw or {}))
    if kw is None:
        return dict(row, status="n/a (not in this build)")
    (r, err) = raw[name]
    if err:
        return dict(row, status=err)
    ref = raw["cached assd"][0] if backend == "plain" else None
    stats, err = guarded(decode.cell_stats, r, batch, ref)
    if err:
        return dict(row, status=err)
    per_sample, nfe, note, _ = stats  # decode.py's "in network" share: meaningless with asynchronous CUDA calls
    vs = baseline_s / per_sample if baseline_s else None
    return dict(row, nfe=nfe, s_per_sample=per_sample, samples_per_s=1 / per_sample, vs_baseline=vs, note=note,
                status="ok")


def run_decode(sizes: dict, device) -> list[dict]:
    """The decode cells at ``sizes["length"]`` on a fresh fp32 model; every ratio against ``BASELINE``."""
    model = build_model(sizes["config"], device)
    cells = decode_cells(sizes["batches"])
    with torch.inference_mode():
        raw = time_cells(model, cells, sizes)
    rows = []
    base = decode_row(cells[0], raw, None)
    baseline_s = base.get("s_per_sample")
    for cell in cells:
        rows.append(dict(decode_row(cell, raw, baseline_s), length=sizes["length"]))
    return rows


# ---------------------------------------------------------------------------- 3. training memory
def train_row(model, opt, batch: int, length: int, device) -> dict:
    """Time and peak CUDA memory (allocated, reserved; reset just before) of one bf16-autocast step."""
    cuda = device.type == "cuda"
    seen = []  # dtype the network computes in (checks that autocast reached it)
    hook = model.xlnet.transformer.layer[0].ff.layer_1.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    row = dict(part="train", cell=f"bf16 step B={batch}", batch=batch, length=length, rate=RATE)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
        row["static_gib"] = torch.cuda.memory_allocated(device) / GIB
    t = time.perf_counter()
    try:
        row["targets"], row["loss"] = train_memory.train_step(model, opt, batch, length, RATE, seed=batch,
                                                              autocast_dtype=torch.bfloat16)
        if cuda:
            torch.cuda.synchronize(device)
    except torch.OutOfMemoryError:
        opt.zero_grad(set_to_none=False)
        return dict(row, status="OOM", fits_16gib=False)
    finally:
        hook.remove()
    row.update(s_per_step=time.perf_counter() - t, compute_dtype=str(seen[0]).replace("torch.", "") if seen else None)
    if not math.isfinite(row["loss"]):
        return dict(row, status=f"error: non-finite loss {row['loss']}")
    if not cuda:
        return dict(row, peak_allocated_gib=None, peak_reserved_gib=None, fits_16gib=None, status="ok")
    alloc, reserved = (f(device) / GIB for f in (torch.cuda.max_memory_allocated, torch.cuda.max_memory_reserved))
    return dict(row, peak_allocated_gib=alloc, peak_reserved_gib=reserved,
                fits_16gib=reserved + CUDA_CONTEXT_GIB <= CARD_GIB, status="ok")


def run_train(sizes: dict, device) -> list[dict]:
    """bf16 training steps at ``TRAIN_BATCHES`` (AdamW states allocated by a small first step)."""
    if not bf16_supported(device):
        return [dict(part="train", cell=f"bf16 step B={b}", status="n/a (no bf16 on this device)")
                for b in TRAIN_BATCHES]
    model = build_model(sizes["config"], device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    train_memory.train_step(model, opt, 1, 16, RATE, seed=0, autocast_dtype=torch.bfloat16)
    rows = []
    for batch in TRAIN_BATCHES:
        row, err = guarded(train_row, model, opt, batch, sizes["length"], device)
        rows.append(row or dict(part="train", cell=f"bf16 step B={batch}", status=err))
    return rows


# ---------------------------------------------------------------------------- report
def describe(row: dict) -> tuple[str, str, str]:
    """``(result, vs plain ASSD, note)`` cells of the table for one row (numbers only when it ran)."""
    if row.get("status") not in ("ok", "PASS", "FAIL"):
        return "", "", ""
    if row["part"] == "parity":
        return (f"max abs diff: logits {row['max_logit_diff']:.1e}, log-probs {row['max_logprob_diff']:.1e}; "
                f"{row['calls']} calls, N = {row['length']}", "",
                f"tol {row['tol']:.1e} (max abs logit {row['max_abs_logit']:.2f}); "
                f"{row['accepted']}/{row['drafted']} drafts accepted")
    if row["part"] == "decode":
        vs = f"{row['vs_baseline']:.1f}x" if row["vs_baseline"] else ""
        return (f"NFE {row['nfe']:.1f}, {row['s_per_sample']:.4f} s/sample, {row['samples_per_s']:.2f} samples/s",
                vs, row["note"])
    peak = ("peak n/a on CPU" if row.get("peak_allocated_gib") is None else
            f"peak {row['peak_allocated_gib']:.2f} GiB allocated, {row['peak_reserved_gib']:.2f} GiB reserved")
    static = f"; weights+grads+AdamW {row['static_gib']:.2f} GiB" if "static_gib" in row else ""
    return (f"{peak}; {row['s_per_step']:.3f} s/step", "",
            f"N = {row['length']}, {row['targets']} targets/row, loss {row['loss']:.2f}, "
            f"computes in {row['compute_dtype']}{static}")


def status_cell(row: dict) -> str:
    """The status column; training rows answer "fits in 16 GiB" (reserved + CUDA context)."""
    if row["part"] == "train" and row.get("status") in ("ok", "OOM"):
        fits = row.get("fits_16gib")
        return "fits in 16 GiB: " + ("n/a (CPU)" if fits is None else "yes" if fits else "no")
    return row["status"]


def table(rows: list[dict]) -> str:
    """The markdown table of every row."""
    lines = ["| part | cell | result | vs plain ASSD | status | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        result, vs, note = describe(row)
        lines.append(f"| {row['part']} | {row['cell']} | {result} | {vs} | {status_cell(row)} | {note} |")
    return "\n".join(lines)


def failed(rows: list[dict]) -> list[str]:
    """Cells that make the exit status 1: parity FAIL and cells that raised (n/a and OOM are answers)."""
    return [f"{r['part']}: {r['cell']}" for r in rows if r["status"] == "FAIL" or r["status"].startswith("error")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (2 layers, d 64, N = 64, B = 2/4): < 1 min on CPU")
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: 1 on --device cpu, as decode.py: "
                    "stable timings on a shared CPU; torch's default with CUDA)")
    args = ap.parse_args(argv)
    device = pick_device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    sizes = dict(SIZES[choose_sizes(args.device, device, args.quick)])
    info = device_info(device)
    cfg = decode.CONFIGS[sizes["config"]]
    print(f"# gpu_check on {info['device']}: {info['device_name']}; torch {info['torch']}, CUDA {info['cuda']}, "
          f"TF32 matmul {info['tf32_matmul']}", flush=True)
    print(f"# {sizes['config']} {cfg}, random weights (std 0.02); decode N = {sizes['length']}, k = 5, "
          f"~5% visible, sorted orders; {'quick' if args.quick else 'full'} sizes", flush=True)
    t0 = time.perf_counter()
    rows = []
    for name, part in (("parity", run_parity), ("decode", run_decode), ("train", run_train)):
        part_rows, err = guarded(part, sizes, device)
        rows += part_rows or [dict(part=name, cell="(whole part)", status=err)]
        release(device)
    bad = failed(rows)
    report = dict(info, quick=args.quick, sizes=sizes, config=cfg, seconds=time.perf_counter() - t0,
                  ok=not bad, failed=bad, rows=rows)
    print(table(rows))
    print(f"# {report['seconds']:.0f} s; " + ("all checks passed" if not bad else "FAILED: " + ", ".join(bad)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
