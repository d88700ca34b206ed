"""Story infilling on ROCStories (docs/design.md, Evaluations; docs/protocols.md).

Each story is sentences 1-4 plus its right ending (sentence 5). Two settings:

* ``middle``: prompt = sentences 1-2, suffix = 4-5, infill sentence 3;
* ``long``: prompt = sentence 1, suffix = sentence 5, infill sentences 2-4.

Prompt, middle and suffix are encoded each on its own, as the paper does: the
``▁`` that opens each part is the space between the parts, so the ids are those
of the whole story. The number of masked tokens is the true middle's token
count. One unit = one (setting, story); its ``--trials`` samples are rows of
one batch (``--batch-size B``: B units' rows together), row ``t`` sampled from
its own generator (``batching.row_generator(unit seed, t)``). ``--method oracle`` writes the true middle's tokens where the
samples would go (the pipeline's self-check: ROUGE 100 unless the tokenizer's
normaliser changed the text). The generated middle is decoded in context
(``decode_text``), so ``prompt + generated + " " + suffix`` is the story text.

Reported per setting (all trials and stories pooled): ROUGE-1/2/L F1 x 100
and their average (``rouge-score``), aggregated both ways: ``mean`` (mean of
the per-sample F1 with its standard error, asarm's) and ``bootstrap``
(``evaluate``'s rouge: bootstrap mid F1, the paper's); ``--rouge`` picks the
headline columns, the other aggregate is reported beside it. NFE statistics;
every sample in the JSONL.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .metrics import ROUGE_AGGREGATES, ROUGE_TYPES, mean_se, rouge_bootstrap, rouge_scores
from ..sampling import add_sampling_arguments
from .batching import batched, throughput
from .protocol import add_protocol_argument, apply_protocol, sampling_config, sampling_value
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_csv, require_fields

SETTINGS = {"middle": (2, 3), "long": (1, 4)}  # (prompt sentences, first suffix sentence) over sentences 0..4
FIELDS = ["InputStoryid", "InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4",
          "RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2", "AnswerRightEnding"]
METHODS = ("sequential", "assd", "ngram", "oracle")
ROUGE_KEYS = list(ROUGE_TYPES) + ["rouge_mean"]


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
    """``(prompt, middle, suffix)`` texts of a five-sentence story (sentences joined by one space)."""
    a, b = SETTINGS[setting]
    return " ".join(sentences[:a]), " ".join(sentences[a:b]), " ".join(sentences[b:])


def build_units(stories: list[dict], settings: list[str]) -> list[Unit]:
    """One unit per (story, setting), story-major so that ``--limit`` covers every setting."""
    return [Unit(f"{s}/{st['id']}", {"setting": s, "story": st}) for st in stories for s in settings]


def encode_story(prompt: str, middle: str, suffix: str, encode, mask_id: int, max_length: int) -> dict:
    """Ids of ``prompt + masks + suffix`` with as many masks as ``middle`` has tokens.

    Each part is encoded on its own (``encode = make_encoder(tokenizer, False)``):
    its opening ``▁`` stands for the space that joins it to the part before.
    Returns ``{"prefix", "middle", "suffix", "ids"}`` (lists of ids).
    """
    p, m, s = encode(prompt), encode(middle), encode(suffix)
    if not m:
        raise ValueError(f"the middle {middle!r} encodes to no token: nothing to infill")
    if len(p) + len(m) + len(s) > max_length:
        raise ValueError(f"story needs {len(p) + len(m) + len(s)} tokens, more than the model allows "
                         f"(--max-length {max_length})")
    return {"prefix": p, "middle": m, "suffix": s, "ids": p + [mask_id] * len(m) + s}


def story_inputs(unit: Unit, tokenizer, cfg: dict) -> dict:
    """The encoded (setting, story) of one unit: ``encode_story``'s dict plus its three texts."""
    from ..tokenizer import make_encoder

    prompt, middle, suffix = split_story(unit.payload["story"]["sentences"], unit.payload["setting"])
    enc = encode_story(prompt, middle, suffix, make_encoder(tokenizer, False), tokenizer.mask_token_id,
                       cfg["max_length"])
    return {**enc, "prompt": prompt, "middle_text": middle, "suffix_text": suffix}


def story_rows(enc: dict, seed: int, mask_id: int, cfg: dict, device) -> list:
    """The unit's ``--trials`` rows (``batching.Row``): its order from the unit's seed (``--order
    random``), row ``t``'s generator ``row_generator(seed, t)``."""
    import torch

    from .batching import Row, row_generator, unit_orders

    ids = torch.tensor([enc["ids"]] * cfg["trials"])
    sigma, m = unit_orders(ids, mask_id, cfg["order"] == "random", seed)
    return [Row(enc["ids"], sigma[t].tolist(), int(m[t]), row_generator(seed, t, device)) for t in range(len(ids))]


