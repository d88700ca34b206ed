"""Story infilling on ROCStories (spec section 6, second bullet).

Each story is sentences 1-4 plus its right ending (sentence 5). Two settings:

* ``middle``: prompt = sentences 1-2, suffix = 4-5, infill sentence 3;
* ``long``: prompt = sentence 1, suffix = sentence 5, infill sentences 2-4.

The number of masked tokens is the ground-truth middle's token count. One unit
= one (setting, story); its ``--trials`` samples are the rows of one batch.
Reported: ROUGE-1/2/L F1 x 100 and their mean (``rouge-score``) between each
generated middle and the true one, NFE statistics; all samples in the JSONL.
"""

from __future__ import annotations

from pathlib import Path

from .metrics import ROUGE_TYPES, mean_se, rouge_f1
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_csv, require_fields

SETTINGS = {"middle": (2, 3), "long": (1, 4)}  # (prompt sentences, first suffix sentence) over sentences 0..4
FIELDS = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
          "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]


def load_stories(source: str) -> list[dict]:
    """``[{"id", "sentences": [5 str]}]`` from the ROCStories cloze CSV (right ending as sentence 5)."""
    rows = load_rows(source, "validation", read_csv)
    require_fields(rows, FIELDS, source)
    stories = []
    for i, r in enumerate(rows):
        right = str(r["AnswerRightEnding"]).strip()
        if right not in ("1", "2"):
            raise ValueError(f"'{source}', row {i + 1}: AnswerRightEnding must be 1 or 2, got {right!r}")
        ending = r[f"RandomFifthSentenceQuiz{right}"]
        stories.append({"id": r["InputStoryid"], "sentences": [r[f"InputSentence{j}"] for j in range(1, 5)] + [ending]})
    return stories


def split_story(sentences: list[str], setting: str) -> tuple[str, str, str]:
    """``(prompt, middle, suffix)`` texts of a five-sentence story."""
    a, b = SETTINGS[setting]
    return " ".join(sentences[:a]), " ".join(sentences[a:b]), " ".join(sentences[b:])


def build_units(stories: list[dict], settings: list[str]) -> list[Unit]:
    """One unit per (story, setting), story-major so that ``--limit`` covers every setting."""
    return [Unit(f"{s}/{st['id']}", {"setting": s, "story": st}) for st in stories for s in settings]


def encode_story(prompt: str, middle: str, suffix: str, tokenizer, max_length: int) -> dict:
    """Ids of ``prompt + masks + suffix`` with as many masks as ``middle`` has tokens."""
    enc = lambda t: tokenizer(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    p, m, s = enc(prompt), enc(" " + middle), enc(" " + suffix)
    if len(p) + len(m) + len(s) > max_length:
        raise ValueError(f"story needs {len(p) + len(m) + len(s)} tokens, more than the model allows "
                         f"(--max-length {max_length})")
    return {"prefix": p, "num_masked": len(m), "ids": p + [tokenizer.mask_token_id] * len(m) + s}


def process_story(unit: Unit, seed: int, model, tokenizer, cfg: dict) -> list[dict]:
    """``--trials`` infills of one (setting, story), scored with ROUGE."""
    import torch

    from ..orders import infill_order
    from ..sampling import sample

    setting, story = unit.payload["setting"], unit.payload["story"]
    prompt, middle, suffix = split_story(story["sentences"], setting)
    enc = encode_story(prompt, middle, suffix, tokenizer, cfg["max_length"])
    ids = torch.tensor([enc["ids"]] * cfg["trials"], device=model.device)
    g = torch.Generator(device=model.device).manual_seed(seed)
    sigma, m = infill_order(ids, model.mask_token_id, shuffle=cfg["order"] == "random", generator=g)
    out = sample(model, ids, sigma, m, method=cfg["method"], k=cfg["k"], temperature=cfg["temperature"], generator=g)
    start = len(enc["prefix"])
    records = []
    for t, (row, nfe) in enumerate(zip(out.sequences.tolist(), out.nfe.tolist())):
        generated = tokenizer.decode(row[start:start + enc["num_masked"]], skip_special_tokens=True).strip()
        records.append({"id": story["id"], "setting": setting, "trial": t, "prompt": prompt, "suffix": suffix,
                        "reference": middle, "generated": generated, "nfe": nfe, "num_masked": enc["num_masked"],
                        **rouge_f1(generated, middle, cfg["use_stemmer"])})
    return records


def run(args) -> int:
    from ..cli import load_model_and_tokenizer

    stories = load_stories(args.data)
    if args.trials < 1:
        raise ValueError("--trials must be >= 1")
    units = build_units(stories, args.settings)
    cfg = {k: getattr(args, k) for k in ("method", "k", "temperature", "order", "trials", "max_length", "use_stemmer")}

    def make_process():
        model, tokenizer = load_model_and_tokenizer(args)
        return lambda unit, seed: process_story(unit, seed, model, tokenizer, cfg)

    run_evaluation("infill-nlp", args, units, make_process)
    return 0


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """Per setting: mean/SE of ROUGE-1/2/L/mean and NFE."""
    keys = list(ROUGE_TYPES) + ["rouge_mean", "nfe"]
    results, rows = {}, []
    for setting in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == setting]
        stats = {k: mean_se([r[k] for r in rs]) for k in keys}
        results[setting] = {"n": len(rs), **{f"{k}_mean": v[0] for k, v in stats.items()},
                            **{f"{k}_se": v[1] for k, v in stats.items()},
                            "num_masked_mean": mean_se([r["num_masked"] for r in rs])[0]}
        rows.append([setting, len(rs)] + [pm(*stats[k]) for k in keys])
    table = markdown_table(["setting", "samples", "ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE mean", "NFE"], rows)
    return results, (f"ROCStories infilling, model {config.get('model')} ({config.get('revision')}), "
                     f"method {config.get('method')}, {config.get('trials')} trials per story\n\n{table}")


def register(sub) -> None:
    from ..cli import add_model_arguments

    p = sub.add_parser("infill-nlp", help="ROCStories infilling (ROUGE)",
                       description="Infill the middle of ROCStories five-sentence stories; ROUGE-1/2/L F1 x 100 "
                                   "against the true middle (paper, sec. 6).")
    add_model_arguments(p)
    p.add_argument("--data", default=default_data("rocstories/cloze_test_val__spring2016.csv"),
                   help="ROCStories cloze CSV or hf:... (default: %(default)s)")
    p.add_argument("--settings", nargs="+", default=["middle", "long"], choices=list(SETTINGS),
                   help="middle: infill sentence 3 given 1-2 and 4-5; long: infill 2-4 given 1 and 5")
    p.add_argument("--method", default="assd", choices=["sequential", "assd", "ngram"])
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--order", default="sorted", choices=["sorted", "random"])
    p.add_argument("--trials", type=int, default=5, help="samples per story (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--no-stemmer", dest="use_stemmer", action="store_false", help="ROUGE without Porter stemming")
    add_run_arguments(p, "outputs/infill_nlp")
    p.set_defaults(func=run)
