"""Calls per sample of the sampler variants (asarm's and the paper's) on the same prompts.

A trained model is needed (random weights accept nearly everything): the
quickstart's (``asarm quickstart`` -> ``outputs/quickstart/train/model``) or any
AS-ARM directory. Chunks of ``--seq-len`` tokens come from a text file
(WikiText-2 by default) or, with ``--code``, from Python sources; each prompt
keeps ``m`` positions (a sorted random order, as the speculative-decoding
protocol), and every variant samples the same prompts with the same seeds.

Prints one markdown table: variant, then mean NFE per sample and the number of
samples with ``nfe > N - m`` for each visible count.

    python benchmarks/sampler_variants.py --model outputs/quickstart/train/model
    python benchmarks/sampler_variants.py --model DIR --visible 4 32 --rows 32 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import asarm
from asarm import orders
from asarm.tokenizer import make_encoder

VARIANTS = {
    "sequential": dict(method="sequential"),
    "ngram, bigram (asarm)": dict(method="ngram", ngram_draft="bigram"),
    "ngram, paper": dict(method="ngram", ngram_draft="paper"),
    "assd, T = 1": dict(method="assd"),
    "assd, draft-only T = 0.5, verify0 (asarm)": dict(method="assd", temperature=0.5, temperature_mode="draft",
                                                      draft_only_temperature="verify0"),
    "assd, draft-only T = 0.5, paper": dict(method="assd", temperature=0.5, temperature_mode="draft",
                                            draft_only_temperature="paper"),
}


def chunks_of(path: str, tokenizer, seq_len: int, rows: int, code: bool) -> torch.Tensor:
    """``(rows, seq_len)`` ids: the file's non-blank lines (or, with ``code``, the whole file) encoded and cut."""
    text = open(path, encoding="utf-8").read()
    encode = make_encoder(tokenizer, code)
    pieces = [text] if code else [line for line in text.splitlines() if line.strip()]
    ids: list[int] = []
    for piece in pieces:
        ids += encode(piece) + [tokenizer.eos_token_id]
        if len(ids) >= rows * seq_len:
            break
    if len(ids) < rows * seq_len:
        raise ValueError(f"{path} holds {len(ids)} tokens, fewer than {rows} x {seq_len}")
    return torch.tensor(ids[: rows * seq_len]).view(rows, seq_len)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a trained AS-ARM directory (with its tokenizer)")
    ap.add_argument("--data", default=os.path.join(os.environ.get("ASARM_EVAL_DATA", "eval_datasets"),
                                                   "wikitext-2-raw", "wiki.test.raw"))
    ap.add_argument("--code", action="store_true", help="the data is Python source (whitespace mapping)")
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--visible", type=int, nargs="+", default=[4, 32])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tokenizer = asarm.load_tokenizer(args.model)
    model = asarm.ASARM.from_pretrained(args.model, tokenizer=tokenizer).eval()
    text = chunks_of(args.data, tokenizer, args.seq_len, args.rows, args.code)
    t0 = time.perf_counter()
    table = {name: [] for name in VARIANTS}
    for m in args.visible:
        sigma = orders.random_sorted_order(args.rows, args.seq_len, m, generator=torch.Generator().manual_seed(0))
        x = torch.where(sigma < m, text, torch.full_like(text, model.mask_token_id))
        num_visible = torch.full((args.rows,), m)
        for name, variant in VARIANTS.items():
            nfe = torch.cat([asarm.sample(model, x, sigma, num_visible, k=args.k,
                                          generator=torch.Generator().manual_seed(s), **variant).nfe
                             for s in range(args.seeds)])
            table[name].append((nfe.float().mean().item(), int((nfe > args.seq_len - m).sum())))
    n = args.rows * args.seeds
    print(f"Calls per sample (mean of {n} samples; in brackets: samples with nfe > N - m), N = {args.seq_len}, "
          f"k = {args.k}, model {args.model}, data {args.data}; {platform.machine()}, {os.cpu_count()} CPUs, "
          f"1 thread, {time.perf_counter() - t0:.0f} s\n")
    print("| sampler | " + " | ".join(f"{m} visible" for m in args.visible) + " |")
    print("|---|" + "---|" * len(args.visible))
    for name, cells in table.items():
        print(f"| {name} | " + " | ".join(f"{mean:.1f} ({over})" for mean, over in cells) + " |")
    paper, ours = table["ngram, paper"], table["ngram, bigram (asarm)"]
    print("\nngram paper vs bigram: " + ", ".join(f"{100 * (1 - p[0] / o[0]):.0f}% fewer calls"
                                                 for p, o in zip(paper, ours)))
    paper, ours = table["assd, draft-only T = 0.5, paper"], table["assd, draft-only T = 0.5, verify0 (asarm)"]
    print("draft-only paper vs verify0: " + ", ".join(f"{100 * (1 - p[0] / o[0]):.0f}% fewer calls"
                                                      for p, o in zip(paper, ours)))


if __name__ == "__main__":
    main()
