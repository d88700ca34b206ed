"""Density-estimation side tasks, LAMBADA and HellaSwag (docs/design.md, Evaluations; docs/protocols.md).

* ``lambada``: each passage's last word is the target. Context and target are
  encoded each on its own (the target's opening ``▁`` is the space before it),
  so the masked positions are exactly the target word's tokens of the passage.
  Two accuracies, both always reported (``--lambada`` picks the headline):

  - ``sampled`` (the paper's): the target's tokens masked, sampled with ASSD
    at T = 1, decoded in context; correct when the stripped string equals the
    stripped target word;
  - ``greedy``: every target token is the argmax of its conditional given the
    context and the target tokens before it (ONE joint-mask forward pass, like
    GPT-2's LAMBADA accuracy).

  Also reported: the mean log-likelihood of the word.
* ``hellaswag``: each of the four endings is scored by the AS-ARM's joint
  log-likelihood ``model.joint_log_prob`` of the ending given the context
  (visible = context, sorted order); ``acc`` picks the highest sum, ``acc_norm``
  the highest sum per byte of the ending (lm-eval-harness's convention).
  Text preprocessing as in lm-eval-harness. Under both protocols the best
  ending is scored: the paper's released script compares the label with its
  loop variable instead (always the last ending, 3), so its number is the
  share of items labelled 3, reported here as ``paper_script_acc``.

The distribution (scores and LAMBADA samples) is set by ``--density-logits``:
``banned`` = the model's log-softmax with its banned ids removed (asarm),
``raw`` = log-softmax with only ``<mask>`` removed (the paper's).
"""

from __future__ import annotations

import re
from pathlib import Path

from .metrics import mean_se
from ..sampling import add_sampling_arguments
from .protocol import add_protocol_argument, apply_protocol, sampling_config
from .runner import Unit, add_run_arguments, markdown_table, per_unit, pm, run_evaluation
from .sources import default_data, load_rows, read_jsonl, read_text, require_fields

LAMBADA_ACCURACIES = ("sampled", "greedy")
DENSITY_LOGITS = ("banned", "raw")
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
def context_target_inputs(model, context: list[int], target: list[int]):
    """``(ids (1, N), sigma, num_visible)`` of ``context + target`` with the context visible (sorted order)."""
    import torch

    from ..orders import sorted_order

    ids = torch.tensor([context + target], device=model.device)
    visible = torch.zeros_like(ids, dtype=torch.bool)
    visible[0, :len(context)] = True
    return ids, sorted_order(visible), torch.tensor([len(context)], device=model.device)


def joint_logp(model, context: list[int], target: list[int]) -> float:
    """``model.joint_log_prob`` of ``target`` after ``context`` (visible = context, sorted order)."""
    return float(model.joint_log_prob(*context_target_inputs(model, context, target))[0])


def greedy_match(model, context: list[int], target: list[int]) -> bool:
    """True when every target token is the argmax of its conditional given the context and the target
    tokens before it (the joint mask: one forward pass)."""
    import torch

    from ..orders import joint_mask, target_mapping

    ids, sigma, m = context_target_inputs(model, context, target)
    mapping, _, _ = target_mapping(sigma, m, len(target))
    with torch.no_grad(), model.without_dropout():
        logp = model.log_probs(model(ids, joint_mask(sigma, m), mapping))[0]
    return bool((logp.argmax(-1) == torch.tensor(target, device=model.device)).all())


def masked_block_scores(model, context: list[int], target: list[int]) -> tuple[float, bool]:
    """``(log p(target | context), greedy_match)`` of one context + target block (sorted order)."""
    return joint_logp(model, context, target), greedy_match(model, context, target)


def truncate_left(context: list[int], target_len: int, max_length: int) -> list[int]:
    """Keep the last ``max_length - target_len`` context tokens (``ValueError`` if none fit)."""
    room = max_length - target_len
    if room < 1:
        raise ValueError(f"the scored text has {target_len} tokens; the model allows {max_length} (--max-length)")
    return context[-room:]


def density_model(model, logits: str):
    """The model whose ``log_probs`` score the density tasks: ``banned`` = ``model`` itself
    (its banned ids get ``-inf``), ``raw`` = the same network with only ``<mask>`` banned."""
    if logits not in DENSITY_LOGITS:
        raise ValueError(f"--density-logits must be one of {', '.join(DENSITY_LOGITS)}, not {logits!r}")
    if logits == "banned":
        return model
    return model.allowing([i for i in model.banned_token_ids if i != model.mask_token_id])


