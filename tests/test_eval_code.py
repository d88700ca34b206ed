"""infill-code on the real text pipeline: the oracle (canonical middle ids through the whole
generation path) on the real HumanEval-infilling files, the lossless code encoding, decoding
in context with the fast and slow tokenizers, empty suffixes, context trimming, the protocol."""

import json

import pytest

from asarm.cli import main
from asarm.data import decode_text, make_encoder
from asarm.evaluation.execution import check_many
from asarm.evaluation.protocol import sampling_value
from asarm.evaluation.infill_code import (BENCHMARKS, build_inputs, completion_text, ends_mid_segment, generate,
                                          load_problems, lossless_encoder, middle_loss)
from asarm.evaluation.runner import Unit
from asarm.tokenizer import save_tokenizer


def _problems(shared_data, benchmark):
    return load_problems(str(shared_data / "human-eval-infilling" / BENCHMARKS[benchmark]))


def _oracle(problems, tokenizer, encoding):
    cfg = {"code_whitespace": True, "num_samples": 1, "max_length": 512, "context": "full",
           "code_encoding": encoding, "method": "oracle"}
    return [generate(Unit(p["task_id"], p), 0, None, tokenizer, cfg)[0]["completion"] for p in problems]


def _subset(shared_data, benchmark):
    """The first 40 tasks, and for random-span 20 more whose middle starts inside a line."""
    problems = _problems(shared_data, benchmark)
    extra = [p for p in problems[40:] if ends_mid_segment(p["prompt"], True)][:20] if "random" in benchmark else []
    return problems[:40] + extra


# ---------------------------------------------------------------------------- the oracle on real data
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_oracle_passes_every_task_the_pipeline_keeps(name, shared_data, local_tokenizer):
    problems = _subset(shared_data, name)
    completions = _oracle(problems, local_tokenizer, "continuation")
    results = check_many(list(zip(problems, completions)), workers=2)
    losses = [middle_loss(p, local_tokenizer, True, "continuation") for p in problems]
    for p, c, r, loss in zip(problems, completions, results, losses):
        if loss is None:  # the middle came back exactly: the program is the canonical one
            assert c == p["canonical_solution"] and r.passed, (p["task_id"], r.status)
        else:
            assert c != p["canonical_solution"], p["task_id"]
    assert all(loss is not None for loss, r in zip(losses, results) if not r.passed)
    assert sum(loss is None for loss in losses) >= 0.95 * len(problems)


def test_oracle_is_lossless_where_the_paper_encoding_is_not(shared_data, local_tokenizer):
    """Mid-line boundaries (random-span), '' and odd runs of spaces: continuation keeps them, separate does not."""
    problems = [p for p in _problems(shared_data, "random-span") if ends_mid_segment(p["prompt"], True)][:40]
    problems += [p for p in _problems(shared_data, "multi-line") if "''" in p["canonical_solution"]][:10]
    continuation = _oracle(problems, local_tokenizer, "continuation")
    separate = _oracle(problems, local_tokenizer, "separate")
    assert all(c == p["canonical_solution"] for p, c in zip(problems, continuation)
               if middle_loss(p, local_tokenizer, True, "continuation") is None)
    causes = [middle_loss(p, local_tokenizer, True, "separate") for p in problems]
    assert sum(c != p["canonical_solution"] for p, c in zip(problems, separate)) >= 20
    assert "separate encoding: a middle that starts inside a line gains a space" in causes
    assert any(c is not None and "two quotes" in c for c in causes)
    assert [c is None for c in causes] == [c == p["canonical_solution"] for p, c in zip(problems, separate)]


def test_empty_suffix_gives_the_whole_middle(shared_data, local_tokenizer):
    """The paper's `[len(prefix):-len(suffix)]` is empty when the suffix is; ours is the middle."""
    problems = [p for p in _problems(shared_data, "single-line") if not p["suffix"]][:8]
    assert len(problems) == 8
    for encoding in ("continuation", "separate"):
        for p, c in zip(problems, _oracle(problems, local_tokenizer, encoding)):
            assert c and c[0] == p["canonical_solution"][0]  # not empty, first character kept
            if middle_loss(p, local_tokenizer, True, encoding) is None:
                assert c == p["canonical_solution"]
    assert all(r.passed for r in check_many(list(zip(problems, _oracle(problems, local_tokenizer, "continuation"))),
                                            workers=2))


