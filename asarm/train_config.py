"""The trainer's options: ``TrainConfig``, its YAML / command-line parsing, its validation and what a resume
may change (docs/design.md, Training state).

* ``TrainConfig``: every option, with its default and ``--help`` text; ``TrainConfig.load(path, overrides)``
  reads a YAML file (a run directory's ``config.yaml`` included) and applies ``--key value`` overrides.
* ``load_recipe``: a YAML recipe's options with ``inherit: BASE.yaml`` resolved (a recipe names its
  base and holds only what it changes); ``python -m asarm.train_config FILE [KEY]`` prints them.
* ``check_config``: raises ``ValueError`` for settings that cannot train. ``asarm.train.train`` runs it once,
  first, before any model is loaded or any file written.
* ``RESUME_MAY_CHANGE`` / ``config_differences`` / ``check_resume_config``: the options that define a run and
  must equal its checkpoint's on resume.
* ``add_config_arguments``: one ``--name`` (and ``--na-me``) flag per option, for ``asarm train``.

Nothing here loads a model, reads data or writes a file.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import objective as obj
from .utils import check_input_file


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
                                      "hf:NAME[:CONFIG][@SPLIT][#REVISION], or a path/glob of .txt (one document per file) or .jsonl files")
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
    # the held-out ASSD sample (asarm.train.assd_samples)
    sample_rows: int = opt(2, "held-out sequences completed with ASSD at every evaluation")
    sample_rate: float = opt(0.95, "masking rate of the ASSD samples")
    sample_k: int = opt(5, "ASSD draft length")
    report_to: list = opt([], "trackers besides metrics.jsonl, any that accelerate supports: tensorboard "
                              "(RUN_DIR/tensorboard/), wandb, mlflow, comet_ml, aim, clearml, dvclive, ...")
    wandb_project: str = opt("asarm", "project name of the trackers (W&B project; TensorBoard: the folder "
                                      "under RUN_DIR/tensorboard/)")
    progress: bool = opt(True, "tqdm progress bar on the main process")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name: f for f in dataclasses.fields(cls)}
        values = drop_retired(values)
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}; `asarm train --help` lists them all")
        return cls(**{k: _coerce(names[k], v) for k, v in values.items()})

    @classmethod
    def load(cls, path: str | None = None, overrides: dict | None = None) -> "TrainConfig":
        """A YAML file (optional) with ``overrides`` applied on top."""
        values = load_recipe(path) if path else {}
        values.pop("changes", None)  # a run directory's config.yaml: the history of resumes, not an option
        return cls.from_dict({**values, **(overrides or {})})

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)


INHERIT = "inherit"


def load_recipe(path, _chain: tuple = ()) -> dict:
    """The options of the YAML file ``path``, its ``inherit: BASE.yaml`` resolved.

    ``BASE.yaml`` is a path relative to the file that names it, and may itself
    inherit. The file's own keys override the base's, each key's value as a
    whole: a dict (``model_config``) or list given in the file replaces the
    base's, it is not merged into it. A cycle is refused (``ValueError``).
    """
    path = Path(path)
    values = yaml_or_explain(check_input_file(path, "config file").read_text(encoding="utf-8"),
                             f"config file '{path}'") or {}
    if not isinstance(values, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of options")
    base = values.pop(INHERIT, None)
    if base is None:
        return values
    if not isinstance(base, str) or not base:
        raise ValueError(f"config file '{path}': {INHERIT} must name one YAML file, got {base!r}")
    chain = _chain + (path.resolve(),)
    base_path = path.parent / base
    if base_path.resolve() in chain:
        names = " -> ".join(str(p) for p in chain + (base_path.resolve(),))
        raise ValueError(f"config file '{path}': {INHERIT} makes a cycle ({names})")
    return {**load_recipe(base_path, chain), **values}


# Options that no longer exist, with the value every config of their time held unless someone set it: a run
# directory's config.yaml from then still loads; any other value is an error saying what replaced the option.
RETIRED = {"debug_signal": ("", "crash tests now inject signals themselves: asarm.train.train(cfg, after_step=...)")}


def drop_retired(values: dict) -> dict:
    """``values`` without the ``RETIRED`` options left at their old default; raises for one set to anything else."""
    for name, (default, replacement) in RETIRED.items():
        if name in values and values[name] not in (default, None):
            raise ValueError(f"option {name} was removed ({replacement})")
    return {k: v for k, v in values.items() if k not in RETIRED}


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


# ---------------------------------------------------------------------------- validation
def sampling_config(cfg: TrainConfig):
    """The ``asarm.sampling.SamplingConfig`` of the held-out ASSD samples (``sample_k``); ``ValueError`` if bad."""
    from .sampling import SamplingConfig

    try:
        return SamplingConfig(method="assd", k=cfg.sample_k)
    except ValueError as exc:
        raise ValueError(f"sample_k: {exc}") from None


def check_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` for settings that cannot train (``train`` runs this before anything is loaded)."""
    _check_choices(cfg)
    _check_rates(cfg)
    sampling_config(cfg)  # the held-out samples' sampler settings: SamplingConfig says what is wrong
    for name in ("batch_size", "grad_accum", "save_steps", "log_steps", "keep_last", "eval_batches", "sample_rows"):
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
    _check_ranges(cfg)
    _check_model_config(cfg.model_config)
    _check_loggers(cfg.report_to)


