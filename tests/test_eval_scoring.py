"""Scoring without generating: ``infill-code --score-samples`` (official-format samples files, and the
``official_samples.jsonl`` every run exports) and ``speculative --rescore`` (a judge's scores added to a
finished run from its stored texts)."""

import gzip
import hashlib
import json
import time

import pytest

from asarm.cli import main

# the tiny model, judge and WikiText slice (and helpers) of the command tests, shared rather than rebuilt differently
from conftest import FAST, _results, _samples, _spec_args, _without_time

# slow: end-to-end evaluation runs
pytestmark = pytest.mark.slow

CODE = "human-eval-infilling"


def _problems(shared_data, name, n):
    with gzip.open(shared_data / CODE / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _passed(out):
    """``{(task_id, sample): passed}`` of a finished infill-code run."""
    return {(r["task_id"], r["sample"]): r["passed"] for rs in _samples(out).values() for r in rs}


def _score(samples, data, out, *extra):
    return main(["infill-code", "--score-samples", str(samples), "--data", str(data), "--output-dir", str(out),
                 "--no-progress", *extra])


# ---------------------------------------------------------------------------- infill-code --score-samples
def test_scoring_the_export_reproduces_the_generated_runs(tiny_model_dir, shared_data, tmp_path):
    """Oracle under the paper's separate encoding (some middles come back damaged, so some tasks fail) and a
    tiny model with 2 samples per task: exporting and scoring gives the same pass@k and per-sample verdicts."""
    data = shared_data / CODE / "HumanEval-RandomSpanInfillingLight.jsonl.gz"
    runs = {"oracle": ["--method", "oracle", "--code-encoding", "separate", "--limit", "6"],
            "assd": ["--method", "assd", "--limit", "2", "--num-samples", "2"]}
    for name, extra in runs.items():
        gen, scored = tmp_path / f"{name}-gen", tmp_path / f"{name}-scored"
        assert main(["infill-code", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(gen),
                     *FAST, *extra]) == 0
        assert "score_samples" not in _results(gen)["config"]  # a generated run's config is as before
        export = gen / "official_samples.jsonl"
        rows = [json.loads(line) for line in export.read_text().splitlines()]
        records = [r for rs in _samples(gen).values() for r in rs]
        assert [set(r) for r in rows] == [{"task_id", "completion"}] * len(records)
        assert [r["completion"] for r in rows] == [r["completion"] for r in records]
        assert _score(export, data, scored) == 0
        want, got = _results(gen)["results"], _results(scored)["results"]
        assert {k: v for k, v in got.items() if k.startswith("pass@")} == \
               {k: v for k, v in want.items() if k.startswith("pass@")}
        assert (got["num_tasks"], got["samples_per_task"]) == (want["num_tasks"], want["samples_per_task"])
        assert _passed(scored) == _passed(gen)
        if name == "oracle":
            assert 0 < want["pass@1"] < 100  # a mix, so agreement means something
        cfg = _results(scored)["config"]
        assert cfg["method"] == "samples" and cfg["model"] is None
        assert cfg["score_samples"] == str(export.resolve())
        assert cfg["samples_sha256"] == hashlib.sha256(export.read_bytes()).hexdigest()


def test_scoring_a_handmade_samples_file(shared_data, tmp_path, monkeypatch):
    """Several rows per task, in any order: each row is run as written, pass@k follows; no model is loaded;
    a rerun into the same folder is a no-op, a changed file is refused as a different run."""
    import asarm.loading

    monkeypatch.setattr(asarm.loading, "load_model_and_tokenizer", lambda *a: pytest.fail("scoring loaded a model"))
    data = shared_data / CODE / "HumanEval-SingleLineInfilling.jsonl.gz"
    probs = _problems(shared_data, "HumanEval-SingleLineInfilling.jsonl.gz", 4)
    wrong = "    return None\n"
    # task 0: right, right; task 1: wrong, right; task 2: wrong, wrong; task 3 absent (not scored)
    plan = [(0, True), (1, False), (2, False), (0, True), (1, True), (2, False)]
    rows = [{"task_id": probs[i]["task_id"], "completion": probs[i]["canonical_solution"] if ok else wrong,
             "extra": "ignored"} for i, ok in plan]
    samples = _write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "scored"
    assert _score(samples, data, out) == 0
    res = _results(out)["results"]
    assert (res["num_tasks"], res["samples_per_task"]) == (3, 2)
    assert res["pass@1"] == pytest.approx(100 * (1 + 0.5 + 0) / 3)
    assert res["pass@2"] == pytest.approx(100 * 2 / 3)
    verdicts = _passed(out)
    assert verdicts == {(probs[0]["task_id"], 0): True, (probs[0]["task_id"], 1): True,
                        (probs[1]["task_id"], 0): False, (probs[1]["task_id"], 1): True,
                        (probs[2]["task_id"], 0): False, (probs[2]["task_id"], 1): False}
    table = (out / "results.md").read_text()
    assert f"samples {samples.resolve()} (sha256 {hashlib.sha256(samples.read_bytes()).hexdigest()[:12]})" in table
    assert "encoding:" not in table  # nothing was encoded
    assert _score(samples, data, out) == 0  # everything already done
    _write_jsonl(samples, rows[:3])
    assert _score(samples, data, out) == 2  # a different file: refused, not mixed in
    # --tasks selects among the file's tasks
    sub = tmp_path / "sub"
    _write_jsonl(samples, rows)
    assert _score(samples, data, sub, "--tasks", probs[1]["task_id"]) == 0
    assert set(_passed(sub)) == {(probs[1]["task_id"], 0), (probs[1]["task_id"], 1)}


def test_scoring_bad_samples_files_fails_fast_and_clearly(shared_data, tmp_path, capsys):
    data = shared_data / CODE / "HumanEval-SingleLineInfilling.jsonl.gz"
    task = _problems(shared_data, "HumanEval-SingleLineInfilling.jsonl.gz", 1)[0]["task_id"]
    good = {"task_id": task, "completion": "    pass\n"}
    cases = {
        "unknown": ([good, {"task_id": "MultiLineInfilling/HumanEval/0/L0_L1", "completion": ""}],
                    "row 2: task id 'MultiLineInfilling/HumanEval/0/L0_L1' is not in the benchmark"),
        "no_completion": ([good, {"task_id": task}], "row 2: missing field(s) completion"),
        "not_string": ([{"task_id": task, "completion": ["x"]}], "row 1: completion must be a string"),
    }
    for name, (rows, message) in cases.items():
        t0 = time.perf_counter()
        assert _score(_write_jsonl(tmp_path / f"{name}.jsonl", rows), data, tmp_path / name) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert time.perf_counter() - t0 < 5 and not (tmp_path / name).exists()  # refused before any work
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(good) + "\n{\"task_id\": \n")
    assert _score(broken, data, tmp_path / "b") == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert _score(empty, data, tmp_path / "e") == 2
    assert "holds no samples" in capsys.readouterr().err
    assert _score(tmp_path / "nope.jsonl", data, tmp_path / "n") == 2
    assert "samples file" in capsys.readouterr().err
    assert _score(tmp_path, data, tmp_path / "d") == 2  # a directory is not a samples file
    assert "not a regular file" in capsys.readouterr().err
    assert _score(_write_jsonl(tmp_path / "ok.jsonl", [good]), data, tmp_path / "m", "--method", "assd") == 2
    assert "drop --method assd" in capsys.readouterr().err


