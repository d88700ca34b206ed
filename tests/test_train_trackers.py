"""The trainer's trackers (``report_to``, through accelerate): what TensorBoard and W&B receive, read back from
the files they write, and the W&B run a resumed run continues. Offline: W&B runs in offline mode."""

import json
import os
import signal
import struct
from pathlib import Path

import pytest
import torch

from asarm.train import check_config, latest_checkpoint, tracker_config, train
from test_train import _cfg, _losses  # the tiny run of test_train.py

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # training runs


class CrashAfter(RuntimeError):
    """Raised by ``crash_after``: an error between two steps (after the step's row is logged)."""


def crash_after(step: int):
    """A ``train(after_step=...)`` hook that raises once step ``step`` is logged and checkpointed (if due)."""
    def after_step(state):
        if state.step == step:
            raise CrashAfter(f"crash after step {step}")
    return after_step


# ---------------------------------------------------------------------------- reading TensorBoard's files
def tb_scalars(run_dir: Path, tag: str, project: str = "asarm") -> list[tuple[int, float]]:
    """``[(step, value)]`` of scalar ``tag`` as TensorBoard shows it (purged events hidden)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard" / project), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def tb_hparams(run_dir: Path, project: str = "asarm") -> list[dict]:
    """The hyperparameters of each ``add_hparams`` call under ``tensorboard/PROJECT`` (one folder each)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    found = []
    for folder in sorted({f.parent for f in (run_dir / "tensorboard" / project).glob("*/events.out.tfevents.*")}):
        events = EventAccumulator(str(folder))
        events.Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = HParamsPluginData.FromString(content).session_start_info.hparams
        found.append({name: getattr(v, v.WhichOneof("kind")) for name, v in hparams.items()})
    return found


