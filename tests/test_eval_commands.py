"""Every evaluation command end to end on tiny models and small subsets of the real files;
resume, shard + merge, clear errors, and the launchers under bash."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asarm.cli import main

ROOT = Path(__file__).resolve().parents[1]
from conftest import FAST, _results, _samples, _spec_args, _without_time  # noqa: F401 (shared with test_eval_scoring)


# ---------------------------------------------------------------------------- speculative
@pytest.mark.slow
def test_speculative_end_to_end(tiny_model_dir, tiny_judge_dir, wiki_subset, tmp_path):
    out = tmp_path / "spec"
    assert main(_spec_args(tiny_model_dir, wiki_subset, out, "--judge", str(tiny_judge_dir))) == 0
    res = _results(out)
    assert res["config"]["sampling"]["k"] == 5 and res["config"]["trials"] == 4  # the config travels with the results
    methods = res["results"]["methods"]
    assert list(methods) == ["sequential", "assd", "ngram"]
    for row in methods.values():
        assert row["n"] == 4 and row["ppl_mean"] > 1 and row["entropy_mean"] > 0 and row["model_nll_mean"] > 0
    m = round(0.05 * 24)
    assert methods["sequential"]["nfe_mean"] == 24 - m and methods["assd"]["nfe_mean"] <= 24 - m
    assert set(res["results"]["paired_tests"]) == {"sequential vs assd", "sequential vs ngram"}
    assert (out / "distributions.png").stat().st_size > 1000
    assert "gen. PPL" in (out / "results.md").read_text()
    rec = next(iter(_samples(out).values()))[0]
    assert {"nfe", "prompt", "text", "ppl", "entropy", "model_nll"} <= set(rec)


@pytest.mark.slow
def test_speculative_paper_protocol_end_to_end(tiny_model_dir, shared_data, local_tokenizer, tmp_path):
    """--protocol paper: rows with specials, no chunk reuse, int(frac N) + 1 visible, judged text with
    specials, only <mask> banned, both decoders timed; config.json records every resolved setting."""
    from asarm.evaluation.speculative import load_chunks

    lines = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8").splitlines()[:2]
    data = tmp_path / "wiki.two.raw"
    data.write_text("\n".join(lines), encoding="utf-8")
    chunks = load_chunks(str(data), local_tokenizer, 32, specials=True)
    out = tmp_path / "paper"
    argv = ["speculative", "--model", str(tiny_model_dir), "--data", str(data), "--seq-len", "32", "--trials",
            str(len(chunks) + 3), "--protocol", "paper", "--methods", "sequential", "assd", "--judge", "none",
            "--backends", "plain", "cached", "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    res = _results(out)
    cfg = res["config"]
    assert cfg["protocol"] == "paper"
    assert (cfg["wikitext_specials"], cfg["reuse_chunks"], cfg["visible_rule"], cfg["judge_specials"],
            cfg["banned"], cfg["backends"]) == (True, False, "int_plus_one", True, "mask", ["plain", "cached"])
    assert json.loads((out / "config.json").read_text())["config"]["visible_rule"] == "int_plus_one"
    results = res["results"]
    assert results["num_trials"] == results["num_chunks"] == len(chunks)  # stopped when the chunks ran out
    records = [r for rs in _samples(out).values() for r in rs]
    assert len(records) == 2 * len(chunks)
    assert {r["chunk"] for r in records} == set(range(len(chunks)))
    assert all(r["num_visible"] == int(32 * 0.05) + 1 for r in records)
    sampled = [t for t in local_tokenizer.all_special_tokens if t != local_tokenizer.mask_token]
    assert any(t in r["text"] for r in records for t in sampled)  # sampled (only <mask> banned) and judged as text
    assert not any(local_tokenizer.mask_token in r["text"] for r in records)
    table = (out / "results.md").read_text()
    assert "time plain (s)" in table and "time cached (s)" in table and "independent t" in table
    assert f"{len(chunks)} trials, not --trials {len(chunks) + 3}" in table and "Protocol: `paper`" in table
    for row in results["methods"].values():
        assert row["time_plain_s_mean"] > 0 and row["time_cached_s_mean"] > 0
        assert row["backends_agree"] == len(chunks)  # same seed, same sample with either decoder
    assert "time_plain_s" in results["paired_tests"]["sequential vs assd"]


def test_speculative_without_judge_still_runs(tiny_model_dir, wiki_subset, tmp_path):
    out = tmp_path / "nojudge"
    assert main(_spec_args(tiny_model_dir, wiki_subset, out, "--judge", "gpt2-large", "--trials", "1")) == 0
    row = _results(out)["results"]["methods"]["assd"]
    assert row["ppl_mean"] is None and "gpt2-large" in row["ppl_note"]  # NaN, written as strict JSON null; the reason
    assert "n/a (judge 'gpt2-large' not loaded" in (out / "results.md").read_text()


@pytest.mark.slow
def test_resume_and_shards_give_the_same_numbers(tiny_model_dir, wiki_subset, tmp_path, monkeypatch):
    from asarm.evaluation import speculative

    args = ["--judge", "none", "--methods", "sequential", "assd"]
    one = tmp_path / "one"
    assert main(_spec_args(tiny_model_dir, wiki_subset, one, *args)) == 0

    # interrupted after two trials, then resumed
    calls, real = {"n": 0}, speculative.run_trials

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(speculative, "run_trials", flaky)
    assert main(_spec_args(tiny_model_dir, wiki_subset, resumed, *args)) == 130
    assert not (resumed / "results.json").exists() and len(_samples(resumed)) == 2
    with open(next(resumed.glob("samples.*.jsonl")), "a") as f:
        f.write('{"uid": "trial-00002", "reco')  # a write cut by the kill
    monkeypatch.setattr(speculative, "run_trials", real)
    assert main(_spec_args(tiny_model_dir, wiki_subset, resumed, *args)) == 0
    assert calls["n"] == 3  # the resumed run did not redo the finished trials

    # two shards into one directory, then the merge command
    sharded = tmp_path / "sharded"
    assert main(_spec_args(tiny_model_dir, wiki_subset, sharded, *args, "--shard", "1", "--num-shards", "2")) == 0
    assert not (sharded / "results.json").exists()
    assert main(_spec_args(tiny_model_dir, wiki_subset, sharded, *args, "--shard", "0", "--num-shards", "2")) == 0
    (sharded / "results.json").unlink()
    assert main(["eval-merge", str(sharded)]) == 0

    for other in (resumed, sharded):
        assert _samples(other) == _samples(one)
        assert _without_time(_results(other)["results"]) == _without_time(_results(one)["results"])


# ---------------------------------------------------------------------------- infill-nlp
def _config(out):
    return json.loads((Path(out) / "config.json").read_text())["config"]


@pytest.mark.slow
def test_infill_nlp_end_to_end(tiny_model_dir, shared_data, tmp_path):
    from asarm.evaluation.metrics import rouge_f1

    out = tmp_path / "nlp"
    data = shared_data / "rocstories" / "cloze_test_val__spring2016.csv"
    assert main(["infill-nlp", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "4", "--trials", "2",
                 "--method", "sequential", "--output-dir", str(out), *FAST]) == 0
    res = _results(out)["results"]
    assert set(res) == {"middle", "long"} and res["middle"]["n"] == 4
    cfg = _config(out)  # asarm's protocol, resolved before anything ran
    assert (cfg["protocol"], cfg["sampling"]["k"], cfg["banned"], cfg["rouge"], cfg["rouge_stemmer"]) == ("asarm", 5, "specials", "mean", True)
    assert res["middle"]["rouge_aggregate"] == "mean" and res["middle"]["rouge1"] == res["middle"]["rouge1_mean"]
    records = [r for rs in _samples(out).values() for r in rs]
    for r in records:
        assert rouge_f1(r["generated"], r["reference"]) == {k: r[k] for k in ("rouge1", "rouge2", "rougeL", "rouge_mean")}
        assert r["nfe"] == r["num_masked"]  # sequential: one call per masked token
    mid = [r for r in records if r["setting"] == "middle"][0]
    assert mid["reference"].startswith("It wasn't long") and mid["suffix"].endswith("He is happy now.")


@pytest.mark.slow
def test_infill_nlp_oracle_under_the_paper_protocol(tiny_model_dir, shared_data, tmp_path):
    """--protocol paper: k 10, only <mask> banned, bootstrap mid without stemmer, all recorded; oracle = 100."""
    out = tmp_path / "paper"
    data = shared_data / "rocstories" / "cloze_test_val__spring2016.csv"
    assert main(["infill-nlp", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "6", "--trials", "2",
                 "--method", "oracle", "--protocol", "paper", "--output-dir", str(out), *FAST]) == 0
    cfg = _config(out)
    assert (cfg["protocol"], cfg["sampling"]["k"], cfg["banned"], cfg["rouge"], cfg["rouge_stemmer"]) == ("paper", 10, "mask", "bootstrap", False)
    assert _results(out)["config"]["rouge"] == "bootstrap"
    for setting in ("middle", "long"):
        r = _results(out)["results"][setting]
        assert r["n"] == 6 and r["rouge_aggregate"] == "bootstrap"
        assert r["rouge_mean"] == r["rouge_mean_bootstrap"] == pytest.approx(100.0) == r["rouge_mean_mean"]
    table = (out / "results.md").read_text()
    assert "Protocol: `paper`" in table and "without stemmer" in table and "bootstrap mid" in table
    # an option given explicitly wins over the protocol and is what config.json records
    out2 = tmp_path / "override"
    assert main(["infill-nlp", "--model", str(tiny_model_dir), "--data", str(data), "--limit", "2", "--trials", "1",
                 "--method", "oracle", "--protocol", "paper", "--rouge", "mean", "--rouge-stemmer", "--k", "3",
                 "--output-dir", str(out2), *FAST]) == 0
    cfg = _config(out2)
    assert (cfg["sampling"]["k"], cfg["banned"], cfg["rouge"], cfg["rouge_stemmer"]) == (3, "mask", "mean", True)


# ---------------------------------------------------------------------------- infill-code
def test_infill_code_end_to_end(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "code"
    data = shared_data / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
    assert main(["infill-code", "--model", str(tiny_model_dir), "--data", str(data), "--tasks", "HumanEval/0/",
                 "--limit", "2", "--num-samples", "2", "--method", "assd", "--output-dir", str(out), *FAST]) == 0
    res = _results(out)["results"]
    assert res["num_tasks"] == 2 and res["samples_per_task"] == 2 and "pass@2" in res
    assert res["pass@1"] == 0.0  # a random tiny model does not write working code
    assert "builtin" in res["harness"]
    records = [r for rs in _samples(out).values() for r in rs]
    assert all(r["num_masked"] > 0 and 0 < r["nfe"] <= r["num_masked"] for r in records)


def test_infill_code_canonical_self_check(shared_data, tmp_path):
    out = tmp_path / "canon"
    data = shared_data / "human-eval-infilling" / "HumanEval-RandomSpanInfillingLight.jsonl.gz"
    assert main(["infill-code", "--method", "canonical", "--data", str(data), "--limit", "12",
                 "--output-dir", str(out), "--no-progress"]) == 0
    assert _results(out)["results"]["pass@1"] == 100.0


@pytest.mark.parametrize("command,method,data", [
    ("infill-nlp", "oracle", "rocstories/cloze_test_val__spring2016.csv"),
    ("infill-code", "oracle", "human-eval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz"),
    ("infill-code", "canonical", "human-eval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz")])
def test_self_checks_run_without_a_model(command, method, data, shared_data, tmp_path, capsys):
    """oracle and canonical load no model (a --model that does not exist is never opened): oracle uses the
    offline tokenizer unless --tokenizer names one; the header and config.json say no model was used."""
    out = tmp_path / method
    args = [command, "--method", method, "--model", str(tmp_path / "no-such-model"), "--data",
            str(shared_data / data), "--limit", "3", "--output-dir", str(out), "--no-progress", "--threads", "1"]
    args += ["--trials", "1"] if command == "infill-nlp" else ["--workers", "2"]
    assert main(args) == 0, capsys.readouterr().err
    header = (out / "results.md").read_text().splitlines()[0]
    assert "no model (self-check)" in header and "no-such-model" not in header
    assert ("the offline tokenizer" in header) == (method == "oracle")
    cfg = _results(out)["config"]
    assert cfg["model"] == "none (self-check)" and cfg["revision"] is None
    assert cfg["tokenizer"] == ("offline" if method == "oracle" else None)
    res = _results(out)["results"]
    score = res["middle"]["rouge_mean"] if command == "infill-nlp" else res["pass@1"]
    assert score == pytest.approx(100.0)


@pytest.mark.parametrize("command,data", [
    ("infill-nlp", "rocstories/cloze_test_val__spring2016.csv"),
    ("infill-code", "human-eval-infilling/HumanEval-RandomSpanInfillingLight.jsonl.gz")])
def test_a_self_check_tokenizer_that_does_not_load_names_tokenizer(command, data, shared_data, tmp_path, capsys):
    code = main([command, "--method", "oracle", "--tokenizer", str(tmp_path / "missing"), "--output-dir",
                 str(tmp_path / "o"), "--data", str(shared_data / data), "--limit", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--tokenizer" in err and "missing" in err and "Traceback" not in err


def test_code_whitespace_round_trip_through_infill_inputs(local_tokenizer):
    from asarm.evaluation.infill_code import build_inputs, completion_text

    problem = {"task_id": "t", "prompt": "def f(x):\n\tif x:\n", "canonical_solution": "        return  x\n",
               "suffix": "    return 0\n"}
    for encoding in ("continuation", "separate"):
        inputs = build_inputs(problem, local_tokenizer, True, encoding, 512)
        assert inputs["num_masked"] == len(inputs["middle"]) and inputs["starts_segment"]  # the prompt ends in <cls>
        assert inputs["ids"].count(local_tokenizer.mask_token_id) == inputs["num_masked"]
        assert completion_text(inputs["middle"], inputs, local_tokenizer, True) == problem["canonical_solution"]


@pytest.mark.slow
def test_infill_code_oracle_end_to_end(tiny_model_dir, shared_data, tmp_path):
    """The oracle goes through the CLI's whole path; every task of the slice comes back and passes."""
    out = tmp_path / "oracle"
    data = shared_data / "human-eval-infilling" / "HumanEval-RandomSpanInfilling.jsonl.gz"
    assert main(["infill-code", "--method", "oracle", "--model", str(tiny_model_dir), "--data", str(data),
                 "--limit", "10", "--workers", "2", "--output-dir", str(out), *FAST]) == 0
    res = _results(out)["results"]
    assert res["pass@1"] == 100.0 and res["failures_by_cause"] == {} and res["nfe_mean"] == 0
    from asarm.evaluation.infill_code import load_problems

    records = [r for rs in _samples(out).values() for r in rs]
    assert {r["task_id"] for r in records} == {p["task_id"] for p in load_problems(str(data))[:10]}


