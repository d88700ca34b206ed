"""Speculative-decoding comparison, the paper's WikiText experiment (docs/design.md, docs/protocols.md).

WikiText rows are tokenized with the AS-ARM's tokenizer, each followed by
``</s>``, and packed into ``--seq-len`` chunks. Trial ``t`` takes chunk ``t``,
keeps a uniformly random subset of its positions visible (sorted order) and
generates the rest with every method (sequential, ASSD, n-gram draft;
optionally also with a baseline model such as the off-the-shelf
``xlnet-base-cased``). Per sample it records NFE, CUDA-synchronised
wall-clock per decoder backend, the prompt and the decoded text, the judge's
NLL and the unigram entropy; per method it reports means and standard errors,
and the paper's four tests of sequential vs every other method.

The choices that move the numbers follow ``--protocol`` (``evaluation.protocol``):

* ``--wikitext-specials``: paper: every row (blank ones too) encoded with the
  specials (``<sep><cls>``), then ``</s>``; asarm: non-blank rows as plain
  text, each followed by ``</s>``.
* ``--reuse-chunks``: paper: no, the trials stop when the chunks run out;
  asarm: yes, trial ``t`` takes chunk ``t mod C``.
* ``--visible-rule``: paper: ``int(frac N) + 1``; asarm: ``round(frac N)`` in ``[1, N - 1]``.
* ``--judge-specials``: paper: the judged text is ``tokenizer.decode(seq)``,
  special tokens kept; asarm: special tokens dropped.
* ``--banned``: paper: only ``<mask>`` is never sampled; asarm: no special token is.

``--backends plain cached`` times every sample with both decoders (the
paper's recomputing one and asarm's K/V cache): the first backend's sample is
the one recorded and judged, every backend gets its own time column.

Generative perplexity convention: ``exp(mean token NLL)`` of each decoded
sequence under the judge (default ``gpt2-large``), with the judge's BOS in
front and the text cut to the judge's context; the method's value is the mean
(SE) over sequences. Entropy: unigram entropy (bits) of each sequence's judge
tokens (the AS-ARM's tokens when no judge is loaded), averaged.

``--rescore OUT_DIR --judge NAME`` scores the texts a finished run stored with
another judge (e.g. one that was offline the first time, leaving PPL n/a)
without generating again: the records get exactly the judge fields a fresh run
with that judge would have given them, config.json names the new judge, and
results.json/results.md are rewritten (each file atomically; an interrupted
rescore resumes from ``rescore.progress.jsonl``).
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
import os
import sys
from pathlib import Path

from ..utils import atomic_write_json, atomic_write_text
from .metrics import mean_se, paired_tests, unigram_entropy
from ..sampling import SamplingConfig, add_sampling_arguments
from .batching import batched, throughput
from .protocol import add_protocol_argument, apply_protocol, sampling_config, sampling_value
from .runner import (CONFIG_FILE, RESULTS_FILE, Unit, _open_for_append, add_run_arguments, finalize, load_records,
                     markdown_table, pm, run_evaluation, shard_lock)
from .sources import default_data, load_rows, read_text, require_fields

METRICS = ("nfe", "time_s", "ppl", "entropy", "model_nll")
METRIC_NAMES = {"nfe": "NFE", "time_s": "time (s)", "ppl": "gen. PPL", "entropy": "entropy (bits)",
                "model_nll": "model NLL/token"}
BACKENDS = ("cached", "plain")
VISIBLE_RULES = ("round", "int_plus_one")
# command option -> protocol field, for the options not named like their field
PROTOCOL_OPTIONS = {"visible_rule": "visible", "reuse_chunks": "wikitext_reuse"}
# the record fields score_text writes (judge_error only without a judge): what a rescore replaces
JUDGE_FIELDS = ("ppl", "judge_nll", "judge_tokens", "judge_error", "entropy")
RESCORE_PROGRESS = "rescore.progress.jsonl"  # not samples.*.jsonl: the runner must not read it as results


# ---------------------------------------------------------------------------- data
def load_wikitext_rows(source: str) -> list[str]:
    """WikiText rows as the hub gives them: ``" = Title = \\n"``, blank rows ``""``.

    ``hf:...`` rows are used as given (blank rows included). A local file's
    rows are its lines (``\\r\\n`` normalised), each given back its ``"\\n"``
    like a hub row; a blank line becomes ``""``. (The shared ``wiki.test.raw``
    has its blank rows dropped, so it packs a little differently from the hub.)
    """
    if source.startswith("hf:"):
        rows = load_rows(source, "test", None)
        require_fields(rows, ["text"], source)
        return [r["text"] for r in rows]
    return [line + "\n" if line.strip() else "" for line in read_text(source).splitlines()]


def encode_rows(rows: list[str], tokenizer, specials: bool) -> list[int]:
    """One token stream of ``rows``, every row followed by ``</s>``.

    ``specials=True`` (paper): each row is encoded WITH the tokenizer's specials
    (XLNet appends ``<sep><cls>``), blank rows too (``"" -> <sep><cls></s>``).
    ``specials=False`` (asarm): blank rows are skipped, the others encoded as
    plain text (no specials) and separated by ``</s>``.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos token ('</s>'), which separates packed rows; use XLNet's tokenizer")
    kept = rows if specials else [r for r in rows if r.strip()]
    if not kept:
        return []
    from ..tokenizer import encode_plain

    ids: list[int] = []
    for row_ids in (tokenizer(kept, add_special_tokens=True)["input_ids"] if specials else encode_plain(tokenizer, kept)):
        ids += row_ids + [eos]
    return ids


