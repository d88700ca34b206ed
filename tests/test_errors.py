"""Every bad input gets a clear, fast message: no traceback, the problem and the fix named.

Most cases call ``main([...])`` in-process (capsys holds what the user would see
on stderr) and time the call itself: the error path must not load a model, wait
on the network or allocate what the input asked for. ``test_subprocess_*``
checks the real ``python -m asarm`` process once per kind of error.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from asarm.cli import MAX_NEW_TOKENS, encode_masked_text, main, parse_mask_spans, user_error_message

FAST_S = 5.0  # "a few seconds" on a busy 2-core machine; each case below takes well under one


def run_main(capsys, *argv):
    """``(exit status, stderr, seconds)`` of ``main(argv)``; argparse's SystemExit counts as its status."""
    t0 = time.perf_counter()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code
    dt = time.perf_counter() - t0
    err = capsys.readouterr().err
    return code, err, dt


def assert_clear(code, err, dt, *phrases, status=2):
    """Exit ``status``, one ``asarm ...: error:`` message holding every phrase, no traceback, fast."""
    assert code == status, err
    assert "Traceback" not in err, err
    assert "error:" in err, err
    for phrase in phrases:
        assert phrase in err, f"{phrase!r} not in {err!r}"
    assert dt < FAST_S, f"took {dt:.1f} s"


@pytest.fixture(scope="module", autouse=True)
def _imports_done():
    """Import the heavy libraries once up front: the time asserted is the error path's, not Python's imports."""
    import accelerate  # noqa: F401
    import datasets  # noqa: F401
    from transformers import AutoConfig, AutoTokenizer, XLNetLMHeadModel  # noqa: F401

    import asarm.evaluation.infill_nlp  # noqa: F401
    import asarm.train  # noqa: F401