# ---------------------------------------------------------------------------- speculative --rescore
def _judge_fields(out):
    return {uid: [(r["ppl"], r["judge_nll"], r["judge_tokens"], r["entropy"], "judge_error" in r) for r in rs]
            for uid, rs in _samples(out).items()}


def test_rescore_adds_the_judge_a_fresh_run_would_have_given(tiny_model_dir, tiny_judge_dir, wiki_subset, tmp_path,
                                                             monkeypatch):
    from asarm.evaluation import speculative

    args = ["--methods", "sequential", "assd"]
    fresh, late = tmp_path / "fresh", tmp_path / "late"
    assert main(_spec_args(tiny_model_dir, wiki_subset, fresh, *args, "--judge", str(tiny_judge_dir))) == 0
    assert main(_spec_args(tiny_model_dir, wiki_subset, late, *args, "--judge", "none")) == 0
    before = _samples(late)
    assert all(r["ppl"] is None for rs in before.values() for r in rs)

    # interrupted on the third trial: no result file changed yet, the progress kept
    calls, real = {"n": 0}, speculative.rescore_record

    def flaky(record, judge):
        calls["n"] += 1
        if calls["n"] == 5:  # two records per trial: during trial 3
            raise KeyboardInterrupt
        return real(record, judge)

    monkeypatch.setattr(speculative, "rescore_record", flaky)
    rescore = ["speculative", "--rescore", str(late), "--judge", str(tiny_judge_dir), *FAST]
    assert main(rescore) == 130
    assert _samples(late) == before and _results(late)["config"]["judge"] == "none"
    progress = late / speculative.RESCORE_PROGRESS
    lines = progress.read_text().splitlines()
    assert len(lines) == 2
    stale = json.loads(lines[0])  # as if its run had been overwritten since: other texts, not to be reused
    stale["records"][0]["text"] += " (another run)"
    progress.write_text("\n".join([json.dumps(stale), lines[1]]) + "\n")
    calls["n"] = -100  # no more interruptions; the resumed rescore does only the records left
    assert main(rescore) == 0
    assert calls["n"] == -100 + 6  # three trials of two records: the stale one and the two never done
    assert not (late / speculative.RESCORE_PROGRESS).exists()

    assert _samples(late) == _samples(fresh)  # every field, the judge's included, as the fresh run's
    assert all(r["ppl"] > 1 for rs in _samples(late).values() for r in rs)
    got, want = _results(late), _results(fresh)
    assert _without_time(got["results"]) == _without_time(want["results"])
    assert got["config"]["judge"] == str(tiny_judge_dir) == want["config"]["judge"]
    first_runtime = {k: v for k, v in got["runtime"].items() if k not in ("rescored_judge", "previous_judge")}
    assert (got["runtime"]["rescored_judge"], got["runtime"]["previous_judge"]) == (str(tiny_judge_dir), "none")
    assert first_runtime == {k: v for k, v in want["runtime"].items() if k != "output_dir"} | {"output_dir": str(late)}
    assert "rescore" not in got["config"]  # the option is not a setting of the run
    assert "n/a" not in (late / "results.md").read_text().split("Tests")[0]
    # the rescored folder now is the judged run: rerunning that command finds it finished
    assert main(_spec_args(tiny_model_dir, wiki_subset, late, *args, "--judge", str(tiny_judge_dir))) == 0
    assert _samples(late) == _samples(fresh)