def pack_chunks(ids: list[int], seq_len: int) -> list[list[int]]:
    """Cut a token stream into full ``seq_len``-token chunks; the last partial chunk is dropped (as the paper's)."""
    if seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {seq_len}")
    chunks = [ids[i:i + seq_len] for i in range(0, len(ids) - seq_len + 1, seq_len)]
    if not chunks:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one chunk of --seq-len {seq_len}")
    return chunks


def load_chunks(source: str, tokenizer, seq_len: int, specials: bool, code: bool = False) -> list[list[int]]:
    """The evaluation's chunks: ``pack_chunks(encode_rows(load_wikitext_rows(source), ...))``.

    ``code`` (Python sources, e.g. the quickstart's held-out files): the whole
    file is one document, encoded with the code whitespace mapping (newlines
    would vanish in the SentencePiece pipeline otherwise), then ``</s>``.
    """
    if code:
        from ..tokenizer import make_encoder

        return pack_chunks(make_encoder(tokenizer, True, specials)(read_text(source)) + [tokenizer.eos_token_id],
                           seq_len)
    return pack_chunks(encode_rows(load_wikitext_rows(source), tokenizer, specials), seq_len)


def num_visible_for(seq_len: int, frac: float, rule: str = "round") -> int:
    """Prompt size ``m`` of an ``N = seq_len`` chunk.

    ``round``: ``round(frac N)`` kept in ``[1, N - 1]``; ``int_plus_one``: ``int(frac N) + 1``
    (the paper's; 26 for N = 512 at 5%), which must leave a token to generate.
    """
    if not 0 < frac < 1:
        raise ValueError(f"--visible-frac must be in (0, 1), got {frac}")
    if rule == "round":
        return min(seq_len - 1, max(1, round(frac * seq_len)))
    if rule == "int_plus_one":
        m = int(seq_len * frac) + 1
        if m >= seq_len:
            raise ValueError(f"--visible-rule int_plus_one shows {m} of {seq_len} tokens, nothing is left to "
                             "generate; lower --visible-frac or use --visible-rule round")
        return m
    raise ValueError(f"--visible-rule must be one of {', '.join(VISIBLE_RULES)}, not {rule!r}")


def build_units(chunks: list[list[int]], trials: int, reuse: bool = True) -> list[Unit]:
    """Trial ``t`` uses chunk ``t`` (``t mod len(chunks)`` with ``reuse``; without it the
    trials stop when the chunks run out, as the paper's loop over its packed data set)."""
    if trials < 1:
        raise ValueError("--trials must be >= 1")
    n = trials if reuse else min(trials, len(chunks))
    return [Unit(f"trial-{t:05d}", {"trial": t, "chunk": t % len(chunks), "num_chunks": len(chunks),
                                    "ids": chunks[t % len(chunks)]})
            for t in range(n)]