def test_tensorboard_gets_every_logged_number_and_the_config(tmp_path):
    pytest.importorskip("tensorboard", reason="report_to tensorboard needs the tensorboard package")
    cfg = _cfg(tmp_path, max_steps=4, save_steps=4, eval_steps=2, report_to=["tensorboard"])
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = _losses(run)
    assert [step for step, _ in tb_scalars(run, "loss")] == sorted(losses) == [1, 2, 3, 4]
    assert tb_scalars(run, "loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in sorted(losses.items())]
    evals = [(r["step"], pytest.approx(r["eval_loss@0.5"], rel=1e-6)) for r in rows if r["kind"] == "eval"]
    assert tb_scalars(run, "eval_loss@0.5") == evals and [s for s, _ in evals] == [2, 4]
    # every option, nested ones flattened and lists as text (TensorBoard shows numbers as floats)
    expected = {k: float(v) if isinstance(v, (bool, int, float)) else v for k, v in tracker_config(cfg).items()}
    assert tb_hparams(run) == [expected]
    assert expected["model_config.d_model"] == 32 and expected["eval_rates"] == "[0.5]"


def test_a_resumed_run_shows_each_step_once_in_tensorboard(tmp_path):
    """The crashed attempt logged step 3 after its last checkpoint (step 2); the resume logs it again, and
    TensorBoard hides the first one, as metrics.jsonl drops its row."""
    pytest.importorskip("tensorboard", reason="report_to tensorboard needs the tensorboard package")
    with pytest.raises(CrashAfter):
        train(_cfg(tmp_path, max_steps=4, save_steps=2, report_to=["tensorboard"]), after_step=crash_after(3))
    assert [step for step, _ in tb_scalars(tmp_path / "run", "loss")] == [1, 2, 3]
    run = train(_cfg(tmp_path, max_steps=4, save_steps=2, report_to=["tensorboard"], resume="true"))
    losses = _losses(run)
    assert tb_scalars(run, "loss") == [(s, pytest.approx(v, rel=1e-6)) for s, v in sorted(losses.items())]
    assert sorted(losses) == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- reading W&B's offline files
def wandb_records(path: Path):
    """The records of a W&B transaction log (``run-ID.wandb``: LevelDB's log format, 32 KiB blocks of
    ``crc32, length, type`` chunks, after a 7-byte ``:W&B`` header) as ``wandb_internal_pb2.Record``."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, pending = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        if kind == 0:  # zero-filled, preallocated end
            break
        pending += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _item_key(item) -> str:
    return item.key or ".".join(item.nested_key)


def wandb_logged(run_folder: Path) -> tuple[dict, dict[int, float], int | None]:
    """``(config, {step: loss}, exit code)`` that an offline W&B run folder holds."""
    config, losses, exit_code = {}, {}, None
    for record in wandb_records(next(run_folder.glob("run-*.wandb"))):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({_item_key(i): json.loads(i.value_json) for i in items})
        elif kind == "history":
            row = {_item_key(i): json.loads(i.value_json) for i in record.history.item}
            if "loss" in row:
                losses[row["_step"]] = row["loss"]
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return config, losses, exit_code


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, every file it writes under ``tmp_path/wandb-files``; returns where its runs go."""
    wandb = pytest.importorskip("wandb", reason="report_to wandb needs the wandb package")
    files = tmp_path / "wandb-files"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in [("WANDB_DIR", ""), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_DATA_DIR", "data")]:
        (files / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(files / sub))
    yield files / "wandb"
    wandb.teardown()  # stop the W&B service this test started


def test_wandb_gets_the_config_and_a_resume_continues_the_same_run(tmp_path, wandb_offline):
    """The first attempt fails after step 3 (its last checkpoint: step 2); the resume logs to the same run."""
    cfg = _cfg(tmp_path, max_steps=5, save_steps=2, report_to=["wandb"], wandb_project="trackers-test")
    with pytest.raises(CrashAfter):
        train(cfg, after_step=crash_after(3))
    run = tmp_path / "run"
    first = list(wandb_offline.glob("offline-run-*"))
    assert len(first) == 1
    run_id = first[0].name.rsplit("-", 1)[1]
    saved = torch.load(latest_checkpoint(run) / "training_state.pt", map_location="cpu", weights_only=False)
    assert saved["step"] == 2 and saved["wandb_id"] == run_id  # what the resume reads back
    config, losses, exit_code = wandb_logged(first[0])
    assert {k: config[k] for k in tracker_config(cfg)} == tracker_config(cfg)
    assert losses == pytest.approx(_losses(run), rel=1e-6) and sorted(losses) == [1, 2, 3]
    assert exit_code == 1  # closed as failed

    train(_cfg(tmp_path, max_steps=5, save_steps=2, report_to=["wandb"], wandb_project="trackers-test",
               resume="true"))
    folders = sorted(wandb_offline.glob("offline-run-*"))
    assert len(folders) == 2 and [f.name.rsplit("-", 1)[1] for f in folders] == [run_id, run_id]
    _, losses, exit_code = wandb_logged((set(folders) - set(first)).pop())
    assert losses == pytest.approx({s: v for s, v in _losses(run).items() if s > 2}, rel=1e-6)
    assert exit_code == 0 and sorted(losses) == [3, 4, 5]


# ---------------------------------------------------------------------------- report_to
def test_report_to_accepts_accelerates_trackers_and_names_the_fix(monkeypatch):
    import accelerate.tracking

    from asarm.train_config import TrainConfig

    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['tensorbord'\].*tensorboard.*wandb"):
        check_config(TrainConfig(report_to=["tensorbord"]))
    # any tracker accelerate knows is accepted once its package is installed, and refused with the fix before
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: ["mlflow"])
    check_config(TrainConfig(report_to=["mlflow"]))
    with pytest.raises(ValueError, match="the wandb package is not installed; `pip install wandb`"):
        check_config(TrainConfig(report_to=["mlflow", "wandb"]))


def test_tracker_config_is_every_option_as_a_scalar():
    from asarm.train_config import TrainConfig

    cfg = TrainConfig(model_config={"d_model": 64, "extra": {"a": [1, 2]}}, eval_rates=[0.5, 0.9])
    flat = tracker_config(cfg)
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())
    assert flat["model_config.d_model"] == 64 and flat["model_config.extra.a"] == "[1, 2]"
    assert flat["eval_rates"] == "[0.5, 0.9]" and flat["report_to"] == "[]" and flat["seq_len"] == 512
    assert tracker_config(TrainConfig())["model_config"] == "{}"  # an empty dict is kept, as text
    assert {k.split(".")[0] for k in flat} == set(cfg.__dataclass_fields__)


def test_the_tiny_cpu_recipe_runs_with_both_trackers(tmp_path, wandb_offline):
    """``configs/tiny_cpu.yaml`` as a user runs it, with TensorBoard and W&B (offline) at once."""
    pytest.importorskip("tensorboard", reason="report_to tensorboard needs the tensorboard package")
    from asarm.train_config import TrainConfig

    recipe = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    cfg = TrainConfig.load(str(recipe), {"output_dir": str(tmp_path / "tiny"), "max_steps": 2, "log_steps": 1,
                                         "save_steps": 2, "eval_steps": 0, "sample_rows": 1, "progress": False,
                                         "report_to": ["tensorboard", "wandb"]})
    run = train(cfg)
    losses = _losses(run)
    assert tb_scalars(run, "loss", project=cfg.wandb_project) == [
        (s, pytest.approx(v, rel=1e-6)) for s, v in sorted(losses.items())]
    (folder,) = wandb_offline.glob("offline-run-*")
    config, logged, exit_code = wandb_logged(folder)
    assert logged == pytest.approx(losses, rel=1e-6) and exit_code == 0
    assert config["model_config.d_model"] == 64 and config["dataset"] == "stdlib"
