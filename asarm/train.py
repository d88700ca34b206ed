"""Train an AS-ARM with the masking-distribution objective (docs/design.md, Objective; Training state).

    asarm train --config configs/tiny_cpu.yaml [--key value ...]
    torchrun --nproc_per_node 4 -m asarm train --config configs/openwebtext.yaml
    bash _run_training.sh / sbatch _run_training.sh

Engine: Hugging Face ``accelerate`` (DDP on CPU/gloo or GPU/nccl, one node or
many, bf16/fp16 autocast). One optimizer step = ``num_slots = processes x
grad_accum`` micro-batches ("slots"); slot ``s = rank * grad_accum + micro``
reads data shard ``s`` and draws its masking rate from stratum ``s`` with
randomness seeded by ``(seed, step, s)``: its own ``torch.Generator`` for the
rate, order and prompt, and for dropout (which only draws from torch's global
RNG) a fork of the global RNG seeded from that generator, so the caller's RNG
is left as it was. A run's numbers therefore depend on ``num_slots``, not on
how the slots are spread over processes, and a resumed run repeats the
uninterrupted one bit for bit.

The pieces, in the order a run uses them:

* options: ``asarm.train_config`` (``TrainConfig``, ``check_config``, what a resume may change);
* the run directory: ``check_run_dir``, ``write_run_config``, ``MetricsLog`` (and the trackers),
  ``record_failure``;
* start-up: ``start`` builds a ``Run`` (what stays fixed) and a ``TrainState`` (what a checkpoint holds);
* ``make_step_fn(cfg, accelerator, slots)`` -> ``step(state, batches) -> metrics``: one optimizer step;
* ``save_state`` / ``restore_state``: the checkpoint, as functions of the state (files: ``asarm.checkpoint``);
* ``train_loop``: steps, evaluations, checkpoints, SIGTERM; ``finish``: the final model and status;
* ``train(cfg)``: all of it, inside ``sigterm_requests_stop()``; ``register_train``: ``asarm train``.

Run directory (``output_dir``): ``config.yaml`` (the options in effect, plus
``changes``: what each resume changed, at which step), ``metrics.jsonl``,
``samples.jsonl``, ``status.json`` (``running``, ``done``, ``interrupted`` =
saved after SIGTERM, requeue me; ``failed`` = an error, e.g. a non-finite loss),
``checkpoints/step_XXXXXXXX/`` (a Hugging Face model + tokenizer directory plus
``training_state.pt``, ``trainer_state.json`` and ``manifest.json``; see
``asarm.checkpoint``), ``checkpoints/latest``, ``model/`` (the final model),
``tokenizer/`` (a locally built tokenizer), and ``tensorboard/`` / ``wandb/`` when ``report_to`` asks.

Resume (``--resume true|auto``) continues the newest checkpoint whose manifest
verifies, setting damaged newer ones aside as ``damaged-step_X`` with a warning;
options that define the run must equal the checkpoint's (``RESUME_MAY_CHANGE``
lists the ones that may differ).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import yaml

from . import objective as obj
from .checkpoint import (CheckpointError, CheckpointSearch, CheckpointWarning, clean_temporaries,  # noqa: F401
                         describe, find_checkpoint, latest_checkpoint, quarantine, save_checkpoint)
from .data import (PackedStream, decode_text, held_out_digests, make_encoder, open_split,
                   check_not_empty, resolve_dataset, stdlib_texts)
from .train_config import (NOT_RECORDED, RESUME_MAY_CHANGE, TrainConfig, add_config_arguments,  # noqa: F401
                           check_config, check_resume_config, config_differences, config_from_arguments,
                           sampling_config)
from .loading import tokenizer_for
from .utils import add_threads_argument, atomic_write_json, atomic_write_text, set_threads


# ---------------------------------------------------------------------------- the run directory
def check_run_dir(cfg: TrainConfig) -> CheckpointSearch:
    """Where to resume from (``.checkpoint``, None: from scratch) and the damaged checkpoints to set aside.

    Raises ``ValueError`` (``CheckpointError``) when ``output_dir`` holds another run and resume is false, when
    --resume true finds no intact checkpoint, and when --resume auto finds a run that wrote checkpoints of which
    none is intact: such a run is never restarted over silently. A run that stopped before its first checkpoint
    (nothing to lose) restarts from step 0 with a warning.
    """
    run_dir = Path(cfg.output_dir)
    search = find_checkpoint(run_dir) if run_dir.is_dir() else CheckpointSearch()
    holds_run = any((run_dir / name).exists() for name in ("config.yaml", "metrics.jsonl", "checkpoints"))
    if cfg.resume == "false" and holds_run:
        raise ValueError(f"output_dir '{run_dir}' holds another run; pass --resume auto (or true) to continue it, "
                         "or choose a new --output_dir")
    if search.checkpoint is None and cfg.resume == "true":
        raise CheckpointError(f"--resume true but '{run_dir}' has no intact checkpoint to continue\n"
                              + describe(search, run_dir))
    if search.checkpoint is None and holds_run:
        status = _read_json(run_dir / "status.json")
        if search.ever_saved or status.get("checkpoint") is not None:
            raise CheckpointError(
                f"--resume {cfg.resume}: '{run_dir}' holds a run that wrote checkpoints, but none is intact, so it "
                f"can neither continue nor be restarted over:\n{describe(search, run_dir)}\n"
                "move the directory away (or restore a checkpoint) and start again, or choose a new --output_dir")
        warnings.warn(f"'{run_dir}' holds a run that stopped before its first checkpoint; starting it again "
                      "from step 0", CheckpointWarning, stacklevel=2)
    return search


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``, or ``{}`` when it is missing or unreadable."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def write_run_config(run_dir: Path, cfg: TrainConfig, step: int, changes: dict) -> None:
    """``config.yaml``: the options in effect plus ``changes``, the history of what resumes changed.

    ``changes`` entries are ``{step: N, option: {from: old, to: new}, ...}``; entries from an earlier attempt
    at or after ``step`` (a run that crashed before its next checkpoint) are replaced."""
    path = run_dir / "config.yaml"
    history = []
    if path.is_file():
        try:
            history = (yaml.safe_load(path.read_text()) or {}).get("changes") or []
        except (yaml.YAMLError, AttributeError):
            history = []
    history = [h for h in history if isinstance(h, dict) and isinstance(h.get("step"), int) and h["step"] < step]
    recorded = {name: {"from": old, "to": new} for name, (old, new) in changes.items() if name not in NOT_RECORDED}
    if recorded:
        history.append({"step": step, **recorded})
    text = cfg.to_yaml()
    if history:
        text += yaml.safe_dump({"changes": history}, sort_keys=False)
    atomic_write_text(path, text)


@dataclass
class Attempt:
    """What this ``train()`` call has done so far, for the status an error leaves behind (``record_failure``)."""

    main: bool  # this process writes the run directory
    wrote_status: bool = False  # this attempt has written status.json
    accelerator: object = None  # set once it exists: its trackers are closed after an error
    state: "TrainState | None" = None  # set once the training state exists (resumed state loaded)


def record_failure(cfg: TrainConfig, attempt: Attempt, exc: BaseException) -> None:
    """Set ``status.json`` to ``failed`` (with the error), so that the launcher never requeues a run that
    cannot go on (an ``interrupted`` left behind would be requeued forever). Only the main process, and only a
    status this process wrote or that of the run it was asked to resume: never another run's."""
    path = Path(cfg.output_dir) / "status.json"
    if not attempt.main or not (attempt.wrote_status or (cfg.resume != "false" and path.is_file())):
        return
    status = _read_json(path)
    if status.get("state") == "done" and not attempt.wrote_status:
        return  # a finished run stays finished: the refused attempt changed nothing in it
    status.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    if attempt.state is not None:
        status["step"] = attempt.state.step
    atomic_write_json(path, status)