def judged_text(ids: list[int], tokenizer, keep_specials: bool, code: bool = False) -> str:
    """The text the judge scores: the whole decoded sequence, special tokens kept
    (``tokenizer.decode(ids)``, the paper's) or dropped (asarm); code: the
    whitespace mapping undone (``decode_text``)."""
    if code:
        from ..tokenizer import decode_text

        return decode_text(ids, tokenizer, True, skip_special=not keep_specials)
    if keep_specials:
        return tokenizer.decode(ids)
    return tokenizer.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------- one trial
def trial_inputs(unit: Unit, seed: int, tokenizer, cfg: dict) -> dict:
    """One trial's masked chunk: ``{"ids", "masked", "sigma", "m", "prompt"}`` (lists), its visible
    subset drawn from a generator seeded with the trial's ``seed`` alone."""
    import torch

    from ..orders import random_sorted_order

    ids = unit.payload["ids"]
    n = len(ids)
    m = num_visible_for(n, cfg["visible_frac"], cfg["visible_rule"])
    sigma = random_sorted_order(1, n, m, generator=torch.Generator().manual_seed(seed))[0]
    masked = torch.tensor(ids).masked_fill(sigma >= m, tokenizer.mask_token_id).tolist()
    return {"ids": ids, "masked": masked, "sigma": sigma.tolist(), "m": m,
            "prompt": judged_text(masked, tokenizer, True, cfg["code"])}


def system_rows(trials: list[dict], seeds: list[int], system: int, device) -> list:
    """The rows of system ``system`` on a batch of trials, each with the generator seeded
    ``seed + 7919 (system + 1)`` of its trial (the same for every backend and batch)."""
    from .batching import Row, row_generator

    return [Row(t["masked"], t["sigma"], t["m"], row_generator(seed, system, device)) for t, seed in zip(trials, seeds)]


def sample_system(system: dict, trials: list[dict], seeds: list[int], index: int, cfg: dict):
    """Every backend's samples of one system on a batch of trials: ``(first backend's results, seconds
    per sample per backend, agree per trial)`` (the same seed per backend: the same samples up to rounding)."""
    from .batching import sample_rows

    model, config = system["model"], cfg["sampling"].for_method(system["method"])
    outs, times = [], {}
    for backend in cfg["backends"]:
        done, seconds = sample_rows(model, system_rows(trials, seeds, index, model.device), config, backend)
        outs.append(done)
        times[backend] = seconds / len(trials)
    agree = [all(o[j].sequence == outs[0][j].sequence for o in outs[1:]) for j in range(len(trials))]
    return outs[0], times, agree


def trial_record(unit: Unit, trial: dict, system: dict, done, times: dict, agree: bool, tokenizer, judge,
                 cfg: dict, batch_size: int) -> dict:
    """The record of one system's sample of one trial (``run_trials``)."""
    import torch

    model, backends = system["model"], cfg["backends"]
    n, m, seq = len(trial["ids"]), trial["m"], done.sequence
    text = judged_text(seq, tokenizer, cfg["judge_specials"], cfg["code"])
    model_lp = float(model.joint_log_prob(torch.tensor([seq]), torch.tensor([trial["sigma"]]), torch.tensor([m]))[0])
    record = {
        "trial": unit.payload["trial"], "chunk": unit.payload["chunk"], "num_chunks": unit.payload["num_chunks"],
        "method": system["label"], "num_visible": m, "length": n, "nfe": done.nfe,
        "time_s": times[backends[0]], "drafted": done.drafted, "accepted": done.accepted,
        "model_nll": -model_lp / (n - m), "prompt": trial["prompt"], "text": text, "batch_size": batch_size,
        **score_text(text, seq, judge),
    }
    if len(backends) > 1:
        record.update({time_key(b): times[b] for b in backends})
        record["backends_agree"] = agree
    return record


