"""--batch-size and the one SamplingConfig of every evaluation command.

* A bad sampler option fails before anything is loaded or written: exit 2, one line naming it, no output.
* Batched evaluation: each unit samples from its own generators (per-row streams), so batch 1, batch B
  and an interrupted-then-resumed batched run give the same per-unit samples and NFE.
"""

import json
from pathlib import Path

import pytest

from asarm.cli import main
from asarm.evaluation.infill_code import BENCHMARKS

# slow: end-to-end batched evaluations
pytestmark = pytest.mark.slow

COMMANDS = {
    "speculative": [],
    "infill-nlp": [],
    "infill-code": [],
    "density": ["--task", "lambada"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_k0_fails_naming_k_before_anything_is_written(command, tmp_path, capsys):
    out = tmp_path / "out"
    status = main([command, "--k", "0", "--model", "tiny", *COMMANDS[command], "--output-dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert err[0].startswith(f"asarm {command}: error: k (draft length) must be an integer >= 1"), err
    assert not out.exists() and not (out / "config.json").exists()  # nothing loaded, nothing written


def test_infill_k0_fails_before_the_model_loads(capsys):
    assert main(["infill", "--k", "0", "--text", "a [MASK:2] b", "--model", "no/such-model"]) == 2
    assert "k (draft length) must be an integer >= 1" in capsys.readouterr().err  # not the missing model


def test_bad_temperature_and_r_atol_name_themselves(tmp_path, capsys):
    for flag, value, name in (("--temperature", "0", "temperature"), ("--r-atol", "-1", "r_atol")):
        assert main(["infill-nlp", flag, value, "--model", "tiny", "--output-dir", str(tmp_path / name)]) == 2
        assert f"error: {name} must be" in capsys.readouterr().err and not (tmp_path / name).exists()


def _samples(out: Path) -> dict:
    """``{uid: [(text, nfe) per record]}`` of an output directory (every shard file)."""
    got = {}
    for path in out.glob("samples.*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            got[row["uid"]] = [(r.get("completion", r.get("generated")), r["nfe"]) for r in row["records"]]
    return got


def _interrupt(out: Path, keep: int) -> None:
    """What a run killed after ``keep`` units leaves: the first lines of its samples file, no results."""
    (path,) = out.glob("samples.*.jsonl")
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))
    (out / "results.json").unlink()


@pytest.mark.parametrize("command", ["infill-code", "infill-nlp"])
def test_batch_size_does_not_change_any_unit(command, shared_data, tmp_path):
    if command == "infill-code":
        data = str(shared_data / "human-eval-infilling" / BENCHMARKS["single-line"])
        extra = ["--num-samples", "2", "--harness", "builtin", "--workers", "1", "--limit", "5"]
    else:
        data = str(shared_data / "rocstories" / "cloze_test_val__spring2016.csv")
        extra = ["--trials", "2", "--limit", "5"]
    base = [command, "--model", "tiny", "--data", data, "--order", "random", "--device", "cpu", "--threads", "1",
            "--no-progress", *extra]
    runs = {}
    for b in (1, 3):
        runs[b] = tmp_path / f"b{b}"
        assert main([*base, "--batch-size", str(b), "--output-dir", str(runs[b])]) == 0
    assert len(_samples(runs[1])) == 5 and _samples(runs[1]) == _samples(runs[3])
    _interrupt(runs[3], keep=2)  # resumed with another batch size: the 3 missing units are redone
    assert main([*base, "--batch-size", "2", "--output-dir", str(runs[3])]) == 0
    assert _samples(runs[3]) == _samples(runs[1])
    results = json.loads((runs[3] / "results.json").read_text())
    assert results["config"]["sampling"]["k"] == 5 and "batch_size" not in results["config"]  # runtime only
    assert results["runtime"]["batch_size"] == 2
    assert "samples/s" in (runs[3] / "results.md").read_text()  # the throughput column of batched runs


def test_speculative_trials_batched_equal_one_at_a_time(tiny_model, local_tokenizer):
    from asarm.evaluation import speculative
    from asarm.evaluation.runner import Unit
    from asarm.sampling import SamplingConfig

    chunks = [[(7 * i + j) % 500 + 20 for j in range(24)] for i in range(4)]
    units = speculative.build_units(chunks, 4)
    systems = [{"label": m, "model": tiny_model, "method": m} for m in ("sequential", "assd", "ngram")]
    cfg = {"visible_frac": 0.2, "visible_rule": "round", "sampling": SamplingConfig(k=3),
           "backends": ["cached", "plain"], "judge_specials": False, "code": False}
    judge = (None, "no judge")
    seeds = [11, 12, 13, 14]
    one = [speculative.run_trial(u, s, systems, local_tokenizer, judge, cfg) for u, s in zip(units, seeds)]
    batch = speculative.run_trials(units, seeds, systems, local_tokenizer, judge, cfg)
    key = lambda recs: [(r["method"], r["text"], r["nfe"], r["backends_agree"]) for r in recs]  # noqa: E731
    assert [key(r) for r in one] == [key(r) for r in batch]
    assert all(r["backends_agree"] for recs in batch for r in recs)
    assert isinstance(units[0], Unit) and {r["batch_size"] for r in batch[0]} == {4}
