"""Density-estimation side tasks (spec section 6, last bullet): LAMBADA and HellaSwag.

* ``lambada``: each passage's last word is masked (as many masks as its
  tokens); exact match = every target token is the argmax of its conditional
  given the context and the target tokens before it (greedy decoding of the
  word, computed in ONE joint-mask forward pass, like GPT-2's LAMBADA
  accuracy). Also reported: the mean log-likelihood of the word.
* ``hellaswag``: each of the four endings is scored by the AS-ARM's joint
  log-likelihood ``model.joint_log_prob`` of the ending given the context
  (visible = context, sorted order); ``acc`` picks the highest sum, ``acc_norm``
  the highest sum per byte of the ending (lm-eval-harness's convention).
  Text preprocessing as in lm-eval-harness.
"""

from __future__ import annotations

import re
from pathlib import Path

from .metrics import mean_se
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_jsonl, read_text, require_fields

DEFAULT_DATA = {"lambada": default_data("lambada/lambada_test_plain_text.txt"),
                "hellaswag": default_data("hellaswag/hellaswag_val.jsonl")}


# ---------------------------------------------------------------------------- data
def load_lambada(source: str) -> list[dict]:
    """``[{"id", "context", "target"}]``: a passage per line (or ``hf:...`` rows with ``text``); target = last word."""
    if source.startswith("hf:"):
        lines = [r["text"] for r in load_rows(source, "test", None)]
    else:
        lines = read_text(source).splitlines()
    items = []
    for i, line in enumerate(lines):
        line = line.strip()
        if not line:
            continue
        context, sep, word = line.rpartition(" ")
        if not sep or not context:
            raise ValueError(f"'{source}', line {i + 1}: a LAMBADA passage needs a context and a last word")
        items.append({"id": f"lambada-{i:05d}", "context": context, "target": word})
    if not items:
        raise ValueError(f"'{source}' holds no passage")
    return items


