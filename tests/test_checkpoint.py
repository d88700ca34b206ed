"""python -m asarm.checkpoint: verify takes a run's checkpoints folder, and suggests adopt only where it works."""

import os
import subprocess
import sys
from pathlib import Path

from asarm.checkpoint import REQUIRED, verify_checkpoint, write_manifest

ROOT = Path(__file__).resolve().parents[1]


def _checkpoint(folder: Path, manifest: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in REQUIRED:
        (folder / name).write_text(name)
    if manifest:
        write_manifest(folder, int(folder.name.split("_")[1]))
    return folder


def _cli(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "asarm.checkpoint", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_verify_a_checkpoints_folder_checks_each_step_and_adopt_is_suggested_only_where_it_works(tmp_path):
    ckpts = tmp_path / "run" / "checkpoints"
    _checkpoint(ckpts / "step_00000002")
    old = _checkpoint(ckpts / "step_00000004", manifest=False)
    res = _cli("verify", ckpts)
    lines = res.stdout.splitlines()
    assert res.returncode == 1 and len(lines) == 2
    assert lines[0].endswith("step_00000002: intact")
    assert "step_00000004" in lines[1] and "adopt" in lines[1]
    assert _cli("adopt", old).returncode == 0  # the suggested command works
    res = _cli("verify", tmp_path / "run")     # a run folder: its checkpoints
    assert res.returncode == 0 and res.stdout.count("intact") == 2
    # a folder that is no checkpoint: said so, no adopt suggested (adopt would refuse it)
    reason = verify_checkpoint(tmp_path / "run")
    assert "not a checkpoint directory" in reason and "adopt" not in reason
