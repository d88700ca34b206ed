"""Self-verifying training checkpoints (docs/design.md, Training state).

A checkpoint is ``checkpoints/step_XXXXXXXX/`` holding a Hugging Face model +
tokenizer directory, ``training_state.pt`` (optimizer, scheduler, data
positions, RNG, ...), ``trainer_state.json`` (step, counters, the config in
effect) and, written LAST and atomically, ``manifest.json``: the size and
SHA-256 of every other file plus a digest of the manifest itself. A directory
without a complete, self-consistent manifest is not a checkpoint, and a file
whose size or hash differs from the manifest makes the whole checkpoint
damaged.

Writing (``save_checkpoint``): everything goes into ``.tmp-step_X``, every
file is fsynced, the manifest is written, and the directory is renamed into
place in one step; ``checkpoints/latest`` is then updated (a hint for people;
resume does not need it) and old checkpoints are pruned by renaming them away
first, so a crash never leaves a half-deleted ``step_*`` directory.

Reading (``find_checkpoint``): the newest ``step_*`` directory whose manifest
verifies; every newer one is reported as damaged with the reason, so the
trainer can rename it (``quarantine``) and warn.

``python -m asarm.checkpoint verify DIR...`` checks checkpoints by hand;
``python -m asarm.checkpoint adopt DIR...`` writes the manifest of a checkpoint
saved before manifests existed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .utils import atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# files every training checkpoint has, whatever the model's weight layout (one file or shards)
REQUIRED = ("config.json", "training_state.pt", "trainer_state.json")
STEP_DIR = re.compile(r"^step_(\d+)$")
DAMAGED_PREFIX = "damaged-"


class CheckpointError(ValueError):
    """No intact checkpoint where one is needed (a ValueError so the command line prints it without a traceback)."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped (and renamed), or ``checkpoints/latest`` was unusable."""


