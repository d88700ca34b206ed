"""The offline quickstart, shortened: a few training steps on stdlib sources, then the sampler comparison."""

import importlib.util
import json
from pathlib import Path

import pytest

from asarm.cli import main

ROOT = Path(__file__).resolve().parents[1]


def load_check_readme():
    """scripts/check_readme.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("check_readme", ROOT / "scripts" / "check_readme.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quickstart_offline_short(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["quickstart", "--output-dir", str(out), "--train-steps", "4", "--trials", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| sequential |" in printed and "| assd |" in printed and "| ngram |" in printed
    res = json.loads((out / "speculative" / "results.json").read_text())
    methods = res["results"]["methods"]
    assert methods["assd"]["nfe_mean"] < methods["sequential"]["nfe_mean"] == 61  # 64 tokens, 3 visible
    assert all(m["model_nll_mean"] > 0 and m["entropy_mean"] > 0 for m in methods.values())
    assert (out / "speculative" / "distributions.png").exists()
    # the README's quickstart table has the columns and rows this command writes (its numbers: check_readme)
    check = load_check_readme()
    command_header, command_rows = check.parse(check.first_table((out / "speculative" / "results.md").read_text()))
    readme_header, readme_rows = check.parse(check.readme_table((ROOT / "README.md").read_text()))
    assert readme_header == command_header
    assert [r[0] for r in readme_rows] == [r[0] for r in command_rows] == ["sequential", "assd", "ngram"]
    # the held-out Python files went through the code whitespace mapping (newlines -> <cls>), and the decoded
    # samples have it undone
    from asarm.evaluation.speculative import load_chunks
    from asarm.tokenizer import load_tokenizer

    tok = load_tokenizer(str(out / "train" / "model"))
    chunks = load_chunks(str(out / "heldout.txt"), tok, 64, False, code=True)
    assert all(tok.convert_tokens_to_ids("<cls>") in c for c in chunks[:5])
    rows = [json.loads(line) for f in (out / "speculative").glob("samples.*.jsonl") for line in f.open()]
    texts = [r["text"] for row in rows for r in row["records"]]
    assert texts and not any("<cls>" in t or "<unk>" in t for t in texts)
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["train_steps"] == 4 and (out / "train" / "model").is_dir()
    # rerun: the trained model and the finished trials are reused
    assert main(["quickstart", "--output-dir", str(out), "--train-steps", "4", "--trials", "2", "--no-progress"]) == 0
    assert json.loads((out / "quickstart.json").read_text())["train_seconds"] == 0.0


def test_check_readme_catches_a_drifted_quickstart_table(tmp_path):
    check = load_check_readme()
    readme = (ROOT / "README.md").read_text()
    table = check.readme_table(readme)
    header, rows = check.parse(table)
    results = tmp_path / "results.md"
    results.write_text("Speculative decoding ...\n\n" + "\n".join(table) + "\n\nPaired tests ...\n")
    fake_readme = tmp_path / "README.md"
    fake_readme.write_text(readme)
    assert check.main(["--readme", str(fake_readme), "--results", str(results)]) == 0
    # wall-clock columns may differ between runs; every other cell may not
    time_col = next(i for i, h in enumerate(header) if h.startswith("time"))
    other_col = next(i for i, h in enumerate(header) if h.startswith("NFE"))
    for col, expected in [(time_col, 0), (other_col, 1)]:
        changed = [list(r) for r in rows]
        changed[1][col] = "99.9"
        lines = table[:2] + ["| " + " | ".join(r) + " |" for r in changed]
        results.write_text("\n".join(lines) + "\n")
        assert check.main(["--readme", str(fake_readme), "--results", str(results)]) == expected
    assert check.main(["--readme", str(fake_readme), "--results", str(results), "--write"]) == 0
    assert check.main(["--readme", str(fake_readme), "--results", str(results)]) == 0
    assert "99.9" in fake_readme.read_text() and len(fake_readme.read_text()) == pytest.approx(len(readme), abs=20)


def test_readme_is_a_front_door_of_at_most_15_kb():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_500
    for command in ("_run_speculative_decoding.sh", "_run_nlp_infill_eval.sh", "_run_code_infill_eval.sh",
                    "_run_training.sh", "asarm quickstart"):
        assert command in readme
    for word in ("issue", "session"):
        assert word not in readme.lower()
    for link in ("docs/design.md", "docs/protocols.md", "docs/training.md", "docs/evaluations.md",
                 "benchmarks/README.md", "CHANGELOG.md"):
        assert link in readme and (ROOT / link).is_file()