class MetricsLog:
    """``metrics.jsonl`` (always) plus the trackers of ``report_to`` through ``accelerate``. Main process only.

    The trackers get the run's options (``tracker_config``) once at start-up and every numeric value of every
    row at the row's step; ``accelerator.end_training()`` (``finish``) or ``end_trackers_after_error`` closes
    them. ``wandb_id``: the W&B run this run logs to, kept in checkpoints so that a resumed run continues it.
    """

    def __init__(self, run_dir: Path, cfg: TrainConfig, accelerator, resume_step: int, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        for path in (self.path, run_dir / "samples.jsonl"):
            if path.exists():  # drop rows a crashed run logged after its last checkpoint
                rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= resume_step]
                atomic_write_text(path, "".join(r + "\n" for r in rows))
        self.accelerator, self.wandb_id = accelerator, wandb_id
        if cfg.report_to:
            accelerator.init_trackers(cfg.wandb_project, config=tracker_config(cfg),
                                      init_kwargs=tracker_init_kwargs(run_dir, resume_step, wandb_id))
        if "wandb" in cfg.report_to:  # a fresh run: W&B chose the id
            self.wandb_id = accelerator.get_tracker("wandb", unwrap=True).id

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        self.accelerator.log(numbers, step=row["step"])


def tracker_config(cfg: TrainConfig) -> dict:
    """The options as ``{name: bool | int | float | str}`` for the trackers: dicts flattened to ``name.key``,
    lists and empty dicts as JSON text. (TensorBoard's hparams take scalars only; anything else would fail or
    be dropped.)"""
    flat = {}

    def put(name: str, value) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                put(f"{name}.{key}", inner)
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value, default=str)

    for name, value in dataclasses.asdict(cfg).items():
        put(name, value)
    return flat


def tracker_init_kwargs(run_dir: Path, resume_step: int, wandb_id: str | None) -> dict:
    """``init_kwargs`` of ``accelerator.init_trackers``: a resumed run continues its W&B run (``wandb_id``;
    W&B files in ``RUN_DIR/wandb`` unless ``WANDB_DIR`` says otherwise) and hides TensorBoard events that a
    crashed attempt logged after the resumed checkpoint (``purge_step``), as ``metrics.jsonl`` drops its rows."""
    wandb = {"resume": "allow"} | ({"id": wandb_id} if wandb_id else {})
    if not os.environ.get("WANDB_DIR"):
        wandb["dir"] = str(run_dir)
    tensorboard = {"purge_step": resume_step + 1} if resume_step else {}
    return {"wandb": wandb, "tensorboard": tensorboard}


def end_trackers_after_error(accelerator) -> None:
    """Close the trackers of a run that failed: their files are complete, W&B marks the run failed, and a
    later ``train()`` in this process starts its own. A failure to close is only warned about: the run's own
    error is the one to report."""
    for tracker in accelerator.trackers if accelerator is not None else []:
        try:
            if tracker.name == "wandb":
                tracker.tracker.finish(exit_code=1)
            else:
                tracker.finish()
        except Exception as exc:  # noqa: BLE001
            warnings.warn(f"closing the {tracker.name} tracker after the error failed: {exc}", stacklevel=2)
    if accelerator is not None:
        accelerator.trackers.clear()


