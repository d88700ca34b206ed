"""Speculative-decoding comparison (spec section 6, first bullet; the paper's WikiText experiment).

Text is tokenized with the AS-ARM's tokenizer and packed into ``--seq-len``
chunks. Trial ``t`` takes chunk ``t mod #chunks``, keeps a uniformly random
``--visible-frac`` of its positions (sorted order) and generates the rest with
every method (sequential, ASSD, n-gram draft; optionally also with a baseline
model such as the off-the-shelf ``xlnet-base-cased``). Per sample it records
NFE, CUDA-synchronised wall-clock, the prompt and the decoded text, the
judge's NLL and the unigram entropy; per method it reports means and standard
errors, and paired tests of sequential vs every other method.

Generative perplexity convention: ``exp(mean token NLL)`` of each decoded
sequence under the judge (default ``gpt2-large``), with the judge's BOS in
front and the text cut to the judge's context; the method's value is the mean
(SE) over sequences. Entropy: unigram entropy (bits) of each sequence's judge
tokens (the AS-ARM's tokens when no judge is loaded), averaged.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .metrics import mean_se, paired_tests, unigram_entropy
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_text

METRICS = ("nfe", "time_s", "ppl", "entropy", "model_nll")
METRIC_NAMES = {"nfe": "NFE", "time_s": "time (s)", "ppl": "gen. PPL", "entropy": "entropy (bits)",
                "model_nll": "model NLL/token"}


# ---------------------------------------------------------------------------- data
def load_text(source: str) -> str:
    """Evaluation text: a local file (WikiText ``wiki.test.raw``) or ``hf:wikitext:wikitext-2-raw-v1@test``."""
    if source.startswith("hf:"):
        rows = load_rows(source, "test", None)
        return "\n".join(r["text"].rstrip("\n") for r in rows if r.get("text", "").strip())
    return read_text(source)


def pack_chunks(text: str, tokenizer, seq_len: int) -> list[list[int]]:
    """Tokenize ``text`` and cut it into full ``seq_len``-token chunks (the remainder is dropped)."""
    if seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {seq_len}")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not chunks:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of --seq-len {seq_len}")
    return chunks


def num_visible_for(seq_len: int, frac: float) -> int:
    """Prompt size ``m = round(frac * N)``, kept in ``[1, N - 1]``."""
    if not 0 < frac < 1:
        raise ValueError(f"--visible-frac must be in (0, 1), got {frac}")
    return min(seq_len - 1, max(1, round(frac * seq_len)))


def build_units(chunks: list[list[int]], trials: int) -> list[Unit]:
    """Trial ``t`` uses chunk ``t mod len(chunks)``."""
    return [Unit(f"trial-{t:05d}", {"trial": t, "chunk": t % len(chunks), "ids": chunks[t % len(chunks)]})
            for t in range(trials)]


# ---------------------------------------------------------------------------- one trial
def timed_sample(model, ids, sigma, m, **kwargs):
    """``(SampleOutput, seconds)``; CUDA is synchronised around the call."""
    import torch

    from ..sampling import sample

    cuda = model.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(model.device)
    t0 = time.perf_counter()
    out = sample(model, ids, sigma, m, **kwargs)
    if cuda:
        torch.cuda.synchronize(model.device)
    return out, time.perf_counter() - t0


def score_text(text: str, ids: list[int], judge) -> dict:
    """Judge NLL/perplexity and unigram entropy of one decoded text.

    ``judge``: ``(model, tokenizer)`` or ``(None, error_message)``; ``ids`` are the
    AS-ARM's tokens (used for entropy when there is no judge).
    """
    from .metrics import judge_input_ids, judge_nll, perplexity_from_nll

    model, tok_or_error = judge
    if model is None:
        return {"ppl": None, "judge_nll": None, "judge_tokens": 0, "judge_error": tok_or_error,
                "entropy": unigram_entropy(ids)}
    nll, n = judge_nll(model, tok_or_error, text)
    judge_ids = judge_input_ids(text, tok_or_error, 10**9)
    if getattr(tok_or_error, "bos_token_id", None) is not None:
        judge_ids = judge_ids[1:]
    return {"ppl": perplexity_from_nll(nll) if n else None, "judge_nll": nll if n else None, "judge_tokens": n,
            "entropy": unigram_entropy(judge_ids)}


def run_trial(unit: Unit, seed: int, systems: list[dict], tokenizer, judge, cfg: dict) -> list[dict]:
    """Every system on one trial: records ``{"trial", "chunk", "method", "nfe", "time_s", ...}``."""
    import torch

    from ..orders import random_sorted_order

    model0 = systems[0]["model"]
    ids = torch.tensor([unit.payload["ids"]], device=model0.device)
    n = ids.shape[1]
    m = num_visible_for(n, cfg["visible_frac"])
    g = torch.Generator().manual_seed(seed)
    sigma = random_sorted_order(1, n, m, generator=g).to(model0.device)
    m_t = torch.tensor([m], device=model0.device)
    masked = ids.masked_fill(sigma >= m, tokenizer.mask_token_id)
    prompt = tokenizer.decode(masked[0].tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False)
    records = []
    for i, system in enumerate(systems):
        model = system["model"]
        gen = torch.Generator(device=model.device).manual_seed((seed + 7919 * (i + 1)) % 2**63)
        out, seconds = timed_sample(model, masked, sigma, m_t, method=system["method"], k=cfg["k"],
                                    temperature=cfg["temperature"], generator=gen, backend=cfg["backend"])
        seq = out.sequences[0].tolist()
        text = tokenizer.decode(seq, skip_special_tokens=True)
        model_lp = float(model.joint_log_prob(out.sequences, sigma, m_t)[0])
        records.append({
            "trial": unit.payload["trial"], "chunk": unit.payload["chunk"], "method": system["label"],
            "num_visible": m, "length": n, "nfe": int(out.nfe[0]), "time_s": seconds,
            "drafted": int(out.drafted[0]), "accepted": int(out.accepted[0]),
            "model_nll": -model_lp / (n - m), "prompt": prompt, "text": text,
            **score_text(text, seq, judge),
        })
    return records


# ---------------------------------------------------------------------------- setup
def load_systems(args, model, tokenizer) -> list[dict]:
    """``[{"label", "model", "method"}]``: the AS-ARM with every method, then the optional baseline model."""
    systems = [{"label": m, "model": model, "method": m} for m in args.methods]
    if args.baseline_model:
        from ..model import ASARM

        base = ASARM.from_pretrained(args.baseline_model, revision=args.baseline_revision, tokenizer=tokenizer)
        if base.vocab_size != model.vocab_size:
            raise ValueError(f"--baseline-model has vocabulary {base.vocab_size}, the model {model.vocab_size}: "
                             "they must share the tokenizer")
        base = base.to(device=model.device, dtype=model.dtype).eval()
        name = Path(args.baseline_model).name
        systems += [{"label": f"{name}:{m}", "model": base, "method": m} for m in args.baseline_methods]
    return systems


def load_judge_or_reason(name: str | None, device):
    """``(model, tokenizer)``, or ``(None, reason)`` when it cannot be loaded.

    A judge that is not a causal LM is a user error and raises ``ValueError``.
    """
    from .metrics import load_judge

    if not name or name == "none":
        return None, "no judge (--judge none)"
    try:
        return load_judge(name, device)
    except OSError as exc:
        print(f"warning: judge '{name}' not loaded, perplexity will be n/a: {exc}", file=sys.stderr)
        return None, f"judge '{name}' not loaded: {exc}"


def check_judge_early(name: str | None) -> None:
    """Fail fast (before any generation) when the judge's config says it is not a causal LM."""
    from transformers import AutoConfig

    from ..hub import load_or_explain
    from .metrics import check_causal_lm_config

    if not name or name == "none":
        return
    try:
        config = load_or_explain(AutoConfig.from_pretrained, name, None, "judge config")
    except OSError:
        return  # reported later, in the perplexity column
    check_causal_lm_config(config)


