"""Code infilling on HumanEval-infilling (docs/design.md, Evaluations; docs/protocols.md).

Each task's masked middle gets exactly as many mask tokens as its canonical
solution has (after the code whitespace mapping of ``asarm.tokenizer``:
newline -> ``<cls>``, tab -> ``<sep>``, two spaces -> ``<unk>``, three ->
``<pad>``); the AS-ARM fills them (any method, ``--num-samples`` rows per task,
one batch), the completion is decoded in context and mapped back to
whitespace, and ``prompt + completion + suffix + test + check(entry_point)``
runs in an isolated process (``execution``).

Self-checks: ``--method oracle`` runs that whole path with the canonical
middle's token ids written where the samples go (it measures what tokenizing,
decoding and stitching lose; ``failure_cause`` names it per task);
``--method canonical`` runs the canonical solutions untokenized (the harness).

Protocol choices (``--protocol``, ``evaluation.protocol``): ``--code-encoding``
(``continuation``: a part that starts inside a line is encoded as the
continuation it is; ``separate``: the paper's, each part on its own),
``--context`` (``trim`` to ``--max-length``, or ``full``: the paper's),
``--banned`` and ``--k``. Two bugs of the paper's script are NOT reproduced
under either protocol: it decodes the middle alone and drops its first
character, and it slices ``[len(prefix):-len(suffix)]``, an empty completion
whenever the suffix is empty; here the middle is decoded in context from its
own start and length.

pass@k uses the unbiased estimator over ``n = --num-samples`` samples per task.

Existing samples (``--score-samples FILE``): a JSONL file in the official
human-eval-infilling format (``{"task_id", "completion"}`` per line, any number
of lines per task) is executed and summarised like a generated run, with no
model loaded; config.json records the file's path and SHA-256. Every finished
run writes its completions in that format to ``official_samples.jsonl``, so
``--score-samples`` reproduces its pass@k (e.g. after an executor fix) without
generating again.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Callable

from ..tokenizer import (CODE_WHITESPACE, SPIECE_UNDERLINE, decode_text, encode_code_whitespace, is_sentencepiece,
                         lossy_reason, make_encoder, opens_segment)
from ..utils import atomic_write_text
from .execution import GUARD_RESIDUAL_RISKS, check_many, isolation_mode, official_harness_usable, validate_limits
from .metrics import mean_se, pass_at_k
from ..sampling import add_sampling_arguments
from .batching import batched, throughput
from .protocol import add_protocol_argument, apply_protocol, sampling_config
from .runner import Unit, add_run_arguments, markdown_table, pm, run_evaluation
from .sources import default_data, load_rows, read_jsonl, require_fields

BENCHMARKS = {
    "single-line": "HumanEval-SingleLineInfilling.jsonl.gz",
    "multi-line": "HumanEval-MultiLineInfilling.jsonl.gz",
    "random-span": "HumanEval-RandomSpanInfilling.jsonl.gz",
    "random-span-light": "HumanEval-RandomSpanInfillingLight.jsonl.gz",
}
FIELDS = ["task_id", "entry_point", "prompt", "suffix", "canonical_solution", "test"]
SAMPLE_FIELDS = ("task_id", "completion")  # the official harness's samples format
EXPORT_FILE = "official_samples.jsonl"
SAMPLED = ("sequential", "assd", "ngram")  # the --method values that sample (the others are self-checks)


def load_problems(source: str, tasks: list[str] | None = None) -> list[dict]:
    """Problems of a HumanEval-infilling file (or ``hf:...``), optionally only task ids containing one of ``tasks``."""
    rows = load_rows(source, "test", read_jsonl)
    require_fields(rows, FIELDS, source)
    return select_tasks(rows, tasks, source)


def select_tasks(problems: list[dict], tasks: list[str] | None, source: str) -> list[dict]:
    """The problems whose task id contains one of ``tasks`` (all for ``None``); ``ValueError`` if none is left."""
    if not tasks:
        return problems
    rows = [r for r in problems if any(t in r["task_id"] for t in tasks)]
    if not rows:
        raise ValueError(f"no tasks selected: no task id in '{source}' contains {', '.join(tasks)}")
    return rows


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes (recorded so that a results file names exactly what it scored)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_samples(path: str, problems: list[dict], source: str) -> dict[str, list[str]]:
    """``{task_id: [completion, ...]}`` of an official-format samples file, in file order per task.

    ``problems``: the whole benchmark, to check the ids against. Other fields of
    a row are ignored (the official harness's ``_results.jsonl`` can be scored
    too). ``ValueError`` naming the row and the fix for: no rows, a missing
    field, a non-string value, a task id the benchmark does not have.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"samples file '{path}' not found (or not a regular file); pass the JSONL file "
                                f"to score, e.g. a finished run's {EXPORT_FILE}")
    rows = read_jsonl(path)  # names the line of malformed JSON
    if not rows:
        raise ValueError(f"samples file '{path}' holds no samples; expected one JSON object per line with "
                         f"{' and '.join(SAMPLE_FIELDS)}")
    known = {p["task_id"] for p in problems}
    samples: dict[str, list[str]] = {}
    for i, row in enumerate(rows, 1):
        where = f"samples file '{path}', row {i}"
        missing = [f for f in SAMPLE_FIELDS if f not in row]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(missing)}; the official samples format is "
                             '{"task_id": ..., "completion": ...} per line')
        bad = [f for f in SAMPLE_FIELDS if not isinstance(row[f], str)]
        if bad:
            raise ValueError(f"{where}: {', '.join(bad)} must be a string, got "
                             f"{', '.join(type(row[f]).__name__ for f in bad)}")
        if row["task_id"] not in known:
            raise ValueError(f"{where}: task id '{row['task_id']}' is not in the benchmark '{source}'; pass the "
                             "benchmark the samples were made for (--benchmark or --data)")
        samples.setdefault(row["task_id"], []).append(row["completion"])
    return samples