def fill_middles(encs: list[dict], seeds: list[int], model, tokenizer, cfg: dict):
    """Per unit, ``(sequences, nfes, seconds per sample)``: every unit's rows sampled in ONE batched call
    (``cfg["sampling"]``), or for ``oracle`` the true middle written in place of the samples (no model)."""
    from .batching import sample_rows

    if cfg["method"] == "oracle":
        return [([e["prefix"] + e["middle"] + e["suffix"]] * cfg["trials"], [0] * cfg["trials"], 0.0) for e in encs]
    rows = [story_rows(e, s, tokenizer.mask_token_id, cfg, model.device) for e, s in zip(encs, seeds)]
    done, seconds = sample_rows(model, [r for unit_rows in rows for r in unit_rows], cfg["sampling"])
    per_sample, out, i = seconds / len(done), [], 0
    for unit_rows in rows:
        part, i = done[i:i + len(unit_rows)], i + len(unit_rows)
        out.append(([c.sequence for c in part], [c.nfe for c in part], per_sample))
    return out


def process_stories(units: list[Unit], seeds: list[int], model, tokenizer, cfg: dict) -> list[list[dict]]:
    """``--trials`` infills of each (setting, story) of a batch, each scored with ROUGE against the true
    middle; one records list per unit, the same whatever the batch (``fill_middles``).

    ``model`` may be ``None`` for ``--method oracle``. Each record's ``generated``
    is the middle as it reads in context (with the space that joins it to the
    prompt); rouge-score's tokenizer ignores that space.
    """
    from ..tokenizer import decode_text, opens_segment

    encs = [story_inputs(u, tokenizer, cfg) for u in units]
    filled = fill_middles(encs, seeds, model, tokenizer, cfg)
    out = []
    for unit, enc, (sequences, nfes, seconds) in zip(units, encs, filled):
        start, n, first = len(enc["prefix"]), len(enc["middle"]), opens_segment(enc["prefix"], tokenizer)
        records = []
        for t, (row, nfe) in enumerate(zip(sequences, nfes)):
            # specials kept as text (the paper's decode); under --banned specials none is ever sampled
            generated = decode_text(row[start:start + n], tokenizer, False, starts_segment=first)
            records.append({"id": unit.payload["story"]["id"], "setting": unit.payload["setting"], "trial": t,
                            "prompt": enc["prompt"], "suffix": enc["suffix_text"], "reference": enc["middle_text"],
                            "generated": generated, "nfe": nfe, "num_masked": n, "time_s": seconds,
                            "batch_size": len(units),
                            **score_fields(rouge_scores(generated, enc["middle_text"], cfg["rouge_stemmer"]))})
        out.append(records)
    return out


def process_story(unit: Unit, seed: int, model, tokenizer, cfg: dict) -> list[dict]:
    """``process_stories`` of one unit (batch 1)."""
    return process_stories([unit], [seed], model, tokenizer, cfg)[0]


def score_fields(scores: dict[str, tuple[float, float, float]]) -> dict[str, float]:
    """A record's ROUGE fields from ``rouge_scores``: ``rouge1`` (F1), ``rouge1_p``, ``rouge1_r``, ..., ``rouge_mean``."""
    out = {}
    for t, (p, r, f) in scores.items():
        out.update({t: f, f"{t}_p": p, f"{t}_r": r})
    out["rouge_mean"] = sum(scores[t][2] for t in ROUGE_TYPES) / len(ROUGE_TYPES)
    return out


def record_scores(record: dict) -> dict[str, tuple[float, float, float]]:
    """Inverse of ``score_fields``: the ``rouge_scores`` dict a record holds."""
    return {t: (record[f"{t}_p"], record[f"{t}_r"], record[t]) for t in ROUGE_TYPES}


def run(args) -> int:
    from ..loading import load_model_and_tokenizer, load_tokenizer_alone

    # first, before anything is loaded or written: a bad sampler option fails here, naming it
    sampling = sampling_config(args, infill=True, method=args.method if args.method != "oracle" else None)
    apply_protocol(args)  # config.json records the resolved values
    if args.trials < 1:
        raise ValueError("--trials must be >= 1")
    stories = load_stories(args.data)
    units = build_units(stories, args.settings)
    cfg = {k: getattr(args, k) for k in ("method", "order", "trials", "max_length", "rouge_stemmer")}
    cfg["sampling"] = sampling

    if args.method == "oracle":  # no model: the tokenizer alone, before config.json records it
        tokenizer = load_tokenizer_alone(args)

        def make_process():
            return lambda units, seeds: process_stories(units, seeds, None, tokenizer, cfg)
    else:
        def make_process():
            model, tokenizer = load_model_and_tokenizer(args)
            return lambda units, seeds: process_stories(units, seeds, model, tokenizer, cfg)

    run_evaluation("infill-nlp", args, units, make_process)
    return 0