def run(args) -> int:
    from ..cli import load_model_and_tokenizer

    check_judge_early(args.judge)
    loaded = {}

    def model_and_tokenizer():
        if not loaded:
            loaded["mt"] = load_model_and_tokenizer(args)
        return loaded["mt"]

    _, tokenizer = model_and_tokenizer()
    chunks = pack_chunks(load_text(args.data), tokenizer, args.seq_len)
    num_visible_for(args.seq_len, args.visible_frac)
    if args.trials < 1:
        raise ValueError("--trials must be >= 1")
    units = build_units(chunks, args.trials)
    cfg = {"visible_frac": args.visible_frac, "k": args.k, "temperature": args.temperature, "backend": args.backend}

    def make_process():
        model, tok = model_and_tokenizer()
        systems = load_systems(args, model, tok)
        judge = load_judge_or_reason(args.judge, model.device)
        return lambda unit, seed: run_trial(unit, seed, systems, tok, judge, cfg)

    run_evaluation("speculative", args, units, make_process)
    return 0


# ---------------------------------------------------------------------------- summary
def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """Per-method means/SEs, paired tests vs sequential, table and ``distributions.png``."""
    labels = list(dict.fromkeys(r["method"] for r in records))
    by = {lab: [r for r in records if r["method"] == lab] for lab in labels}
    per_method = {}
    for lab, rs in by.items():
        row = {"n": len(rs)}
        for key in METRICS:
            row[key + "_mean"], row[key + "_se"] = mean_se([r.get(key) for r in rs])
        drafted = sum(r["drafted"] for r in rs)
        row["acceptance_rate"] = sum(r["accepted"] for r in rs) / drafted if drafted else None
        errors = {r.get("judge_error") for r in rs} - {None}
        row["ppl_note"] = "; ".join(sorted(errors)) or None
        per_method[lab] = row
    tests = {}
    ref = next((lab for lab in labels if lab == "sequential"), None)
    for lab in labels:
        if ref is None or lab == ref or ":" in lab:
            continue
        tests[f"{ref} vs {lab}"] = {key: paired_tests([r.get(key) for r in by[ref]], [r.get(key) for r in by[lab]])
                                    for key in METRICS}
    for lab in labels:  # baseline model: its own sequential vs its other methods
        base, _, meth = lab.partition(":")
        if meth and meth != "sequential" and f"{base}:sequential" in by:
            tests[f"{base}:sequential vs {lab}"] = {
                key: paired_tests([r.get(key) for r in by[f"{base}:sequential"]], [r.get(key) for r in by[lab]])
                for key in METRICS}
    plot = plot_distributions(by, Path(out_dir) / "distributions.png")
    results = {"methods": per_method, "paired_tests": tests, "plot": plot,
               "ppl_convention": "per-sequence exp(mean judge token NLL), judge BOS prepended, text cut to the "
                                 "judge's context; mean and SE over sequences"}
    return results, format_table(per_method, tests, config)


