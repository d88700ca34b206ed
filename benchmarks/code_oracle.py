"""The infill-code oracle over whole HumanEval-infilling files: what the text pipeline loses.

For every task, the canonical middle's token ids go where the samples would
(``asarm.evaluation.infill_code``'s own path: ``build_inputs``,
``completion_text``, stitching, execution in isolated processes), and the
program runs. A lossless pipeline passes every task the canonical solution
passes; each failure is put down to its cause (``failure_cause``: a character
outside the vocabulary, the normaliser, a space that opens a segment, the
paper's separate encoding at a mid-line boundary, ...).

The tokenizer is the offline XLNet-pipeline one (``build_local_tokenizer``),
trained on the Python standard library (``--train-chars``, ``--vocab-size``),
or ``--tokenizer DIR`` (e.g. a local copy of xlnet-base-cased). The files are
read from ``$ASARM_EVAL_DATA/human-eval-infilling`` (default ``eval_datasets``). Characters of
the files it cannot encode (``<unk>``) are counted separately.

Prints one markdown table: file, encoding, tasks, masks per task, exact
round trips, pass@1 of the oracle, failures by cause. ``--encodings
paper-code`` adds the paper's released script, emulated on the same ids
(its two bugs included), for comparison.

Usage:
    python benchmarks/code_oracle.py --workers 2                       # all four files, both encodings
    python benchmarks/code_oracle.py single-line --encodings separate --limit 100
    python benchmarks/code_oracle.py --encodings paper-code --only-differing
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from pathlib import Path

from asarm.evaluation.execution import check_many
from asarm.evaluation.infill_code import (BENCHMARKS, build_inputs, completion_text, failure_cause, load_problems,
                                          middle_loss)
from asarm.evaluation.sources import default_data
from asarm.tokenizer import decode_code_whitespace, make_encoder

def paper_code_completion(problem: dict, tokenizer) -> str:
    """What the paper's released script makes of the canonical middle ids (its bugs, emulated for comparison).

    Separate encoding; the middle decoded alone with ``tokenizer.decode``, the
    whitespace specials mapped back, its first character dropped; and an empty
    completion whenever the suffix is empty (its ``[len(prefix):-len(suffix)]``
    slice is ``[n:-0]``). asarm never does this; ``--method oracle`` does not.
    """
    if not problem["suffix"]:
        return ""
    middle = make_encoder(tokenizer, True)(problem["canonical_solution"])
    return decode_code_whitespace(tokenizer.decode(middle))[1:]


def paper_code_cause(problem: dict, status: str, tokenizer) -> str:
    """Why ``paper_code_completion`` failed a task: one of its bugs, else what the separate encoding loses."""
    if not problem["suffix"]:
        return "paper's code: empty suffix, empty completion"
    if middle_loss(problem, tokenizer, True, "separate") is None:
        return ("paper's code: middle decoded alone by tokenizer.decode (a space after each special), "
                "first character dropped")
    return failure_cause(problem, status, tokenizer, True, "separate")


def oracle_completions(problems: list[dict], tokenizer, encoding: str, code: bool = True) -> tuple[list[str], float]:
    """``(completions, mean mask count)``: what infill-code's path makes of each problem's own middle ids
    (``--context full``); ``encoding="paper-code"``: ``paper_code_completion``."""
    out, masks = [], 0
    for p in problems:
        inputs = build_inputs(p, tokenizer, code, "separate" if encoding == "paper-code" else encoding, max_length=None)
        masks += inputs["num_masked"]
        out.append(paper_code_completion(p, tokenizer) if encoding == "paper-code"
                   else completion_text(inputs["middle"], inputs, tokenizer, code))
    return out, masks / len(problems)


def oov_characters(problems: list[dict], tokenizer) -> tuple[set[str], int]:
    """``(characters the tokenizer turns into <unk>, tasks whose middle holds one)``."""
    chars = {c for p in problems for c in p["prompt"] + p["canonical_solution"] + p["suffix"] if not c.isspace()}
    unk = {c for c in chars if tokenizer.unk_token_id in tokenizer(c, add_special_tokens=False)["input_ids"]}
    return unk, sum(any(c in unk for c in p["canonical_solution"]) for p in problems)


def run_file(problems: list[dict], tokenizer, encoding: str, workers: int, timeout: float,
             only_differing: bool = False) -> dict:
    """Oracle completions, execution and failure causes for one file.

    ``only_differing``: a completion equal to the canonical solution counts as
    passed without being run (sound once ``--method canonical`` passes them all).
    """
    completions, masks = oracle_completions(problems, tokenizer, encoding)
    run = [i for i, (p, c) in enumerate(zip(problems, completions))
           if not (only_differing and c == p["canonical_solution"])]
    ran = check_many([(problems[i], completions[i]) for i in run], timeout=timeout, workers=workers)
    passed = [True] * len(problems)
    status = ["passed"] * len(problems)
    for i, r in zip(run, ran):
        passed[i], status[i] = r.passed, r.status
    cause = (lambda p, st: paper_code_cause(p, st, tokenizer)) if encoding == "paper-code" else \
        (lambda p, st: failure_cause(p, st, tokenizer, True, encoding))
    causes = Counter(cause(p, st) for p, ok, st in zip(problems, passed, status) if not ok)
    return {"tasks": len(problems), "exact": sum(c == p["canonical_solution"] for p, c in zip(problems, completions)),
            "passed": sum(passed), "executed": len(run), "masks_per_task": masks, "causes": dict(causes.most_common())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", default=list(BENCHMARKS), help="benchmark names or .jsonl(.gz) paths "
                    "(default: all four)")
    ap.add_argument("--encodings", nargs="+", default=["continuation", "separate"],
                    choices=["continuation", "separate", "paper-code"],
                    help="asarm's continuation, the paper's separate encoding (both through infill-code's path), "
                         "or the paper's script emulated, bugs included (paper-code)")
    ap.add_argument("--only-differing", action="store_true",
                    help="run only completions that differ from the canonical solution (count the rest as passed)")
    ap.add_argument("--tokenizer", default=None, help="tokenizer directory (default: train the local one)")
    ap.add_argument("--vocab-size", type=int, default=1500)
    ap.add_argument("--train-chars", type=int, default=1_000_000, help="stdlib characters to train on")
    ap.add_argument("--limit", type=int, default=None, help="only the first N tasks of each file")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.tokenizer:
        from asarm.tokenizer import load_tokenizer

        tokenizer, tok_name = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        from asarm.data import stdlib_texts
        from asarm.tokenizer import build_local_tokenizer

        tokenizer = build_local_tokenizer(stdlib_texts(args.train_chars), vocab_size=args.vocab_size)
        tok_name = f"local XLNet-pipeline (stdlib {args.train_chars} chars, vocab {args.vocab_size})"
    rows, report = [], {"tokenizer": tok_name, "files": {}}
    t0 = time.perf_counter()
    for name in args.files:
        path = default_data(f"human-eval-infilling/{BENCHMARKS[name]}") if name in BENCHMARKS else name
        problems = load_problems(path)[:args.limit]
        unk, unk_tasks = oov_characters(problems, tokenizer)
        for encoding in args.encodings:
            res = run_file(problems, tokenizer, encoding, args.workers, args.timeout, args.only_differing)
            res.update(oov_chars="".join(sorted(unk)), oov_middle_tasks=unk_tasks)
            report["files"][f"{name}/{encoding}"] = res
            causes = "; ".join(f"{c}: {n}" for c, n in res["causes"].items()) or "-"
            rows.append(f"| {name} | {encoding} | {res['tasks']} | {res['masks_per_task']:.1f} | "
                        f"{100 * res['exact'] / res['tasks']:.2f} | {100 * res['passed'] / res['tasks']:.2f} | "
                        f"{len(unk)} ({unk_tasks}) | {causes} |")
            print(rows[-1], flush=True)
    print(f"\nTokenizer: {tok_name}; {platform.machine()}, {os.cpu_count()} CPUs, {time.perf_counter() - t0:.0f} s\n")
    print("| file | encoding | tasks | masks/task | exact round trip % | pass@1 oracle % | "
          "OOV chars (middles with one) | failures by cause |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
