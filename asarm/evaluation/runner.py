"""One resumable, shardable runner for every evaluation.

An evaluation is a list of *units* (a trial, a story, a task: whatever is
computed together), a ``process(unit, seed) -> list[record]`` function and a
``summarize(records, config, out_dir) -> (results, table)`` function.

The output directory holds:

* ``config.json``: the evaluation's name, its config (everything that changes
  the numbers) and the ordered list of unit ids. A rerun with a different
  config refuses to mix results (use a fresh ``--output-dir`` or ``--overwrite``).
* ``samples.shard-I-of-N.jsonl``: one line ``{"uid", "records"}`` per finished
  unit, appended and flushed as soon as it is done. A rerun skips every unit
  already in ANY samples file of the directory (a truncated last line, from a
  kill mid-write, is dropped and recomputed).
* ``results.json`` (config included; strict JSON, NaN written as ``null``) and
  ``results.md`` (a table), written atomically once every unit is done: by the
  single process, or by whichever shard finishes last, or by ``asarm eval-merge DIR``.
* ``.lock.shard-I``: held (``flock``) by the process running shard ``I``, so a
  second run of the same shard into the same directory is refused at once
  instead of redoing the work; other shards run concurrently. The kernel drops
  the lock when its holder dies, so a killed run never blocks the next one.

Each unit draws its randomness from ``unit_seed(seed, uid)``, so its records do
not depend on which process ran it, in which order, or after how many restarts:
shard + merge and interrupt + resume give the same numbers as one process
(wall-clock times aside). Shard ``i`` of ``n`` takes units ``i, i + n, ...``.

``--batch-size B`` hands ``process`` B units at a time (one batched sampler call,
``evaluation.batching``); every unit still samples from generators seeded from its
own seed, so B changes the speed, not the records, and is a runtime setting (a
run resumed with another B continues the same run). Units are recorded per unit,
once their batch is done.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..utils import add_threads_argument, atomic_write_json, atomic_write_text, set_threads



def summarizer(evaluation: str):
    """The ``summarize(records, config, out_dir) -> (results, table)`` of an evaluation, by its name.

    Imported here, not at the top: the evaluation modules import this one.
    """
    from . import density, infill_code, infill_nlp, speculative

    return {"speculative": speculative.summarize, "infill-nlp": infill_nlp.summarize,
            "infill-code": infill_code.summarize, "density": density.summarize}[evaluation]


# argparse options that do not change the numbers (kept in results.json under "runtime").
RUNTIME_KEYS = {"device", "output_dir", "shard", "num_shards", "overwrite", "progress", "workers", "threads", "command",
                "debug", "func", "batch_size", "allow_guard"}
CONFIG_FILE, RESULTS_FILE, TABLE_FILE = "config.json", "results.json", "results.md"


@dataclass(frozen=True)
class Unit:
    """A piece of work: ``uid`` (stable, unique string id) and whatever ``process`` needs."""

    uid: str
    payload: Any


def add_run_arguments(p, default_output: str) -> None:
    """Options every evaluation command shares: output, seed, subset, sharding, resume."""
    p.add_argument("--output-dir", default=default_output, help="where results go (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="base seed; each unit derives its own (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="only the first N units (quick runs)")
    p.add_argument("--shard", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)),
                   help="this process's shard index (default: $SLURM_ARRAY_TASK_ID or 0)")
    p.add_argument("--num-shards", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)),
                   help="number of shards (default: $SLURM_ARRAY_TASK_COUNT or 1); merge with `asarm eval-merge`")
    p.add_argument("--overwrite", action="store_true", help="discard results already in --output-dir")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=1,
                   help="units decoded together in one batched sampler call; each unit keeps its own seed, so the "
                        "per-unit results do not depend on it (default: %(default)s)")
    add_threads_argument(p)


def unit_seed(seed: int, uid: str) -> int:
    """A 63-bit seed for one unit, a pure function of ``(seed, uid)``."""
    digest = hashlib.sha256(f"{seed}/{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def split_config(args) -> tuple[dict, dict]:
    """``(config, runtime)`` from parsed arguments: runtime keys do not change the numbers."""
    items = {k: v for k, v in vars(args).items() if k != "func"}
    config = {k: v for k, v in items.items() if k not in RUNTIME_KEYS}
    runtime = {k: v for k, v in items.items() if k in RUNTIME_KEYS and k != "func"}
    return config, runtime


def select_units(units: list[Unit], limit: int | None) -> list[Unit]:
    """The first ``limit`` units; ``ValueError`` if none is left or ids repeat."""
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be >= 1, got {limit}")
        units = units[:limit]
    if not units:
        raise ValueError("no tasks selected: the data set or the filters (--limit, --tasks, ...) leave nothing to evaluate")
    uids = [u.uid for u in units]
    if len(set(uids)) != len(uids):
        raise ValueError("unit ids are not unique (duplicate rows in the data?)")
    return units


def shard_units(units: list[Unit], shard: int, num_shards: int) -> list[Unit]:
    """Units ``shard, shard + num_shards, ...``."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"need 0 <= --shard < --num-shards, got shard {shard} of {num_shards}")
    return units[shard::num_shards]


