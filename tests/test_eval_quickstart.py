"""The offline quickstart, shortened: a few training steps on stdlib sources, then the sampler comparison."""

import json

from asarm.cli import main


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
