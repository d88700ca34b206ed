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
    summary = json.loads((out / "quickstart.json").read_text())
    assert summary["train_steps"] == 4 and (out / "train" / "model").is_dir()
    # rerun: the trained model and the finished trials are reused
    assert main(["quickstart", "--output-dir", str(out), "--train-steps", "4", "--trials", "2", "--no-progress"]) == 0
    assert json.loads((out / "quickstart.json").read_text())["train_seconds"] == 0.0