@pytest.fixture
def online_but_unreachable(monkeypatch):
    """Offline mode unset, the network down (conftest's socket block refuses every outside connect; no proxy,
    which might be on this machine and reach the hub)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HTTP_PROXY", "http_proxy",
                "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


# ---------------------------------------------------------------------------- tracebacks and --debug
def test_user_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    argv = ["infill", "--model", "tiny", "--text", "no span here"]
    assert_clear(*run_main(capsys, *argv), "asarm infill: error: nothing to infill")
    with pytest.raises(ValueError, match="nothing to infill"):
        main(["--debug", *argv])
    monkeypatch.setenv("ASARM_DEBUG", "1")
    with pytest.raises(ValueError, match="nothing to infill"):
        main(argv)


def test_a_bug_says_it_is_a_bug_and_how_to_report_it(capsys, monkeypatch):
    import asarm.cli as cli

    def broken(args):
        raise KeyError("internal table entry")

    monkeypatch.setattr(cli, "run_infill", broken)
    code, err, _ = run_main(capsys, "infill", "--text", "a [MASK:2] b")
    assert code == 1 and "Traceback" not in err
    assert "internal error: KeyError" in err and "bug" in err and "--debug" in err
    with pytest.raises(KeyError):
        main(["--debug", "infill", "--text", "a [MASK:2] b"])


def test_which_exceptions_count_as_user_errors():
    import yaml

    from asarm.checkpoint import CheckpointError
    from asarm.evaluation.execution import ISOLATION_ENV
    from asarm.train import TrainingDiverged

    for exc in [ValueError("bad value"), FileNotFoundError("no file"), IsADirectoryError("a dir"),
                PermissionError("denied"), CheckpointError("damaged"), TrainingDiverged("nan loss"),
                ImportError("needs datasets"), RuntimeError(f"{ISOLATION_ENV}=namespaces but bwrap is missing")]:
        assert user_error_message(exc) == str(exc)
    assert "malformed YAML" in user_error_message(yaml.YAMLError("bad"))
    assert "out of memory" in user_error_message(MemoryError())
    # real bugs keep their traceback (behind --debug): not mistaken for the user's fault
    for exc in [TypeError("x"), KeyError("k"), AttributeError("a"), RuntimeError("shape mismatch"), IndexError(),
                ImportError("cannot import name 'x'", name="asarm.sampling")]:
        assert user_error_message(exc) is None


# ---------------------------------------------------------------------------- --model
def test_mistyped_hub_id_fails_at_once_naming_it(capsys):
    code, err, dt = run_main(capsys, "infill", "--model", "someone/mistyped-model", "--text", "a [MASK:2] b",
                             "--device", "cpu")
    assert_clear(code, err, dt, "'someone/mistyped-model'", "offline mode is on")
    assert "xlnet-base-cased" not in err  # the fallback tokenizer is not what failed


def test_mistyped_local_path_fails_at_once_naming_it(capsys, tmp_path):
    code, err, dt = run_main(capsys, "infill", "--model", str(tmp_path / "mymodle"), "--text", "a [MASK:2] b",
                             "--device", "cpu")
    assert_clear(code, err, dt, f"'{tmp_path / 'mymodle'}' does not exist")
    assert "xlnet-base-cased" not in err


def test_hub_id_with_the_network_down_fails_fast(capsys, online_but_unreachable):
    code, err, dt = run_main(capsys, "infill", "--model", "someone/mistyped-model", "--text", "a [MASK:2] b",
                             "--device", "cpu")
    assert_clear(code, err, dt, "'someone/mistyped-model'", "cannot be reached")


def test_model_without_tokenizer_names_the_fallback_and_the_fix(capsys, tmp_path, local_tokenizer):
    from asarm import ASARM

    ASARM.from_config(tokenizer=local_tokenizer, d_model=16, n_layer=1, n_head=2, d_inner=32, seed=0).save_pretrained(
        tmp_path / "m")  # no tokenizer saved with it
    code, err, dt = run_main(capsys, "infill", "--model", str(tmp_path / "m"), "--text", "a [MASK:2] b",
                             "--device", "cpu")
    assert_clear(code, err, dt, "comes without a tokenizer", "xlnet/xlnet-base-cased", "--tokenizer")


# ---------------------------------------------------------------------------- [MASK:n]
@pytest.mark.parametrize("marker", ["[MASK:abc]", "[MASK:-1]", "[MASK: 3]", "[MASK3]", "[mask:3]", "[MASK:3",
                                    "[MASK:\u0663]"])  # an Arabic-Indic digit: int() takes it, the marker must not
def test_malformed_marker_next_to_a_valid_one_is_an_error(marker, local_tokenizer):
    text = f"a [MASK:2] b {marker} c"
    with pytest.raises(ValueError, match="malformed span marker") as info:
        encode_masked_text(text, local_tokenizer)
    assert marker.rstrip("]") in str(info.value)


def test_span_lengths_are_checked_before_anything_is_allocated(capsys):
    for text in ["a [MASK:99999999999] b", "a [MASK:1000000] b", "a [MASK:" + "9" * 5000 + "] b"]:
        code, err, dt = run_main(capsys, "infill", "--model", "tiny", "--text", text, "--device", "cpu")
        assert_clear(code, err, dt, f"over the limit of {MAX_NEW_TOKENS}", "--max-new-tokens")
        assert dt < 1.0  # refused before the (tiny) model is even built
    # the limit is on the total of all spans, and configurable
    with pytest.raises(ValueError, match="ask for 7 new tokens in all, over the limit of 6"):
        parse_mask_spans("a [MASK:3] b [MASK:4] c", max_new_tokens=6)
    assert parse_mask_spans("a [MASK:3] b [MASK:4] c", max_new_tokens=7) == ["a ", 3, " b ", 4, " c"]
    code, err, dt = run_main(capsys, "infill", "--model", "tiny", "--text", "a [MASK:4] b", "--max-new-tokens", "3")
    assert_clear(code, err, dt, "ask for 4 new tokens, over the limit of 3")


# ---------------------------------------------------------------------------- devices, files, YAML, data
def test_unknown_device_lists_the_valid_ones(capsys):
    from asarm.utils import resolve_device

    code, err, dt = run_main(capsys, "infill", "--model", "tiny", "--text", "a [MASK:2] b", "--device", "gpu")
    assert_clear(code, err, dt, "unknown device 'gpu'", "cpu", "cuda:N")
    with pytest.raises(ValueError, match="unknown device 'cuda0'"):
        resolve_device("cuda0")
    assert resolve_device("CPU").type == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available here; use --device cpu"):
            resolve_device("cuda:1")


def test_directory_or_pipe_given_as_a_file(capsys, tmp_path):
    from asarm.evaluation.sources import read_text

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_clear(*run_main(capsys, "infill", "--model", "tiny", "--text-file", str(tmp_path)), "is a directory")
    # a pipe is refused from its mode: nothing opens it, so nothing blocks waiting for a writer
    assert_clear(*run_main(capsys, "infill", "--model", "tiny", "--text-file", str(fifo)), "is not a regular file")
    assert_clear(*run_main(capsys, "infill", "--model", "tiny", "--text-file", str(tmp_path / "none.txt")),
                 "does not exist")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        read_text(str(tmp_path))
    with pytest.raises(ValueError, match="is not a regular file"):
        read_text(str(fifo))
    with pytest.raises(FileNotFoundError, match="eval_datasets/README.md"):  # the missing-data help is kept
        read_text(str(tmp_path / "none.jsonl"))
    assert_clear(*run_main(capsys, "train", "--config", str(tmp_path)), "config file", "is a directory")
    assert_clear(*run_main(capsys, "train", "--dataset", str(tmp_path), "--output_dir", str(tmp_path / "run")),
                 "is a directory", "glob")


def test_malformed_yaml_names_the_file_and_line(capsys, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("seq_len: 64\nmodel_config: {d_model: 64, n_layer: 2\nlr: 1e-3\n")
    assert_clear(*run_main(capsys, "train", "--config", str(cfg)), f"config file '{cfg}', line ", "malformed YAML")
    cfg.write_text("seq_len: 64\n\tlr: 1\n")  # a tab: another YAML error class, same kind of message
    assert_clear(*run_main(capsys, "train", "--config", str(cfg)), f"config file '{cfg}', line 2", "malformed YAML")
    assert_clear(*run_main(capsys, "train", "--eval_rates", "[0.5,", "--output_dir", str(tmp_path / "r")),
                 "option eval_rates", "malformed YAML")


def test_hub_data_with_the_network_down_fails_fast(capsys, tmp_path, online_but_unreachable):
    from asarm.evaluation.sources import load_hub_rows

    t0 = time.perf_counter()
    with pytest.raises(OSError, match="'hf:someone/stories@test'.*cannot be reached.*--data"):
        load_hub_rows("hf:someone/stories@test", "validation")
    assert time.perf_counter() - t0 < FAST_S
    assert_clear(*run_main(capsys, "infill-nlp", "--model", "tiny", "--data", "hf:someone/stories",
                           "--output-dir", str(tmp_path / "out")), "cannot be reached", "HF_HUB_OFFLINE=1")


def test_hub_training_data_with_the_network_down_fails_fast(capsys, tmp_path, online_but_unreachable):
    assert_clear(*run_main(capsys, "train", "--config", "configs/tiny_cpu.yaml", "--dataset", "hf:someone/corpus",
                           "--output_dir", str(tmp_path / "run")), "'hf:someone/corpus'", "cannot be reached", "stdlib")


def test_empty_training_data_says_it_is_empty(capsys, tmp_path):
    for name, content in [("empty.txt", ""), ("blank.txt", "\n   \n\n"), ("empty.jsonl", '{"text": ""}\n')]:
        path = tmp_path / name
        path.write_text(content)
        code, err, dt = run_main(capsys, "train", "--config", "configs/tiny_cpu.yaml", "--dataset", str(path),
                                 "--output_dir", str(tmp_path / f"run-{name}"))
        assert_clear(code, err, dt, "training data", "is empty", str(path))
        assert "fewer slots" not in err


# ---------------------------------------------------------------------------- output folders
def _hold_lock_in_child(out_dir, shard):
    """A child process holding ``shard_lock(out_dir, shard)`` until killed; returns it once the lock is held."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from asarm.evaluation.runner import shard_lock
        with shard_lock(Path({str(out_dir)!r}), {shard}):
            print("held", flush=True)
            time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_run_into_the_same_folder_is_refused_and_a_dead_holder_does_not_block(capsys, tmp_path, shared_data):
    from asarm.evaluation.runner import shard_lock

    out = tmp_path / "eval"
    child = _hold_lock_in_child(out, 0)
    try:
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=rf"{out} is in use: another run \(PID {child.pid}\)"):
            with shard_lock(out, 0):
                pass
        assert time.perf_counter() - t0 < 1.0  # refused at once, not after waiting
        with shard_lock(out, 1):  # another shard of the same run proceeds
            pass
        # the whole command: refused before its config is checked or a model loaded
        code, err, dt = run_main(capsys, "infill-nlp", "--model", "tiny", "--output-dir", str(out), "--limit", "1",
                                 "--data", str(shared_data / "rocstories" / "cloze_test_val__spring2016.csv"))
        assert_clear(code, err, dt, "is in use", str(child.pid), "--output-dir")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    with shard_lock(out, 0):  # the killed holder's lock went with it; its file left behind blocks nothing
        assert (out / ".lock.shard-0").read_text().strip() == str(os.getpid())