# ---------------------------------------------------------------------------- model and data
def model_for_training(cfg: TrainConfig, spec, ckpt: Path | None, accelerator):
    """``(ASARM, tokenizer)`` from a checkpoint, a hub id / directory, or a fresh config."""
    from .model import ASARM, tokenizer_mismatch
    from .tokenizer import special_ids, unban_code_whitespace

    if ckpt is None and cfg.init != "fresh":
        # the model's small config first: a mistyped init fails naming it, not the fallback tokenizer
        from transformers import AutoConfig

        from .hub import load_or_explain

        load_or_explain(AutoConfig.from_pretrained, cfg.init, cfg.revision or None, "init model")
    tokenizer = _load_tokenizer(cfg, ckpt, accelerator)
    if ckpt is not None:
        model = ASARM.from_pretrained(str(ckpt))
    elif cfg.init == "fresh":
        model = ASARM.from_config(dict(cfg.model_config), tokenizer=tokenizer, seed=cfg.seed)
    else:
        model = ASARM.from_pretrained(cfg.init, cfg.revision or None, tokenizer=tokenizer)
    if len(tokenizer) > model.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model only {model.vocab_size}")
    mismatch = tokenizer_mismatch(model.config, tokenizer)
    if mismatch and accelerator.is_main_process:
        print(f"warning: {mismatch}", file=sys.stderr)
    mask_id, banned = special_ids(tokenizer)
    if spec.code:  # a code model must be able to write newlines, tabs and indentation
        banned = unban_code_whitespace(banned, tokenizer)
    return ASARM(model.xlnet, mask_id, banned), tokenizer


def _load_tokenizer(cfg: TrainConfig, ckpt: Path | None, accelerator):
    """The checkpoint's tokenizer, a locally built one (``tokenizer=local``), the one named, or init's own."""
    from .tokenizer import build_local_tokenizer, load_tokenizer, save_tokenizer

    if ckpt is not None:
        return load_tokenizer(str(ckpt))
    if cfg.tokenizer == "local":
        local_dir = Path(cfg.output_dir) / "tokenizer"
        if accelerator.is_main_process:
            save_tokenizer(build_local_tokenizer(stdlib_texts(300_000), vocab_size=cfg.local_vocab_size),
                           local_dir)
        accelerator.wait_for_everyone()
        return load_tokenizer(str(local_dir))
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer)
    if cfg.init == "fresh":
        raise ValueError("init=fresh needs a tokenizer: set tokenizer to 'local', a directory or a hub id")
    return tokenizer_for(cfg.init, cfg.revision or None)  # the commands' rule: the model's own, else XLNet's


def check_seq_len(cfg: TrainConfig, tokenizer) -> None:
    limit = min(cfg.model_max_len, tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else 1 << 30)
    if cfg.seq_len > limit:
        raise ValueError(f"seq_len={cfg.seq_len} is over the model's limit of {limit} tokens (model_max_len)")


# Parameters XLNet only uses with token_type_ids (segments), which AS-ARMs never pass. They are
# frozen so that DDP (find_unused_parameters=False) never waits for gradients that cannot come.
UNUSED_PARAMETERS = ("seg_embed", "r_s_bias")


def freeze_unused(model) -> list[str]:
    """Set ``requires_grad=False`` on ``UNUSED_PARAMETERS``; returns their names."""
    frozen = [n for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in UNUSED_PARAMETERS]
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen


def slot_shard(slot: int, grad_accum: int, num_processes: int, replicate: bool = False) -> tuple[int, int]:
    """``(shard, num_shards)`` of the training stream that micro-batch slot ``slot`` reads.

    Default: each of the ``num_processes * grad_accum`` slots reads its own shard, so one optimizer step sees
    that many distinct micro-batches. ``replicate`` (the paper's multi-GPU runs, where every rank iterates
    the same stream): slot ``rank * grad_accum + micro`` reads shard ``micro`` of ``grad_accum``, the same
    on every rank, so a step sees only ``grad_accum`` distinct micro-batches, each under ``num_processes``
    different masks.
    """
    if not 0 <= slot < grad_accum * num_processes:
        raise ValueError(f"slot {slot} is outside 0..{grad_accum * num_processes - 1}")
    return (slot % grad_accum, grad_accum) if replicate else (slot, grad_accum * num_processes)


def open_streams(cfg: TrainConfig, spec, tokenizer, slots: list[int], world: int, main: bool):
    """``(streams, eval_x)``: one training stream per slot of this rank (each its own shard; replicate_data:
    alike on every rank), and on the main process the held-out chunks (``None`` elsewhere)."""
    encode = make_encoder(tokenizer, spec.code, cfg.add_special_tokens)
    held_out = held_out_digests(spec, cfg.eval_docs)
    shards = [slot_shard(s, cfg.grad_accum, world, cfg.replicate_data) for s in slots]
    streams = [PackedStream(lambda sh=sh: open_split(spec, "train", cfg.eval_docs, *sh), encode,
                            tokenizer.eos_token_id, cfg.seq_len, exclude=held_out) for sh in shards]
    eval_stream = PackedStream(lambda: open_split(spec, "eval", cfg.eval_docs), encode, tokenizer.eos_token_id,
                               cfg.seq_len)
    eval_x = eval_stream.next_batch(cfg.eval_batches * cfg.batch_size) if main else None
    return streams, eval_x