def format_table(per_method: dict, tests: dict, config: dict) -> str:
    """Markdown: one row per method, then the paired tests' p-values."""
    header = ["method", "n", "NFE", "time (s)", "gen. PPL", "entropy (bits)", "model NLL/token", "accept rate"]
    rows = []
    for lab, r in per_method.items():
        ppl = pm(r["ppl_mean"], r["ppl_se"]) if r["ppl_mean"] == r["ppl_mean"] else f"n/a ({r['ppl_note']})"
        acc = f"{r['acceptance_rate']:.3f}" if r["acceptance_rate"] is not None else "-"
        rows.append([lab, r["n"], pm(r["nfe_mean"], r["nfe_se"], 1), pm(r["time_s_mean"], r["time_s_se"], 3), ppl,
                     pm(r["entropy_mean"], r["entropy_se"], 3), pm(r["model_nll_mean"], r["model_nll_se"], 3), acc])
    model = config.get("model")
    model = model if os.path.isdir(str(model)) else f"{model} ({config.get('revision')})"
    out = [f"Speculative decoding: model {model}, "
           f"k={config.get('k')}, T={config.get('temperature')}, visible {config.get('visible_frac')}, "
           f"seq-len {config.get('seq_len')}", "", markdown_table(header, rows)]
    if tests:
        t_rows = []
        for pair, by_metric in tests.items():
            for key, t in by_metric.items():
                if not t["n"]:
                    continue  # e.g. perplexity without a judge
                t_rows.append([pair, METRIC_NAMES[key], t["n"], _p(t["mean_diff"]), _p(t["ttest_p"]),
                               _p(t["wilcoxon_p"]), _p(t["mannwhitney_p"])])
        out += ["", "Paired tests (p-values; mean diff = first - second):", "",
                markdown_table(["pair", "metric", "n", "mean diff", "t-test", "Wilcoxon", "Mann-Whitney"], t_rows)]
    return "\n".join(out)


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.3g}"