def run_trials(units: list[Unit], seeds: list[int], systems: list[dict], tokenizer, judge, cfg: dict) -> list[list[dict]]:
    """Every system on a batch of trials (one batched ``sample`` call per system and backend): per trial,
    records ``{"trial", "chunk", "method", "nfe", "time_s", ...}``, the same whatever the batch.

    ``cfg``: ``visible_frac``, ``visible_rule``, ``sampling`` (a ``SamplingConfig``; each system sets
    its method), ``backends`` (the first one's sample is recorded; with several, ``time_<backend>_s``
    each, from the same seed, and ``backends_agree``), ``judge_specials`` and ``code``. ``time_s``:
    seconds per sample (the batch's time over its trials when ``--batch-size`` > 1).
    """
    trials = [trial_inputs(u, s, tokenizer, cfg) for u, s in zip(units, seeds)]
    out = [[] for _ in units]
    for i, system in enumerate(systems):
        done, times, agree = sample_system(system, trials, seeds, i, cfg)
        for j, unit in enumerate(units):
            out[j].append(trial_record(unit, trials[j], system, done[j], times, agree[j], tokenizer, judge, cfg,
                                       len(units)))
    return out


def run_trial(unit: Unit, seed: int, systems: list[dict], tokenizer, judge, cfg: dict) -> list[dict]:
    """``run_trials`` of one trial (batch 1)."""
    return run_trials([unit], [seed], systems, tokenizer, judge, cfg)[0]


def time_key(backend: str) -> str:
    """The record field of one backend's wall-clock: ``time_plain_s``."""
    return f"time_{backend}_s"


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
        # the baseline samples the same vocabulary as the model (--banned / --protocol)
        base = ASARM(base.xlnet, base.mask_token_id, model.banned_token_ids)
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


def _without_judge(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in JUDGE_FIELDS}


def rescore_record(record: dict, judge) -> dict:
    """``record`` with its judge fields (``JUDGE_FIELDS``) recomputed from its stored ``"text"`` by ``judge``.

    ``judge`` must be loaded (``(model, tokenizer)``): the entropy of a record
    without a judge was computed on the AS-ARM's ids, which records do not keep.
    """
    return {**_without_judge(record), **score_text(record["text"], [], judge)}


def load_rescore_progress(path: Path, judge_name: str, done: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """``{uid: rescored records}`` of an interrupted rescore's progress file (``{}`` if there is none).

    A line is kept only when it is whole, for ``judge_name``, and its records are
    ``done[uid]`` but for the judge fields (not those of a run overwritten since).
    """
    kept: dict[str, list[dict]] = {}
    if not path.exists():
        return kept
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # the tail of an interrupted write
        if not isinstance(row, dict):
            continue
        uid = row.get("uid")
        if row.get("judge") == judge_name and uid in done and \
                [_without_judge(r) for r in row["records"]] == [_without_judge(r) for r in done[uid]]:
            kept[uid] = row["records"]
    return kept


def replace_records(shard_file: Path, records: dict[str, list[dict]]) -> None:
    """Rewrite a ``samples.*.jsonl`` file atomically with ``records[uid]`` for each of its units found there.

    A line that does not parse (the tail of an interrupted write) is dropped, as ``load_records`` ignores it.
    """
    rows = []
    for line in shard_file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("uid") in records:
            row["records"] = records[row["uid"]]
        rows.append(json.dumps(row) + "\n")
    atomic_write_text(shard_file, "".join(rows))


def rescore(out_dir: str | os.PathLike, judge_name: str, device="cpu", progress: bool = True) -> int:
    """Score every stored text of the finished speculative run in ``out_dir`` with ``judge_name``; re-summarise.

    Resumable: each trial's rescored records are appended to
    ``rescore.progress.jsonl`` (tagged with the judge) before any result file
    changes; then every ``samples.*.jsonl`` and config.json (``judge`` set to
    ``judge_name``) are rewritten atomically, results.json/results.md by
    ``finalize`` (the runtime gains ``rescored_judge`` and ``previous_judge``),
    and the progress file is removed. Raises ``ValueError``/``OSError`` naming the
    fix when ``out_dir`` is not a finished speculative run or the judge cannot be loaded.
    """
    out_dir = Path(out_dir)
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"--rescore {out_dir}: no {CONFIG_FILE} there; pass the --output-dir of a finished "
                                "`asarm speculative` run")
    meta = json.loads(path.read_text())
    if meta.get("evaluation") != "speculative":
        raise ValueError(f"--rescore {out_dir}: it holds an '{meta.get('evaluation')}' evaluation, not a "
                         "speculative-decoding run")
    if not judge_name or judge_name == "none":
        raise ValueError("--rescore needs a judge: pass --judge NAME (a causal LM, local directory or hub id)")
    done = load_records(out_dir)
    missing = [u for u in meta["units"] if u not in done]
    if missing:
        raise ValueError(f"--rescore {out_dir}: {len(missing)} of {len(meta['units'])} trials are not finished "
                         f"(first: {missing[0]}); finish the run (same command without --rescore) first")
    check_judge_early(judge_name)
    judge = load_judge_or_reason(judge_name, device)
    if judge[0] is None:
        raise OSError(f"--rescore: {judge[1]}; nothing was changed")
    # hold every shard's lock: no run may write into the folder while its files are rewritten
    shards = sorted({int(f.name.split("-")[1]) for f in out_dir.glob("samples.shard-*-of-*.jsonl")} or {0})
    with ExitStack() as locks:
        for shard in shards:
            locks.enter_context(shard_lock(out_dir, shard))
        return _rescore_locked(out_dir, meta, done, judge, judge_name, path, progress)