def end_of_data(streams, max_epochs: int, accelerator) -> bool:
    """True on every rank when any rank's stream has started pass ``max_epochs`` (0-based), i.e. the
    batches just read hold tokens from beyond the allowed passes. One all-reduce, so ranks agree
    before any of them starts a forward pass."""
    ended = any(stream.epoch >= max_epochs for stream in streams)
    return bool(accelerator.reduce(torch.tensor(float(ended), device=accelerator.device), "sum") > 0)


# ---------------------------------------------------------------------------- run and state
@dataclass
class Run:
    """What stays fixed while a run trains: its options, engine, data source, tokenizer, slots and loggers."""

    cfg: TrainConfig
    accelerator: object  # accelerate.Accelerator
    spec: object  # asarm.data.DataSpec
    tokenizer: object
    run_dir: Path
    slots: list[int]  # this rank's micro-batch slots, rank * grad_accum + micro
    num_slots: int  # processes x grad_accum
    max_steps: int
    precision: str
    eval_x: torch.Tensor | None = None  # held-out chunks (main process)
    log: MetricsLog | None = None  # main process
    bar: object = None  # tqdm bar (main process, progress=True)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


@dataclass
class TrainState:
    """Everything that changes while training and that a checkpoint holds (docs/design.md, Training state).

    ``model`` is what the step runs (DDP-wrapped on several processes), ``plain`` the ``ASARM`` underneath
    (what is saved and evaluated). ``streams[i]`` is the training stream of slot ``Run.slots[i]``."""

    model: torch.nn.Module
    plain: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: object  # the fp16 GradScaler, or None
    streams: list[PackedStream]
    step: int = 0
    elapsed: float = 0.0  # seconds of training steps
    tokens: int = 0  # tokens trained on
    wandb_id: str | None = None
    saved_step: int | None = None  # the step of the newest checkpoint on disk (None: none yet)


def new_state(run: Run, model, streams: list[PackedStream]) -> TrainState:
    """A step-0 state: AdamW over the trainable parameters, linear warm-up and decay, prepared for ``accelerate``."""
    from transformers import get_linear_schedule_with_warmup

    cfg = run.cfg
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=effective_lr(cfg, run.num_slots), weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, run.max_steps)
    prepared, optimizer = run.accelerator.prepare(model, optimizer)
    return TrainState(prepared, run.accelerator.unwrap_model(prepared), optimizer, scheduler,
                      run.accelerator.scaler, streams)


def effective_lr(cfg: TrainConfig, num_slots: int) -> float:
    return cfg.lr * (cfg.batch_size * num_slots / 32 if cfg.scale_lr else 1.0)


def parameter_digest(model) -> str:
    """SHA-256 of every parameter's bytes: equal digests = bitwise-identical models."""
    h = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
    """This process's global RNG states (Python, numpy, torch, CUDA), saved per rank in every checkpoint.

    The trainer itself never draws from them (each micro-batch has its own generator, and dropout a seeded
    fork, ``seeded_global_rng``), so exact resume does not rest on them; they are restored on resume for any
    other code that draws from the global RNG."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(run: Run, state: TrainState) -> None:
    """Checkpoint ``state`` at its step (every process takes part; the main one writes), then mark it saved."""
    from accelerate.utils import gather_object

    check_finite_parameters(state.plain, f"checkpoint step {state.step}")
    per_rank = gather_object([{"data": {s: st.state_dict() for s, st in zip(run.slots, state.streams)},
                               "rng": rng_state()}])
    if run.main:
        cfg = run.cfg
        payload = {"step": state.step, "elapsed": state.elapsed, "tokens": state.tokens, "num_slots": run.num_slots,
                   "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
                   "scaler": state.scaler.state_dict() if state.scaler is not None else None,
                   "data": {s: d for r in per_rank for s, d in r["data"].items()},
                   "rng": [r["rng"] for r in per_rank], "wandb_id": state.wandb_id,
                   "rate_range": obj.rate_range(state.step, cfg.start_rate, cfg.min_rate, cfg.max_rate,
                                                cfg.rate_warmup_steps),
                   "config": dataclasses.asdict(cfg)}
        save_checkpoint(run.run_dir, state.step, state.plain, run.tokenizer, payload, cfg.keep_last)
        atomic_write_json(run.run_dir / "status.json",
                          {"state": "running", "step": state.step, "checkpoint": state.step})
    state.saved_step = state.step
    run.accelerator.wait_for_everyone()


def restore_state(run: Run, state: TrainState, ckpt: Path) -> None:
    """Load checkpoint ``ckpt``'s training state into ``state`` (the weights are loaded with the model)."""
    saved = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
    if saved["num_slots"] != run.num_slots:
        raise ValueError(f"the checkpoint was written with {saved['num_slots']} slots (processes x grad_accum); "
                         f"this run has {run.num_slots}: keep processes x grad_accum the same to resume")
    if saved["step"] > run.max_steps:
        raise ValueError(f"the checkpoint is at step {saved['step']}, past max_steps={run.max_steps}: raise max_steps "
                         "(or train_sequences) to continue")
    state.step, state.elapsed, state.tokens = saved["step"], saved["elapsed"], saved["tokens"]
    state.wandb_id, state.saved_step = saved.get("wandb_id"), saved["step"]
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if state.scaler is not None and saved.get("scaler"):
        state.scaler.load_state_dict(saved["scaler"])
    for stream, s in zip(state.streams, run.slots):
        stream.load_state_dict(saved["data"][s])
    accelerator = run.accelerator
    if len(saved["rng"]) == accelerator.num_processes:
        set_rng_state(saved["rng"][accelerator.process_index])


