"""Train an AS-ARM with the masking-distribution objective (spec section 4).

    asarm train --config configs/tiny_cpu.yaml [--key value ...]
    torchrun --nproc_per_node 4 -m asarm train --config configs/openwebtext.yaml
    bash _run_training.sh / sbatch _run_training.sh

Engine: Hugging Face ``accelerate`` (DDP on CPU/gloo or GPU/nccl, one node or
many, bf16/fp16 autocast). One optimizer step = ``num_slots = processes x
grad_accum`` micro-batches ("slots"); slot ``s = rank * grad_accum + micro``
reads data shard ``s`` and draws its masking rate from stratum ``s`` with
randomness seeded by ``(seed, step, s)`` (dropout included). A run's numbers
therefore depend on ``num_slots``, not on how the slots are spread over
processes, and a resumed run repeats the uninterrupted one bit for bit.

Run directory (``output_dir``): ``config.yaml`` (the options in effect, plus
``changes``: what each resume changed, at which step), ``metrics.jsonl``,
``samples.jsonl``, ``status.json`` (``running``, ``done``, ``interrupted`` =
saved after SIGTERM, requeue me; ``failed`` = an error, e.g. a non-finite loss),
``checkpoints/step_XXXXXXXX/`` (a Hugging Face model + tokenizer directory plus
``training_state.pt``, ``trainer_state.json`` and ``manifest.json``; see
``asarm.checkpoint``), ``checkpoints/latest``, ``model/`` (the final model),
``tokenizer/`` (a locally built tokenizer) and ``tensorboard/`` when asked.

Resume (``--resume true|auto``) continues the newest checkpoint whose manifest
verifies, setting damaged newer ones aside as ``damaged-step_X`` with a warning;
options that define the run must equal the checkpoint's (``RESUME_MAY_CHANGE``
lists the ones that may differ).
"""

from __future__ import annotations

import argparse
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
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from . import objective as obj
from .data import (PackedStream, code_whitespace_ids, decode_text, held_out_digests, make_encoder, open_split,
                   check_not_empty, resolve_dataset, stdlib_texts)
from .checkpoint import (CheckpointError, CheckpointSearch, CheckpointWarning, clean_temporaries,  # noqa: F401
                         describe, find_checkpoint, latest_checkpoint, quarantine, save_checkpoint)
from .utils import atomic_write_json, atomic_write_text, check_input_file