def _rescore_locked(out_dir: Path, meta: dict, done: dict, judge, judge_name: str, path: Path, progress: bool) -> int:
    """``rescore``'s writes, under the run's locks."""
    from tqdm.auto import tqdm

    progress_path = out_dir / RESCORE_PROGRESS
    rescored = load_rescore_progress(progress_path, judge_name, done)
    todo = [u for u in meta["units"] if u not in rescored]
    with _open_for_append(progress_path) as f:
        for uid in tqdm(todo, desc="rescore", disable=not progress, file=sys.stderr):
            rescored[uid] = [rescore_record(r, judge) for r in done[uid]]
            f.write(json.dumps({"uid": uid, "judge": judge_name, "records": rescored[uid]}) + "\n")
            f.flush()
            os.fsync(f.fileno())
    for shard_file in sorted(out_dir.glob("samples.*.jsonl")):
        replace_records(shard_file, rescored)
    previous = meta["config"].get("judge")
    meta["config"]["judge"] = judge_name  # what the records now hold: a rerun with this judge matches
    atomic_write_json(path, meta)
    results_path = out_dir / RESULTS_FILE  # the first run's runtime (device, threads...) is kept
    runtime = json.loads(results_path.read_text()).get("runtime", {}) if results_path.is_file() else {}
    results = finalize(out_dir, runtime={**runtime, "rescored_judge": judge_name, "previous_judge": previous})
    progress_path.unlink(missing_ok=True)
    return 0 if results is not None else 1


def run(args) -> int:
    """The command: ``--rescore``, or generate (``evaluate``)."""
    if args.rescore:
        from ..utils import resolve_device

        return rescore(args.rescore, args.judge, resolve_device(args.device), args.progress)
    del args.rescore  # not a setting of the run: its config.json stays as before this option
    evaluate(args)
    return 0


def sampler_variants(config: dict) -> str:
    """``", lookahead full, adaptive k, ..."``: the sampler settings of a run that are not the defaults
    (the table's title names them; ``k`` and ``T`` are always named)."""
    from ..sampling import SamplingConfig

    default = SamplingConfig().to_dict()
    changed = [(name, sampling_value(config, name)) for name in ("lookahead", "adaptive_k", "bonus", "r_atol",
                                                                  "temperature_mode", "ngram_draft")]
    return "".join(f", {name.replace('_', ' ')} {value}" for name, value in changed
                   if value is not None and value != default[name])