# ---------------------------------------------------------------------------- density
def test_density_lambada_and_hellaswag(tiny_model_dir, shared_data, tmp_path):
    out = tmp_path / "lambada"
    assert main(["density", "--task", "lambada", "--model", str(tiny_model_dir), "--limit", "3", "--output-dir", str(out),
                 "--max-length", "96", "--data", str(shared_data / "lambada" / "lambada_test_plain_text.txt"), *FAST]) == 0
    res = _results(out)["results"]
    assert res["n"] == 3 and 0 <= res["accuracy"] <= 100 and res["target_logp_mean"] < 0
    assert res["accuracy_kind"] == "greedy" and res["accuracy"] == res["accuracy_greedy"] and "accuracy_sampled" in res
    assert (_config(out)["density_logits"], _config(out)["lambada"]) == ("banned", "greedy")
    recs = [r for rs in _samples(out).values() for r in rs]
    assert all(1 <= r["nfe"] <= r["target_tokens"] for r in recs)

    paper = tmp_path / "lambada-paper"
    assert main(["density", "--task", "lambada", "--model", str(tiny_model_dir), "--limit", "3", "--output-dir",
                 str(paper), "--max-length", "96", "--protocol", "paper",
                 "--data", str(shared_data / "lambada" / "lambada_test_plain_text.txt"), *FAST]) == 0
    cfg, res = _config(paper), _results(paper)["results"]
    assert (cfg["protocol"], cfg["density_logits"], cfg["lambada"], cfg["sampling"]["k"]) == ("paper", "raw", "sampled", 10)
    assert res["accuracy_kind"] == "sampled" and res["accuracy"] == res["accuracy_sampled"]
    # raw logits give the banned ids some mass, so the word's log-likelihood can only go down
    banned = {r["id"]: r["logp"] for rs in _samples(out).values() for r in rs}
    assert all(r["logp"] <= banned[r["id"]] + 1e-4 for rs in _samples(paper).values() for r in rs)

    rows = [{"ind": i, "activity_label": "Baking", "ctx_a": "A woman puts flour in a bowl.", "ctx_b": "she",
             "endings": ["mixes it with eggs.", "drives a car [title] away.", "sings.", "sleeps on the floor."],
             "label": i % 4} for i in range(3)]
    hs = tmp_path / "hellaswag.jsonl"
    hs.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "hellaswag"
    assert main(["density", "--task", "hellaswag", "--model", str(tiny_model_dir), "--data", str(hs),
                 "--output-dir", str(out), *FAST]) == 0
    recs = [r for rs in _samples(out).values() for r in rs]
    assert len(recs) == 3 and all(len(r["scores"]) == 4 and max(r["scores"]) < 0 for r in recs)
    assert recs[0]["scores"] == recs[1]["scores"]  # same text, same scores (deterministic)
    assert all(r["pred"] == max(range(4), key=r["scores"].__getitem__) for r in recs)
    assert _results(out)["results"]["paper_script_acc"] == 0.0  # no item labelled 3