def hellaswag_preprocess(text: str) -> str:
    """lm-eval-harness's HellaSwag cleaning: ``[title]`` -> '. ', other ``[...]`` removed, double spaces fixed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def load_hellaswag(source: str) -> list[dict]:
    """``[{"id", "context", "endings", "label"}]`` from the official JSONL or ``hf:Rowan/hellaswag@validation``."""
    rows = load_rows(source, "validation", read_jsonl)
    require_fields(rows, ["ctx_a", "ctx_b", "endings", "label"], source)
    items = []
    for i, r in enumerate(rows):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        activity = r.get("activity_label", "")
        context = hellaswag_preprocess(f"{activity}: {ctx}" if activity else ctx)
        try:
            label = int(r["label"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"'{source}', row {i + 1}: label must be an integer, got {r['label']!r}") from exc
        items.append({"id": str(r.get("ind", i)), "context": context,
                      "endings": [hellaswag_preprocess(e) for e in r["endings"]], "label": label})
    return items


# ---------------------------------------------------------------------------- scoring
def masked_block_scores(model, context: list[int], target: list[int]) -> tuple[float, bool]:
    """``(log p(target | context), greedy_match)`` for one context + target block (sorted order, one forward)."""
    import torch

    from ..orders import joint_mask, sorted_order, target_mapping

    ids = torch.tensor([context + target], device=model.device)
    visible = torch.zeros_like(ids, dtype=torch.bool)
    visible[0, :len(context)] = True
    sigma = sorted_order(visible)
    m = torch.tensor([len(context)], device=model.device)
    mapping, positions, _ = target_mapping(sigma, m, len(target))
    with torch.no_grad():
        logp = model.log_probs(model(ids, joint_mask(sigma, m), mapping))[0]
    tgt = torch.tensor(target, device=model.device)
    return float(logp.gather(-1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())


def joint_logp(model, context: list[int], target: list[int]) -> float:
    """``model.joint_log_prob`` of ``target`` after ``context`` (visible = context, sorted order)."""
    import torch

    from ..orders import sorted_order

    ids = torch.tensor([context + target], device=model.device)
    visible = torch.zeros_like(ids, dtype=torch.bool)
    visible[0, :len(context)] = True
    return float(model.joint_log_prob(ids, sorted_order(visible), torch.tensor([len(context)], device=model.device))[0])


def truncate_left(context: list[int], target_len: int, max_length: int) -> list[int]:
    """Keep the last ``max_length - target_len`` context tokens (``ValueError`` if none fit)."""
    room = max_length - target_len
    if room < 1:
        raise ValueError(f"the scored text has {target_len} tokens; the model allows {max_length} (--max-length)")
    return context[-room:]


def score_lambada(item: dict, model, tokenizer, max_length: int) -> dict:
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    target = enc(" " + item["target"])
    context = truncate_left(enc(item["context"]), len(target), max_length)
    logp, match = masked_block_scores(model, context, target)
    return {"id": item["id"], "target": item["target"], "correct": match, "logp": logp, "target_tokens": len(target)}


def score_hellaswag(item: dict, model, tokenizer, max_length: int) -> dict:
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    scores = []
    for ending in item["endings"]:
        target = enc(" " + ending)
        scores.append(joint_logp(model, truncate_left(enc(item["context"]), len(target), max_length), target))
    norm = [s / max(1, len((" " + e).encode())) for s, e in zip(scores, item["endings"])]
    pick, pick_norm = max(range(len(scores)), key=scores.__getitem__), max(range(len(norm)), key=norm.__getitem__)
    return {"id": item["id"], "label": item["label"], "scores": scores, "pred": pick, "pred_norm": pick_norm,
            "correct": pick == item["label"], "correct_norm": pick_norm == item["label"]}


def run(args) -> int:
    from ..cli import load_model_and_tokenizer

    source = args.data or DEFAULT_DATA[args.task]
    items = load_lambada(source) if args.task == "lambada" else load_hellaswag(source)
    units = [Unit(it["id"], it) for it in items]
    scorer = score_lambada if args.task == "lambada" else score_hellaswag

    def make_process():
        model, tokenizer = load_model_and_tokenizer(args)
        return lambda unit, seed: [scorer(unit.payload, model, tokenizer, args.max_length)]

    run_evaluation("density", args, units, make_process)
    return 0


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    task = config["task"]
    if task == "lambada":
        acc, logp = mean_se([float(r["correct"]) for r in records]), mean_se([r["logp"] for r in records])
        results = {"n": len(records), "accuracy": 100 * acc[0], "accuracy_se": 100 * acc[1],
                   "target_logp_mean": logp[0], "target_logp_se": logp[1]}
        table = markdown_table(["task", "n", "exact match (%)", "last-word log p"],
                               [["LAMBADA", len(records), pm(100 * acc[0], 100 * acc[1]), pm(*logp, 3)]])
    else:
        acc, norm = mean_se([float(r["correct"]) for r in records]), mean_se([float(r["correct_norm"]) for r in records])
        results = {"n": len(records), "acc": 100 * acc[0], "acc_se": 100 * acc[1], "acc_norm": 100 * norm[0],
                   "acc_norm_se": 100 * norm[1]}
        table = markdown_table(["task", "n", "acc (%)", "acc_norm (%)"],
                               [["HellaSwag", len(records), pm(100 * acc[0], 100 * acc[1]), pm(100 * norm[0], 100 * norm[1])]])
    return results, f"Density task {task}, model {config.get('model')} ({config.get('revision')})\n\n{table}"


def register(sub) -> None:
    from ..cli import add_model_arguments

    p = sub.add_parser("density", help="LAMBADA last word / HellaSwag endings by the AS-ARM's likelihood",
                       description="Density-estimation tasks: LAMBADA last-word exact match and HellaSwag "
                                   "(ending with the highest joint log-likelihood).")
    add_model_arguments(p)
    p.add_argument("--task", required=True, choices=["lambada", "hellaswag"])
    p.add_argument("--data", default=None, help="local file or hf:NAME[:CONFIG][@SPLIT]; default: "
                   f"{DEFAULT_DATA['lambada']} / {DEFAULT_DATA['hellaswag']} (or hf:Rowan/hellaswag@validation)")
    p.add_argument("--max-length", type=int, default=512, help="context cut from the left (default: %(default)s)")
    add_run_arguments(p, "outputs/density")
    p.set_defaults(func=run)