# ---------------------------------------------------------------------------- encoding and decoding
def test_lossless_encoder_fixes_only_what_make_encoder_loses(local_tokenizer, shared_data):
    lossless, plain = lossless_encoder(local_tokenizer, True), make_encoder(local_tokenizer, True)
    for text in ["x = ''\n", "a     b", "``x``", "    \"\"\"It's ''fine''.\"\"\"\n", "     "]:
        assert decode_text(lossless(text), local_tokenizer, True) == text
        assert decode_text(plain(text), local_tokenizer, True) != text
    # where nothing is lost, the ids are the tokenizer's own (the mask count of the paper's pipeline)
    prompts = [p["prompt"] for p in _problems(shared_data, "single-line")[:60]]
    kept = [t for t in prompts if decode_text(plain(t), local_tokenizer, True) == t]
    assert len(kept) > 20 and all(lossless(t) == plain(t) for t in kept)


def test_decode_in_context_fast_and_slow(both_tokenizers, local_tokenizer, shared_data):
    """The fast tokenizer's ids of every part decode, with either tokenizer, to the exact text stitched."""
    problems = [p for p in _problems(shared_data, "random-span-light")][:40]
    for p in problems:
        inputs = build_inputs(p, local_tokenizer, True, "continuation", max_length=None)
        text = completion_text(inputs["middle"], inputs, both_tokenizers, True)
        assert text == p["canonical_solution"], p["task_id"]
        whole = inputs["prefix"] + inputs["middle"] + inputs["suffix"]
        assert decode_text(whole, both_tokenizers, True) == p["prompt"] + p["canonical_solution"] + p["suffix"]


def test_ends_mid_segment():
    assert ends_mid_segment("x = ", True) and ends_mid_segment("    return x", True)
    assert ends_mid_segment("x =   ", True)  # three spaces: <unk> then a plain space, a normal piece
    for text in ["", "def f():\n", "    ", "\tif x:\n\t"]:
        assert not ends_mid_segment(text, True)
    assert ends_mid_segment("def f():\n", False)


# ---------------------------------------------------------------------------- context and protocol
def test_context_full_does_not_trim_while_trim_does(shared_data, local_tokenizer):
    short = [p for p in _problems(shared_data, "random-span-light") if len(p["canonical_solution"]) < 20]
    p = max(short, key=lambda p: len(p["prompt"]) + len(p["suffix"]))
    full = build_inputs(p, local_tokenizer, True, "continuation", max_length=None)
    trimmed = build_inputs(p, local_tokenizer, True, "continuation", max_length=64)
    assert len(full["ids"]) > 64 and len(trimmed["ids"]) == 64
    assert full["ids"] == full["prefix"] + [local_tokenizer.mask_token_id] * full["num_masked"] + full["suffix"]
    assert trimmed["prefix"] == full["prefix"][-len(trimmed["prefix"]):] and full["suffix"][:len(trimmed["suffix"])] \
        == trimmed["suffix"]
    assert trimmed["middle"] == full["middle"] and trimmed["starts_segment"] == full["starts_segment"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, local_tokenizer):
    path = tmp_path_factory.mktemp("tok")
    save_tokenizer(local_tokenizer, path)
    return path


def _config(out):
    return json.loads((out / "config.json").read_text())["config"]


def test_cli_oracle_records_the_protocol(shared_data, tokenizer_dir, tmp_path):
    data = str(shared_data / "human-eval-infilling" / BENCHMARKS["random-span-light"])
    base = ["infill-code", "--method", "oracle", "--tokenizer", str(tokenizer_dir), "--data", data, "--limit", "6",
            "--workers", "2", "--no-progress"]
    assert main([*base, "--output-dir", str(tmp_path / "a")]) == 0
    assert main([*base, "--protocol", "paper", "--output-dir", str(tmp_path / "p")]) == 0
    assert main([*base, "--protocol", "paper", "--k", "3", "--context", "trim", "--output-dir", str(tmp_path / "x")]) == 0
    a, p, x = _config(tmp_path / "a"), _config(tmp_path / "p"), _config(tmp_path / "x")
    for c in (a, p, x):  # the sampler's settings travel under "sampling" (SamplingConfig.to_dict())
        c["k"] = sampling_value(c, "k")
    assert (a["protocol"], a["k"], a["banned"], a["context"], a["code_encoding"]) == \
        ("asarm", 5, "specials", "trim", "continuation")
    assert (p["protocol"], p["k"], p["banned"], p["context"], p["code_encoding"]) == ("paper", 10, "mask", "full", "separate")
    assert (x["k"], x["context"], x["code_encoding"]) == (3, "trim", "separate")  # explicit options win
    res = json.loads((tmp_path / "a" / "results.json").read_text())["results"]
    assert res["pass@1"] == 100.0 and res["failures_by_cause"] == {}
    assert "Protocol: `paper`" in (tmp_path / "p" / "results.md").read_text()


