"""The offline quickstart: train a tiny AS-ARM on the Python standard library, then compare samplers.

    asarm quickstart                     # a few minutes on 2 CPU cores, no network, no GPU

1. Trains with the project's trainer (``asarm.train.train``) from
   ``configs/tiny_cpu.yaml`` (a fresh 2-layer XLNet and an XLNet-pipeline SentencePiece
   tokenizer built offline; the corpus is the running Python's own standard
   library, ``dataset: stdlib``), with the overrides below.
2. Writes the documents the trainer held out (its ``eval`` split) to
   ``heldout.txt`` and runs ``asarm speculative`` on them: sequential vs
   ASSD vs n-gram draft on ``seq_len``-token chunks with 5% visible. No judge
   LM is available offline, so the table reports NFE, wall-clock, unigram
   entropy and the model's own NLL per generated token (``joint_log_prob``).

Rerunning resumes: a finished training run is reused, finished trials are skipped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ..utils import add_threads_argument, atomic_write_json, set_threads

REPO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
# Settings on top of configs/tiny_cpu.yaml that keep the whole quickstart within ~5 minutes on 2 cores.
TRAIN_OVERRIDES = {"grad_accum": 1, "eval_steps": 0, "save_steps": 100, "resume": "auto"}


def train_tiny(out_dir: Path, config: str, steps: int, progress: bool) -> tuple[Path, object, float]:
    """Train (or reuse) the tiny model; returns ``(run_dir, TrainConfig, seconds)``."""
    import json

    from ..train import TrainConfig, train

    if not Path(config).is_file():
        raise FileNotFoundError(f"training config '{config}' not found (it ships in the repository's configs/; "
                                "pass --train-config)")
    cfg = TrainConfig.load(config, {**TRAIN_OVERRIDES, "output_dir": str(out_dir), "max_steps": steps,
                                    "progress": progress})
    status = out_dir / "status.json"
    if status.exists() and json.loads(status.read_text()).get("state") == "done" and (out_dir / "model").is_dir():
        print(f"reusing the trained model in {out_dir}", file=sys.stderr)
        return out_dir, cfg, 0.0
    t0 = time.perf_counter()
    train(cfg)
    return out_dir, cfg, time.perf_counter() - t0


def heldout_text(cfg) -> str:
    """The documents the trainer held out (its ``eval`` split), joined by blank lines."""
    from ..data import open_split, resolve_dataset

    code = None if cfg.code_whitespace == "auto" else cfg.code_whitespace == "true"
    spec = resolve_dataset(cfg.dataset, cfg.text_field or None, code)
    return "\n\n".join(row["text"] for row in open_split(spec, "eval", cfg.eval_docs))


def speculative_options(args, run_dir: Path, data: Path, seq_len: int) -> dict:
    """The ``asarm speculative`` options of the quickstart's comparison (``speculative.default_args``)."""
    options = {"model": str(run_dir / "model"), "device": "cpu", "data": str(data), "seq_len": seq_len,
               "visible_frac": args.visible_frac, "trials": args.trials, "k": args.k, "judge": "none", "code": True,
               "seed": args.seed, "threads": args.threads, "output_dir": str(args.output_dir_speculative),
               "progress": args.progress}
    return {name: value for name, value in options.items() if value is not None}  # None: the command's default


def as_command(options: dict) -> str:
    """The ``asarm speculative ...`` command line of ``options`` (recorded in quickstart.json)."""
    words = ["asarm", "speculative"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            words += [flag] if value and name != "progress" else ([] if value else ["--no-" + name])
        else:
            words += [flag, str(value)]
    return " ".join(words)


def run(args) -> int:
    from . import speculative

    t0 = time.perf_counter()
    set_threads(args.threads)
    out = Path(args.output_dir)
    run_dir, cfg, train_s = train_tiny(out / "train", args.train_config, args.train_steps, args.progress)
    data = out / "heldout.txt"
    data.write_text(heldout_text(cfg), encoding="utf-8")
    args.output_dir_speculative = out / "speculative"
    options = speculative_options(args, run_dir, data, cfg.seq_len)
    speculative.evaluate(speculative.default_args(**options))
    total = time.perf_counter() - t0
    summary = {"train_dir": str(run_dir), "train_steps": cfg.max_steps, "train_seconds": train_s,
               "heldout_docs": cfg.eval_docs, "speculative_dir": str(out / "speculative"),
               "total_seconds": total, "speculative_command": as_command(options)}
    atomic_write_json(out / "quickstart.json", summary)
    print(f"\nquickstart: trained {cfg.max_steps} steps in {train_s:.0f} s, total {total:.0f} s; "
          f"results in {out / 'speculative'} (results.json, results.md, distributions.png)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="offline demo: train a tiny AS-ARM on stdlib sources, compare samplers",
                       description="Train a tiny AS-ARM on the Python standard library (offline, CPU, a few "
                                   "minutes), then run the speculative-decoding comparison (sequential vs ASSD vs "
                                   "n-gram draft) on held-out files and print the table.")
    p.add_argument("--output-dir", default="outputs/quickstart", help="(default: %(default)s)")
    p.add_argument("--train-config", default=str(REPO_CONFIG), help="trainer YAML (default: configs/tiny_cpu.yaml)")
    p.add_argument("--train-steps", type=int, default=600, help="optimizer steps (default: %(default)s)")
    p.add_argument("--trials", type=int, default=30, help="speculative-decoding trials (default: %(default)s)")
    p.add_argument("--visible-frac", type=float, default=0.05, help="(default: %(default)s)")
    p.add_argument("--k", type=int, default=None, help="ASSD draft length (default: SamplingConfig's, 5)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p, default=1)  # tiny models: 1 is the fastest, and the table's setting
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=run)