def check_options(args) -> SamplingConfig:
    """Every check that needs no file or model, first: the ``SamplingConfig`` (its options then leave
    ``args``: config.json records them under ``"sampling"``), the protocol's values, backends, prompt size, judge."""
    sampling = sampling_config(args, infill=False)
    for method in {*args.methods, *getattr(args, "baseline_methods", [])}:
        sampling.for_method(method)  # every compared method's config is valid too
    apply_protocol(args, PROTOCOL_OPTIONS)  # config.json records the resolved settings
    if len(set(args.backends)) != len(args.backends):
        raise ValueError(f"--backends lists a backend twice: {' '.join(args.backends)}")
    num_visible_for(args.seq_len, args.visible_frac, args.visible_rule)
    check_judge_early(args.judge)
    return sampling


def evaluate(args) -> dict | None:
    """Generate with every method on every trial (resumable) and summarise; returns the results
    (``None`` while other shards are pending). ``args``: this command's options (``default_args``)."""
    from ..loading import load_model_and_tokenizer

    sampling = check_options(args)
    model, tokenizer = load_model_and_tokenizer(args)
    chunks = load_chunks(args.data, tokenizer, args.seq_len, args.wikitext_specials, args.code)
    units = build_units(chunks, args.trials, args.reuse_chunks)
    if len(units) < args.trials:
        print(f"note: the text packs into {len(chunks)} chunks of {args.seq_len} tokens and chunks are not reused "
              f"(--no-reuse-chunks, the paper's): {len(units)} trials instead of --trials {args.trials}",
              file=sys.stderr)
    cfg = {"visible_frac": args.visible_frac, "visible_rule": args.visible_rule, "sampling": sampling,
           "backends": list(args.backends), "judge_specials": args.judge_specials, "code": args.code}

    def make_process():
        systems = load_systems(args, model, tokenizer)
        judge = load_judge_or_reason(args.judge, model.device)
        return lambda units, seeds: run_trials(units, seeds, systems, tokenizer, judge, cfg)

    return run_evaluation("speculative", args, units, make_process)


def default_args(**values) -> argparse.Namespace:
    """This command's options at their defaults, with ``values`` (option names as in ``args``: ``k=7``,
    ``visible_frac=0.1``) set, ready for ``evaluate``; an unknown name is a ``TypeError``."""
    parser = argparse.ArgumentParser(prog="asarm")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["speculative"])
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise TypeError(f"speculative has no option {', '.join(unknown)}")
    for name, value in values.items():
        setattr(args, name, value)
    return args


# ---------------------------------------------------------------------------- summary
def metric_keys(config: dict) -> list[str]:
    """The summarised record fields: ``METRICS``; with several backends ``time_<backend>_s`` each
    instead of ``time_s`` (which repeats the first backend's)."""
    backends = config.get("backends") or []
    if len(backends) < 2:
        return list(METRICS)
    return [k for k in METRICS if k != "time_s"] + [time_key(b) for b in backends]


def metric_name(key: str) -> str:
    """Column name of a metric: ``METRIC_NAMES``, or ``time plain (s)`` for a backend's time."""
    if key in METRIC_NAMES:
        return METRIC_NAMES[key]
    return f"time {key[len('time_'):-len('_s')]} (s)"


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """Per-method means/SEs, the four tests vs sequential, table and ``distributions.png``."""
    keys = metric_keys(config)
    labels = list(dict.fromkeys(r["method"] for r in records))
    by = {lab: sorted((r for r in records if r["method"] == lab), key=lambda r: r["trial"]) for lab in labels}
    per_method = {}
    for lab, rs in by.items():
        row = {"n": len(rs)}
        for key in keys:
            row[key + "_mean"], row[key + "_se"] = mean_se([r.get(key) for r in rs])
        drafted = sum(r["drafted"] for r in rs)
        row["acceptance_rate"] = sum(r["accepted"] for r in rs) / drafted if drafted else None
        if any("backends_agree" in r for r in rs):
            row["backends_agree"] = sum(bool(r.get("backends_agree")) for r in rs)
        errors = {r.get("judge_error") for r in rs} - {None}
        row["ppl_note"] = "; ".join(sorted(errors)) or None
        if batched(rs):  # batch 1: the time columns say it
            row["samples_per_s"] = throughput(rs)
        per_method[lab] = row
    pairs = []
    if "sequential" in by:
        pairs += [("sequential", lab) for lab in labels if lab != "sequential" and ":" not in lab]
    for lab in labels:  # baseline model: its own sequential vs its other methods
        base, _, meth = lab.partition(":")
        if meth and meth != "sequential" and f"{base}:sequential" in by:
            pairs.append((f"{base}:sequential", lab))
    tests = {f"{ref} vs {lab}": {key: paired_tests([r.get(key) for r in by[ref]], [r.get(key) for r in by[lab]])
                                 for key in keys}
             for ref, lab in pairs}
    trials = {r["trial"] for r in records}
    plot = plot_distributions(by, Path(out_dir) / "distributions.png")
    results = {"methods": per_method, "paired_tests": tests, "plot": plot,
               "num_trials": len(trials), "num_chunks": records[0].get("num_chunks") if records else None,
               "ppl_convention": "per-sequence exp(mean judge token NLL), judge BOS prepended, text cut to the "
                                 "judge's context; mean and SE over sequences"}
    return results, format_table(per_method, tests, config, results)