def summarize_setting(records: list[dict], seed: int) -> dict:
    """Both ROUGE aggregates of one setting's records (all trials and stories pooled) and NFE.

    Keys: ``n``; ``{key}_mean`` / ``{key}_se`` (mean and SE over samples) and
    ``{key}_bootstrap`` / ``_low`` / ``_high`` (``rouge_bootstrap`` mid and 95%
    bounds) for ``key`` in rouge1, rouge2, rougeL, rouge_mean; ``nfe_mean`` /
    ``nfe_se``; ``num_masked_mean``.
    """
    out = {"n": len(records)}
    for k in ROUGE_KEYS + ["nfe"]:
        out[f"{k}_mean"], out[f"{k}_se"] = mean_se([r[k] for r in records])
    boot = rouge_bootstrap([record_scores(r) for r in records], seed=seed)
    for k in ROUGE_KEYS:
        out[f"{k}_bootstrap"] = boot[k]["mid"]
        out[f"{k}_bootstrap_low"], out[f"{k}_bootstrap_high"] = boot[k]["low"], boot[k]["high"]
    out["num_masked_mean"] = mean_se([r["num_masked"] for r in records])[0]
    if batched(records):  # samples per second of sampling (no ROUGE), for --batch-size > 1
        out["samples_per_s"] = throughput(records)
    return out


def rouge_cell(stats: dict, key: str, aggregate: str) -> str:
    """``mean +- SE`` or the bootstrap ``mid``, as a table cell."""
    if aggregate == "mean":
        return pm(stats[f"{key}_mean"], stats[f"{key}_se"])
    return f"{stats[f'{key}_bootstrap']:.2f}"


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """Per setting: both ROUGE aggregates (``summarize_setting``); the headline is ``config["rouge"]``'s.

    ``results[setting]["rouge1"]`` etc. hold the headline figures; the table
    shows them and the other aggregate's average.
    """
    from ..loading import describe_model

    headline = config.get("rouge") or "mean"
    other = next(a for a in ROUGE_AGGREGATES if a != headline)
    seed = int(config.get("seed") or 0)
    results, rows, fast = {}, [], batched(records)
    for setting in dict.fromkeys(r["setting"] for r in records):
        stats = summarize_setting([r for r in records if r["setting"] == setting], seed)
        stats.update({"rouge_aggregate": headline, **{k: stats[f"{k}_{headline}"] for k in ROUGE_KEYS}})
        results[setting] = stats
        rows.append([setting, stats["n"]] + [rouge_cell(stats, k, headline) for k in ROUGE_KEYS]
                    + [rouge_cell(stats, "rouge_mean", other), pm(stats["nfe_mean"], stats["nfe_se"])]
                    + ([_rate(stats["samples_per_s"])] if fast else []))
    names = {"mean": "mean +- SE", "bootstrap": "bootstrap mid"}
    table = markdown_table(["setting", "samples", "ROUGE-1", "ROUGE-2", "ROUGE-L", f"ROUGE avg ({names[headline]})",
                            f"ROUGE avg ({names[other]})", "NFE"] + (["samples/s"] if fast else []), rows)
    stem = "with" if config.get("rouge_stemmer") else "without"
    return results, (f"ROCStories infilling, {describe_model(config)}, "
                     f"method {config.get('method')}, k {sampling_value(config, 'k')}, {config.get('trials')} trials per story; "
                     f"ROUGE F1 x 100 {stem} stemmer, headline aggregate: {names[headline]}\n\n{table}")


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def register(sub) -> None:
    from ..loading import add_model_arguments

    p = sub.add_parser("infill-nlp", help="ROCStories infilling (ROUGE)",
                       description="Infill the middle of ROCStories five-sentence stories; ROUGE-1/2/L F1 x 100 "
                                   "against the true middle (paper, sec. 6).")
    add_model_arguments(p)
    add_protocol_argument(p)
    add_sampling_arguments(p, skip=("method",), defaults={"k": "from --protocol (asarm 5, paper 10)",
                                                          "ngram_draft": "from --protocol",
                                                          "draft_only_temperature": "from --protocol"})
    p.add_argument("--data", default=default_data("rocstories/cloze_test_val__spring2016.csv"),
                   help="ROCStories cloze CSV or hf:... (default: %(default)s)")
    p.add_argument("--settings", nargs="+", default=["middle", "long"], choices=list(SETTINGS),
                   help="middle: infill sentence 3 given 1-2 and 4-5; long: infill 2-4 given 1 and 5")
    p.add_argument("--method", default="assd", choices=list(METHODS),
                   help="sampler; 'oracle' writes the true middle instead (pipeline self-check, no "
                        "model: --tokenizer's or the offline tokenizer; ROUGE 100 when the text "
                        "round-trips)")
    p.add_argument("--banned", default=None, choices=["specials", "mask"],
                   help="ids never sampled: every special, or only <mask> (default: from --protocol)")
    p.add_argument("--order", default="sorted", choices=["sorted", "random"])
    p.add_argument("--trials", type=int, default=5, help="samples per story (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--rouge", default=None, choices=list(ROUGE_AGGREGATES),
                   help="headline aggregate: mean (+- SE) of per-sample F1, or bootstrap mid F1 over all samples "
                        "(evaluate's rouge); both are reported (default: from --protocol)")
    p.add_argument("--rouge-stemmer", default=None, action=argparse.BooleanOptionalAction,
                   help="Porter stemmer in ROUGE (default: from --protocol)")
    add_run_arguments(p, "outputs/infill_nlp")
    p.set_defaults(func=run)