def test_results_json_is_strict_json(tmp_path, monkeypatch):
    import numpy as np

    from asarm.evaluation import runner
    from asarm.utils import atomic_write_json

    atomic_write_json(tmp_path / "a.json", {"ppl": float("nan"), "rows": [1.5, float("inf"), -float("inf")],
                                            "np": np.float32("nan"), "ok": np.float64(2.0), "n": 3})

    def no_constants(name):
        raise AssertionError(f"bare {name} in strict JSON")

    data = json.loads((tmp_path / "a.json").read_text(), parse_constant=no_constants)
    assert data == {"ppl": None, "rows": [1.5, None, None], "np": None, "ok": 2.0, "n": 3}
    # through the runner: a summary with a NaN (an offline judge's perplexity) is written as null
    def summarize(records, config, out_dir):
        return {"ppl": float("nan"), "n": len(records)}, "table"

    out = tmp_path / "run"
    runner.prepare_output(out, "fake", {}, ["u0"], overwrite=False)
    (out / "samples.shard-0-of-1.jsonl").write_text(json.dumps({"uid": "u0", "records": [{"x": float("nan")}]}) + "\n")
    runner.finalize(out, quiet=True, summarize=summarize)
    results = json.loads((out / "results.json").read_text(), parse_constant=no_constants)
    assert results["results"] == {"ppl": None, "n": 1}


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_users_umask(tmp_path, umask, mode):
    from asarm.utils import atomic_write_json, atomic_write_text, current_umask

    old = os.umask(umask)
    try:
        assert current_umask() == umask
        atomic_write_text(tmp_path / "results.md", "x\n")
        atomic_write_json(tmp_path / "results.json", {"a": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == mode
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == mode


# ---------------------------------------------------------------------------- the real process
@pytest.mark.slow
def test_subprocess_errors_reach_the_user_without_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.getcwd())
    env.pop("ASARM_DEBUG", None)

    def run(*argv):
        return subprocess.run([sys.executable, "-m", "asarm", *argv], capture_output=True, text=True, env=env,
                              timeout=120)

    for argv, phrase in [(["infill", "--model", "tiny", "--text", "a [MASK:99999999999] b"], "over the limit"),
                         (["infill", "--model", "nobody/typo", "--text", "a [MASK:2] b"], "'nobody/typo'"),
                         (["infill", "--text", "x [MASK:2]", "--device", "gpu"], "unknown device 'gpu'")]:
        res = run(*argv)
        assert res.returncode == 2 and phrase in res.stderr and "Traceback" not in res.stderr, res.stderr
    res = run("--debug", "infill", "--model", "tiny", "--text", "a [MASK:0] b")
    assert res.returncode == 1 and "Traceback" in res.stderr and "asks for no token" in res.stderr


def test_a_mistyped_init_model_is_named_before_any_tokenizer_is_built(capsys, tmp_path):
    """``init`` names a model that is not there: the error names it (the model is checked first), and
    the run directory gets no tokenizer built for a model that cannot load."""
    missing = tmp_path / "no-such-model"
    run = tmp_path / "run"
    assert_clear(*run_main(capsys, "train", "--config", "configs/tiny_cpu.yaml", "--init", str(missing),
                           "--tokenizer", "local", "--output_dir", str(run)), str(missing))
    assert not (run / "tokenizer").exists()


# ---------------------------------------------------------------------------- issue 20: silent or unclear before
TRAIN_FAULTS = {
    "nested key typo": (["--model_config", "{n_layers: 2}"], ["model_config", "'n_layers'", "did you mean 'n_layer'"]),
    "zero layers": (["--model_config", "{n_layer: 0}"], ["n_layer must be a positive integer"]),
    "negative grad_clip": (["--grad_clip", "-1"], ["grad_clip must be >= 0", "0 turns clipping off"]),
    "negative warmup": (["--warmup_steps", "-3"], ["warmup_steps must be >= 0"]),
    "unreachable vocabulary": (["--local_vocab_size", "10000000"], ["local_vocab_size must be between 100 and"]),
    "seed beyond 64 bits": (["--seed", str(2**70)], ["seed must be an integer in 0..2**63-1"]),
}


@pytest.mark.parametrize("name", sorted(TRAIN_FAULTS))
def test_train_faults_are_refused_before_anything_runs(name, capsys, tmp_path):
    extra, phrases = TRAIN_FAULTS[name]
    out = tmp_path / "run"
    assert_clear(*run_main(capsys, "train", "--config", "configs/tiny_cpu.yaml", "--output_dir", str(out), *extra),
                 *phrases)
    assert not out.exists()  # refused before the run directory was made


def test_train_output_dir_that_is_a_file_is_named(capsys, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    assert_clear(*run_main(capsys, "train", "--config", "configs/tiny_cpu.yaml", "--output_dir", str(out)),
                 f"output_dir '{out}' is a file")


def test_infill_code_negative_workers_is_refused(capsys, tmp_path):
    assert_clear(*run_main(capsys, "infill-code", "--method", "canonical", "--workers", "-1",
                           "--output-dir", str(tmp_path / "o")), "--workers must be >= 1")
