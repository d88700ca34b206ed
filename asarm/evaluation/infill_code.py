"""Code infilling on HumanEval-infilling (spec section 6, third bullet).

Each task's masked middle gets exactly as many mask tokens as its canonical
solution has (after the code whitespace mapping of ``asarm.data``:
newline -> ``<cls>``, tab -> ``<sep>``, two spaces -> ``<unk>``, three ->
``<pad>``); the AS-ARM fills them (any method, ``--num-samples`` rows per task,
one batch), the completion is decoded and mapped back to whitespace, and
``prompt + completion + suffix + test + check(entry_point)`` runs in an
isolated process (``execution``). ``--method canonical`` runs the canonical
solutions instead of a model: a self-check of the harness.

pass@k uses the unbiased estimator over ``n = --num-samples`` samples per task.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .execution import check_many, official_harness_usable
from .metrics import mean_se, pass_at_k
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_jsonl, require_fields

BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
FIELDS = ["task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test"]


def load_problems(source: str, tasks: list[str] | None = None) -> list[dict]:
    """Problems of a HumanEval-infilling file (or ``hf:...``), optionally only task ids containing one of ``tasks``."""
    rows = load_rows(source, "test", read_jsonl)
    require_fields(rows, FIELDS, source)
    if tasks:
        rows = [r for r in rows if any(t in r["task_id"] for t in tasks)]
        if not rows:
            raise ValueError(f"no tasks selected: no task id in '{source}' contains {', '.join(tasks)}")
    return rows


def fit_context(prefix: list[int], middle_len: int, suffix: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Trim the prefix (from the left) and suffix (from the right) so that the whole input fits ``max_length``.

    Raises ``ValueError`` when the middle alone leaves no room for one visible token.
    """
    budget = max_length - middle_len
    if budget < 1:
        raise ValueError(f"the infill needs {middle_len} tokens but the model allows {max_length} in all "
                         "(--max-length); it cannot be generated with context")
    keep_suffix = min(len(suffix), max(budget // 2, budget - len(prefix)))
    keep_prefix = min(len(prefix), budget - keep_suffix)
    return prefix[len(prefix) - keep_prefix:], suffix[:keep_suffix]


def completion_text(prefix: list[int], middle: list[int], decode) -> str:
    """The middle's text, decoded together with the prefix so that boundary spaces survive."""
    before = decode(prefix)
    both = decode(prefix + middle)
    return both[len(before):] if both.startswith(before) else decode(middle)


def build_inputs(problem: dict, encode, max_length: int, mask_id: int) -> dict:
    """``{"prefix", "suffix", "num_masked", "ids"}`` for one problem (ids = prefix + masks + suffix)."""
    prefix, middle, suffix = encode(problem["prompt"]), encode(problem["canonical_solution"]), encode(problem["suffix"])
    if not middle:
        middle = [mask_id]  # an empty canonical middle still gets one slot
    prefix, suffix = fit_context(prefix, len(middle), suffix, max_length)
    if not prefix and not suffix:
        raise ValueError(f"{problem['task_id']}: nothing visible to condition on")
    return {"prefix": prefix, "suffix": suffix, "num_masked": len(middle),
            "ids": prefix + [mask_id] * len(middle) + suffix}


def code_model(model, tokenizer):
    """The same network with the whitespace specials allowed (they are banned as specials by default)."""
    from ..data import code_whitespace_ids
    from ..model import ASARM

    allowed = set(code_whitespace_ids(tokenizer))
    return ASARM(model.xlnet, model.mask_token_id, [i for i in model.banned_token_ids if i not in allowed])


def generate(unit: Unit, seed: int, model, tokenizer, cfg: dict) -> list[dict]:
    """``num_samples`` completions of one task: ``[{"completion", "nfe"}]``."""
    import torch

    from ..data import decode_text, make_encoder
    from ..orders import infill_order
    from ..sampling import sample

    code = cfg["code_whitespace"]
    inputs = build_inputs(unit.payload, make_encoder(tokenizer, code), cfg["max_length"], model.mask_token_id)
    ids = torch.tensor([inputs["ids"]] * cfg["num_samples"], device=model.device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    sigma, m = infill_order(ids, model.mask_token_id, shuffle=cfg["order"] == "random", generator=g)
    out = sample(model, ids, sigma, m, method=cfg["method"], k=cfg["k"], temperature=cfg["temperature"], generator=g)
    start, stop = len(inputs["prefix"]), len(inputs["prefix"]) + inputs["num_masked"]
    decode = lambda t: decode_text(t, tokenizer, code)  # noqa: E731
    return [{"completion": completion_text(inputs["prefix"], row[start:stop], decode), "nfe": int(nfe),
             "num_masked": inputs["num_masked"]}
            for row, nfe in zip(out.sequences.tolist(), out.nfe.tolist())]


def process_task(unit: Unit, seed: int, model, tokenizer, cfg: dict, harness: bool) -> list[dict]:
    """Generate (or take the canonical solution), then execute: one record per sample."""
    problem = unit.payload
    if cfg["method"] == "canonical":
        samples = [{"completion": problem["canonical_solution"], "nfe": 0, "num_masked": 0}] * cfg["num_samples"]
    else:
        samples = generate(unit, seed, model, tokenizer, cfg)
    results = check_many([(problem, s["completion"]) for s in samples], cfg["timeout"], cfg["memory_mb"],
                         cfg["workers"], official=harness)
    return [{"task_id": problem["task_id"], "sample": i, **s, "passed": r.passed, "status": r.status}
            for i, (s, r) in enumerate(zip(samples, results))]


def choose_harness(choice: str) -> tuple[bool, str]:
    """``(use_official, description)`` for ``--harness auto|official|builtin``."""
    if choice == "builtin":
        return False, "builtin isolated executor"
    usable, reason = official_harness_usable()
    if choice == "official" and not usable:
        raise ValueError(f"--harness official: {reason}")
    if not usable:
        print(f"note: using the builtin executor ({reason})", file=sys.stderr)
        return False, f"builtin isolated executor ({reason})"
    return True, reason


def run(args) -> int:
    from ..cli import load_model_and_tokenizer

    source = args.data or default_data(f"human-eval-infilling/{BENCHMARKS[args.benchmark]}")
    problems = load_problems(source, args.tasks)
    units = [Unit(p["task_id"], p) for p in problems]
    if args.num_samples < 1:
        raise ValueError("--num-samples must be >= 1")
    official, args.harness_used = choose_harness(args.harness)
    cfg = {k: getattr(args, k) for k in ("method", "k", "temperature", "order", "num_samples", "max_length",
                                         "timeout", "memory_mb", "workers", "code_whitespace")}

    def make_process():
        model = tokenizer = None
        if args.method != "canonical":
            model, tokenizer = load_model_and_tokenizer(args)
            if args.code_whitespace:
                model = code_model(model, tokenizer)
        return lambda unit, seed: process_task(unit, seed, model, tokenizer, cfg, official)

    run_evaluation("infill-code", args, units, make_process)
    return 0


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """pass@k for k in 1, 10, 100 (those <= n) and k = n; NFE statistics; timeouts."""
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["task_id"], []).append(r)
    n = min(len(v) for v in by_task.values())
    ks = sorted({k for k in (1, 10, 100) if k <= n} | {n})  # the usual k's, and k = n
    pass_k = {f"pass@{k}": 100.0 * sum(pass_at_k(len(v), sum(r["passed"] for r in v), k) for v in by_task.values())
              / len(by_task) for k in ks}
    nfe_mean, nfe_se = mean_se([r["nfe"] for r in records])
    timeouts = sum(r["status"] == "timed out" for r in records)
    results = {"num_tasks": len(by_task), "samples_per_task": n, **pass_k, "nfe_mean": nfe_mean, "nfe_se": nfe_se,
               "num_masked_mean": mean_se([r["num_masked"] for r in records])[0], "timeouts": timeouts,
               "harness": config.get("harness_used")}
    table = markdown_table(["benchmark", "method", "tasks", "n"] + list(pass_k) + ["NFE", "timeouts"],
                           [[config.get("benchmark"), config.get("method"), len(by_task), n]
                            + [round(v, 2) for v in pass_k.values()] + [pm(nfe_mean, nfe_se, 1), timeouts]])
    return results, f"Code infilling (HumanEval-infilling), model {config.get('model')} ({config.get('revision')}), " \
                    f"harness: {config.get('harness_used')}\n\n{table}"


def register(sub) -> None:
    from ..cli import add_model_arguments

    p = sub.add_parser("infill-code", help="HumanEval-infilling: generate the masked middle, run the tests (pass@k)",
                       description="Code infilling on HumanEval-infilling with functional correctness checked in "
                                   "isolated processes (paper, sec. 6).")
    add_model_arguments(p, asarm_revision="code")
    p.add_argument("--benchmark", default="single-line", choices=sorted(BENCHMARKS),
                   help="which official problem file (default: %(default)s)")
    p.add_argument("--data", default=None, help="problem file (.jsonl/.jsonl.gz) or hf:...; default: "
                   "eval_datasets/human-eval-infilling/<benchmark file>")
    p.add_argument("--tasks", nargs="+", default=None, help="only task ids containing one of these, e.g. HumanEval/0/ (ids look like "
                        "SingleLineInfilling/HumanEval/0/L3)")
    p.add_argument("--method", default="assd", choices=["sequential", "assd", "ngram", "canonical"],
                   help="sampling method; 'canonical' runs the reference solutions (harness self-check)")
    p.add_argument("--k", type=int, default=5, help="draft length (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--order", default="sorted", choices=["sorted", "random"], help="order of the masked positions")
    p.add_argument("--num-samples", type=int, default=1, help="samples per task, n for pass@k (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512, help="most tokens the model takes (default: %(default)s)")
    p.add_argument("--no-code-whitespace", dest="code_whitespace", action="store_false",
                   help="do not map whitespace to XLNet's specials (for tokenizers that keep whitespace)")
    p.add_argument("--harness", default="auto", choices=["auto", "official", "builtin"],
                   help="official human_eval_infilling harness if usable (auto), or the builtin executor")
    p.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per program (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    add_run_arguments(p, "outputs/infill_code")
    p.set_defaults(func=run)