def format_table(per_method: dict, tests: dict, config: dict, results: dict | None = None) -> str:
    """Markdown: one row per method (one time column per backend), then the tests' p-values."""
    keys = metric_keys(config)
    time_cols = [k for k in keys if k.startswith("time_")]
    header = ["method", "n", "NFE", *(metric_name(k) for k in time_cols), "gen. PPL", "entropy (bits)",
              "model NLL/token", "accept rate"]
    fast = any("samples_per_s" in r for r in per_method.values())
    header += ["samples/s"] if fast else []
    rows = []
    for lab, r in per_method.items():
        ppl = pm(r["ppl_mean"], r["ppl_se"]) if r["ppl_mean"] == r["ppl_mean"] else f"n/a ({r['ppl_note']})"
        acc = f"{r['acceptance_rate']:.3f}" if r["acceptance_rate"] is not None else "-"
        rows.append([lab, r["n"], pm(r["nfe_mean"], r["nfe_se"], 1),
                     *(pm(r[k + "_mean"], r[k + "_se"], 3) for k in time_cols), ppl,
                     pm(r["entropy_mean"], r["entropy_se"], 3), pm(r["model_nll_mean"], r["model_nll_se"], 3), acc]
                    + ([f"{r['samples_per_s']:.2f}" if r.get("samples_per_s") else "n/a"] if fast else []))
    model = config.get("model")
    model = model if os.path.isdir(str(model)) else f"{model} ({config.get('revision')})"
    out = [f"Speculative decoding: model {model}, "
           f"k={sampling_value(config, 'k')}, T={sampling_value(config, 'temperature')}, visible {config.get('visible_frac')} "
           f"({config.get('visible_rule')}), seq-len {config.get('seq_len')}, "
           f"rows {'with' if config.get('wikitext_specials') else 'without'} specials, "
           f"judged text {'with' if config.get('judge_specials') else 'without'} specials, "
           f"banned {config.get('banned')}{sampler_variants(config)}", "", markdown_table(header, rows)]
    results = results or {}
    if results.get("num_trials") is not None and results["num_trials"] < (config.get("trials") or 0):
        out += ["", f"{results['num_trials']} trials, not --trials {config['trials']}: the text packs into "
                    f"{results['num_chunks']} chunks and chunks are not reused (--no-reuse-chunks)."]
    if len(time_cols) > 1:
        out += ["", f"Every sample timed with each backend ({', '.join(config['backends'])}) from the same seed; "
                    f"the first backend's sample is the one scored."]
    if tests:
        t_rows = []
        for pair, by_metric in tests.items():
            for key, t in by_metric.items():
                if not t["n"]:
                    continue  # e.g. perplexity without a judge
                t_rows.append([pair, metric_name(key), t["n"], _p(t["mean_diff"]), _p(t["ttest_p"]),
                               _p(t["ttest_ind_p"]), _p(t["wilcoxon_p"]), _p(t["mannwhitney_p"])])
        out += ["", "Tests (two-sided p-values; mean diff = first - second; Wilcoxon zero_method=zsplit):", "",
                markdown_table(["pair", "metric", "n", "mean diff", "paired t", "independent t", "Wilcoxon",
                                "Mann-Whitney"], t_rows)]
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
    for ax, key, title in ((axes[0], "nfe", "network calls (NFE)"), (axes[1], "time_s", "wall-clock (s), first backend")):
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
    from ..loading import add_model_arguments

    p = sub.add_parser("speculative", help="speculative-decoding comparison on WikiText (NFE, time, PPL, entropy)",
                       description="Generate ~95% of packed text chunks with sequential decoding, ASSD and the "
                                   "n-gram draft; compare calls, time, judge perplexity and entropy (paper, sec. 6).")
    add_model_arguments(p, asarm_revision="nlp_210k_plus_75k")
    p.add_argument("--data", default=default_data("wikitext-2-raw/wiki.test.raw"),
                   help="text file, or hf:wikitext:wikitext-2-raw-v1@test (default: %(default)s)")
    add_protocol_argument(p)
    # one flag per SamplingConfig field; --methods and --backends list several, one config each
    add_sampling_arguments(p, skip=("method", "backend"), defaults={"ngram_draft": "from --protocol",
                                                                    "draft_only_temperature": "from --protocol"})
    p.add_argument("--seq-len", type=int, default=512, help="packed chunk length (default: %(default)s)")
    p.add_argument("--wikitext-specials", action=argparse.BooleanOptionalAction, default=None,
                   help="encode every row (blank ones too) with the tokenizer's specials (<sep><cls>) before its "
                        "</s>, as the paper; --no-wikitext-specials: non-blank rows as plain text joined by </s> "
                        "(default: from --protocol)")
    p.add_argument("--visible-frac", type=float, default=0.05, help="fraction of positions visible (default: %(default)s)")
    p.add_argument("--visible-rule", default=None, choices=VISIBLE_RULES,
                   help="prompt size: round(frac N) or int(frac N) + 1 (the paper's) (default: from --protocol)")
    p.add_argument("--trials", type=int, default=700, help="number of trials (default: %(default)s)")
    p.add_argument("--reuse-chunks", action=argparse.BooleanOptionalAction, default=None,
                   help="with fewer chunks than --trials, wrap around; --no-reuse-chunks stops when the chunks "
                        "run out, as the paper (default: from --protocol)")
    p.add_argument("--methods", nargs="+", default=["sequential", "assd", "ngram"],
                   choices=["sequential", "assd", "ngram"], help="sampling methods (default: %(default)s)")
    p.add_argument("--backends", nargs="+", default=["cached"], choices=BACKENDS,
                   help="decoders that time every sample: cached K/V (fast) and/or plain recomputation (the "
                        "paper's), e.g. '--backends plain cached' for both time columns; same seed, same samples; "
                        "the first one's sample is scored (default: %(default)s)")
    p.add_argument("--banned", default=None, choices=["specials", "mask"],
                   help="never sample any special token, or only <mask> (the paper's) (default: from --protocol)")
    p.add_argument("--baseline-model", default=None,
                   help="also run an off-the-shelf model, e.g. xlnet/xlnet-base-cased (same tokenizer)")
    p.add_argument("--baseline-revision", default=None)
    p.add_argument("--baseline-methods", nargs="+", default=["sequential", "assd"],
                   choices=["sequential", "assd", "ngram"])
    p.add_argument("--judge", default="gpt2-large",
                   help="causal LM for generative perplexity, local dir or hub id; 'none' to skip (default: %(default)s)")
    p.add_argument("--rescore", default=None, metavar="OUT_DIR",
                   help="generate nothing: score the texts stored in the finished run OUT_DIR with --judge (e.g. "
                        "one that was offline the first time) and rewrite its results; other options are ignored")
    p.add_argument("--judge-specials", action=argparse.BooleanOptionalAction, default=None,
                   help="judge the decoded text with its special tokens kept (tokenizer.decode, the paper's); "
                        "--no-judge-specials drops them (default: from --protocol)")
    p.add_argument("--code", action="store_true",
                   help="the data is Python source: one document per file, whitespace mapped to XLNet's specials "
                        "(the quickstart's held-out files)")
    add_run_arguments(p, "outputs/speculative")
    p.set_defaults(func=run)