def plot_distributions(by_method: dict[str, list[dict]], path: Path) -> str | None:
    """Histograms of NFE and wall-clock per method into a PNG; returns its path (None without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib not installed, no plot", file=sys.stderr)
        return None
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "nfe", "network calls (NFE)"), (axes[1], "time_s", "wall-clock (s)")):
        values = [r[key] for rs in by_method.values() for r in rs]
        if key == "nfe":  # integer bins shared by every method
            step = max(1, (max(values) - min(values)) // 40)
            bins = np.arange(min(values) - 0.5, max(values) + step + 0.5, step)
        else:
            bins = np.histogram_bin_edges(values, bins=30)
        for lab, rs in by_method.items():
            ax.hist([r[key] for r in rs], bins=bins, alpha=0.45, label=lab, histtype="stepfilled", edgecolor="black",
                    linewidth=0.5)
        ax.set_title(title)
        ax.set_ylabel("samples")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------- CLI
def register(sub) -> None:
    from ..cli import add_model_arguments

    p = sub.add_parser("speculative", help="speculative-decoding comparison on WikiText (NFE, time, PPL, entropy)",
                       description="Generate ~95%% of packed text chunks with sequential decoding, ASSD and the "
                                   "n-gram draft; compare calls, time, judge perplexity and entropy (paper, sec. 6).")
    add_model_arguments(p, asarm_revision="nlp_210k_plus_75k")
    p.add_argument("--data", default=default_data("wikitext-2-raw/wiki.test.raw"),
                   help="text file, or hf:wikitext:wikitext-2-raw-v1@test (default: %(default)s)")
    p.add_argument("--seq-len", type=int, default=512, help="packed chunk length (default: %(default)s)")
    p.add_argument("--visible-frac", type=float, default=0.05, help="fraction of positions visible (default: %(default)s)")
    p.add_argument("--trials", type=int, default=700, help="number of trials (default: %(default)s)")
    p.add_argument("--methods", nargs="+", default=["sequential", "assd", "ngram"],
                   choices=["sequential", "assd", "ngram"], help="sampling methods (default: %(default)s)")
    p.add_argument("--k", type=int, default=5, help="draft length (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default: %(default)s)")
    p.add_argument("--backend", default="cached", choices=["cached", "plain"],
                   help="decoder: cached K/V (fast) or plain recomputation (the paper's); same samples (default: %(default)s)")
    p.add_argument("--baseline-model", default=None,
                   help="also run an off-the-shelf model, e.g. xlnet/xlnet-base-cased (same tokenizer)")
    p.add_argument("--baseline-revision", default=None)
    p.add_argument("--baseline-methods", nargs="+", default=["sequential", "assd"],
                   choices=["sequential", "assd", "ngram"])
    p.add_argument("--judge", default="gpt2-large",
                   help="causal LM for generative perplexity, local dir or hub id; 'none' to skip (default: %(default)s)")
    add_run_arguments(p, "outputs/speculative")
    p.set_defaults(func=run)
