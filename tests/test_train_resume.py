"""Training state you can trust: exact resume through a chain of interruptions, self-verifying checkpoints
with fallback, config drift refused, non-finite losses caught, SIGTERM during start-up.

One reference run (8 steps, a checkpoint after every step) is trained once per module; the damage and
drift cases copy its directory and resume the copy, so each case costs one step or none.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
import yaml

from asarm import checkpoint as ck
from asarm.data import PackedStream, stdlib_texts
from asarm.train import (TrainConfig, TrainingDiverged, check_finite, config_differences, latest_checkpoint,
                         RESUME_MAY_CHANGE, train)

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS = 8
# the tiny config of test_train.py, on documents of a few hundred tokens (a stream reads a new one every
# few steps, so resumed streams serve their buffer for a while and then must find the right next document)
TINY = dict(eval_docs=4, seq_len=32, init="fresh", tokenizer="local", local_vocab_size=600,
            model_config=dict(d_model=32, n_layer=2, n_head=2, d_inner=64), rate_warmup_steps=4, batch_size=4,
            grad_accum=2, lr=1e-3, scale_lr=False, warmup_steps=2, max_steps=MAX_STEPS, cpu=True, save_steps=1,
            keep_last=MAX_STEPS, log_steps=1, eval_steps=0, eval_rates=[0.5], eval_batches=1, sample_rows=1,
            sample_rate=0.5, progress=False)
# a fresh process that runs train() and SIGKILLs itself either right after step N (argv[3]; its evaluation and
# checkpoint done) or inside its Mth save, after every data file of that checkpoint is written and before its
# manifest is (argv[2]); argv[1]: the config as JSON; 0: never
CRASHING_TRAIN = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from asarm import checkpoint
from asarm.train import TrainConfig, train
cfg, kill_in_save, kill_after = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
real, calls = checkpoint.write_manifest, []
def write_manifest(directory, step):
    calls.append(step)
    if len(calls) == kill_in_save:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(directory, step)
checkpoint.write_manifest = write_manifest
def after_step(state):
    if state.step == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)
train(TrainConfig.from_dict(cfg), after_step=after_step)
"""


def signal_after(step: int, signum: int):
    """A ``train(after_step=...)`` hook: the process sends itself ``signum`` once step ``step`` is done (its
    evaluation and checkpoint included), as a scheduler or the OOM killer would between two steps."""
    def after_step(state):
        if state.step == step:
            os.kill(os.getpid(), signum)
    return after_step


# one torch thread for the whole module, its module-scoped reference run included (conftest.one_thread)
# slow: training chains with interruptions
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A .jsonl of 48 unique documents of 400 to 1800 characters (standard-library source)."""
    text = "".join(stdlib_texts(120_000))
    docs, at = [], 0
    for i in range(48):
        n = (1800, 700, 1200, 400)[i % 4]
        docs.append(text[at: at + n])
        at += n
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def _cfg(corpus, run_dir, **kw) -> dict:
    return {**TINY, "dataset": str(corpus), "output_dir": str(run_dir), **kw}


def _losses(run_dir) -> dict[int, float]:
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    steps = [r["step"] for r in train_rows]
    assert len(steps) == len(set(steps)), f"duplicate metrics rows: {steps}"
    return {r["step"]: r["loss"] for r in train_rows}


def _status(run_dir) -> dict:
    return json.loads((Path(run_dir) / "status.json").read_text())


def _in_subprocess(cfg: dict, kill_in_save: int = 0, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CRASHING_TRAIN, json.dumps(cfg), str(kill_in_save), str(kill_after)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _term_during_startup(monkeypatch):
    """Make the next train() get SIGTERM while it reads the held-out split (before any model step)."""
    import asarm.train as train_module

    real = train_module.held_out_digests

    def held_out_digests(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "held_out_digests", held_out_digests)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """The uninterrupted run every other run must reproduce bit for bit."""
    run = tmp_path_factory.mktemp("reference") / "run"
    train(TrainConfig.from_dict(_cfg(corpus, run)))
    assert _status(run)["state"] == "done" and sorted(_losses(run)) == list(range(1, MAX_STEPS + 1))
    return run


def _copy(reference, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    return run


def _digest(run_dir) -> str:
    return _status(run_dir)["param_checksums"][0]


def _stream_docs(run_dir, step) -> list[int]:
    """Documents each slot's stream had read when checkpoint ``step`` was written."""
    state = torch.load(Path(run_dir) / "checkpoints" / f"step_{step:08d}" / "training_state.pt", weights_only=False)
    return [state["data"][s]["docs"] for s in sorted(state["data"])]