# ---------------------------------------------------------------------------- scoped helpers
@dataclass
class StopFlag:
    """Set by the SIGTERM handler of ``sigterm_requests_stop``."""

    requested: bool = False


@contextmanager
def sigterm_requests_stop() -> Iterator[StopFlag]:
    """Within the block SIGTERM sets the yielded flag instead of ending the process (the trainer checks it at
    every step boundary); the previous handler is back when the block ends, however it ends."""
    from . import startup

    flag = StopFlag(requested=startup.TERM_RECEIVED)  # a SIGTERM while `asarm train` was still importing
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(flag, "requested", True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_requested(accelerator, flag: StopFlag) -> bool:
    """Whether any process got SIGTERM (one all-reduce: all processes agree, so they stop at the same step)."""
    return bool(accelerator.reduce(torch.tensor(float(flag.requested), device=accelerator.device), "sum") > 0)


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's global RNG seeded by ``seed`` (dropout draws from it and takes no generator),
    then give the caller back the RNG state it had. Forks and seeds the CPU generator and, when ``device`` is an
    accelerator, that device's generator."""
    accelerated = device.type != "cpu"
    with torch.random.fork_rng(devices=[device] if accelerated else [],
                               device_type=device.type if accelerated else None):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif accelerated:
            torch.get_device_module(device.type).manual_seed(seed)
        yield


# ---------------------------------------------------------------------------- the step
class TrainingDiverged(ValueError):
    """A non-finite loss, gradient norm or parameter: training stops before the bad update is applied or saved.

    (A ValueError, so the command line prints it without a traceback; status.json says ``failed``.)"""


def check_finite(step: int, loss: float, grad_norm: float, scaler_active: bool, lr: float) -> None:
    """Raise ``TrainingDiverged`` when optimizer step ``step`` saw a non-finite loss, or a non-finite gradient
    norm that no fp16 GradScaler is there to absorb (the scaler skips such steps and lowers its scale)."""
    if math.isfinite(loss) and (math.isfinite(grad_norm) or scaler_active):
        return
    raise TrainingDiverged(
        f"step {step}: non-finite {'loss' if not math.isfinite(loss) else 'gradient norm'} (loss {loss}, gradient "
        f"norm {grad_norm}, lr {lr:.3g}); stopped before applying the update, so the last checkpoint is the last "
        "good state. Train into a new --output_dir with a lower --lr (or check the data)")


def check_finite_parameters(model, where: str) -> None:
    """Raise ``TrainingDiverged`` rather than save a model with a non-finite parameter."""
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.detach()).all()]
    if bad:
        raise TrainingDiverged(f"refusing to save {where}: non-finite values in {len(bad)} parameter(s), "
                               f"e.g. {bad[:3]}; train into a new --output_dir with a lower --lr")


def make_step_fn(cfg: TrainConfig, accelerator, slots: list[int]) -> Callable[[TrainState, list], dict]:
    """``step(state, batches) -> metrics``: one optimizer step over this rank's micro-batches.

    ``batches[i]`` is slot ``slots[i]``'s ``(batch_size, seq_len)`` chunk. The step draws slot ``s``'s masking
    rate (stratum ``s`` of the step's range), order, prompt and dropout from ``(cfg.seed, state.step, s)``
    alone, accumulates the gradients (one all-reduce per step), clips, checks for non-finite values, updates
    and advances ``state.step`` and ``state.tokens``. Returns the step's loss (mean over all slots), lr after
    the update, masking-rate range and gradient norm."""
    num_slots = len(slots) * accelerator.num_processes
    dev = accelerator.device

    def micro_step(state: TrainState, slot: int, x: torch.Tensor, lo: float, hi: float, sync: bool):
        gen = obj.batch_generator(cfg.seed, state.step, slot)
        dropout_seed = int(torch.randint(2**62, (), generator=gen))  # dropout: a function of (step, slot)
        rate = obj.stratified_rate(lo, hi, slot, num_slots, gen)
        b = obj.make_batch(x, rate, state.plain.mask_token_id, objective=cfg.objective,
                           order=cfg.order, visible_attention=cfg.visible_attention, generator=gen)
        # all-reduce once per step; (the prepared model runs under autocast when mixed precision is on)
        with (nullcontext() if sync else accelerator.no_sync(state.model)), seeded_global_rng(dropout_seed, dev):
            logits = state.model(b.input_ids.to(dev), b.perm_mask.to(dev), b.target_mapping.to(dev))
            loss = obj.target_loss(logits, b.labels.to(dev)) * obj.loss_weight(rate, cfg.loss_scale, cfg.objective)
            accelerator.backward(loss / len(slots))
        return loss.detach()

    def step(state: TrainState, batches: list) -> dict:
        lo, hi = obj.rate_range(state.step, cfg.start_rate, cfg.min_rate, cfg.max_rate, cfg.rate_warmup_steps)
        losses = [micro_step(state, slot, x, lo, hi, sync=i == len(slots) - 1)
                  for i, (slot, x) in enumerate(zip(slots, batches))]
        # max_norm=inf measures the norm without clipping (the gradients are multiplied by exactly 1)
        grad_norm = float(accelerator.clip_grad_norm_(state.model.parameters(), cfg.grad_clip or math.inf))
        loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        check_finite(state.step + 1, loss, grad_norm, state.scaler is not None, state.scheduler.get_last_lr()[0])
        state.optimizer.step()
        state.scheduler.step()
        state.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += cfg.batch_size * num_slots * cfg.seq_len
        return {"loss": loss, "lr": state.scheduler.get_last_lr()[0], "rate_min": lo, "rate_max": hi,
                "grad_norm": grad_norm}

    return step


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, eval_x: torch.Tensor, cfg: TrainConfig, tokenizer, code: bool) -> tuple[dict, list[dict]]:
    """Held-out loss at each fixed rate and ASSD samples; deterministic, leaves the global RNG alone.

    Args:
        eval_x: ``(eval_batches * batch_size, N)`` held-out chunks.
    Returns:
        ``(metrics, samples)``.
    """
    was_training = model.training
    model.eval()
    try:
        metrics = heldout_losses(model, eval_x, cfg)
        sample_metrics, samples = assd_samples(model, eval_x, cfg, tokenizer, code)
    finally:
        model.train(was_training)
    return {**metrics, **sample_metrics}, samples


