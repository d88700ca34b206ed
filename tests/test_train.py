"""The trainer: tiny runs, 2-process equivalence, SIGTERM, bad input (resume chains, damaged checkpoints,
config drift and non-finite losses: test_train_resume.py)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from asarm.train import TrainConfig, check_config, freeze_unused, latest_checkpoint, save_checkpoint, train

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="stdlib", eval_docs=10, seq_len=32, init="fresh", tokenizer="local", local_vocab_size=600,
            model_config=dict(d_model=32, n_layer=2, n_head=2, d_inner=64), rate_warmup_steps=4, batch_size=4,
            grad_accum=2, lr=1e-3, scale_lr=False, warmup_steps=2, max_steps=6, cpu=True, save_steps=3,
            log_steps=1, eval_steps=0, eval_rates=[0.5], eval_batches=1, sample_rows=1, sample_rate=0.5, progress=False)


# slow: training runs
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    return TrainConfig.from_dict({**TINY, "output_dir": str(tmp_path / name), **kw})


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def _cli(tmp_path, args, nproc=1, **kw):
    """Run ``asarm train`` in a fresh process (``torchrun`` when ``nproc > 1``); returns the CompletedProcess."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
                if nproc > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([*launcher, "-m", "asarm", "train", "--config", str(config), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One process, 2 micro-batches per step, 6 steps: the run the others must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    out = _cli(tmp, ["--output_dir", str(tmp / "run")])
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp / "run"


def test_tiny_config_trains_loss_falls_and_the_model_samples(tmp_path):
    from transformers import XLNetLMHeadModel

    from asarm import ASARM, sample
    from asarm.orders import random_sorted_order

    run = train(_cfg(tmp_path, max_steps=40, lr=3e-3, eval_steps=20, save_steps=10, keep_last=2, log_steps=1))
    losses = list(_losses(run).values())
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [20, 40] and all(r["assd_nfe"] >= 1 for r in evals)
    assert all(0 < r["assd_entropy_bits"] <= 16 for r in evals)  # bits (asarm.evaluation.metrics.entropy_bits)
    assert {"loss", "lr", "rate_min", "rate_max", "tokens_per_s", "elapsed_s"} <= set(rows[0])
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000030", "step_00000040"]
    assert (run / "config.yaml").is_file() and (run / "samples.jsonl").is_file()
    # the saved model: plain XLNet and ASARM both load it, and it samples with ASSD
    XLNetLMHeadModel.from_pretrained(run / "model")
    model = ASARM.from_pretrained(str(run / "model"))
    x = torch.randint(20, 500, (2, 32))
    sigma = random_sorted_order(2, 32, 8, generator=torch.Generator().manual_seed(0))
    out = sample(model, x, sigma, torch.tensor([8, 8]), method="assd", k=4, generator=torch.Generator().manual_seed(0))
    assert out.sequences.shape == (2, 32) and (out.nfe <= 24).all()
    assert not torch.isin(out.sequences[sigma >= 8], model.banned.nonzero().flatten()).any()


def test_two_processes_stay_identical_and_match_one_process(tmp_path, reference_run):
    out = _cli(tmp_path, ["--output_dir", str(tmp_path / "ddp"), "--grad_accum", "1"], nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    status = json.loads((tmp_path / "ddp" / "status.json").read_text())
    assert status["world_size"] == 2 and status["ranks_identical"]
    ddp, ref = _losses(tmp_path / "ddp"), _losses(reference_run)
    assert ddp.keys() == ref.keys()
    for step in ref:
        assert ddp[step] == pytest.approx(ref[step], rel=1e-5, abs=1e-6)


def test_sigterm_saves_and_exits_cleanly_then_resumes(tmp_path):
    def term_after_step_2(state):  # the crash hook: a SIGTERM between steps 2 and 3, as a scheduler sends it
        if state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    caller_rng, caller_handler = torch.get_rng_state(), signal.getsignal(signal.SIGTERM)
    run = train(_cfg(tmp_path, save_steps=100), after_step=term_after_step_2)
    assert torch.equal(torch.get_rng_state(), caller_rng)  # dropout's seeding is scoped: a fresh run leaves it alone
    assert signal.getsignal(signal.SIGTERM) is caller_handler  # the trainer's handler is gone with train()
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted" and status["step"] == 3
    assert latest_checkpoint(run).name == "step_00000003"
    train(_cfg(tmp_path, resume="true"))
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    assert sorted(_losses(run)) == [1, 2, 3, 4, 5, 6]


def test_scoped_helpers_give_back_the_rng_and_the_signal_handler():
    from asarm.train import seeded_global_rng, sigterm_requests_stop

    dropout = torch.nn.Dropout(0.5)
    caller = torch.get_rng_state()
    draws = []
    for _ in range(2):
        with seeded_global_rng(123, torch.device("cpu")):
            draws.append(dropout(torch.ones(64)))
    assert torch.equal(*draws) and torch.equal(torch.get_rng_state(), caller)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RuntimeError, match="boom"):
        with sigterm_requests_stop() as flag:
            os.kill(os.getpid(), signal.SIGTERM)
            assert flag.requested
            raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_retired_debug_signal_option():
    """Old run directories' config.yaml (debug_signal: '') still load; setting it says what replaced it."""
    assert TrainConfig.from_dict({"debug_signal": "", "seed": 3}).seed == 3
    with pytest.raises(ValueError, match="debug_signal was removed.*after_step"):
        TrainConfig.from_dict({"debug_signal": "KILL@2"})


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, tiny_model, local_tokenizer, monkeypatch):
    state = {"step": 1, "elapsed": 0.0, "tokens": 0, "config": {}}
    first = save_checkpoint(tmp_path, 1, tiny_model, local_tokenizer, state, keep_last=3)
    manifest = json.loads((first / "manifest.json").read_text())["files"]
    assert {"model.safetensors", "training_state.pt", "config.json", "spiece.model"} <= set(manifest)
    saved = json.loads((first / "config.json").read_text())
    assert saved["asarm_mask_token_id"] == tiny_model.mask_token_id and "asarm_banned_token_ids" in saved

    def crash(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, 2, tiny_model, local_tokenizer, {**state, "step": 2}, keep_last=3)
    assert latest_checkpoint(tmp_path) == first
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()


def test_every_trainable_parameter_gets_a_gradient(tiny_model):
    """What lets DDP run with find_unused_parameters=False without hanging."""
    from asarm import objective as obj

    model = type(tiny_model)(type(tiny_model.xlnet)(tiny_model.config))
    frozen = freeze_unused(model)
    assert frozen and all("seg_embed" in n or "r_s_bias" in n for n in frozen)
    model.train()
    b = obj.make_batch(torch.randint(20, 500, (2, 16)), 0.5, model.mask_token_id, generator=torch.Generator().manual_seed(0))
    obj.target_loss(model(b.input_ids, b.perm_mask, b.target_mapping), b.labels).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


@pytest.mark.parametrize("change, message", [
    (dict(dataset="no_such_corpus"), "unknown dataset"),
    (dict(dataset="/nonexistent/data/*.jsonl"), "no file matches"),
    (dict(seq_len=64, model_max_len=48), "over the model's limit"),
    (dict(start_rate=0.0), "strictly between 0 and 1"),
    (dict(max_rate=1.0), "strictly between 0 and 1"),
    (dict(min_rate=0.9, max_rate=0.8), "above max_rate"),
    (dict(batch_size=0), "batch_size must be at least 1"),
    (dict(objective="diffusion"), "objective must be one of"),
    (dict(resume="true"), "no intact checkpoint"),
    (dict(report_to=["tensorbord"]), "unknown tracker"),
])
def test_bad_input_fails_before_training(tmp_path, change, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        train(_cfg(tmp_path, **change))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_output_dir_holding_another_run_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(ValueError, match="holds another run"):
        train(_cfg(tmp_path))


def test_config_file_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 2, "eval_rates": [0.5], "resume": True}))
    cfg = TrainConfig.load(str(path), {"batch_size": "3", "eval_rates": "[0.2, 0.4]", "lr": "2e-4"})
    assert (cfg.batch_size, cfg.eval_rates, cfg.lr, cfg.resume) == (3, [0.2, 0.4], 2e-4, "true")
    check_config(cfg)
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.load(str(path), {"batchsize": 3})
    with pytest.raises(ValueError, match="expects int"):
        TrainConfig.load(None, {"batch_size": "many"})