def test_cli_context_full_runs_past_max_length(shared_data, tokenizer_dir, tmp_path, capsys):
    data = str(shared_data / "human-eval-infilling" / BENCHMARKS["multi-line"])
    base = ["infill-code", "--method", "oracle", "--tokenizer", str(tokenizer_dir), "--data", data, "--limit", "1",
            "--max-length", "8", "--workers", "1", "--no-progress"]
    assert main([*base, "--context", "trim", "--output-dir", str(tmp_path / "t")]) == 2
    assert "the model allows 8" in capsys.readouterr().err
    assert main([*base, "--context", "full", "--output-dir", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "results.json").read_text())["results"]["pass@1"] == 100.0


def test_benchmark_emulates_the_papers_two_bugs(shared_data, local_tokenizer):
    """benchmarks/code_oracle.py's paper-code row: empty completion for an empty suffix, first character lost."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("code_oracle", Path(__file__).parents[1] / "benchmarks" / "code_oracle.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    empty = next(p for p in _problems(shared_data, "single-line") if not p["suffix"])
    assert bench.paper_code_completion(empty, local_tokenizer) == ""
    mid = next(p for p in _problems(shared_data, "random-span-light") if ends_mid_segment(p["prompt"], True)
               and p["canonical_solution"][:1].isalpha() and not any(
                   t in p["canonical_solution"] for t in ("''", "\n", "\t", "  ")))
    assert bench.paper_code_completion(mid, local_tokenizer) == mid["canonical_solution"][1:]
    completions, masks = bench.oracle_completions([empty, mid], local_tokenizer, "continuation")
    assert completions == [empty["canonical_solution"], mid["canonical_solution"]] and masks >= 1


def test_protocol_banned_reaches_the_model_and_full_context_samples(shared_data, tiny_model, local_tokenizer,
                                                                      tmp_path):
    from asarm.cli import build_parser
    from asarm.loading import load_model_and_tokenizer
    from asarm.data import code_whitespace_ids
    from asarm.evaluation.protocol import apply_protocol

    model_dir = tmp_path / "m"
    tiny_model.save_pretrained(model_dir, tokenizer=local_tokenizer)
    banned = {}
    for protocol in ("asarm", "paper"):
        args = build_parser().parse_args(["infill-code", "--model", str(model_dir), "--protocol", protocol,
                                          "--device", "cpu"])
        apply_protocol(args, {"context": "code_context"})
        banned[protocol] = set(load_model_and_tokenizer(args)[0].banned_token_ids)
    assert banned["paper"] == {local_tokenizer.mask_token_id}
    assert local_tokenizer.mask_token_id in banned["asarm"] and len(banned["asarm"]) > 1
    assert not banned["asarm"] & set(code_whitespace_ids(local_tokenizer))  # whitespace stays sampleable
    # a model samples past --max-length with --context full (XLNet's positions are relative)
    data = str(shared_data / "human-eval-infilling" / BENCHMARKS["single-line"])
    out = tmp_path / "full"
    assert main(["infill-code", "--model", str(model_dir), "--data", data, "--limit", "1", "--method", "sequential",
                 "--context", "full", "--max-length", "32", "--device", "cpu", "--threads", "1", "--workers", "1",
                 "--no-progress", "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert res["num_masked_mean"] == res["nfe_mean"] > 0  # sequential: one call per masked token
    record = json.loads((out / "samples.shard-0-of-1.jsonl").read_text().splitlines()[0])["records"][0]
    assert record["input_tokens"] > 32