MAX_LOCAL_VOCAB = 1_000_000
SEED_RANGE = (0, 2**63 - 1)  # what torch's generators and the data order take


def _check_ranges(cfg: TrainConfig) -> None:
    """Numbers whose wrong sign or size would train silently wrong (a negative grad_clip flips every gradient)."""
    if not (isinstance(cfg.grad_clip, (int, float)) and math.isfinite(cfg.grad_clip) and cfg.grad_clip >= 0):
        raise ValueError(f"grad_clip must be >= 0 (the largest gradient norm; 0 turns clipping off), "
                         f"got {cfg.grad_clip}")
    for name in ("warmup_steps", "rate_warmup_steps"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be >= 0 (0: no warm-up), got {getattr(cfg, name)}")
    if not (isinstance(cfg.seed, int) and SEED_RANGE[0] <= cfg.seed <= SEED_RANGE[1]):
        raise ValueError(f"seed must be an integer in {SEED_RANGE[0]}..2**63-1, got {cfg.seed}")
    if cfg.tokenizer == "local" and not 100 <= cfg.local_vocab_size <= MAX_LOCAL_VOCAB:
        raise ValueError(f"local_vocab_size must be between 100 and {MAX_LOCAL_VOCAB:,} (the SentencePiece trainer "
                         f"finds no more pieces than its text sample holds; XLNet's has 32,000), "
                         f"got {cfg.local_vocab_size}")


def _check_model_config(model_config: dict) -> None:
    """``model_config`` keys must be XLNetConfig fields (a typo would be ignored), sizes positive integers."""
    import difflib

    from transformers import XLNetConfig

    if not isinstance(model_config, dict):
        raise ValueError(f"model_config must be a mapping of XLNetConfig fields, got {model_config!r}")
    known = set(XLNetConfig().to_dict()) - {"transformers_version", "_name_or_path", "architectures"}
    for key in model_config:
        if key not in known:
            near = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            raise ValueError(f"model_config: unknown XLNetConfig field '{key}'; {hint}"
                             f"fields are e.g. d_model, n_layer, n_head, d_inner")
    for key in ("d_model", "n_layer", "n_head", "d_inner", "vocab_size"):
        value = model_config.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"model_config: {key} must be a positive integer, got {value!r}")


def _check_choices(cfg: TrainConfig) -> None:
    def choose(name, options):
        if getattr(cfg, name) not in options:
            raise ValueError(f"{name} must be one of {tuple(options)}, got '{getattr(cfg, name)}'")

    choose("objective", obj.OBJECTIVES)
    choose("visible_attention", obj.VISIBLE_ATTENTION)
    choose("order", obj.ORDERS)
    choose("loss_scale", obj.LOSS_SCALES)
    obj.check_loss_scale(cfg.objective, cfg.loss_scale)
    choose("resume", ("false", "true", "auto"))
    choose("code_whitespace", ("auto", "true", "false"))
    choose("mixed_precision", ("auto", "no", "bf16", "fp16"))