def test_rescore_errors(tiny_model_dir, wiki_subset, shared_data, tmp_path, capsys):
    from asarm.evaluation.runner import CONFIG_FILE

    def err(*argv):
        t0 = time.perf_counter()
        assert main(["speculative", *argv, *FAST]) == 2
        text = capsys.readouterr().err
        assert "Traceback" not in text and time.perf_counter() - t0 < 10
        return text

    assert f"no {CONFIG_FILE} there" in err("--rescore", str(tmp_path / "nothing"), "--judge", "gpt2")
    run = tmp_path / "run"
    assert main(_spec_args(tiny_model_dir, wiki_subset, run, "--methods", "sequential", "--judge", "none",
                           "--trials", "2")) == 0
    before = (run / "results.json").read_text()
    assert "needs a judge" in err("--rescore", str(run), "--judge", "none")
    missing = tmp_path / "no-such-judge"
    assert "nothing was changed" in err("--rescore", str(run), "--judge", str(missing))
    assert (run / "results.json").read_text() == before
    unfinished = tmp_path / "unfinished"
    assert main(_spec_args(tiny_model_dir, wiki_subset, unfinished, "--methods", "sequential", "--judge", "none",
                           "--trials", "2", "--shard", "0", "--num-shards", "2")) == 0
    assert "1 of 2 trials are not finished" in err("--rescore", str(unfinished), "--judge", "gpt2")
    code = tmp_path / "code"
    assert main(["infill-code", "--method", "canonical", "--data", str(shared_data / CODE /
                 "HumanEval-SingleLineInfilling.jsonl.gz"), "--limit", "1", "--output-dir", str(code),
                 "--no-progress"]) == 0
    assert "not a speculative-decoding run" in err("--rescore", str(code), "--judge", "gpt2")
