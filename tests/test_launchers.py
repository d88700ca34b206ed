"""The _run_*.sh launchers: --help starts nothing, stray arguments are refused, one interpreter
rule (python3, or $PYTHON), a copy submitted from outside the repository finds it through
ASARM_REPO or says to set it, and a failed training start ends with the trainer's one-line error
(no torchrun traceback).

A fake interpreter records every call, so nothing here runs a model (but the last test: a real,
offline start)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EVAL_LAUNCHERS = ["_run_speculative_decoding.sh", "_run_nlp_infill_eval.sh",
                  "_run_code_infill_eval.sh"]
LAUNCHERS = EVAL_LAUNCHERS + ["_run_training.sh"]
SLURM_VARS = [k for k in os.environ if k.startswith("SLURM_")]


def _fake_python(folder: Path, name: str = "fakepy") -> tuple[Path, Path]:
    """An executable that appends its arguments to a log and exits 0; returns (program, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{name}.log"
    prog = folder / name
    prog.write_text(f'#!/usr/bin/env bash\necho "{name} $*" >> "{log}"\n')
    prog.chmod(0o755)
    return prog, log


def _env(**extra) -> dict:
    drop = set(SLURM_VARS) | {"PYTHON", "ASARM_REPO"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, **extra}


def _run(args, env, cwd=ROOT, timeout=60):
    return subprocess.run(["bash", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _variables(script: Path) -> list[str]:
    """Every NAME of a `NAME=${NAME:-default}` line: the launcher's settings."""
    return re.findall(r"^([A-Z_]+)=\$\{\1:-", script.read_text(), flags=re.M)


@pytest.mark.parametrize("script", LAUNCHERS)
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_variable_with_its_default_and_starts_nothing(script, flag, tmp_path):
    fake, log = _fake_python(tmp_path)
    res = _run([ROOT / script, flag], _env(PYTHON=str(fake)), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("usage: bash " + script)
    names = _variables(ROOT / script)
    assert len(names) >= 6
    for name in names + ["PYTHON", "ASARM_REPO"]:
        assert re.search(rf"^  {name} +\[", res.stdout, flags=re.M), f"{script} --help lacks {name}"
    default = {"_run_speculative_decoding.sh": r"TRIALS +\[700\]",
               "_run_training.sh": r"RESUME +\[auto\]",
               "_run_nlp_infill_eval.sh": r"TRIALS +\[5\]",
               "_run_code_infill_eval.sh": r"METHOD +\[assd\]"}
    assert re.search(rf"^  {default[script]}", res.stdout, flags=re.M)
    assert not log.exists(), f"{script} {flag} started: {log.read_text()}"
    assert not (tmp_path / "outputs").exists() and not (ROOT / "outputs" / "help").exists()


@pytest.mark.parametrize("script,args", [(s, ["--trials", "3"]) for s in EVAL_LAUNCHERS]
                         + [("_run_training.sh", ["stray"]), ("_run_training.sh", ["--max_steps"])])
def test_stray_arguments_are_refused_before_anything_starts(script, args, tmp_path):
    fake, log = _fake_python(tmp_path)
    res = _run([ROOT / script, *args], _env(PYTHON=str(fake)), cwd=tmp_path)
    assert res.returncode == 2 and "see --help" in res.stderr, res.stderr
    assert not log.exists()


@pytest.mark.parametrize("script", EVAL_LAUNCHERS)
def test_eval_launchers_use_python3_unless_python_is_set(script, tmp_path):
    """One rule for every launcher: $PYTHON if set, else python3 (never `python`)."""
    fakebin = tmp_path / "bin"
    _, log3 = _fake_python(fakebin, "python3")
    _, log = _fake_python(fakebin, "python")
    env = _env(PATH=f"{fakebin}:{os.environ['PATH']}", OUT=str(tmp_path / "out"))
    res = _run([ROOT / script], env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert not log.exists() and "-m asarm" in log3.read_text()
    fake, own = _fake_python(tmp_path / "own", "mypython")
    assert _run([ROOT / script], {**env, "PYTHON": str(fake)}, cwd=tmp_path).returncode == 0
    assert "-m asarm" in own.read_text() and len(log3.read_text().splitlines()) == 1


@pytest.mark.parametrize("script", LAUNCHERS)
def test_a_copy_outside_the_repository_names_asarm_repo_or_uses_it(script, tmp_path):
    """What sbatch runs is a copy of the script in its spool folder: the repository is the script's
    folder, else ASARM_REPO, else the submission folder; a wrong one is a one-line error that says
    what to set."""
    outside = tmp_path / "spool"
    outside.mkdir()
    copy = outside / script
    shutil.copy(ROOT / script, copy)
    fake, log = _fake_python(tmp_path)
    env = _env(PYTHON=str(fake), OUT=str(tmp_path / "out"), OUTPUT_DIR=str(tmp_path / "run"),
               SLURM_SUBMIT_DIR=str(tmp_path))
    res = _run([copy], env, cwd=tmp_path)
    assert res.returncode == 2 and "set ASARM_REPO=" in res.stderr
    assert len(res.stderr.splitlines()) == 1
    assert not log.exists()
    res = _run([copy], {**env, "ASARM_REPO": str(ROOT)}, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    started = r"-m asarm(\.launch .*-m asarm train| (speculative|infill-nlp|infill-code))"
    assert re.search(started, log.read_text())
    res = _run([copy, "--help"], {**env, "ASARM_REPO": str(ROOT)}, cwd=tmp_path)
    assert res.returncode == 0 and "usage:" in res.stdout  # --help of the copy: its own header


@pytest.mark.slow
def test_failed_training_start_is_one_line_without_a_torchrun_traceback(tmp_path):
    """Offline, the default recipe cannot load xlnet-base-cased: its own error, status 2."""
    env = _env(PYTHON=sys.executable, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               OUTPUT_DIR=str(tmp_path / "run"), NPROC_PER_NODE="1", CUDA_VISIBLE_DEVICES="")
    res = _run([ROOT / "_run_training.sh", "--max_steps", "1"], env, timeout=300)
    assert res.returncode == 2, res.stderr[-3000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("asarm train: error:")]
    assert len(errors) == 1 and "xlnet" in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "ChildFailedError" not in res.stderr, res.stderr[-3000:]
    bad = _run([ROOT / "_run_training.sh", "--no_such_option", "1"], env, timeout=300)
    assert bad.returncode == 2 and "no_such_option" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