def _check_rates(cfg: TrainConfig) -> None:
    rates = {name: getattr(cfg, name) for name in ("start_rate", "min_rate", "max_rate", "sample_rate")}
    rates.update({f"eval_rates[{i}]": rate for i, rate in enumerate(cfg.eval_rates)})
    for name, value in rates.items():
        if not 0.0 < float(value) < 1.0:
            raise ValueError(f"masking rate {name}={value} must lie strictly between 0 and 1")
    if cfg.min_rate > cfg.max_rate:
        raise ValueError(f"min_rate={cfg.min_rate} is above max_rate={cfg.max_rate}")


def _check_loggers(report_to: list) -> None:
    """Every ``report_to`` entry must be a tracker ``accelerate`` knows and whose package is installed
    (``accelerate`` itself would silently drop an uninstalled one)."""
    if not report_to:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    known = sorted(LOGGER_TYPE_TO_CLASS)
    unknown = [name for name in report_to if name not in known]
    if unknown:
        raise ValueError(f"report_to: unknown tracker(s) {unknown}; accelerate supports {', '.join(known)}")
    installed = {str(t) for t in get_available_trackers()}
    for name in report_to:
        if name not in installed:  # every tracker's PyPI package has the tracker's name
            raise ValueError(f"report_to {name}: the {name} package is not installed; `pip install {name}`, "
                             f"or drop {name} from report_to")


# ---------------------------------------------------------------------------- what a resume may change
# Settings a resumed run may change; every other option defines the run (model, data, seq_len, batch, seed,
# objective, schedule, numerics) and must equal the checkpoint's. New options are run-defining until listed
# here. grad_accum may change only with the number of processes, so that the slots (processes x grad_accum)
# stay the same; train() checks that. Changing max_steps / train_sequences re-stretches the linear lr decay
# from the resume step on (the schedule's horizon is the run's length).
RESUME_MAY_CHANGE = frozenset({
    "output_dir", "resume", "max_steps", "train_sequences", "grad_accum", "save_steps", "keep_last", "log_steps",
    "eval_steps", "eval_rates", "eval_batches", "sample_rows", "sample_rate", "sample_k", "report_to",
    "wandb_project", "progress"})
# Changes that say how this process starts or where the run lives, not what it is: not recorded in config.yaml.
NOT_RECORDED = frozenset({"resume", "output_dir"})


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


# ---------------------------------------------------------------------------- command line
def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--config FILE`` plus one ``--name`` / ``--na-me`` flag per ``TrainConfig`` field (absent unless given)."""
    p.add_argument("--config", default=None, help="YAML file of options")
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flags = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
        p.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS,
                       metavar=type(getattr(defaults, f.name)).__name__.upper(),
                       help=f"{f.metadata['help']} (default: {getattr(defaults, f.name)!r})")


def config_from_arguments(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` of parsed ``asarm train`` arguments: ``--config``'s file, then the flags given."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in fields}
    return TrainConfig.load(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    """``python -m asarm.train_config FILE [KEY]``: the options FILE resolves to (``inherit``
    applied, every default filled in) as YAML, or the value of one KEY."""
    parser = argparse.ArgumentParser(prog="python -m asarm.train_config", description=main.__doc__)
    parser.add_argument("file", help="a recipe (YAML), e.g. configs/ablation_parallel.yaml")
    parser.add_argument("key", nargs="?", help="print only this option's value")
    args = parser.parse_args(argv)
    try:
        cfg = TrainConfig.load(args.file)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        if args.key is not None and args.key not in known:
            raise ValueError(f"unknown option '{args.key}'; `asarm train --help` lists them all")
    except (ValueError, OSError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    print(cfg.to_yaml().rstrip("\n") if args.key is None else getattr(cfg, args.key))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