def lambada_inputs(item: dict, encode, mask_id: int, max_length: int) -> dict:
    """``{"context", "target", "ids"}``: the passage's ids with the target word's tokens masked.

    ``encode = make_encoder(tokenizer, False)``; the context is cut from the
    left to fit ``max_length``; ``ids = context + [mask_id] * len(target)``.
    """
    target = encode(item["target"])
    if not target:
        raise ValueError(f"{item['id']}: the target word {item['target']!r} encodes to no token")
    context = truncate_left(encode(item["context"]), len(target), max_length)
    return {"context": context, "target": target, "ids": context + [mask_id] * len(target)}


def sample_targets(model, tokenizer, inputs: list[dict], seeds: list[int], sampling) -> list[tuple[str, int]]:
    """``(text, nfe)`` per passage: the masked targets sampled in ONE batched call (``sampling``: ASSD
    at T = 1 by default), each from a generator seeded with its passage's seed, decoded as it reads in context."""
    import torch

    from ..tokenizer import decode_text, opens_segment
    from .batching import Row, sample_rows

    rows = [Row(x["ids"], list(range(len(x["ids"]))), len(x["context"]),
                torch.Generator(device=model.device).manual_seed(seed)) for x, seed in zip(inputs, seeds)]
    done, _ = sample_rows(model, rows, sampling)
    return [(decode_text(c.sequence[len(x["context"]):], tokenizer, False,
                         starts_segment=opens_segment(x["context"], tokenizer)), c.nfe) for x, c in zip(inputs, done)]


def score_lambadas(units: list, seeds: list[int], model, tokenizer, cfg: dict) -> list[list[dict]]:
    """Sampled and greedy exact match and ``log p(target | context)`` of every passage of a batch."""
    from ..tokenizer import make_encoder

    encode, items = make_encoder(tokenizer, False), [u.payload for u in units]
    inputs = [lambada_inputs(it, encode, model.mask_token_id, cfg["max_length"]) for it in items]
    sampled = sample_targets(model, tokenizer, inputs, seeds, cfg["sampling"])
    out = []
    for item, x, (text, nfe) in zip(items, inputs, sampled):
        logp, greedy = masked_block_scores(model, x["context"], x["target"])
        out.append([{"id": item["id"], "target": item["target"], "sampled": text,
                     "correct_sampled": text.strip() == item["target"].strip(), "correct_greedy": greedy,
                     "logp": logp, "target_tokens": len(x["target"]), "nfe": nfe}])
    return out


def score_lambada(item: dict, seed: int, model, tokenizer, cfg: dict) -> dict:
    """``score_lambadas`` of one passage."""
    return score_lambadas([Unit(item["id"], item)], [seed], model, tokenizer, cfg)[0][0]


def score_hellaswag(item: dict, seed: int, model, tokenizer, cfg: dict) -> dict:
    """Joint log-likelihood of each ending; ``pred`` / ``pred_norm`` = the best ending (sum / per byte)."""
    from ..tokenizer import make_encoder

    encode = make_encoder(tokenizer, False)
    scores = []
    for ending in item["endings"]:
        target = encode(ending)  # its opening "▁" is the space after the context
        scores.append(joint_logp(model, truncate_left(encode(item["context"]), len(target), cfg["max_length"]), target))
    norm = [s / max(1, len((" " + e).encode())) for s, e in zip(scores, item["endings"])]
    pick, pick_norm = max(range(len(scores)), key=scores.__getitem__), max(range(len(norm)), key=norm.__getitem__)
    return {"id": item["id"], "label": item["label"], "scores": scores, "pred": pick, "pred_norm": pick_norm,
            "correct": pick == item["label"], "correct_norm": pick_norm == item["label"]}


