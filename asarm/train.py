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

Run directory (``output_dir``): ``config.yaml``, ``metrics.jsonl``,
``samples.jsonl``, ``status.json``, ``checkpoints/step_XXXXXXXX/`` (a Hugging
Face model + tokenizer directory plus ``training_state.pt``),
``checkpoints/latest``, ``model/`` (the final model), ``tokenizer/`` (a
locally built tokenizer) and ``tensorboard/`` when asked.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import random
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from . import objective as obj
from .data import (PackedStream, code_whitespace_ids, decode_text, held_out_digests, make_encoder, open_split,
                   resolve_dataset, stdlib_texts)
from .utils import atomic_write_json, atomic_write_text


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
            if not os.path.isfile(path):
                raise FileNotFoundError(f"config file '{path}' does not exist")
            values = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config file '{path}' must hold a mapping of options")
        return cls.from_dict({**values, **(overrides or {})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


def _coerce(f: dataclasses.Field, value):
    """Turn ``value`` (from YAML or the command line) into the field's type."""
    kind = type(f.default) if f.default is not dataclasses.MISSING else type(f.default_factory())
    if isinstance(value, str) and kind in (int, float):
        try:
            value = kind(value)
        except ValueError:
            pass
    if isinstance(value, str) and kind is not str:
        value = yaml.safe_load(value)
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
    if cfg.lr <= 0:
        raise ValueError(f"lr must be positive, got {cfg.lr}")
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


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / "training_state.pt").is_file():
            return candidate
    done = sorted(p for p in root.glob("step_*") if (p / "training_state.pt").is_file())
    return done[-1] if done else None


def check_run_dir(cfg: TrainConfig) -> Path | None:
    """The checkpoint to resume from (or None); raises if ``output_dir`` holds another run."""
    run_dir = Path(cfg.output_dir)
    ckpt = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    holds_run = (run_dir / "config.yaml").exists() or ckpt is not None
    if cfg.resume == "false" and holds_run:
        raise ValueError(f"output_dir '{run_dir}' holds another run; pass --resume auto (or true) to continue it, "
                         "or choose a new --output_dir")
    if cfg.resume == "true" and ckpt is None:
        raise ValueError(f"--resume true but '{run_dir}' has no checkpoint to continue")
    return ckpt


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


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep_last: int) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically (a temporary directory renamed into place),
    point ``checkpoints/latest`` at it and delete all but the newest ``keep_last``."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer, atomic=False)  # HF model + tokenizer, with the AS-ARM's ids in config.json
    torch.save(state, tmp / "training_state.pt")
    atomic_write_json(tmp / "trainer_state.json", {k: state[k] for k in ("step", "elapsed", "tokens", "config")})
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(root.glob("step_*"))[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
def train(cfg: TrainConfig) -> Path:
    """Train (or resume) a run; returns its directory. Every check runs before the first step."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, gather_object
    from transformers import get_linear_schedule_with_warmup

    check_config(cfg)
    code_ws = None if cfg.code_whitespace == "auto" else cfg.code_whitespace == "true"
    spec = resolve_dataset(cfg.dataset, cfg.text_field or None, code_ws)
    ckpt = check_run_dir(cfg)
    run_dir = Path(cfg.output_dir)

    precision = cfg.mixed_precision
    if precision == "auto":
        cuda = torch.cuda.is_available() and not cfg.cpu
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    accelerator = Accelerator(mixed_precision=precision, cpu=cfg.cpu, step_scheduler_with_optimizer=False,
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    num_slots = world * cfg.grad_accum
    max_steps = cfg.max_steps or max(1, cfg.train_sequences // (cfg.batch_size * num_slots))

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
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        for stream, s in zip(streams, slots):
            stream.load_state_dict(state["data"][s])
        if len(state["rng"]) == world:
            set_rng_state(state["rng"][rank])
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        atomic_write_json(run_dir / "status.json", {"state": "running", "step": step})
        for tmp in (run_dir / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)
        log = MetricsLog(run_dir, cfg, step, wandb_id)
        print(f"asarm train: {world} process(es) x {cfg.grad_accum} micro-batches x {cfg.batch_size} sequences x "
              f"{cfg.seq_len} tokens, {max_steps} steps, lr {lr:.3g}, precision {precision}, "
              f"{'resuming at step ' + str(step) if ckpt else 'fresh start'}; frozen (unused): {len(frozen)} tensors",
              file=sys.stderr)

    def checkpoint():
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
        accelerator.wait_for_everyone()

    def run_eval():
        if main:
            metrics, samples = evaluate(plain, eval_x, cfg, tokenizer, spec.code)
            log.log({"step": step, "kind": "eval", **metrics})
            with open(run_dir / "samples.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "samples": samples}) + "\n")
        accelerator.wait_for_everyone()

    stop = {"flag": False}
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    bar = None
    if main and cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=step, desc="train", dynamic_ncols=True)
    kill_sig, _, kill_step = cfg.debug_signal.partition("@")
    data_ended = False

    while step < max_steps:
        t0 = time.perf_counter()
        lo, hi = obj.rate_range(step, cfg.start_rate, cfg.min_rate, cfg.max_rate, cfg.rate_warmup_steps)
        losses = []
        batches = [stream.next_batch(cfg.batch_size) for stream in streams]
        if cfg.max_epochs and end_of_data(streams, cfg.max_epochs, accelerator):
            if step == 0:
                signal.signal(signal.SIGTERM, previous_handler)
                raise ValueError(f"a data shard holds less than one step of tokens ({cfg.batch_size} x {cfg.seq_len}) "
                                 "in one pass: use fewer slots (processes x accumulation), smaller batches or more data")
            data_ended = True  # this step would read the next pass: drop it, like the paper's loader drops its tail
            if step % cfg.save_steps:
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
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0 else None
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        stop["flag"] = bool(accelerator.reduce(torch.tensor(float(stop["flag"]), device=accelerator.device), "sum") > 0)
        dt = time.perf_counter() - t0
        elapsed += dt
        tokens += cfg.batch_size * num_slots * cfg.seq_len
        if main:
            if step % cfg.log_steps == 0 or step == max_steps:
                log.log({"step": step, "kind": "train", "loss": step_loss, "lr": scheduler.get_last_lr()[0],
                         "rate_min": lo, "rate_max": hi, "grad_norm": None if grad_norm is None else float(grad_norm),
                         "tokens_per_s": cfg.batch_size * num_slots * cfg.seq_len / dt, "tokens": tokens,
                         "elapsed_s": elapsed})
            if bar:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", r=f"{lo:.2f}-{hi:.2f}")
        if cfg.eval_steps and step % cfg.eval_steps == 0 and step < max_steps:
            run_eval()
        if step % cfg.save_steps == 0 or step == max_steps or stop["flag"]:
            checkpoint()
        if stop["flag"]:
            break
        if kill_sig and step == int(kill_step):
            os.kill(os.getpid(), getattr(signal, "SIG" + kill_sig))

    if not stop["flag"]:
        run_eval()
    signal.signal(signal.SIGTERM, previous_handler)
    checksums = gather_object([parameter_digest(plain)])
    if main:
        if bar:
            bar.close()
        if not stop["flag"]:
            plain.save_pretrained(run_dir / "model", tokenizer)
        status = {"state": "interrupted" if stop["flag"] else "done", "step": step, "max_steps": max_steps,
                  "end_of_data": data_ended,
                  "world_size": world, "param_checksums": checksums, "ranks_identical": len(set(checksums)) == 1}
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
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", "func", "command")}
    train(TrainConfig.load(args.config, overrides))
    return 0