def sample_units(problems: list[dict], samples: dict[str, list[str]]) -> list[Unit]:
    """One unit per problem that has samples, in the benchmark's order: payload ``problem + {"completions"}``."""
    return [Unit(p["task_id"], {**p, "completions": samples[p["task_id"]]}) for p in problems
            if p["task_id"] in samples]


def export_samples(records: list[dict], path: Path) -> None:
    """Write ``records``' completions to ``path`` (atomically) in the official format, one line per sample."""
    lines = [json.dumps({"task_id": r["task_id"], "completion": r["completion"]}) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def fit_context(prefix: list[int], middle_len: int, suffix: list[int],
                max_length: int | None) -> tuple[list[int], list[int]]:
    """Trim the prefix (from the left) and suffix (from the right) so that the whole input fits ``max_length``.

    ``max_length=None`` (``--context full``, the paper's) keeps both whole: XLNet's
    positions are relative, so any length runs, at memory quadratic in it.
    Raises ``ValueError`` when the middle alone leaves no room for one visible token.
    """
    if max_length is None:
        return prefix, suffix
    budget = max_length - middle_len
    if budget < 1:
        raise ValueError(f"the infill needs {middle_len} tokens but the model allows {max_length} in all "
                         "(--max-length); it cannot be generated with context (or pass --context full)")
    keep_suffix = min(len(suffix), max(budget // 2, budget - len(prefix)))
    keep_prefix = min(len(prefix), budget - keep_suffix)
    return prefix[len(prefix) - keep_prefix:], suffix[:keep_suffix]


def ends_mid_segment(text: str, code: bool) -> bool:
    """True when text that follows ``text`` continues its last tokenizer segment (an infill boundary inside a line).

    That is: ``text`` is non-empty and, with the code whitespace mapping, does
    not end in whitespace that becomes a special token (newline, tab, two
    spaces), after which the tokenizer opens a new segment anyway.
    """
    if not text:
        return False
    return not (code and encode_code_whitespace(text).endswith(tuple(token for _, token in CODE_WHITESPACE)))


# Between the two characters of '' and ``, which the XLNet normaliser would turn into one ".
_QUOTE_PAIR = re.compile(r"(?<=')(?=')|(?<=`)(?=`)")


def lossless_encoder(tokenizer, code: bool) -> Callable[..., list[int]]:
    """``encode(text, continues=False) -> ids`` that ``decode_text`` inverts wherever the vocabulary allows.

    ``make_encoder``'s encoding plus two fixes, needed only where it would lose
    text (elsewhere the ids are the same):

    * a segment that opens with a space (e.g. the odd space of a run of five,
      ``<unk><unk> x``) gets an explicit ``▁`` piece first: the tokenizer's
      segment marker and a real space are the same ``▁``, so without it the
      space is read back as the marker and dropped;
    * ``''`` and ````` are encoded as two pieces, so the normaliser does not
      turn them into one ``"``.

    Left: characters outside the vocabulary (``<unk>``) and the normaliser's
    Unicode forms. Other than SentencePiece fast tokenizers: ``make_encoder``.
    """
    if not (is_sentencepiece(tokenizer) and hasattr(tokenizer, "backend_tokenizer")):
        return make_encoder(tokenizer, code)
    plain = make_encoder(tokenizer, code=False)
    marker = tokenizer.convert_tokens_to_ids(SPIECE_UNDERLINE)
    specials = re.compile("(" + "|".join(map(re.escape, sorted(tokenizer.added_tokens_encoder, key=len, reverse=True)))
                          + ")")

    def encode(text: str, continues: bool = False) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(specials.split(encode_code_whitespace(text) if code else text)):
            if i % 2:
                ids.append(tokenizer.convert_tokens_to_ids(part))
                continue
            opens = bool(part) and not (continues and i == 0)
            if opens and part[0] == " ":
                ids.append(marker)
                opens = False
            for j, chunk in enumerate(c for c in _QUOTE_PAIR.split(part) if c):
                ids += plain(chunk, continues=not opens or j > 0)
        return ids

    return encode


def encode_parts(problem: dict, tokenizer, encoding: str, code: bool) -> tuple[list[int], list[int], list[int]]:
    """``(prefix, middle, suffix)`` ids of a problem's prompt, canonical solution and suffix.

    ``encoding="continuation"`` (asarm): ``lossless_encoder``; the prompt is
    encoded on its own and the middle and the suffix with ``continues=True``
    when the text before them ends inside a line, so that the three
    concatenated decode to the concatenated text. ``"separate"`` (the
    paper's): ``make_encoder``, each part on its own, as if it opened a
    segment; the mask count is then the middle's standalone length.
    """
    prompt, middle, suffix = problem["prompt"], problem["canonical_solution"], problem["suffix"]
    if encoding == "separate":
        encode = make_encoder(tokenizer, code)
        return encode(prompt), encode(middle), encode(suffix)
    if encoding != "continuation":
        raise ValueError(f"--code-encoding must be 'continuation' or 'separate', not {encoding!r}")
    encode = lossless_encoder(tokenizer, code)
    return (encode(prompt), encode(middle, continues=ends_mid_segment(prompt, code)),
            encode(suffix, continues=ends_mid_segment(prompt + middle, code)))


def build_inputs(problem: dict, tokenizer, code: bool, encoding: str = "continuation",
                 max_length: int | None = 512) -> dict:
    """The model input of one problem.

    Returns ``{"prefix", "middle", "suffix", "num_masked", "ids", "starts_segment"}``:
    ``middle`` holds the canonical solution's ids (the oracle's "sample");
    ``ids = prefix + [mask] * num_masked + suffix`` with prefix and suffix
    trimmed by ``fit_context`` (``max_length=None``: not trimmed);
    ``num_masked = max(1, len(middle))`` (an empty middle still gets one slot);
    ``starts_segment``: the middle opens a tokenizer segment (the prompt
    encodes to nothing or its last id is a special token), for ``completion_text``.
    """
    mask_id = tokenizer.mask_token_id
    prefix, middle, suffix = encode_parts(problem, tokenizer, encoding, code)
    # Decided on the whole prompt: the completion is stitched after all of it, whatever the model was shown.
    starts_segment = opens_segment(prefix, tokenizer)
    num_masked = max(1, len(middle))
    prefix, suffix = fit_context(prefix, num_masked, suffix, max_length)
    if not prefix and not suffix:
        raise ValueError(f"{problem['task_id']}: nothing visible to condition on")
    return {"prefix": prefix, "middle": middle, "suffix": suffix, "num_masked": num_masked,
            "ids": prefix + [mask_id] * num_masked + suffix, "starts_segment": starts_segment}


def completion_text(middle: list[int], inputs: dict, tokenizer, code: bool) -> str:
    """The middle's text, decoded in context (after the prompt) and mapped back to whitespace.

    Decoding the middle with ``starts_segment`` from ``build_inputs`` keeps its
    first character and a space it opens with mid-line (the paper decodes the
    middle alone and drops its first character).
    """
    return decode_text(middle, tokenizer, code, starts_segment=inputs["starts_segment"])


def middle_loss(problem: dict, tokenizer, code: bool, encoding: str) -> str | None:
    """Why the canonical middle does not come back through ``build_inputs`` + ``completion_text``; ``None`` if it does.

    The causes: the paper's separate encoding at a mid-line boundary (the
    middle gains a space), a character outside the vocabulary, the
    normaliser's Unicode forms, and (``separate`` only, which has no fixes)
    whatever ``lossy_reason`` names.
    """
    inputs = build_inputs(problem, tokenizer, code, encoding, max_length=None)
    text = problem["canonical_solution"]
    if completion_text(inputs["middle"], inputs, tokenizer, code) == text:
        return None
    if encoding == "separate":
        if ends_mid_segment(problem["prompt"], code) and not text[:1].isspace():
            return "separate encoding: a middle that starts inside a line gains a space"
        return lossy_reason(text, tokenizer, code) or "decoded middle differs"
    mapped_unk = (encode_code_whitespace(text) if code else text).count(tokenizer.unk_token)
    if inputs["middle"].count(tokenizer.unk_token_id) > mapped_unk:
        return "a character outside the vocabulary (becomes <unk>)"
    return "normaliser: Unicode normalisation or accents" if not text.isascii() else "decoded middle differs"


def failure_cause(problem: dict, status: str, tokenizer, code: bool, encoding: str) -> str:
    """Why the oracle failed a task: ``middle_loss``, else (the middle came back intact) the executor's status."""
    return middle_loss(problem, tokenizer, code, encoding) or f"execution: {status}"


def task_inputs(unit: Unit, tokenizer, cfg: dict) -> dict:
    """``build_inputs`` of one task under ``cfg``'s encoding and context."""
    max_length = cfg["max_length"] if cfg["context"] == "trim" else None
    return build_inputs(unit.payload, tokenizer, cfg["code_whitespace"], cfg["code_encoding"], max_length)


def task_rows(inputs: dict, seed: int, mask_id: int, cfg: dict, device) -> list:
    """The task's ``--num-samples`` rows (``batching.Row``): the order from the task's seed, sample
    ``i``'s generator ``row_generator(seed, i)``, whatever batch the task is in."""
    import torch

    from .batching import Row, row_generator, unit_orders

    ids = torch.tensor([inputs["ids"]] * cfg["num_samples"])
    sigma, m = unit_orders(ids, mask_id, cfg["order"] == "random", seed)
    return [Row(inputs["ids"], sigma[i].tolist(), int(m[i]), row_generator(seed, i, device)) for i in range(len(ids))]


def generate_batch(units: list[Unit], seeds: list[int], model, tokenizer, cfg: dict) -> list[list[dict]]:
    """Per task, ``num_samples`` completions ``[{"completion", "nfe", "num_masked", "input_tokens", "time_s"}]``,
    every task's rows sampled in ONE batched call (``batching.sample_rows``).

    ``method="oracle"`` writes the canonical middle's ids where the samples
    would go (no model): the rest of the path (inputs, decoding, stitching) is
    the one every method takes.
    """
    from .batching import sample_rows

    code, n = cfg["code_whitespace"], cfg["num_samples"]
    inputs = [task_inputs(u, tokenizer, cfg) for u in units]
    if cfg["method"] == "oracle":
        filled = [([x["middle"]] * n, [0] * n, 0.0) for x in inputs]
    else:
        rows = [task_rows(x, s, model.mask_token_id, cfg, model.device) for x, s in zip(inputs, seeds)]
        done, seconds = sample_rows(model, [r for task in rows for r in task], cfg["sampling"])
        filled, i = [], 0
        for x in inputs:
            start, part, i = len(x["prefix"]), done[i:i + n], i + n
            filled.append(([c.sequence[start:start + x["num_masked"]] for c in part], [c.nfe for c in part],
                           seconds / len(done)))
    return [[{"completion": completion_text(middle, x, tokenizer, code), "nfe": int(nfe), "num_masked": x["num_masked"],
              "input_tokens": len(x["ids"]), "time_s": seconds, "batch_size": len(units)}
             for middle, nfe in zip(middles, nfes)] for x, (middles, nfes, seconds) in zip(inputs, filled)]


def generate(unit: Unit, seed: int, model, tokenizer, cfg: dict) -> list[dict]:
    """``generate_batch`` of one task (batch 1)."""
    return generate_batch([unit], [seed], model, tokenizer, cfg)[0]


def given_samples(unit: Unit, cfg: dict) -> list[dict]:
    """The samples of a task that is not generated: ``--score-samples``'s completions or the canonical solution."""
    if cfg["method"] == "samples":  # nothing generated, so no NFE or masks to report
        return [{"completion": c, "nfe": None, "num_masked": None, "input_tokens": None}
                for c in unit.payload["completions"]]
    return [{"completion": unit.payload["canonical_solution"], "nfe": 0, "num_masked": 0,
             "input_tokens": 0}] * cfg["num_samples"]


def process_tasks(units: list[Unit], seeds: list[int], model, tokenizer, cfg: dict, harness: bool) -> list[list[dict]]:
    """Generate (or take the canonical solution, or the given ``completions``) for every task of a batch,
    then execute them all: per task, one record per sample.

    Oracle records that fail also get ``"cause"`` (``failure_cause``).
    """
    if cfg["method"] in ("samples", "canonical"):
        samples = [given_samples(u, cfg) for u in units]
    else:
        samples = generate_batch(units, seeds, model, tokenizer, cfg)
    # the executor gets each problem alone (not --score-samples' completions)
    problems = [{k: v for k, v in u.payload.items() if k != "completions"} for u in units]
    results = iter(check_many([(p, s["completion"]) for p, task in zip(problems, samples) for s in task],
                              cfg["timeout"], cfg["memory_mb"], cfg["workers"], official=harness))
    out = []
    for problem, task in zip(problems, samples):
        records = [{"task_id": problem["task_id"], "sample": i, **s, "passed": r.passed, "status": r.status,
                    "check": r.check} for i, (s, r) in enumerate(zip(task, results))]
        if cfg["method"] == "oracle":
            for r in records:
                if not r["passed"]:
                    r["cause"] = failure_cause(problem, r["status"], tokenizer, cfg["code_whitespace"],
                                               cfg["code_encoding"])
        out.append(records)
    return out


def process_task(unit: Unit, seed: int, model, tokenizer, cfg: dict, harness: bool) -> list[dict]:
    """``process_tasks`` of one task (batch 1)."""
    return process_tasks([unit], [seed], model, tokenizer, cfg, harness)[0]


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


def refuse_untrusted_under_guard(args) -> None:
    """``--score-samples`` runs code from elsewhere: under the in-process guard alone (no bubblewrap) refused
    unless ``--allow-guard``; any run under the guard alone prints what a program can still do there."""
    mode, why = isolation_mode()
    if mode != "guard":
        return
    if getattr(args, "score_samples", None) and not getattr(args, "allow_guard", False):
        raise ValueError(f"--score-samples runs untrusted code, but this machine only has the {why}; "
                         "install bubblewrap (apt-get install bubblewrap) or pass --allow-guard if you trust "
                         "the samples (see docs/executor.md: what a program can still do under the guard)")
    print(f"note: generated code runs under the in-process guard alone; {GUARD_RESIDUAL_RISKS}", file=sys.stderr)


def run(args) -> int:
    from ..loading import load_model_and_tokenizer, load_tokenizer_alone, mark_no_model

    # first, before anything is loaded or written: a bad sampler option fails here, naming it
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1 (programs run at once), got {args.workers}")
    method = args.method or ("assd" if not args.score_samples else None)
    sampling = sampling_config(args, infill=True, method=method if method in SAMPLED else None)
    apply_protocol(args, {"context": "code_context"})  # config.json records the resolved values
    source = args.data or default_data(f"human-eval-infilling/{BENCHMARKS[args.benchmark]}")
    if args.score_samples:
        units = scoring_units(args, source)
    else:
        del args.score_samples  # not a setting of a generated run: its config.json stays as before this option
        args.method = method
        units = [Unit(p["task_id"], p) for p in load_problems(source, args.tasks)]
    if args.num_samples < 1:
        raise ValueError("--num-samples must be >= 1")
    validate_limits(args.timeout, args.memory_mb)  # before any model is loaded
    official, args.harness_used = choose_harness(args.harness)
    refuse_untrusted_under_guard(args)
    cfg = {k: getattr(args, k) for k in ("method", "order", "num_samples", "max_length", "timeout", "memory_mb",
                                         "workers", "code_whitespace", "code_encoding", "context")}
    cfg["sampling"] = sampling

    # self-checks run no model; what they use is set on args before config.json records it
    tokenizer = load_tokenizer_alone(args) if args.method == "oracle" else None
    if args.method == "canonical":
        mark_no_model(args)

    def make_process():
        model, tok = None, tokenizer
        if args.method not in ("oracle", "canonical", "samples"):
            # --banned is applied there; code keeps its whitespace specials sampleable (banned_ids_for)
            model, tok = load_model_and_tokenizer(args)
        return lambda units, seeds: process_tasks(units, seeds, model, tok, cfg, official)

    run_evaluation("infill-code", args, units, make_process)
    return 0


def scoring_units(args, source: str) -> list[Unit]:
    """``--score-samples``: the units of the samples file; sets ``args`` so that config.json says what was scored.

    The method becomes ``"samples"``, no model is named (none is loaded), the
    file's SHA-256 is recorded and ``--num-samples`` is the file's (most) rows per task.
    """
    if args.method is not None:
        raise ValueError(f"--score-samples scores the file's completions; drop --method {args.method}")
    path = args.score_samples
    problems = load_problems(source)
    samples = load_samples(path, problems, source)  # ids checked against the whole benchmark, before --tasks
    units = sample_units(select_tasks(problems, args.tasks, source), samples)
    if not units:
        raise ValueError(f"no tasks selected: none of the tasks of '{path}' matches --tasks {' '.join(args.tasks)}")
    args.method, args.model, args.revision, args.tokenizer = "samples", None, None, None
    args.score_samples, args.samples_sha256 = str(Path(path).resolve()), file_sha256(path)
    args.num_samples = max(len(u.payload["completions"]) for u in units)
    return units


def summarize(records: list[dict], config: dict, out_dir: Path) -> tuple[dict, str]:
    """pass@k for k in 1, 10, 100 (those <= n) and k = n; NFE statistics; timeouts.

    Also writes the completions to ``out_dir/official_samples.jsonl`` (``export_samples``),
    the input of ``--score-samples``.
    """
    from ..loading import describe_model

    export_samples(records, Path(out_dir) / EXPORT_FILE)
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
    fast = batched(records)
    if fast:  # samples per second of sampling (execution not included), for --batch-size > 1
        results["samples_per_s"] = throughput(records)
    causes: dict[str, int] = {}
    for r in records:
        if "cause" in r:
            causes[r["cause"]] = causes.get(r["cause"], 0) + 1
    if config.get("method") == "oracle":
        results["failures_by_cause"] = dict(sorted(causes.items(), key=lambda kv: -kv[1]))
    rate = [f"{results['samples_per_s']:.2f}" if results["samples_per_s"] else "n/a"] if fast else []
    table = markdown_table(["benchmark", "method", "tasks", "n"] + list(pass_k) + ["NFE", "timeouts"]
                           + (["samples/s"] if fast else []),
                           [[config.get("benchmark"), config.get("method"), len(by_task), n]
                            + [round(v, 2) for v in pass_k.values()] + [pm(nfe_mean, nfe_se, 1), timeouts] + rate])
    if causes:
        table += "\n\nOracle failures by cause:\n\n" + markdown_table(["cause", "samples"], list(causes.items()))
    if config.get("score_samples"):  # nothing was encoded or generated: the file is what was scored
        what = f"samples {config['score_samples']} (sha256 {str(config.get('samples_sha256'))[:12]}), " \
               f"harness: {config.get('harness_used')}"
    else:
        what = f"{describe_model(config)}, harness: {config.get('harness_used')}, " \
               f"encoding: {config.get('code_encoding')}, context: {config.get('context')}"
    return results, f"Code infilling (HumanEval-infilling), {what}\n\n{table}"


def register(sub) -> None:
    from ..loading import add_model_arguments

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
    p.add_argument("--method", default=None, choices=["sequential", "assd", "ngram", "oracle", "canonical"],
                   help="sampling method (default: assd); 'oracle' writes the canonical middle's token ids in place of samples "
                        "(tokenization, decoding and stitching self-check; no model: --tokenizer's or "
                        "the offline tokenizer); 'canonical' runs the reference solutions untokenized "
                        "(harness self-check; no model, no tokenizer)")
    add_protocol_argument(p)
    add_sampling_arguments(p, skip=("method",), defaults={"k": "from --protocol (asarm 5, paper 10)",
                                                          "ngram_draft": "from --protocol",
                                                          "draft_only_temperature": "from --protocol"})
    p.add_argument("--banned", default=None, choices=["specials", "mask"],
                   help="never sample any special token, or only <mask> (the paper's); the whitespace specials "
                        "stay sampleable either way (default: from --protocol)")
    p.add_argument("--code-encoding", default=None, choices=["continuation", "separate"],
                   help="'continuation': a middle or suffix starting inside a line is encoded as the continuation "
                        "it is (lossless); 'separate': each part on its own, the paper's (the mask count follows "
                        "it) (default: from --protocol)")
    p.add_argument("--context", default=None, choices=["trim", "full"],
                   help="'trim' prompt and suffix to --max-length, or condition on them 'full' (the paper's; "
                        "memory grows with the input) (default: from --protocol)")
    p.add_argument("--order", default="sorted", choices=["sorted", "random"], help="order of the masked positions")
    p.add_argument("--num-samples", type=int, default=1, help="samples per task, n for pass@k (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=512,
                   help="most tokens the model takes with --context trim (default: %(default)s)")
    p.add_argument("--no-code-whitespace", dest="code_whitespace", action="store_false",
                   help="do not map whitespace to XLNet's specials (for tokenizers that keep whitespace)")
    p.add_argument("--score-samples", default=None, metavar="FILE",
                   help="score existing samples instead of generating: a JSONL file in the official format "
                        "({\"task_id\", \"completion\"} per line, several lines per task for pass@k), e.g. a "
                        f"finished run's {EXPORT_FILE}; no model is loaded and --num-samples is the file's rows per task")
    p.add_argument("--allow-guard", action="store_true",
                   help="let --score-samples run where bubblewrap does not work (the in-process guard alone: "
                        "docs/executor.md lists what an untrusted program can still do there)")
    p.add_argument("--harness", default="auto", choices=["auto", "official", "builtin"],
                   help="official human_eval_infilling harness if usable (auto), or the builtin executor")
    p.add_argument("--timeout", type=float, default=3.0, help="wall-clock seconds per program (default: %(default)s)")
    p.add_argument("--memory-mb", type=int, default=1024, help="address-space limit per program (default: %(default)s)")
    p.add_argument("--workers", type=int, default=None, help="programs run at once (default: CPU count)")
    add_run_arguments(p, "outputs/infill_code")
    p.set_defaults(func=run)