def run(args) -> int:
    from ..loading import load_model_and_tokenizer

    # first, before anything is loaded or written: a bad sampler option fails here, naming it
    sampling = sampling_config(args, infill=True, method=None)
    apply_protocol(args)  # config.json records the resolved values
    source = args.data or DEFAULT_DATA[args.task]
    items = load_lambada(source) if args.task == "lambada" else load_hellaswag(source)
    units = [Unit(it["id"], it) for it in items]
    cfg = {"sampling": sampling, "max_length": args.max_length}

    def make_process():
        model, tokenizer = load_model_and_tokenizer(args)
        model = density_model(model, args.density_logits)
        if args.task == "lambada":
            return lambda units, seeds: score_lambadas(units, seeds, model, tokenizer, cfg)
        return per_unit(lambda unit, seed: [score_hellaswag(unit.payload, seed, model, tokenizer, cfg)])

    run_evaluation("density", args, units, make_process)
    return 0


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """LAMBADA: sampled and greedy accuracy (headline ``accuracy`` = ``config["lambada"]``'s) and
    the word's log p; HellaSwag: acc, acc_norm and ``paper_script_acc`` (share labelled 3, module docstring)."""
    task = config["task"]
    pct = lambda xs: tuple(100 * v for v in mean_se([float(x) for x in xs]))  # noqa: E731
    if task == "lambada":
        headline = config.get("lambada") or "greedy"
        acc = {a: pct(r[f"correct_{a}"] for r in records) for a in LAMBADA_ACCURACIES}
        logp = mean_se([r["logp"] for r in records])
        results = {"n": len(records), "accuracy_kind": headline, "accuracy": acc[headline][0],
                   "accuracy_se": acc[headline][1], "target_logp_mean": logp[0], "target_logp_se": logp[1],
                   "nfe_mean": mean_se([r["nfe"] for r in records])[0],
                   **{f"accuracy_{a}": acc[a][0] for a in LAMBADA_ACCURACIES},
                   **{f"accuracy_{a}_se": acc[a][1] for a in LAMBADA_ACCURACIES}}
        order = [headline] + [a for a in LAMBADA_ACCURACIES if a != headline]
        table = markdown_table(["task", "n"] + [f"{a} exact match (%)" for a in order] + ["last-word log p"],
                               [["LAMBADA", len(records)] + [pm(*acc[a]) for a in order] + [pm(*logp, 3)]])
    else:
        acc, norm = pct(r["correct"] for r in records), pct(r["correct_norm"] for r in records)
        paper = pct(r["label"] == 3 for r in records)
        results = {"n": len(records), "acc": acc[0], "acc_se": acc[1], "acc_norm": norm[0], "acc_norm_se": norm[1],
                   "paper_script_acc": paper[0]}
        table = markdown_table(["task", "n", "acc (%)", "acc_norm (%)", "paper script's number (% labelled 3)"],
                               [["HellaSwag", len(records), pm(*acc), pm(*norm), f"{paper[0]:.2f}"]])
    return results, (f"Density task {task}, model {config.get('model')} ({config.get('revision')}), "
                     f"density logits {config.get('density_logits')}\n\n{table}")


def register(sub) -> None:
    from ..loading import add_model_arguments

    p = sub.add_parser("density", help="LAMBADA last word / HellaSwag endings by the AS-ARM's likelihood",
                       description="Density-estimation tasks: LAMBADA last-word exact match and HellaSwag "
                                   "(ending with the highest joint log-likelihood).")
    add_model_arguments(p)
    p.add_argument("--task", required=True, choices=["lambada", "hellaswag"])
    p.add_argument("--data", default=None, help="local file or hf:NAME[:CONFIG][@SPLIT]; default: "
                   f"{DEFAULT_DATA['lambada']} / {DEFAULT_DATA['hellaswag']} (or hf:Rowan/hellaswag@validation)")
    p.add_argument("--max-length", type=int, default=512, help="context cut from the left (default: %(default)s)")
    add_protocol_argument(p)
    p.add_argument("--lambada", default=None, choices=list(LAMBADA_ACCURACIES),
                   help="headline LAMBADA accuracy: sampled (ASSD at T = 1, stripped strings compared) or greedy; "
                        "both are reported (default: from --protocol)")
    p.add_argument("--density-logits", default=None, choices=list(DENSITY_LOGITS),
                   help="banned: log-softmax without the model's banned ids; raw: only <mask> removed "
                        "(default: from --protocol)")
    # the sampled LAMBADA word: ASSD at T = 1 (the paper's); k only changes the speed
    add_sampling_arguments(p, defaults={"k": "from --protocol (asarm 5, paper 10)", "ngram_draft": "from --protocol",
                                        "draft_only_temperature": "from --protocol"})
    add_run_arguments(p, "outputs/density")
    p.set_defaults(func=run)