# ---------------------------------------------------------------------------- manifest
def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (read in ``chunk``-byte pieces, so large weights stay out of memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _manifest_digest(step: int, files: dict) -> str:
    """The digest a manifest carries of its own contents (catches edits that still parse as JSON)."""
    canonical = json.dumps({"format": MANIFEST_FORMAT, "step": step, "files": files}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file (or a directory entry list) to disk, so the manifest never outlives the data it describes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories; the data files were synced already
        pass
    finally:
        os.close(fd)


def write_manifest(directory: Path, step: int) -> dict:
    """Fsync every file of ``directory`` (recursively) and write ``manifest.json`` over them; returns the manifest.

    Must be the last write into a checkpoint directory: files added later are not covered."""
    directory = Path(directory)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        _fsync(path)
        files[path.relative_to(directory).as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    missing = [name for name in REQUIRED if name not in files]
    if missing:
        raise CheckpointError(f"refusing to write a manifest for '{directory}': it lacks {missing}")
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files, "digest": _manifest_digest(step, files)}
    atomic_write_json(directory / MANIFEST, manifest)
    _fsync(directory)
    return manifest


def verify_checkpoint(directory: Path) -> str | None:
    """None when ``directory`` is an intact checkpoint, else one line naming the damage.

    Intact = ``manifest.json`` parses, carries its own correct digest and the step of the directory's
    name, lists every ``REQUIRED`` file, and every listed file exists with the listed size and SHA-256.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        # (a save in progress lives in .tmp-step_X and gets its manifest before the rename to step_X)
        if not STEP_DIR.match(directory.name):
            return (f"{MANIFEST} is missing: '{directory}' is not a checkpoint directory "
                    "(checkpoints/step_XXXXXXXX); give one, or a run's checkpoints folder to check "
                    "each of its steps")
        return (f"{MANIFEST} is missing (deleted, or a checkpoint from before manifests: `python -m "
                f"asarm.checkpoint adopt {directory}` writes one if you trust its files)")
    try:
        manifest = json.loads(path.read_text())
        step, files = int(manifest["step"]), manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or manifest.get("digest") != _manifest_digest(step, files):
            return f"{MANIFEST} does not match its own digest (edited or corrupted)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        return f"{MANIFEST} is unreadable ({type(exc).__name__}: truncated, empty or garbage)"
    name_step = STEP_DIR.match(directory.name)
    if name_step and int(name_step.group(1)) != step:
        return f"{MANIFEST} is for step {step}, not the step in the directory name"
    for name in REQUIRED:
        if name not in files:
            return f"{MANIFEST} does not list {name}"
    for name, entry in files.items():
        target = directory / name
        if not target.is_file():
            return f"{name} is missing"
        size = target.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest says {entry['size']} (truncated, emptied or replaced)"
        if file_sha256(target) != entry["sha256"]:
            return f"{name} has the listed size but a different SHA-256 (corrupted bytes)"
    return None


# ---------------------------------------------------------------------------- the checkpoints of a run
def step_dirs(run_dir: Path) -> list[Path]:
    """``checkpoints/step_*`` directories of a run, oldest first (by step number, not by name)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


@dataclass
class CheckpointSearch:
    """What ``find_checkpoint`` found.

    Attributes:
        checkpoint: the newest intact checkpoint, or None.
        damaged: ``(directory, reason)`` of every damaged checkpoint newer than ``checkpoint``.
        notes: problems with ``checkpoints/latest`` (it is only a hint; resume never needs it).
        seen: one line per entry of ``checkpoints/`` (for error messages).
    """

    checkpoint: Path | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    @property
    def ever_saved(self) -> bool:
        """Whether this run wrote checkpoints before (intact, damaged or set aside as damaged)."""
        return self.checkpoint is not None or bool(self.damaged) or any(DAMAGED_PREFIX in s for s in self.seen)


def find_checkpoint(run_dir: Path) -> CheckpointSearch:
    """Verify a run's checkpoints newest first and stop at the first intact one. Read-only."""
    run_dir = Path(run_dir)
    root = run_dir / "checkpoints"
    out = CheckpointSearch()
    if root.is_dir():
        out.seen = [f"{p.name}{'/' if p.is_dir() else ''}" for p in sorted(root.iterdir())]
    candidates = step_dirs(run_dir)
    pointer = root / "latest"
    if pointer.is_file():
        try:
            named = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = "<unreadable>"
        if not STEP_DIR.match(named) or not (root / named).is_dir():
            out.notes.append(f"checkpoints/latest names '{named[:60]}', which is not a checkpoint directory; ignored")
    elif candidates:
        out.notes.append("checkpoints/latest is missing; using the newest intact step_* directory")
    for directory in reversed(candidates):
        reason = verify_checkpoint(directory)
        if reason is None:
            out.checkpoint = directory
            break
        out.damaged.append((directory, reason))
    return out


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest intact checkpoint of a run directory, or None (damaged ones are skipped, not renamed)."""
    return find_checkpoint(run_dir).checkpoint


def quarantine(directory: Path, reason: str) -> Path:
    """Rename a damaged checkpoint to ``damaged-step_X`` (``-2``, ... if taken), note the reason inside and warn.

    Kept for inspection; its name no longer matches ``step_*``, so it is neither resumed nor pruned."""
    directory = Path(directory)
    target = directory.with_name(DAMAGED_PREFIX + directory.name)
    n = 2
    while target.exists():
        target, n = directory.with_name(f"{DAMAGED_PREFIX}{directory.name}-{n}"), n + 1
    os.replace(directory, target)
    (target / "DAMAGE.txt").write_text(reason + "\n")
    warnings.warn(f"checkpoint {directory.name} is damaged: {reason}; set aside as {target.name}",
                  CheckpointWarning, stacklevel=2)
    return target


def describe(search: CheckpointSearch, run_dir: Path) -> str:
    """A multi-line account of a run's checkpoints, for the error when none is intact."""
    lines = [f"'{run_dir}/checkpoints' holds: {', '.join(search.seen) or 'nothing'}"]
    lines += [f"  {d.name}: {reason}" for d, reason in search.damaged]
    lines += [f"  {note}" for note in search.notes]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- writing
def save_checkpoint(run_dir: Path, step: int, model, tokenizer, state: dict, keep_last: int) -> Path:
    """Write ``checkpoints/step_XXXXXXXX``: files into a temporary directory, the manifest last, one rename
    into place; then point ``checkpoints/latest`` at it and prune all but the newest ``keep_last``.

    Args:
        model: an ``ASARM`` (saved with its ids in config.json). state: ``training_state.pt``'s contents;
            must hold ``step``, ``elapsed``, ``tokens`` and ``config``.
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    tmp, final = root / f".tmp-{name}", root / name
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, tokenizer, atomic=False)  # HF model + tokenizer, with the AS-ARM's ids in config.json
    torch.save(state, tmp / "training_state.pt")
    atomic_write_json(tmp / "trainer_state.json", {k: state[k] for k in ("step", "elapsed", "tokens", "config")})
    write_manifest(tmp, step)
    if final.exists():
        remove_checkpoint(final)
    os.replace(tmp, final)
    _fsync(root)
    atomic_write_text(root / "latest", name + "\n")
    for old in step_dirs(run_dir)[:-keep_last]:
        remove_checkpoint(old)
    return final


def remove_checkpoint(directory: Path) -> None:
    """Delete a checkpoint directory: renamed away first, so that no half-deleted ``step_*`` ever exists."""
    doomed = directory.with_name(f".tmp-delete-{directory.name}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(directory, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def clean_temporaries(run_dir: Path) -> None:
    """Remove what interrupted saves and prunes left behind (``checkpoints/.tmp-*``)."""
    for tmp in (Path(run_dir) / "checkpoints").glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def adopt(directory: Path) -> dict:
    """Write the manifest of a checkpoint saved before manifests existed (its files are trusted as they are).

    Raises ``CheckpointError`` when the directory already has a manifest or lacks a ``REQUIRED`` file."""
    directory = Path(directory)
    match = STEP_DIR.match(directory.name)
    if not match:
        raise CheckpointError(f"'{directory}' is not a checkpoint directory (checkpoints/step_XXXXXXXX)")
    if (directory / MANIFEST).exists():
        raise CheckpointError(f"'{directory}' already has a {MANIFEST}; verify_checkpoint says: "
                              f"{verify_checkpoint(directory) or 'intact'}")
    return write_manifest(directory, int(match.group(1)))


def checkpoint_dirs(paths: list[str]) -> list[str]:
    """``paths`` with each run folder or checkpoints folder replaced by its ``step_*`` checkpoints
    (for verify)."""
    out = []
    for arg in paths:
        folder = Path(arg)
        steps = [] if STEP_DIR.match(folder.name) else sorted(
            str(d) for base in (folder, folder / "checkpoints") if base.is_dir()
            for d in base.iterdir() if d.is_dir() and STEP_DIR.match(d.name))
        out += steps or [arg]
    return out


if __name__ == "__main__":  # python -m asarm.checkpoint adopt|verify DIR...
    import sys

    if len(sys.argv) < 3 or sys.argv[1] not in ("adopt", "verify"):
        sys.exit("usage: python -m asarm.checkpoint adopt|verify CHECKPOINT_DIR...")
    failed = False
    for arg in checkpoint_dirs(sys.argv[2:]) if sys.argv[1] == "verify" else sys.argv[2:]:
        try:
            if sys.argv[1] == "adopt":
                adopt(Path(arg))
            reason = verify_checkpoint(Path(arg))
        except CheckpointError as exc:
            reason = str(exc)
        failed |= reason is not None
        print(f"{arg}: {reason or 'intact'}")
    sys.exit(1 if failed else 0)
