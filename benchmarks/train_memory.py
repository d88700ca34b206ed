"""Training memory per sequence: the basis of docs/training.md's "What fits in 16 GB" estimate.

For the base architecture (xlnet-base-cased's shape, random weights) one
training step of the joint objective (`asarm.objective.make_batch`, masking
rate in the paper's final range) runs on the CPU for batch sizes 1 and 2, each
in a fresh process; the difference of the peak resident memory is the
activation memory of one sequence. Weights, gradients and AdamW states take
16 bytes per parameter in fp32. The GPU figure is extrapolated from these CPU
numbers (CUDA adds its context and allocator slack): an estimate, not a GPU
measurement. fp32 only: CPU autocast keeps fp32 copies of what it casts, so it
says nothing about CUDA mixed precision (which stores most activations in
half precision and should need less).

Usage:
    python benchmarks/train_memory.py                 # base, length 512, rate 0.92 (~2 minutes)
    python benchmarks/train_memory.py --length 128 --config tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

CONFIGS = {
    "tiny": dict(vocab_size=1000, d_model=64, n_layer=2, n_head=4, d_inner=256),
    "base": dict(vocab_size=32000, d_model=768, n_layer=12, n_head=12, d_inner=3072),
}


def train_step(model, opt, batch: int, length: int, rate: float, seed: int, autocast_dtype=None) -> tuple[int, float]:
    """One forward/backward/AdamW step of the joint objective on random tokens, on the model's device.

    ``autocast_dtype`` (e.g. ``torch.bfloat16``): run forward and loss under autocast, as
    mixed-precision training does (weights, gradients and AdamW states stay fp32).
    Returns ``(targets per row, loss)``.
    """
    import contextlib

    import torch

    from asarm.objective import make_batch, target_loss

    dev = model.device
    x = torch.randint(10, model.vocab_size, (batch, length), generator=torch.Generator().manual_seed(seed))
    b = make_batch(x, rate, model.mask_token_id, generator=torch.Generator().manual_seed(seed))
    amp = (torch.autocast(dev.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with amp:
        loss = target_loss(model(b.input_ids.to(dev), b.perm_mask.to(dev), b.target_mapping.to(dev)),
                           b.labels.to(dev))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=False)
    return int(b.labels.shape[1]), float(loss.detach())


def one_step(config: str, length: int, batch: int, rate: float) -> dict:
    """Peak RSS (bytes) before and after one forward/backward/AdamW step, in this process."""
    import torch

    from asarm import ASARM

    torch.manual_seed(0)
    model = ASARM.from_config(**CONFIGS[config], seed=0)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    params = sum(p.numel() for p in model.parameters())
    # AdamW allocates its states lazily: take one step first so they count as "static"
    train_step(model, opt, 1, 16, rate, seed=0)
    static = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    targets, _ = train_step(model, opt, batch, length, rate, seed=1)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"params": params, "static": static, "peak": peak, "targets": targets}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="base", choices=sorted(CONFIGS))
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--rate", type=float, default=0.92, help="masking rate (paper's final range [0.85, 0.99])")
    p.add_argument("--child", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_step(args.config, args.length, args.child, args.rate)))
        return
    gib = 2**30
    runs = []
    for batch in (1, 2):
        cmd = [sys.executable, __file__, "--config", args.config, "--length", str(args.length),
               "--rate", str(args.rate), "--child", str(batch)]
        runs.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    per_seq = (runs[1]["peak"] - runs[1]["static"]) - (runs[0]["peak"] - runs[0]["static"])
    states = 16 * runs[0]["params"]
    print(f"config {args.config} ({runs[0]['params'] / 1e6:.1f}M parameters), length {args.length}, masking rate "
          f"{args.rate} ({runs[0]['targets']} targets), fp32, CPU peak RSS per fresh process\n")
    print(f"activations per sequence: {per_seq / gib:.2f} GiB; weights + grads + AdamW: {states / gib:.2f} GiB\n")
    print("| batch | estimated total |")
    print("|---|---|")
    for batch in (4, 6, 8):
        print(f"| {batch} | {(batch * per_seq + states) / gib:.1f} GiB |")


if __name__ == "__main__":
    main()