def heldout_losses(model, eval_x: torch.Tensor, cfg: TrainConfig) -> dict:
    """``{"eval_loss@RATE": mean target loss}`` for each of ``cfg.eval_rates``, batches of ``cfg.batch_size``."""
    metrics = {}
    for i, rate in enumerate(cfg.eval_rates):
        gen = obj.batch_generator(cfg.seed, -1, i)
        losses = []
        for x in eval_x.split(cfg.batch_size):
            b = obj.make_batch(x, rate, model.mask_token_id, objective=cfg.objective, order=cfg.order,
                               visible_attention=cfg.visible_attention, generator=gen)
            logits = model(b.input_ids.to(model.device), b.perm_mask.to(model.device), b.target_mapping.to(model.device))
            losses.append(obj.target_loss(logits, b.labels.to(model.device)).item())
        metrics[f"eval_loss@{rate:g}"] = sum(losses) / len(losses)
    return metrics


def assd_samples(model, eval_x: torch.Tensor, cfg: TrainConfig, tokenizer, code: bool) -> tuple[dict, list[dict]]:
    """Complete the first ``cfg.sample_rows`` held-out rows with ASSD from a random sorted-order prompt keeping
    ``1 - cfg.sample_rate`` of each row (draft length ``cfg.sample_k``, seeded by ``cfg.seed``); returns the
    calls, acceptance and entropy (bits) of the generated tokens, and the decoded prompts and samples.

    All of the trainer's sampler settings are read here (the ``sample_*`` options)."""
    from .evaluation.metrics import entropy_bits
    from .orders import random_sorted_order
    from .sampling import sample

    x = eval_x[: cfg.sample_rows].to(model.device)
    n_known = x.shape[1] - obj.num_targets(x.shape[1], cfg.sample_rate)
    gen = obj.batch_generator(cfg.seed, -2, 0)
    sigma = random_sorted_order(x.shape[0], x.shape[1], n_known, generator=gen).to(model.device)
    prompt = x.masked_fill(sigma >= n_known, model.mask_token_id)
    out = sample(model, prompt, sigma, torch.full((x.shape[0],), n_known, device=model.device), sampling_config(cfg),
                 generator=torch.Generator(model.device).manual_seed(cfg.seed))
    counts = torch.bincount(out.sequences[sigma >= n_known].cpu(), minlength=model.vocab_size).double()
    metrics = {"assd_nfe": out.nfe.float().mean().item(), "assd_tokens": float(x.shape[1] - n_known),
               "assd_accept_rate": (out.accepted.sum() / out.drafted.sum().clamp(min=1)).item(),
               "assd_entropy_bits": entropy_bits(counts / counts.sum())}
    samples = [{"prompt": decode_text(prompt[r].tolist(), tokenizer, code),
                "sample": decode_text(out.sequences[r].tolist(), tokenizer, code), "nfe": int(out.nfe[r])}
               for r in range(x.shape[0])]
    return metrics, samples


def run_evaluation(run: Run, state: TrainState) -> None:
    """Evaluate on the main process, log the metrics row and append the samples; every process waits."""
    if run.main:
        metrics, samples = evaluate(state.plain, run.eval_x, run.cfg, run.tokenizer, run.spec.code)
        run.log.log({"step": state.step, "kind": "eval", **metrics})
        with open(run.run_dir / "samples.jsonl", "a") as f:
            f.write(json.dumps({"step": state.step, "samples": samples}) + "\n")
    run.accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------- the loop
