"""python -m asarm.checkpoint: verify takes a run's checkpoints folder; adopt is suggested only
where it works."""

import runpy
import sys
from pathlib import Path

import pytest

from asarm.checkpoint import REQUIRED, verify_checkpoint, write_manifest


def _checkpoint(folder: Path, manifest: bool = True) -> Path:
    folder.mkdir(parents=True)
    for name in REQUIRED:
        (folder / name).write_text(name)
    if manifest:
        write_manifest(folder, int(folder.name.split("_")[1]))
    return folder


class _Result:
    def __init__(self, returncode, stdout):
        self.returncode, self.stdout = returncode, stdout


@pytest.fixture
def _cli(monkeypatch, capsys):
    """``python -m asarm.checkpoint ARGS``, run in this process."""
    def run(*args):
        monkeypatch.setattr(sys, "argv", ["asarm.checkpoint", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            runpy.run_module("asarm.checkpoint", run_name="__main__", alter_sys=False)
        return _Result(exc.value.code, capsys.readouterr().out)
    return run


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_verify_checks_each_step_of_a_folder_and_suggests_adopt_only_where_it_works(tmp_path, _cli):
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