def prepare_output(out_dir: Path, evaluation: str, config: dict, uids: list[str], overwrite: bool) -> None:
    """Write ``config.json``, or check that the one there describes the same run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / CONFIG_FILE
    wanted = {"evaluation": evaluation, "config": config, "units": uids}
    if overwrite:
        for f in list(out_dir.glob("samples.*.jsonl")) + [out_dir / RESULTS_FILE, out_dir / TABLE_FILE]:
            f.unlink(missing_ok=True)
    elif path.exists():
        old = json.loads(path.read_text())
        if json.loads(json.dumps(wanted, default=str)) != old:
            diff = changed_settings(json.loads(json.dumps(config, default=str)), old.get("config", {}))
            what = f"settings differ: {', '.join(diff)}" if diff else "the evaluation or its units differ"
            raise ValueError(f"{out_dir} already holds a different run ({what}); pass a new --output-dir, "
                             "or --overwrite to discard it")
        return
    atomic_write_json(path, wanted)


def changed_settings(new: dict, old: dict, prefix: str = "") -> list[str]:
    """The keys whose values differ between two configs, nested ones dotted (``sampling.k``)."""
    out = []
    for key in sorted(set(new) | set(old)):
        a, b = new.get(key), old.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_settings(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def load_records(out_dir: Path) -> dict[str, list[dict]]:
    """Finished units of every ``samples.*.jsonl`` in ``out_dir``: ``{uid: records}``.

    A line that does not parse (the tail of an interrupted write) is ignored.
    """
    done: dict[str, list[dict]] = {}
    for path in sorted(out_dir.glob("samples.*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                done[row["uid"]] = row["records"]
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return done


def _open_for_append(path: Path):
    """Open a JSONL file for appending, first cutting a partial last line (from a crash)."""
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])
    return open(path, "a", encoding="utf-8")


def per_unit(process: Callable) -> Callable:
    """A batch processor (``(units, seeds) -> [records per unit]``) of a ``process(unit, seed) -> records``."""
    return lambda units, seeds: [process(u, s) for u, s in zip(units, seeds)]


def batches(items: list, size: int) -> list[list]:
    """``items`` cut into consecutive lists of ``size`` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {size}")
    return [items[i:i + size] for i in range(0, len(items), size)]