# the paper's launcher values (docs/design.md, Objective), written out: `asarm train` with no option trains this
PAPER_DEFAULTS = {"lr": 1e-5, "seq_len": 512, "batch_size": 8, "grad_accum": 4, "start_rate": 0.15,
                  "min_rate": 0.85, "max_rate": 0.99, "rate_warmup_steps": 5000, "warmup_steps": 5000,
                  "grad_clip": 1.0, "train_sequences": 24_000_000, "objective": "joint", "order": "sorted",
                  "loss_scale": "none", "init": "xlnet/xlnet-base-cased", "dataset": "openwebtext"}


@pytest.fixture
def captured_train(monkeypatch):
    """``asarm train`` runs up to the trainer's entry, which records the config (after its checks) instead of training."""
    import asarm.train as train_module

    seen = []

    def fake_train(cfg):
        check_config(cfg)
        seen.append(cfg)

    monkeypatch.setattr(train_module, "train", fake_train)
    return seen


def test_train_command_line_defaults_overrides_and_refusals(tmp_path, captured_train, capsys):
    from asarm.cli import build_parser, main

    assert main(["train"]) == 0
    assert {k: getattr(captured_train[-1], k) for k in PAPER_DEFAULTS} == PAPER_DEFAULTS
    # the help states those defaults next to the flags
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    helps = {a.dest: a.help for a in train_parser._actions}
    for dest, shown in [("lr", "1e-05"), ("seq_len", "512"), ("grad_accum", "4"), ("objective", "'joint'"),
                        ("max_rate", "0.99")]:
        assert helps[dest].endswith(f"(default: {shown})"), (dest, helps[dest])
    # both spellings; YAML gives values, the command line overrides them, the rest keeps its default
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"batch_size": 2, "lr": 1e-3, "eval_rates": [0.5], "objective": "parallel"}))
    assert main(["train", "--config", str(path), "--batch-size", "3", "--eval_rates", "[0.2, 0.4]"]) == 0
    cfg = captured_train[-1]
    assert (cfg.batch_size, cfg.lr, cfg.eval_rates, cfg.objective, cfg.seq_len) == (3, 1e-3, [0.2, 0.4], "parallel", 512)
    assert main(["train", "--seq-len", "256"]) == 0 and captured_train[-1].seq_len == 256
    # a bad value is refused with a message naming the option, no traceback, and nothing trains
    count = len(captured_train)
    for argv, named in [(["--batch_size", "many"], "batch_size"), (["--objective", "diffusion"], "objective"),
                        (["--max-rate", "1.5"], "max_rate")]:
        capsys.readouterr()
        assert main(["train", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert named in err and "error" in err and "Traceback" not in err, (argv, err)
    assert len(captured_train) == count
    with pytest.raises(SystemExit):  # an unknown flag: argparse's usage error
        main(["train", "--batchsize", "3"])
    assert "--batchsize" in capsys.readouterr().err


def test_train_command_in_a_fresh_process_refuses_an_unknown_dataset(tmp_path):
    out = subprocess.run([sys.executable, "-m", "asarm", "train", "--dataset", "nope", "--output_dir", str(tmp_path / "x")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "unknown dataset" in out.stderr


def test_code_runs_save_a_model_that_may_write_whitespace(tmp_path):
    from asarm import ASARM
    from asarm.data import code_whitespace_ids
    from asarm.tokenizer import load_tokenizer

    run = train(_cfg(tmp_path, code_whitespace="true", max_steps=2, save_steps=2))
    tokenizer = load_tokenizer(str(run / "model"))
    for directory in (run / "model", run / "checkpoints" / "step_00000002"):
        model = ASARM.from_pretrained(str(directory), tokenizer=tokenizer)
        assert not model.banned[code_whitespace_ids(tokenizer)].any()
        assert model.banned[model.mask_token_id]