def test_hellaswag_scores_are_joint_log_probs(tiny_model, local_tokenizer):
    import torch

    from asarm.evaluation.density import joint_logp, masked_block_scores

    ctx = local_tokenizer("def f(x):", add_special_tokens=False)["input_ids"]
    tgt = local_tokenizer("return x", add_special_tokens=False)["input_ids"]
    lp, _ = masked_block_scores(tiny_model, ctx, tgt)
    assert joint_logp(tiny_model, ctx, tgt) == pytest.approx(lp, abs=1e-4)
    assert lp < 0 and torch.isfinite(torch.tensor(lp))


# ---------------------------------------------------------------------------- clear errors
def _error(capsys, argv):
    assert main(argv) == 2
    return capsys.readouterr().err


def test_clear_errors(tiny_model_dir, wiki_subset, shared_data, tmp_path, capsys):
    model = ["--model", str(tiny_model_dir), *FAST]
    err = _error(capsys, ["speculative", *model, "--data", str(tmp_path / "nope.raw"), "--output-dir", str(tmp_path / "a")])
    assert "not found" in err and "eval_datasets/README.md" in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_id": "x"}\nnot json\n')
    assert "line 2: not valid JSON" in _error(capsys, ["infill-code", *model, "--data", str(bad), "--output-dir", str(tmp_path / "b")])
    bad.write_text('{"task_id": "x"}\n')
    assert "missing field" in _error(capsys, ["infill-code", *model, "--data", str(bad), "--output-dir", str(tmp_path / "b")])

    csv = tmp_path / "bad.csv"
    csv.write_text("InputStoryid,InputSentence1\nabc,Hello.\n")
    assert "missing field" in _error(capsys, ["infill-nlp", *model, "--data", str(csv), "--output-dir", str(tmp_path / "c")])

    code = shared_data / "human-eval-infilling" / "HumanEval-MultiLineInfilling.jsonl.gz"
    err = _error(capsys, ["infill-code", *model, "--data", str(code), "--limit", "1", "--max-length", "8",
                          "--output-dir", str(tmp_path / "d")])
    assert "the model allows 8" in err
    err = _error(capsys, ["infill-code", *model, "--data", str(code), "--tasks", "NoSuchTask/",
                          "--output-dir", str(tmp_path / "e")])
    assert "no tasks selected" in err

    bert = tmp_path / "bert"
    from transformers import BertConfig

    BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(bert)
    err = _error(capsys, ["speculative", *model, "--data", str(wiki_subset), "--judge", str(bert), "--trials", "1",
                          "--seq-len", "16", "--output-dir", str(tmp_path / "f")])
    assert "causal" in err and not (tmp_path / "f" / "config.json").exists()  # refused before generating
    err = _error(capsys, ["speculative", *model, "--data", str(wiki_subset), "--backends", "plain", "plain",
                          "--output-dir", str(tmp_path / "f")])
    assert "lists a backend twice" in err
    err = _error(capsys, ["speculative", *model, "--data", str(wiki_subset), "--protocol", "paper",
                          "--visible-frac", "0.98", "--seq-len", "40", "--output-dir", str(tmp_path / "f")])
    assert "nothing is left to generate" in err and not (tmp_path / "f" / "config.json").exists()

    out = tmp_path / "g"
    assert main(["speculative", *model, "--data", str(wiki_subset), "--judge", "none", "--trials", "1", "--seq-len", "16",
                 "--methods", "sequential", "--output-dir", str(out)]) == 0
    err = _error(capsys, ["speculative", *model, "--data", str(wiki_subset), "--judge", "none", "--trials", "1",
                          "--seq-len", "16", "--methods", "sequential", "--k", "3", "--output-dir", str(out)])
    assert "different run (settings differ: sampling.k)" in err
    err = _error(capsys, ["speculative", *model, "--data", str(wiki_subset), "--judge", "none", "--trials", "2",
                          "--seq-len", "16", "--overwrite", "--shard", "0", "--num-shards", "2", "--output-dir", str(out)])
    assert "other shards' results" in err and (out / "config.json").exists()