def run_units(out_dir: Path, units: list[Unit], make_process: Callable[[], Callable], seed: int,
              shard: int, num_shards: int, progress: bool = True, desc: str = "eval", batch_size: int = 1) -> int:
    """Process this shard's unfinished units, ``batch_size`` at a time, appending each unit's records
    (one line per unit) as soon as its batch is done.

    ``make_process()`` (model loading) is called only if something is left to do; it returns
    ``process(units, seeds) -> [records of each unit]`` (``per_unit`` wraps a one-unit function).
    Each unit gets ``unit_seed(seed, uid)`` whatever batch it lands in. Returns the number of units processed now.
    """
    from tqdm.auto import tqdm

    done = load_records(out_dir)
    todo = [u for u in shard_units(units, shard, num_shards) if u.uid not in done]
    if not todo:
        return 0
    process = make_process()
    path = out_dir / f"samples.shard-{shard}-of-{num_shards}.jsonl"
    with _open_for_append(path) as f, tqdm(total=len(todo), desc=f"{desc} [shard {shard}/{num_shards}]",
                                           disable=not progress, file=sys.stderr) as bar:
        for batch in batches(todo, batch_size):
            results = process(batch, [unit_seed(seed, u.uid) for u in batch])
            for unit, records in zip(batch, results, strict=True):
                f.write(json.dumps({"uid": unit.uid, "records": records}, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    return len(todo)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def finalize(out_dir: str | os.PathLike, runtime: dict | None = None, quiet: bool = False,
             summarize=None) -> dict | None:
    """Summarise a finished run into ``results.json`` + ``results.md``; print the table.

    ``summarize`` defaults to the run's evaluation's (``summarizer``). Returns the results
    dict, or None (with a message) while units are missing.
    """
    out_dir = Path(out_dir)
    if not (out_dir / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{out_dir / CONFIG_FILE} not found: is {out_dir} an evaluation output directory?")
    meta = json.loads((out_dir / CONFIG_FILE).read_text())
    done = load_records(out_dir)
    missing = [u for u in meta["units"] if u not in done]
    if missing:
        print(f"{len(missing)} of {len(meta['units'])} units not finished yet in {out_dir} "
              f"(first: {missing[0]}); run the remaining shards, then `asarm eval-merge {out_dir}`", file=sys.stderr)
        return None
    records = [r for uid in meta["units"] for r in done[uid]]
    results, table = (summarize or summarizer(meta["evaluation"]))(records, meta["config"], out_dir)
    payload = {"evaluation": meta["evaluation"], "config": meta["config"], "num_units": len(meta["units"]),
               "results": results, "runtime": runtime or {}}
    atomic_write_json(out_dir / RESULTS_FILE, json.loads(json.dumps(payload, default=_json_default)))
    protocol = meta["config"].get("protocol")
    if protocol:
        table += f"\n\nProtocol: `{protocol}` (settings in results.json's config)."
    atomic_write_text(out_dir / TABLE_FILE, table + "\n")
    if not quiet:
        print(table)
        print(f"\nwrote {out_dir / RESULTS_FILE} and {out_dir / TABLE_FILE}")
    return results


@contextmanager
def shard_lock(out_dir: Path, shard: int):
    """Hold ``out_dir/.lock.shard-{shard}`` for the block; ``ValueError`` at once if another process holds it.

    The message names the directory and the holder's PID (written into the
    file). ``flock`` locks belong to the open file, so the kernel releases them
    when the holder exits or is killed: a stale file never blocks. Where
    ``fcntl`` is missing (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # no flock: concurrent runs are the user's to avoid
        yield
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f".lock.shard-{shard}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise ValueError(f"{out_dir} is in use: another run (PID {holder}) is computing shard {shard} there; "
                             "wait for it to finish, stop it, or pass another --output-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def run_evaluation(evaluation: str, args, units: list[Unit], make_process: Callable[[], Callable]) -> dict | None:
    """The whole flow for one command: select, check/write the config, process this shard, finalize.

    Returns the results when every unit is done (else None: other shards pending).
    """
    set_threads(getattr(args, "threads", 0))
    if args.overwrite and args.num_shards > 1:
        raise ValueError("--overwrite would delete the other shards' results; with --num-shards > 1 remove the "
                         "output directory once before starting the shards instead")
    config, runtime = split_config(args)
    units = select_units(units, args.limit)
    out_dir = Path(args.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--output-dir '{out_dir}' is a file; pass a directory")
    shard_units(units, args.shard, args.num_shards)  # validate before loading anything
    batches([], getattr(args, "batch_size", 1))
    with shard_lock(out_dir, args.shard):  # before prepare_output: --overwrite deletes files
        prepare_output(out_dir, evaluation, config, [u.uid for u in units], args.overwrite)
        run_units(out_dir, units, make_process, args.seed, args.shard, args.num_shards, args.progress, evaluation,
                  getattr(args, "batch_size", 1))
        return finalize(out_dir, runtime)


def register_merge(sub) -> None:
    p = sub.add_parser("eval-merge", help="merge the shards of an evaluation into one results.json",
                       description="Summarise an evaluation output directory whose units were computed by "
                                   "several shards (or re-summarise a finished one).")
    p.add_argument("output_dir", help="the evaluation's --output-dir")
    p.set_defaults(func=lambda args: 0 if finalize(args.output_dir) is not None else 1)


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub-markdown table; floats shown with 3 significant decimals."""
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def pm(mean: float, se: float, digits: int = 2) -> str:
    """``"mean ± se"`` (``"n/a"`` for NaN)."""
    if mean != mean:
        return "n/a"
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se == se else f"{mean:.{digits}f}"