# ---------------------------------------------------------------------------- the data position
def test_stream_state_is_right_before_the_resumed_stream_reads_a_document():
    """state_dict() right after load_state_dict (the stream still serving its buffer) keeps the data position."""
    from datasets import Dataset

    docs = [f"document {i} " + "x " * (10 + 7 * i) for i in range(12)]
    make = lambda: Dataset.from_dict({"text": docs}).to_iterable_dataset(num_shards=3)  # noqa: E731
    encode = lambda text: [len(w) for w in text.split()]  # noqa: E731  (one id per word)

    def stream():
        return PackedStream(make, encode, 0, 5)

    straight = stream()
    expected = [straight.next_chunk() for _ in range(40)]
    a = stream()
    [a.next_chunk() for _ in range(3)]
    first = a.state_dict()
    assert first["source"] is not None and len(first["buffer"]) > 10  # mid-document: more chunks in the buffer
    b = stream()
    b.load_state_dict(first)
    assert b.state_dict() == first  # a checkpoint written at once loses nothing
    b.next_chunk()  # served from the buffer: the source has not moved
    second = b.state_dict()
    assert second["source"] == first["source"] and second["docs"] == first["docs"]
    c = stream()
    c.load_state_dict(second)  # the second resume in a row
    assert [c.next_chunk() for _ in range(36)] == expected[4:]
    with pytest.raises(ValueError, match="missing"):
        stream().load_state_dict({"epoch": 0})


def test_chain_of_interruptions_repeats_the_uninterrupted_run_bitwise(corpus, reference, tmp_path, monkeypatch):
    """SIGTERM in start-up, SIGKILL after a save, SIGKILL inside a save, SIGTERM mid-run: five processes, the
    same losses and the same final weights as one uninterrupted run."""
    run = tmp_path / "run"
    cfg = _cfg(corpus, run, resume="auto")

    # 1. SIGTERM during start-up of a fresh run: a step-0 checkpoint and a status the launcher requeues
    with monkeypatch.context() as m:
        _term_during_startup(m)
        train(TrainConfig.from_dict(cfg))
    assert _status(run)["state"] == "interrupted" and latest_checkpoint(run).name == "step_00000000"
    # 2. SIGKILL right after the save of step 2
    out = _in_subprocess(cfg, kill_after=2)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert latest_checkpoint(run).name == "step_00000002"
    # 3. SIGKILL inside the second save of the next process (step 4): step 3 is the newest intact checkpoint
    out = _in_subprocess(cfg, kill_in_save=2)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert (run / "checkpoints" / ".tmp-step_00000004").is_dir()  # the half-written save
    assert latest_checkpoint(run).name == "step_00000003"
    # the case that used to lose the data position: step 3 was saved by a resumed stream that had not read a
    # document since its resume at step 2
    assert any(a == b for a, b in zip(_stream_docs(run, 2), _stream_docs(run, 3))), "precondition"
    # 4. SIGTERM after step 5: the trainer saves step 6 and stops
    train(TrainConfig.from_dict(cfg), after_step=signal_after(5, signal.SIGTERM))
    assert _status(run)["state"] == "interrupted" and _status(run)["step"] == 6
    # 5. the rest
    train(TrainConfig.from_dict(cfg))
    assert _status(run)["state"] == "done"
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert _losses(run) == _losses(reference)  # == on floats: bitwise
    assert _digest(run) == _digest(reference)


def test_sigterm_during_startup_of_a_resumed_run_stays_resumable(corpus, reference, tmp_path, monkeypatch):
    run = _copy(reference, tmp_path)
    ck.remove_checkpoint(run / "checkpoints" / "step_00000008")  # as if killed after step 7's save
    (run / "checkpoints" / "latest").write_text("step_00000007\n")
    _term_during_startup(monkeypatch)
    train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto")))
    status = _status(run)
    assert (status["state"], status["step"], status["checkpoint"]) == ("interrupted", 7, 7)
    assert latest_checkpoint(run).name == "step_00000007"


# ---------------------------------------------------------------------------- damaged checkpoints
DAMAGES = {
    "truncate": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "flip": lambda p: p.write_bytes(_flipped(p.read_bytes())),
    "delete": lambda p: p.unlink(),
    "garbage": lambda p: p.write_bytes(os.urandom(max(p.stat().st_size, 16))),
}


def _flipped(data: bytes) -> bytes:
    """``data`` with one bit of its middle byte flipped."""
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 1]) + data[i + 1:]