def train_loop(run: Run, state: TrainState, step_fn, stop: Callable[[], bool],
               after_step: Callable[[TrainState], None] | None = None) -> tuple[bool, bool]:
    """Train from ``state.step`` to ``run.max_steps``: step, log, evaluate every ``eval_steps`` and checkpoint
    every ``save_steps``, at the end and when ``stop()`` (SIGTERM on any process) says so. ``after_step(state)``
    runs after each step's evaluation and checkpoint (tests inject crashes there). Returns ``(stopped, end of
    data)``: stopped = stopped by ``stop()`` (checkpointed, the final evaluation left to the resumed run)."""
    cfg = run.cfg
    stopping, data_ended = stop(), False
    if stopping and state.saved_step != state.step:  # SIGTERM during start-up: the state exists now, save it
        save_state(run, state)
    while state.step < run.max_steps and not stopping:
        t0 = time.perf_counter()
        batches = [stream.next_batch(cfg.batch_size) for stream in state.streams]
        if cfg.max_epochs and end_of_data(state.streams, cfg.max_epochs, run.accelerator):
            data_ended = True  # this step would read the next pass: drop it, like the paper's loader drops its tail
            if state.step == 0:
                raise ValueError(f"a data shard holds less than one step of tokens ({cfg.batch_size} x {cfg.seq_len}) "
                                 "in one pass: use fewer slots (processes x accumulation), smaller batches or more data")
            break
        metrics = step_fn(state, batches)
        stopping = stop()
        log_step(run, state, metrics, time.perf_counter() - t0)
        if cfg.eval_steps and state.step % cfg.eval_steps == 0 and state.step < run.max_steps:
            run_evaluation(run, state)
        if state.step % cfg.save_steps == 0 or state.step == run.max_steps or stopping:
            save_state(run, state)
        if after_step is not None:
            after_step(state)
    # a SIGTERM during the last step's save (or the end of the data): the resumed run does the final evaluation
    stopping = stopping or stop()
    if (stopping or data_ended) and state.saved_step != state.step:
        save_state(run, state)
    return stopping, data_ended


def log_step(run: Run, state: TrainState, metrics: dict, seconds: float) -> None:
    """Count the step's time; on the main process write its metrics row (every ``log_steps`` and the last)."""
    state.elapsed += seconds
    if not run.main:
        return
    if state.step % run.cfg.log_steps == 0 or state.step == run.max_steps:
        run.log.log({"step": state.step, "kind": "train", **metrics,
                     "tokens_per_s": run.cfg.batch_size * run.num_slots * run.cfg.seq_len / seconds,
                     "tokens": state.tokens, "elapsed_s": state.elapsed})
    if run.bar:
        run.bar.update(1)
        run.bar.set_postfix(loss=f"{metrics['loss']:.4f}", r=f"{metrics['rate_min']:.2f}-{metrics['rate_max']:.2f}")


def finish(run: Run, state: TrainState, stopping: bool, data_ended: bool) -> None:
    """The final evaluation and model (unless stopped) and ``status.json``: ``done`` or ``interrupted``."""
    from accelerate.utils import gather_object

    if not stopping:
        run_evaluation(run, state)
        check_finite_parameters(state.plain, "the final model")
    checksums = gather_object([parameter_digest(state.plain)])
    if run.main:
        if run.bar:
            run.bar.close()
        if not stopping:
            state.plain.save_pretrained(run.run_dir / "model", run.tokenizer)
        status = {"state": "interrupted" if stopping else "done", "step": state.step, "max_steps": run.max_steps,
                  "end_of_data": data_ended, "checkpoint": state.saved_step,
                  "world_size": run.accelerator.num_processes, "param_checksums": checksums,
                  "ranks_identical": len(set(checksums)) == 1}
        atomic_write_json(run.run_dir / "status.json", status)
        print(f"asarm train: {status['state']} at step {state.step}; run directory {run.run_dir}", file=sys.stderr)
    run.accelerator.wait_for_everyone()
    run.accelerator.end_training()  # closes the trackers (main process), then the process group