def opt(default, help: str):
    """A config field with its ``--help`` text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every training option; defaults are the paper's launcher values (OpenWebText)."""

    # run
    output_dir: str = opt("runs/asarm", "run directory (checkpoints, metrics, final model)")
    resume: str = opt("false", "false: output_dir must not hold a run; true: continue its latest checkpoint; "
                               "auto: continue if there is one (what requeued jobs use)")
    seed: int = opt(0, "seed of the initialisation, the batches, the orders and dropout")
    # data
    dataset: str = opt("openwebtext", "stdlib, openwebtext, starcoder (= bigcode/starcoderdata, python), "
                                      "hf:ORG/NAME[@REVISION], or a path/glob of .txt (one document per file) or .jsonl files")
    text_field: str = opt("", "record field holding the text (default: text; starcoder: content)")
    code_whitespace: str = opt("auto", "map newline/tab/2 and 3 spaces to <cls>/<sep>/<unk>/<pad> before "
                                       "tokenizing: auto (starcoder only), true or false")
    add_special_tokens: bool = opt(False, "let the tokenizer add its specials to every document "
                                          "(XLNet: <sep><cls>, as the paper's loader did)")
    replicate_data: bool = opt(False, "every process reads the same data, as in the paper's multi-GPU runs "
                                      "(false: each of the processes x grad_accum slots reads its own shard)")
    seq_len: int = opt(512, "tokens per packed sequence")
    eval_docs: int = opt(200, "documents held out from the start of the source for evaluation")
    # model
    init: str = opt("xlnet/xlnet-base-cased", "hub id, local directory, or 'fresh' (random init from model_config)")
    revision: str = opt("", "hub revision of init (released AS-ARMs: nlp, nlp_210k_plus_75k, code)")
    tokenizer: str = opt("", "tokenizer directory or hub id; 'local' builds the offline XLNet-pipeline "
                              "(SentencePiece) tokenizer (default: init's own, else xlnet/xlnet-base-cased)")
    local_vocab_size: int = opt(1000, "vocabulary of tokenizer=local")
    model_config: dict = opt({}, "XLNetConfig fields for init=fresh, e.g. {d_model: 64, n_layer: 2, n_head: 4, d_inner: 128}")
    model_max_len: int = opt(512, "longest allowed seq_len (XLNet's relative positions have no hard limit; "
                                  "xlnet-base-cased and the released AS-ARMs were trained at 512)")
    # objective
    objective: str = opt("joint", "joint (the paper's) or parallel (conditionally independent ablation)")
    visible_attention: str = opt("all", "parallel objective: all, prompt or causal attention inside the known block")
    order: str = opt("sorted", "sorted (2^N orders), random (N! orders) or left_to_right (the AR-order ablation)")
    loss_scale: str = opt("none", "none, r, or snr (= r/(1-r)); r and snr only with the joint objective")
    start_rate: float = opt(0.15, "masking rate at step 0")
    min_rate: float = opt(0.85, "lower end of the masking-rate range after the warm-up")
    max_rate: float = opt(0.99, "upper end of the masking-rate range after the warm-up")
    rate_warmup_steps: int = opt(5000, "optimizer steps to widen the range from start_rate to [min_rate, max_rate]")
    # optimisation
    batch_size: int = opt(8, "sequences per micro-batch per process")
    grad_accum: int = opt(4, "micro-batches per optimizer step per process")
    lr: float = opt(1e-5, "AdamW learning rate for an effective batch of 32 (see scale_lr)")
    scale_lr: bool = opt(True, "multiply lr by effective batch / 32 (effective batch = batch_size x slots)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup_steps: int = opt(5000, "linear learning-rate warm-up, then linear decay to 0")
    grad_clip: float = opt(1.0, "gradient-norm clipping (0: off)")
    train_sequences: int = opt(24_000_000, "packed sequences to train on (sets the number of steps)")
    max_steps: int = opt(0, "optimizer steps (overrides train_sequences when > 0)")
    max_epochs: int = opt(0, "stop once a slot's training stream has been read this many times, dropping the "
                             "step that would need the next pass (the paper: 1, one pass); 0: no limit")
    mixed_precision: str = opt("auto", "auto (bf16 on GPUs that have it, else fp16 on GPUs, none on CPU), no, bf16, fp16")
    cpu: bool = opt(False, "train on the CPU even when a GPU is present")
    # checkpoints and logging
    save_steps: int = opt(1000, "checkpoint every this many steps (and at the end, and on SIGTERM)")
    keep_last: int = opt(3, "checkpoints kept")
    log_steps: int = opt(10, "metrics.jsonl row every this many steps")
    eval_steps: int = opt(500, "held-out loss and ASSD sample every this many steps (0: only at the end)")
    eval_rates: list = opt([0.15, 0.5, 0.85, 0.95], "fixed masking rates of the held-out loss")
    eval_batches: int = opt(4, "held-out micro-batches per rate")
    sample_rows: int = opt(2, "held-out sequences completed with ASSD at every evaluation")
    sample_rate: float = opt(0.95, "masking rate of the ASSD samples")
    sample_k: int = opt(5, "ASSD draft length")
    report_to: list = opt([], "extra loggers: tensorboard, wandb")
    wandb_project: str = opt("asarm", "wandb project")
    progress: bool = opt(True, "tqdm progress bar on the main process")
    debug_signal: str = opt("", "testing crash safety: 'KILL@5' or 'TERM@5' sends that signal to itself after step 5")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; `asarm train --help` lists them all")
        return cls(**{k: _coerce(names[k], v) for k, v in values.items()})

    @classmethod
    def load(cls, path: str | None = None, overrides: dict | None = None) -> "TrainConfig":
        """A YAML file (optional) with ``overrides`` applied on top."""
        values = {}
        if path:
            values = yaml_or_explain(check_input_file(path, "config file").read_text(encoding="utf-8"),
                                     f"config file '{path}'") or {}
            if not isinstance(values, dict):
                raise ValueError(f"config file '{path}' must hold a mapping of options")
        values.pop("changes", None)  # a run directory's config.yaml: the history of resumes, not an option
        return cls.from_dict({**values, **(overrides or {})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def yaml_or_explain(text: str, where: str):
    """``yaml.safe_load(text)``; malformed YAML becomes a ``ValueError`` naming ``where`` and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        at = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        if context and start is not None and start is not mark:  # where the unclosed construct began
            problem += f", {context} at line {start.line + 1}"
        raise ValueError(f"{where}{at}: malformed YAML ({problem}); fix the YAML syntax there") from None


def _coerce(f: dataclasses.Field, value):
    """Turn ``value`` (from YAML or the command line) into the field's type."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else type(f.default_factory())
    if isinstance(value, str) and kind in (int, float):
        try:
            value = kind(value)
        except ValueError:
            pass
    if isinstance(value, str) and kind is not str:
        value = yaml_or_explain(value, f"option {f.name} = {value!r}")
    if kind is bool and isinstance(value, bool) or kind is list and isinstance(value, list) \
            or kind is dict and isinstance(value, dict):
        return value
    if kind is str:
        return "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        if kind is int and value != int(value):
            raise ValueError(f"option {f.name} must be an integer, got {value}")
        return kind(value)
    raise ValueError(f"option {f.name} expects {kind.__name__}, got {value!r}")


# ---------------------------------------------------------------------------- checks
def check_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` for settings that cannot train (before anything is loaded)."""
    def choose(name, value, options):
        if value not in options:
            raise ValueError(f"{name} must be one of {tuple(options)}, got '{value}'")

    choose("objective", cfg.objective, obj.OBJECTIVES)
    choose("visible_attention", cfg.visible_attention, obj.VISIBLE_ATTENTION)
    choose("order", cfg.order, obj.ORDERS)
    choose("loss_scale", cfg.loss_scale, obj.LOSS_SCALES)
    obj.check_loss_scale(cfg.objective, cfg.loss_scale)
    choose("resume", cfg.resume, ("false", "true", "auto"))
    choose("code_whitespace", cfg.code_whitespace, ("auto", "true", "false"))
    choose("mixed_precision", cfg.mixed_precision, ("auto", "no", "bf16", "fp16"))
    for name in ("start_rate", "min_rate", "max_rate", "sample_rate", *[f"eval_rates[{i}]" for i in range(len(cfg.eval_rates))]):
        value = cfg.eval_rates[int(name[11:-1])] if name.startswith("eval_rates") else getattr(cfg, name)
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"masking rate {name}={value} must lie strictly between 0 and 1")
    if cfg.min_rate > cfg.max_rate:
        raise ValueError(f"min_rate={cfg.min_rate} is above max_rate={cfg.max_rate}")
    for name in ("batch_size", "grad_accum", "save_steps", "log_steps", "keep_last", "eval_batches", "sample_rows",
                 "sample_k"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.seq_len < 2:
        raise ValueError(f"seq_len must be at least 2 (one known token and one target), got {cfg.seq_len}")
    if cfg.eval_steps < 0 or cfg.eval_docs < 0:
        raise ValueError("eval_steps and eval_docs must be >= 0")
    if cfg.max_steps < 0 or (cfg.max_steps == 0 and cfg.train_sequences < 1):
        raise ValueError("set max_steps > 0 or train_sequences > 0")
    if cfg.max_epochs < 0:
        raise ValueError(f"max_epochs must be >= 0 (0: no limit), got {cfg.max_epochs}")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {cfg.lr}")
    unknown = set(cfg.report_to) - {"tensorboard", "wandb"}
    if unknown:
        raise ValueError(f"report_to accepts tensorboard and wandb, got {sorted(unknown)}")
    for name in cfg.report_to:
        try:
            __import__("torch.utils.tensorboard" if name == "tensorboard" else "wandb")
        except ImportError as exc:
            raise ValueError(f"report_to {name}: the package is not installed ({exc})") from exc
    if cfg.debug_signal and (cfg.debug_signal.split("@")[0] not in ("KILL", "TERM") or "@" not in cfg.debug_signal):
        raise ValueError(f"debug_signal must look like KILL@5 or TERM@5, got '{cfg.debug_signal}'")


# Settings a resumed run may change; every other option defines the run (model, data, seq_len, batch, seed,
# objective, schedule, numerics) and must equal the checkpoint's. New options are run-defining until listed
# here. grad_accum may change only with the number of processes, so that the slots (processes x grad_accum)
# stay the same; train() checks that. Changing max_steps / train_sequences re-stretches the linear lr decay
# from the resume step on (the schedule's horizon is the run's length).
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "resume", "max_steps", "train_sequences", "grad_accum", "save_steps", "keep_last", "log_steps",
    "eval_steps", "eval_rates", "eval_batches", "sample_rows", "sample_rate", "sample_k", "report_to",
    "wandb_project", "progress", "debug_signal"})
# Changes that say how this process starts or where the run lives, not what it is: not recorded in config.yaml.
NOT_RECORDED = frozenset({"resume", "debug_signal", "output_dir"})


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


def end_of_data(streams, max_epochs: int, accelerator) -> bool:
    """True on every rank when any rank's stream has started pass ``max_epochs`` (0-based), i.e. the
    batches just read hold tokens from beyond the allowed passes. One all-reduce, so ranks agree
    before any of them starts a forward pass."""
    ended = any(stream.epoch >= max_epochs for stream in streams)
    return bool(accelerator.reduce(torch.tensor(float(ended), device=accelerator.device), "sum") > 0)


def config_differences(saved: dict, cfg: TrainConfig) -> tuple[dict, dict]:
    """Compare the config a checkpoint was written with to the one a resume asks for.

    Args:
        saved: ``dataclasses.asdict`` of the checkpoint's config (options it predates count as their defaults;
            options it has that no longer exist are ignored).
    Returns:
        ``(refused, allowed)``: ``{name: (saved value, new value)}`` of the differing run-defining options and
        of the differing options in ``RESUME_MAY_CHANGE``.
    """
    defaults = dataclasses.asdict(TrainConfig())
    now = dataclasses.asdict(cfg)
    refused, allowed = {}, {}
    for name, value in now.items():
        old = saved.get(name, defaults[name])
        if old != value:
            (allowed if name in RESUME_MAY_CHANGE else refused)[name] = (old, value)
    return refused, allowed


def check_resume_config(cfg: TrainConfig, ckpt: Path) -> dict:
    """Refuse a resume whose run-defining settings differ from checkpoint ``ckpt``'s (one line per difference);
    returns the allowed changes ``{name: (old, new)}``."""
    saved = json.loads((ckpt / "trainer_state.json").read_text())["config"]
    refused, allowed = config_differences(saved, cfg)
    if refused:
        lines = "\n".join(f"  {name}: {old!r} in the run, {new!r} now" for name, (old, new) in refused.items())
        raise ValueError(f"cannot resume '{cfg.output_dir}' from {ckpt.name} with different settings that define "
                         f"the run:\n{lines}\nresume with the run's values (its config.yaml holds them) or train into "
                         f"a new --output_dir; options a resume may change: {', '.join(sorted(RESUME_MAY_CHANGE))}")
    return allowed


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

# ---------------------------------------------------------------------------- model
def load_model_and_tokenizer(cfg: TrainConfig, spec, ckpt: Path | None, accelerator):
    """``(ASARM, tokenizer)`` from a checkpoint, a hub id / directory, or a fresh config."""
    from .model import ASARM
    from .tokenizer import build_local_tokenizer, load_tokenizer, special_ids

    revision = cfg.revision or None
    if ckpt is not None:
        tokenizer = load_tokenizer(str(ckpt))
    elif cfg.tokenizer == "local":
        local_dir = Path(cfg.output_dir) / "tokenizer"
        if accelerator.is_main_process:
            build_local_tokenizer(stdlib_texts(300_000), vocab_size=cfg.local_vocab_size).save_pretrained(local_dir)
        accelerator.wait_for_everyone()
        tokenizer = load_tokenizer(str(local_dir))
    elif cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif cfg.init == "fresh":
        raise ValueError("init=fresh needs a tokenizer: set tokenizer to 'local', a directory or a hub id")
    else:
        try:
            tokenizer = load_tokenizer(cfg.init, revision)
        except (OSError, ValueError):
            tokenizer = load_tokenizer("xlnet/xlnet-base-cased")
    if ckpt is not None:
        model = ASARM.from_pretrained(str(ckpt))
    elif cfg.init == "fresh":
        model = ASARM.from_config(dict(cfg.model_config), tokenizer=tokenizer, seed=cfg.seed)
    else:
        model = ASARM.from_pretrained(cfg.init, revision, tokenizer=tokenizer)
    if len(tokenizer) > model.vocab_size:
        raise ValueError(f"the tokenizer has {len(tokenizer)} ids but the model only {model.vocab_size}")
    mask_id, banned = special_ids(tokenizer)
    if spec.code:  # a code model must be able to write newlines, tabs and indentation
        banned = sorted(set(banned) - set(code_whitespace_ids(tokenizer)))
    return ASARM(model.xlnet, mask_id, banned), tokenizer


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


# ---------------------------------------------------------------------------- state
def parameter_digest(model) -> str:
    """SHA-256 of every parameter's bytes: equal digests = bitwise-identical models."""
    h = hashlib.sha256()
    for _, p in sorted(model.named_parameters()):
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict:
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


class MetricsLog:
    """``metrics.jsonl`` (always) plus TensorBoard / wandb when asked. Main process only."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, resume_step: int, wandb_id: str | None):
        self.path = run_dir / "metrics.jsonl"
        for path in (self.path, run_dir / "samples.jsonl"):
            if path.exists():  # drop rows a crashed run logged after its last checkpoint
                rows = [r for r in path.read_text().splitlines() if r and json.loads(r)["step"] <= resume_step]
                atomic_write_text(path, "".join(r + "\n" for r in rows))
        self.tb = self.wandb = None
        if "tensorboard" in cfg.report_to:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(run_dir / "tensorboard")
        self.wandb_id = wandb_id
        if "wandb" in cfg.report_to:
            import wandb

            self.wandb_id = wandb_id or wandb.util.generate_id()
            self.wandb = wandb.init(project=cfg.wandb_project, config=dataclasses.asdict(cfg), dir=str(run_dir),
                                    id=self.wandb_id, resume="allow")

    def log(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
        if self.tb:
            for k, v in numbers.items():
                self.tb.add_scalar(k, v, row["step"])
        if self.wandb:
            self.wandb.log(numbers, step=row["step"])

    def close(self):
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, eval_x: torch.Tensor, cfg: TrainConfig, tokenizer, code: bool) -> tuple[dict, list[dict]]:
    """Held-out loss at each fixed rate and ASSD samples; deterministic, leaves the global RNG alone.

    Args:
        eval_x: ``(eval_batches * batch_size, N)`` held-out chunks.
    Returns:
        ``(metrics, samples)``.
    """
    from .orders import random_sorted_order
    from .sampling import sample

    was_training = model.training
    model.eval()
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
    x = eval_x[: cfg.sample_rows].to(model.device)
    n_known = x.shape[1] - obj.num_targets(x.shape[1], cfg.sample_rate)
    gen = obj.batch_generator(cfg.seed, -2, 0)
    sigma = random_sorted_order(x.shape[0], x.shape[1], n_known, generator=gen).to(model.device)
    prompt = x.masked_fill(sigma >= n_known, model.mask_token_id)
    out = sample(model, prompt, sigma, torch.full((x.shape[0],), n_known, device=model.device),
                 method="assd", k=cfg.sample_k, generator=torch.Generator(model.device).manual_seed(cfg.seed))
    generated = out.sequences[sigma >= n_known]
    counts = torch.bincount(generated.cpu(), minlength=model.vocab_size).float()
    p = counts[counts > 0] / counts.sum()
    metrics.update(assd_nfe=out.nfe.float().mean().item(), assd_tokens=float(x.shape[1] - n_known),
                   assd_accept_rate=(out.accepted.sum() / out.drafted.sum().clamp(min=1)).item(),
                   assd_entropy=float(-(p * p.log()).sum()))
    samples = [{"prompt": decode_text(prompt[r].tolist(), tokenizer, code),
                "sample": decode_text(out.sequences[r].tolist(), tokenizer, code), "nfe": int(out.nfe[r])}
               for r in range(x.shape[0])]
    model.train(was_training)
    return metrics, samples


# ---------------------------------------------------------------------------- training
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


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run; returns its directory. Every check runs before the first step.

    SIGTERM, at any moment (start-up included), ends the run with a checkpoint of the current step and
    status ``interrupted`` (what the launcher requeues); an error ends it with status ``failed``
    (``record_failure``)."""
    stop = {"flag": False}  # installed first: a SIGTERM during start-up is acted on as soon as the state exists
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    # what _train has done so far, for the status an error leaves behind
    progress = {"main": int(os.environ.get("RANK", "0")) == 0, "wrote_status": False, "step": None}
    try:
        return _train(cfg, stop, progress)
    except BaseException as exc:
        record_failure(cfg, progress, exc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


def record_failure(cfg: TrainConfig, progress: dict, exc: BaseException) -> None:
    """Set ``status.json`` to ``failed`` (with the error), so that the launcher never requeues a run that
    cannot go on (an ``interrupted`` left behind would be requeued forever). Only the main process, and only a
    status this process wrote or that of the run it was asked to resume: never another run's."""
    path = Path(cfg.output_dir) / "status.json"
    if not progress["main"] or not (progress["wrote_status"] or (cfg.resume != "false" and path.is_file())):
        return
    status = _read_json(path)
    if status.get("state") == "done" and not progress["wrote_status"]:
        return  # a finished run stays finished: the refused attempt changed nothing in it
    status.update(state="failed", error=f"{type(exc).__name__}: {exc}")
    if progress["step"] is not None:
        status["step"] = progress["step"]
    atomic_write_json(path, status)


def _train(cfg: TrainConfig, stop: dict, progress: dict) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, gather_object
    from transformers import get_linear_schedule_with_warmup

    check_config(cfg)
    code_ws = None if cfg.code_whitespace == "auto" else cfg.code_whitespace == "true"
    spec = resolve_dataset(cfg.dataset, cfg.text_field or None, code_ws)
    check_not_empty(spec)
    search = check_run_dir(cfg)
    ckpt = search.checkpoint
    changes = check_resume_config(cfg, ckpt) if ckpt is not None else {}
    run_dir = Path(cfg.output_dir)

    precision = cfg.mixed_precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and not cfg.cpu
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.cpu, step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    progress["main"] = main
    num_slots = world * cfg.grad_accum
    max_steps = cfg.max_steps or max(1, cfg.train_sequences // (cfg.batch_size * num_slots))
    accelerator.wait_for_everyone()  # every process has verified the checkpoints before any is renamed
    if main:
        for note in search.notes:
            warnings.warn(note, CheckpointWarning, stacklevel=2)
        for directory, reason in search.damaged:  # newer than the checkpoint resumed: set aside, kept for inspection
            quarantine(directory, reason)
    accelerator.wait_for_everyone()

    model, tokenizer = load_model_and_tokenizer(cfg, spec, ckpt, accelerator)
    limit = min(cfg.model_max_len, tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else 1 << 30)
    if cfg.seq_len > limit:
        raise ValueError(f"seq_len={cfg.seq_len} is over the model's limit of {limit} tokens (model_max_len)")
    frozen = freeze_unused(model)
    model.train()

    # data: this rank's slots, each its own shard (replicate_data: alike on every rank); plus the held-out chunks
    encode = make_encoder(tokenizer, spec.code, cfg.add_special_tokens)
    slots = [rank * cfg.grad_accum + a for a in range(cfg.grad_accum)]
    held_out = held_out_digests(spec, cfg.eval_docs)
    shards = [slot_shard(s, cfg.grad_accum, world, cfg.replicate_data) for s in slots]
    streams = [PackedStream(lambda sh=sh: open_split(spec, "train", cfg.eval_docs, *sh), encode,
                            tokenizer.eos_token_id, cfg.seq_len, exclude=held_out) for sh in shards]
    eval_stream = PackedStream(lambda: open_split(spec, "eval", cfg.eval_docs), encode, tokenizer.eos_token_id, cfg.seq_len)
    eval_x = eval_stream.next_batch(cfg.eval_batches * cfg.batch_size) if main else None

    lr = cfg.lr * (cfg.batch_size * num_slots / 32 if cfg.scale_lr else 1.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=cfg.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.warmup_steps, max_steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    plain = accelerator.unwrap_model(model)

    step, elapsed, tokens, wandb_id = 0, 0.0, 0, None
    if ckpt is not None:
        state = torch.load(ckpt / "training_state.pt", map_location="cpu", weights_only=False)
        if state["num_slots"] != num_slots:
            raise ValueError(f"the checkpoint was written with {state['num_slots']} slots (processes x grad_accum); "
                             f"this run has {num_slots}: keep processes x grad_accum the same to resume")
        step, elapsed, tokens, wandb_id = state["step"], state["elapsed"], state["tokens"], state.get("wandb_id")
        if step > max_steps:
            raise ValueError(f"the checkpoint is at step {step}, past max_steps={max_steps}: raise max_steps "
                             "(or train_sequences) to continue")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        for stream, s in zip(streams, slots):
            stream.load_state_dict(state["data"][s])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
    saved_step = step if ckpt is not None else None  # the step of the newest checkpoint on disk
    progress["step"] = step
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_run_config(run_dir, cfg, step, changes)
        atomic_write_json(run_dir / "status.json", {"state": "running", "step": step, "checkpoint": saved_step})
        progress["wrote_status"] = True
        clean_temporaries(run_dir)
        log = MetricsLog(run_dir, cfg, step, wandb_id)
        print(f"asarm train: {world} process(es) x {cfg.grad_accum} micro-batches x {cfg.batch_size} sequences x "
              f"{cfg.seq_len} tokens, {max_steps} steps, lr {lr:.3g}, precision {precision}, "
              f"{'resuming at step ' + str(step) + ' from ' + ckpt.name if ckpt else 'fresh start'}"
              f"{'; changed: ' + ', '.join(changes) if changes else ''}; frozen (unused): {len(frozen)} tensors",
              file=sys.stderr)

    def checkpoint():
        nonlocal saved_step
        check_finite_parameters(plain, f"checkpoint step {step}")
        per_rank = gather_object([{"data": {s: st.state_dict() for s, st in zip(slots, streams)}, "rng": rng_state()}])
        if main:
            state = {"step": step, "elapsed": elapsed, "tokens": tokens, "num_slots": num_slots,
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                     "data": {s: d for r in per_rank for s, d in r["data"].items()},
                     "rng": [r["rng"] for r in per_rank], "wandb_id": log.wandb_id,
                     "rate_range": obj.rate_range(step, cfg.start_rate, cfg.min_rate, cfg.max_rate, cfg.rate_warmup_steps),
                     "config": dataclasses.asdict(cfg)}
            save_checkpoint(run_dir, step, plain, tokenizer, state, cfg.keep_last)
            atomic_write_json(run_dir / "status.json", {"state": "running", "step": step, "checkpoint": step})
        saved_step = step
        accelerator.wait_for_everyone()

    def run_eval():
        if main:
            metrics, samples = evaluate(plain, eval_x, cfg, tokenizer, spec.code)
            log.log({"step": step, "kind": "eval", **metrics})
            with open(run_dir / "samples.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "samples": samples}) + "\n")
        accelerator.wait_for_everyone()

    def stop_requested() -> bool:
        """Whether any process got SIGTERM (all processes agree, so they stop at the same step)."""
        flag = torch.tensor(float(stop["flag"]), device=accelerator.device)
        return bool(accelerator.reduce(flag, "sum") > 0)

    bar = None
    if main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=step, desc="train", dynamic_ncols=True)
    kill_sig, _, kill_step = cfg.debug_signal.partition("@")
    scaler_active = accelerator.scaler is not None
    data_ended = False

    stopping = stop_requested()
    if stopping and saved_step != step:  # SIGTERM during start-up: the state exists now, save it
        checkpoint()
    while step < max_steps and not stopping:
        t0 = time.perf_counter()
        lo, hi = obj.rate_range(step, cfg.start_rate, cfg.min_rate, cfg.max_rate, cfg.rate_warmup_steps)
        losses = []
        batches = [stream.next_batch(cfg.batch_size) for stream in streams]
        if cfg.max_epochs and end_of_data(streams, cfg.max_epochs, accelerator):
            if step == 0:
                raise ValueError(f"a data shard holds less than one step of tokens ({cfg.batch_size} x {cfg.seq_len}) "
                                 "in one pass: use fewer slots (processes x accumulation), smaller batches or more data")
            data_ended = True  # this step would read the next pass: drop it, like the paper's loader drops its tail
            if saved_step != step:
                checkpoint()
            break
        for micro, (slot, stream, x) in enumerate(zip(slots, streams, batches)):
            gen = obj.batch_generator(cfg.seed, step, slot)
            torch.manual_seed(int(torch.randint(2**62, (), generator=gen)))  # dropout: a function of (step, slot)
            rate = obj.stratified_rate(lo, hi, slot, num_slots, gen)
            b = obj.make_batch(x, rate, plain.mask_token_id, objective=cfg.objective,
                               order=cfg.order, visible_attention=cfg.visible_attention, generator=gen)
            last = micro == len(slots) - 1
            with nullcontext() if last else accelerator.no_sync(model):  # all-reduce once per step
                dev = accelerator.device  # (the prepared model runs under autocast when mixed precision is on)
                logits = model(b.input_ids.to(dev), b.perm_mask.to(dev), b.target_mapping.to(dev))
                loss = obj.target_loss(logits, b.labels.to(dev)) * obj.loss_weight(rate, cfg.loss_scale, cfg.objective)
                accelerator.backward(loss / len(slots))
            losses.append(loss.detach())
        # max_norm=inf measures the norm without clipping (the gradients are multiplied by exactly 1)
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip or math.inf))
        step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        check_finite(step + 1, step_loss, grad_norm, scaler_active, scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress["step"] = step
        stopping = stop_requested()
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens += cfg.batch_size * num_slots * cfg.seq_len
        if main:
            if step % cfg.log_steps == 0 or step == max_steps:
                log.log({"step": step, "kind": "train", "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                         "rate_min": lo, "rate_max": hi, "grad_norm": grad_norm,
                         "tokens_per_s": cfg.batch_size * num_slots * cfg.seq_len / dt, "tokens": tokens,
                         "elapsed_s": elapsed})
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", r=f"{lo:.2f}-{hi:.2f}")
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < max_steps:
            run_eval()
        if step % cfg.save_steps == 0 or step == max_steps or stopping:
            checkpoint()
        if kill_sig and step == int(kill_step):
            os.kill(os.getpid(), getattr(signal, "SIG" + kill_sig))
    # a SIGTERM during the last step's save: stop here too; the resumed run does the final evaluation
    stopping = stopping or stop_requested()
    if stopping and saved_step != step:
        checkpoint()
    if not stopping:
        run_eval()
        check_finite_parameters(plain, "the final model")
    checksums = gather_object([parameter_digest(plain)])
    if main:
        if bar:
            bar.close()
        if not stopping:
            plain.save_pretrained(run_dir / "model", tokenizer)
        status = {"state": "interrupted" if stopping else "done", "step": step, "max_steps": max_steps,
                  "end_of_data": data_ended,
                  "checkpoint": saved_step, "world_size": world, "param_checksums": checksums,
                  "ranks_identical": len(set(checksums)) == 1}
        atomic_write_json(run_dir / "status.json", status)
        log.close()
        print(f"asarm train: {status['state']} at step {step}; run directory {run_dir}", file=sys.stderr)
    accelerator.wait_for_everyone()
    return run_dir


# ---------------------------------------------------------------------------- command line
def register_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune an AS-ARM (masking-distribution objective)",
                       description="Train an AS-ARM. Options come from --config FILE (YAML) and are overridden by "
                                   "--key value on the command line (lists and dicts in YAML syntax, e.g. "
                                   "--eval_rates '[0.5, 0.9]'). Run several processes with torchrun or _run_training.sh.",
)
    p.add_argument("--config", default=None, help="YAML file of options")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flags = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
        p.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, metavar=type(getattr(defaults, f.name)).__name__.upper(),
                       help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)!r})")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command", "debug")}
    train(TrainConfig.load(args.config, overrides))
    return 0