def test_every_kind_of_damage_to_every_file_is_caught(reference, tmp_path):
    """Verification alone (no training): each file of the newest checkpoint x each damage."""
    newest = reference / "checkpoints" / f"step_{MAX_STEPS:08d}"
    names = sorted(p.name for p in newest.iterdir())
    assert {"manifest.json", "model.safetensors", "training_state.pt", "config.json", "spiece.model"} <= set(names)
    for name in names:
        for kind, damage in DAMAGES.items():
            root = tmp_path / f"{name}-{kind}"
            for step in (MAX_STEPS - 1, MAX_STEPS):  # the newest and the one to fall back to
                shutil.copytree(reference / "checkpoints" / f"step_{step:08d}", root / "checkpoints" / f"step_{step:08d}")
            damage(root / "checkpoints" / newest.name / name)
            found = ck.find_checkpoint(root)
            assert found.checkpoint is not None and found.checkpoint.name == f"step_{MAX_STEPS - 1:08d}", (name, kind)
            [(directory, reason)] = found.damaged
            assert directory.name == newest.name and name in reason, (name, kind, reason)
            shutil.rmtree(root)


@pytest.mark.parametrize("name, kind", [("model.safetensors", "flip"), ("training_state.pt", "truncate"),
                                        ("config.json", "delete"), ("tokenizer.json", "garbage"),
                                        ("manifest.json", "empty")])
def test_damaged_newest_checkpoint_falls_back_and_still_matches_bitwise(corpus, reference, tmp_path, name, kind):
    run = _copy(reference, tmp_path)
    newest = run / "checkpoints" / f"step_{MAX_STEPS:08d}"
    DAMAGES[kind](newest / name)
    with pytest.warns(ck.CheckpointWarning, match=f"step_{MAX_STEPS:08d} is damaged: {name}"):
        train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto")))
    kept = run / "checkpoints" / f"damaged-step_{MAX_STEPS:08d}"
    assert name in (kept / "DAMAGE.txt").read_text()  # set aside for inspection, with the reason
    assert ck.verify_checkpoint(newest) is None  # step 8 again, written by the resumed run
    assert _losses(run) == _losses(reference) and _digest(run) == _digest(reference)


@pytest.mark.parametrize("kind", ["delete", "garbage", "stale"])
def test_a_missing_or_wrong_latest_pointer_does_not_matter(corpus, reference, tmp_path, kind):
    run = _copy(reference, tmp_path)
    ck.remove_checkpoint(run / "checkpoints" / f"step_{MAX_STEPS:08d}")  # the newest intact one is now step 7
    pointer = run / "checkpoints" / "latest"
    if kind == "delete":
        pointer.unlink()
    else:
        pointer.write_text("\x00\xffgarbage" if kind == "garbage" else "step_00000005\n")
    assert latest_checkpoint(run).name == f"step_{MAX_STEPS - 1:08d}"
    # a stale pointer (a kill between the rename and the pointer update) is normal and needs no warning
    with pytest.warns(ck.CheckpointWarning, match="checkpoints/latest") if kind != "stale" else nullcontext():
        train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto")))
    assert _losses(run) == _losses(reference) and _digest(run) == _digest(reference)
    assert pointer.read_text().strip() == f"step_{MAX_STEPS:08d}"


@pytest.mark.parametrize("resume", ["auto", "true"])
def test_no_intact_checkpoint_fails_clearly_and_never_restarts_the_run(corpus, reference, tmp_path, resume):
    run = _copy(reference, tmp_path)
    for directory in ck.step_dirs(run):
        (directory / "training_state.pt").unlink()
    metrics, samples = (run / "metrics.jsonl").read_text(), (run / "samples.jsonl").read_text()
    with pytest.raises(ck.CheckpointError, match="training_state.pt is missing") as err:
        train(TrainConfig.from_dict(_cfg(corpus, run, resume=resume)))
    assert "step_00000001/" in str(err.value) and "step_00000008: training_state.pt is missing" in str(err.value)
    assert (run / "metrics.jsonl").read_text() == metrics and (run / "samples.jsonl").read_text() == samples
    assert _status(run)["state"] == "done"  # a finished run stays finished
    assert len(ck.step_dirs(run)) == MAX_STEPS  # nothing renamed or deleted when nothing could be resumed