# ---------------------------------------------------------------------------- start-up
def make_accelerator(cfg: TrainConfig):
    """``(Accelerator, precision)``; precision ``auto`` = bf16 on GPUs that have it, else fp16 on GPUs, else no.

    The trackers of ``report_to`` are set up here and started by ``MetricsLog``; TensorBoard writes under
    ``RUN_DIR/tensorboard/`` (in the folder named by ``wandb_project``)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    precision = cfg.mixed_precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and not cfg.cpu
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    run_dir = Path(cfg.output_dir)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.cpu, step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
                              log_with=cfg.report_to or None, project_config=project)
    return accelerator, precision


def set_aside_damaged(accelerator, search: CheckpointSearch) -> None:
    """Warn about and rename the damaged checkpoints newer than the one resumed (main process)."""
    accelerator.wait_for_everyone()  # every process has verified the checkpoints before any is renamed
    if accelerator.is_main_process:
        for note in search.notes:
            warnings.warn(note, CheckpointWarning, stacklevel=2)
        for directory, reason in search.damaged:  # kept for inspection
            quarantine(directory, reason)
    accelerator.wait_for_everyone()


def start(cfg: TrainConfig, attempt: Attempt) -> tuple[Run, TrainState]:
    """Everything before the first step: checks, the engine, model, data and state (resumed when there is a
    checkpoint), then the run directory's files. Nothing is written before the checks pass."""
    code_ws = None if cfg.code_whitespace == "auto" else cfg.code_whitespace == "true"
    spec = resolve_dataset(cfg.dataset, cfg.text_field or None, code_ws)
    check_not_empty(spec)
    search = check_run_dir(cfg)
    ckpt = search.checkpoint
    changes = check_resume_config(cfg, ckpt) if ckpt is not None else {}
    accelerator, precision = make_accelerator(cfg)
    attempt.main, attempt.accelerator = accelerator.is_main_process, accelerator
    rank, world = accelerator.process_index, accelerator.num_processes
    num_slots = world * cfg.grad_accum
    max_steps = cfg.max_steps or max(1, cfg.train_sequences // (cfg.batch_size * num_slots))
    set_aside_damaged(accelerator, search)

    model, tokenizer = model_for_training(cfg, spec, ckpt, accelerator)
    check_seq_len(cfg, tokenizer)
    frozen = freeze_unused(model)
    model.train()
    slots = [rank * cfg.grad_accum + a for a in range(cfg.grad_accum)]
    streams, eval_x = open_streams(cfg, spec, tokenizer, slots, world, accelerator.is_main_process)
    run = Run(cfg, accelerator, spec, tokenizer, Path(cfg.output_dir), slots, num_slots, max_steps, precision, eval_x)
    state = new_state(run, model, streams)
    if ckpt is not None:
        restore_state(run, state, ckpt)
    attempt.state = state
    if run.main:
        open_run_dir(run, state, attempt, changes)
        print(startup_line(run, state, ckpt, changes, len(frozen)), file=sys.stderr)
        if cfg.progress:
            from tqdm.auto import tqdm

            run.bar = tqdm(total=max_steps, initial=state.step, desc="train", dynamic_ncols=True)
    return run, state


def startup_line(run: Run, state: TrainState, ckpt: Path | None, changes: dict, frozen: int) -> str:
    cfg, world = run.cfg, run.accelerator.num_processes
    return (f"asarm train: {world} process(es) x {cfg.grad_accum} micro-batches x {cfg.batch_size} sequences x "
            f"{cfg.seq_len} tokens, {run.max_steps} steps, lr {effective_lr(cfg, run.num_slots):.3g}, precision "
            f"{run.precision}, {f'resuming at step {state.step} from {ckpt.name}' if ckpt else 'fresh start'}"
            f"{'; changed: ' + ', '.join(changes) if changes else ''}; frozen (unused): {frozen} tensors")


def open_run_dir(run: Run, state: TrainState, attempt: Attempt, changes: dict) -> None:
    """Main process: ``config.yaml``, status ``running``, temporaries of interrupted saves removed and the logs
    (rows after the resumed step dropped)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run.run_dir, run.cfg, state.step, changes)
    atomic_write_json(run.run_dir / "status.json", {"state": "running", "step": state.step,
                                                    "checkpoint": state.saved_step})
    attempt.wrote_status = True
    clean_temporaries(run.run_dir)
    run.log = MetricsLog(run.run_dir, run.cfg, run.accelerator, state.step, state.wandb_id)
    state.wandb_id = run.log.wandb_id


class RunLocked(ValueError):
    """Another live process trains into the same ``output_dir`` (``run_lock``)."""


LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` (``flock``) for the block: one training run per output directory.

    The file holds the holder's PID, host and start time, so a refusal (``RunLocked``, at once) names it.
    The kernel releases the lock when the holder exits or is killed, so a stale file never blocks; where
    ``fcntl`` is missing (Windows) the block runs unlocked, as the evaluations' ``shard_lock``."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"output_dir '{run_dir}' is a file, not a directory; choose another --output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            try:
                h = json.loads(holder)
                holder = f"PID {h['pid']} on {h['host']}, started {h['started']}"
            except (ValueError, KeyError, TypeError):
                pass
            raise RunLocked(f"output_dir '{run_dir}' is in use by another training run ({holder}); wait for it to "
                            "finish or stop it (a requeued job whose predecessor still runs), or choose another "
                            "--output_dir") from None
        import socket

        os.ftruncate(fd, 0)
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------- entry points
def train(cfg: TrainConfig, *, after_step: Callable[[TrainState], None] | None = None) -> Path:
    """Train (or resume) a run; returns its directory. Every check runs before the first step.

    SIGTERM, at any moment (start-up included), ends the run with a checkpoint of the current step and
    status ``interrupted`` (what the launcher requeues); an error ends it with status ``failed``
    (``record_failure``). ``after_step(state)``: called after every step's evaluation and checkpoint, for tests
    that inject crashes (``tests/test_train_resume.py``)."""
    attempt = Attempt(main=int(os.environ.get("RANK", "0")) == 0)
    # installed first: a SIGTERM during start-up is acted on as soon as the state exists. The run lock (main
    # process) is held until after record_failure: a failure never writes into the status of a run that took over
    with sigterm_requests_stop() as flag, ExitStack() as held:
        try:
            check_config(cfg)
            if attempt.main:
                held.enter_context(run_lock(Path(cfg.output_dir)))
            run, state = start(cfg, attempt)
            step_fn = make_step_fn(cfg, run.accelerator, run.slots)
            stopping, data_ended = train_loop(run, state, step_fn, lambda: stop_requested(run.accelerator, flag),
                                              after_step)
            finish(run, state, stopping, data_ended)
        except RunLocked:
            raise  # the directory is another live run's: its status is not ours to touch
        except BaseException as exc:
            record_failure(cfg, attempt, exc)
            end_trackers_after_error(attempt.accelerator)
            raise
    return run.run_dir


def register_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune an AS-ARM (masking-distribution objective)",
                       description="Train an AS-ARM. Options come from --config FILE (YAML) and are overridden by "
                                   "--key value on the command line (lists and dicts in YAML syntax, e.g. "
                                   "--eval_rates '[0.5, 0.9]'). Run several processes with torchrun or _run_training.sh.")
    add_config_arguments(p)
    add_threads_argument(p)  # how this process runs, not what the run is: not a config option
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    cfg = config_from_arguments(args)
    set_threads(args.threads)
    train(cfg)
    return 0