# ---------------------------------------------------------------------------- launchers
def _launch(script, env_extra, tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "EXTRA_ARGS": "--threads 1 --no-progress", "DEVICE": "cpu",
           **env_extra}
    proc = subprocess.run(["bash", str(ROOT / script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((Path(env_extra["OUT"]) / "results.json").read_text())


def test_local_shards_get_one_visible_gpu_each(tmp_path):
    """NUM_SHARDS=n runs shard i on the i-th GPU of CUDA_VISIBLE_DEVICES (a fake python records it)."""
    fake = tmp_path / "fakepy"
    log = tmp_path / "log"
    fake.write_text(f'#!/usr/bin/env bash\necho "$CUDA_VISIBLE_DEVICES $*" >> {log}\n')
    fake.chmod(0o755)
    script = f'source {ROOT / "scripts" / "eval_launch.sh"}; run_eval {tmp_path / "o"} speculative --trials 1'
    env = {**os.environ, "PYTHON": str(fake), "NUM_SHARDS": "3", "CUDA_VISIBLE_DEVICES": "4,6,7", "EXTRA_ARGS": ""}
    subprocess.run(["bash", "-c", script], env=env, check=True, capture_output=True, text=True, timeout=60)
    gpus = {line.split()[0] for line in log.read_text().splitlines() if "--shard" in line}
    assert gpus == {"4", "6", "7"}


@pytest.mark.slow
def test_launchers_under_bash(tiny_model_dir, wiki_subset, shared_data, tmp_path):
    res = _launch("_run_speculative_decoding.sh", {"MODEL": str(tiny_model_dir), "DATA": str(wiki_subset),
                  "SEQ_LEN": "16", "TRIALS": "2", "JUDGE": "none", "NUM_SHARDS": "2", "OUT": str(tmp_path / "s")}, tmp_path)
    assert res["num_units"] == 2 and res["results"]["methods"]["sequential"]["n"] == 2
    assert res["config"]["protocol"] == "paper" and res["config"]["backends"] == ["plain", "cached"]  # the defaults
    res = _launch("_run_nlp_infill_eval.sh", {"MODEL": str(tiny_model_dir), "DATA": str(
        shared_data / "rocstories" / "cloze_test_val__spring2016.csv"), "TRIALS": "1", "EXTRA_ARGS":
        "--threads 1 --no-progress --limit 2", "OUT": str(tmp_path / "n")}, tmp_path)
    assert set(res["results"]) == {"middle", "long"}
    assert (res["config"]["protocol"], res["config"]["sampling"]["k"], res["config"]["rouge"]) == ("paper", 10, "bootstrap")
    res = _launch("_run_code_infill_eval.sh", {"METHOD": "canonical", "DATA_DIR": str(shared_data / "human-eval-infilling"),
                  "BENCHMARK": "random-span-light", "EXTRA_ARGS": "--limit 3 --no-progress", "OUT": str(tmp_path / "c")},
                  tmp_path)
    assert res["results"]["pass@1"] == 100.0
    assert (res["config"]["protocol"], res["config"]["sampling"]["k"], res["config"]["context"]) == ("paper", 10, "full")