def test_a_checkpoint_from_before_manifests_is_adopted_on_request(reference, tmp_path):
    run = _copy(reference, tmp_path)
    legacy = run / "checkpoints" / f"step_{MAX_STEPS:08d}"
    (legacy / "manifest.json").unlink()
    assert "asarm.checkpoint adopt" in ck.verify_checkpoint(legacy)
    ck.adopt(legacy)
    assert ck.verify_checkpoint(legacy) is None
    with pytest.raises(ck.CheckpointError, match="already has"):
        ck.adopt(legacy)


def test_a_run_that_never_saved_restarts_from_step_zero_with_a_warning(corpus, reference, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((reference / "config.yaml").read_text())
    (run / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 9.0}\n')
    with pytest.warns(ck.CheckpointWarning, match="stopped before its first checkpoint"):
        train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto")))
    assert _losses(run) == _losses(reference)


# ---------------------------------------------------------------------------- config drift
def test_resume_refuses_every_change_that_defines_the_run(corpus, reference, tmp_path):
    run = _copy(reference, tmp_path)
    (run / "status.json").write_text(json.dumps({**_status(run), "state": "interrupted"}))  # as after a SIGTERM
    before = (run / "config.yaml").read_text()
    changed = dict(lr=2e-3, model_config=dict(d_model=48, n_layer=2, n_head=2, d_inner=64), seq_len=16,
                   batch_size=2, seed=1, objective="parallel", warmup_steps=3)
    with pytest.raises(ValueError, match="cannot resume") as err:
        train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto", **changed)))
    for name in changed:
        assert f"  {name}: " in str(err.value), name
    assert (run / "config.yaml").read_text() == before  # nothing recorded as applied
    status = _status(run)  # failed, so the launcher does not requeue the refused resume forever
    assert status["state"] == "failed" and "cannot resume" in status["error"] and status["step"] == MAX_STEPS


def test_allowed_changes_are_applied_and_recorded_at_their_step(corpus, reference, tmp_path):
    run = _copy(reference, tmp_path)
    train(TrainConfig.from_dict(_cfg(corpus, run, resume="auto", max_steps=MAX_STEPS + 2, log_steps=2)))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == MAX_STEPS + 2 and saved["log_steps"] == 2
    assert saved["changes"] == [{"step": MAX_STEPS, "max_steps": {"from": MAX_STEPS, "to": MAX_STEPS + 2},
                                 "log_steps": {"from": 1, "to": 2}}]
    assert sorted(_losses(run)) == list(range(1, MAX_STEPS + 1)) + [MAX_STEPS + 2]
    assert TrainConfig.load(str(run / "config.yaml")).max_steps == MAX_STEPS + 2  # still a loadable config


def test_config_differences_splits_fixed_from_changeable_options():
    saved = TrainConfig().__dict__ | {"lr": 1.0, "log_steps": 5}
    saved.pop("seed")  # an option the checkpoint predates counts as its default
    refused, allowed = config_differences(saved, TrainConfig(log_steps=7, seed=0))
    assert refused == {"lr": (1.0, TrainConfig().lr)} and allowed == {"log_steps": (5, 7)}
    assert RESUME_MAY_CHANGE <= set(TrainConfig.__dataclass_fields__)
    assert not {"seq_len", "batch_size", "seed", "model_config", "dataset", "objective", "lr"} & RESUME_MAY_CHANGE


# ---------------------------------------------------------------------------- non-finite values
def test_a_diverging_run_stops_with_an_error_and_is_never_done(corpus, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="non-finite loss"):
        train(TrainConfig.from_dict(_cfg(corpus, run, lr=1e6, save_steps=100, max_steps=30)))
    status = _status(run)
    assert status["state"] == "failed" and "non-finite" in status["error"]
    assert not (run / "model").exists() and latest_checkpoint(run) is None


def test_lr_inf_is_refused_on_the_command_line(corpus, tmp_path, capsys):
    from asarm.cli import main

    run = tmp_path / "run"
    assert main(["train", "--output_dir", str(run), "--lr", "inf", "--dataset", str(corpus)]) == 2
    assert "lr must be a positive finite number" in capsys.readouterr().err
    assert not (run / "status.json").exists()


@pytest.mark.parametrize("loss, norm, scaler, fails", [
    (1.0, 2.0, False, False), (float("nan"), 2.0, False, True), (float("inf"), 2.0, True, True),
    (1.0, float("inf"), False, True), (1.0, float("nan"), True, False),  # fp16: the GradScaler skips that step
])
def test_check_finite(loss, norm, scaler, fails):
    if fails:
        with pytest.raises(TrainingDiverged, match="non-finite"):
            check_finite(3, loss, norm, scaler, 1e-3)
    else:
        check_finite(3, loss, norm, scaler, 1e-3)


# ---------------------------------------------------------------------------- across transformers majors
@pytest.mark.parametrize("major", [4, 5])
def test_a_run_written_under_either_transformers_major_resumes_here(major, tmp_path):
    """``tests/fixtures/run_transformers{4,5}``: two steps of a tiny run written under
    transformers 4.44 / 5.x (``scripts/make_run_fixture.py``). Whichever major is installed
    resumes it from its checkpoint to step 4, with the checkpoint's tokenizer unchanged."""
    from asarm.tokenizer import load_tokenizer

    if sys.version_info[:2] != (3, 11):
        pytest.skip("the fixture runs read Python 3.11's standard library as their data")
    run = tmp_path / "run"
    shutil.copytree(ROOT / "tests" / "fixtures" / f"run_transformers{major}", run)
    saved = load_tokenizer(str(run / "checkpoints" / "step_00000002"))
    text = "def f(x):\n    return x  # two  spaces\n"
    before = saved(text, add_special_tokens=False)["input_ids"]
    cfg = TrainConfig.load(str(run / "config.yaml"), {"output_dir": str(run), "resume": "auto", "max_steps": 4})
    train(cfg)
    assert _status(run)["state"] == "done" and sorted(_losses(run)) == [1, 2, 3, 4]
    again = load_tokenizer(str(latest_checkpoint(run)))
    assert latest_checkpoint(run).name == "step_00000004"
    assert again(text, add_special_tokens=False)["input_ids"] == before


# ---------------------------------------------------------------------------- one run per directory (issue 20)
def _start_cli_train(cfg: dict, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "asarm", "train", "--config", str(config), "--progress", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, config


def _wait_for(predicate, seconds: float = 240) -> None:
    import time

    deadline = time.time() + seconds
    while not predicate():
        assert time.time() < deadline, "timed out waiting"
        time.sleep(0.05)


def test_a_second_run_on_the_same_directory_is_refused_naming_the_first(corpus, tmp_path, capsys):
    """Two `asarm train` on one output_dir: the second (--resume auto, a requeue racing its predecessor) is
    refused at once with the first's PID and host, and leaves its status alone; the lock goes with the first."""
    from asarm.cli import main
    from asarm.train import run_lock

    run_dir = tmp_path / "run"
    proc, config = _start_cli_train(_cfg(corpus, run_dir, max_steps=100_000, save_steps=100_000), tmp_path)
    try:
        _wait_for(lambda: (run_dir / "status.json").is_file() or proc.poll() is not None)
        assert proc.poll() is None, proc.communicate()
        assert _status(run_dir)["state"] == "running"
        capsys.readouterr()
        # (a short run, so that a missing lock fails the test quickly instead of training beside the first)
        assert main(["train", "--config", str(config), "--resume", "auto", "--max_steps", "3"]) == 2
        err = capsys.readouterr().err
        assert "in use by another training run" in err and f"PID {proc.pid}" in err, err
        assert _status(run_dir)["state"] == "running"  # not set to failed by the refused one
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=240)
    assert _status(run_dir)["state"] == "interrupted"
    with run_lock(run_dir):  # released with the first run
        pass


def test_sigterm_while_the_command_is_still_importing_leaves_interrupted(corpus, tmp_path):
    """The start-up window: SIGTERM as soon as `asarm train` can take it (before torch is imported) ends
    the run as interrupted (requeued), not killed with no status or a stale `running`."""
    run_dir = tmp_path / "run"
    proc, _ = _start_cli_train(_cfg(corpus, run_dir, max_steps=100_000, save_steps=100_000), tmp_path)

    def catches_sigterm() -> bool:
        for line in open(f"/proc/{proc.pid}/status"):
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
        return False

    try:
        _wait_for(lambda: proc.poll() is not None or catches_sigterm(), 60)
        assert "libtorch" not in open(f"/proc/{proc.pid}/maps").read()  # caught before torch is even loaded
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-2000:]
    assert _status(run_dir)["state"] == "interrupted"


def test_only_the_train_command_records_an_early_sigterm():
    """Another program that imports asarm keeps SIGTERM's default (it must still be killable)."""
    from asarm.startup import is_train_command

    assert is_train_command(["-m", "train"]) and is_train_command(["/venv/bin/asarm", "--debug", "train"])
    assert is_train_command(["/repo/asarm/__main__.py", "train", "--config", "x.yaml"])
    assert not is_train_command(["run.py", "train"]) and not is_train_command(["asarm", "infill"])
