"""Small shared helpers: device choice, input-file checks, atomic writes (strict JSON, the user's umask)."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import tempfile
from pathlib import Path

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N = GPU index) or mps"
_DEVICE_SYNTAX = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


THREADS_HELP = ("CPU threads torch uses (default: %(default)s; 0: torch's default, one per core; "
                "on a shared or busy CPU, and for tiny models, 1 to 4 threads are often much "
                "faster)")


def add_threads_argument(p, default: int = 0) -> None:
    """``--threads N`` for a command that runs a model; one rule everywhere (``THREADS_HELP``)."""
    p.add_argument("--threads", type=int, default=default, help=THREADS_HELP)


def set_threads(threads: int) -> None:
    """Apply ``--threads`` (0: leave torch's default)."""
    if threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def check_device_name(name: str) -> str:
    """``name`` if it is a device string asarm accepts (``DEVICE_CHOICES``), else ``ValueError`` listing them.

    Only the spelling is checked (usable as an argparse ``type=``); whether the
    device exists here is ``resolve_device``'s job.
    """
    if not isinstance(name, str) or not _DEVICE_SYNTAX.fullmatch(name.strip().lower()):
        raise ValueError(f"unknown device '{name}': choose {DEVICE_CHOICES}")
    return name.strip().lower()


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; else the named device, checked to exist here.

    Raises ``ValueError`` (naming the valid choices) for a misspelled name
    (``gpu``), CUDA on a machine without it, or a GPU index past the last card.
    """
    name = check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}': this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device '{name}' requested but MPS is not available here; use --device cpu")
    return dev


def check_input_file(path: str | os.PathLike, what: str = "file") -> Path:
    """``Path(path)`` if it names a readable regular file; else an error that says what it is instead.

    ``FileNotFoundError`` ("does not exist") only when nothing is there;
    ``IsADirectoryError`` for a directory; ``ValueError`` for a pipe, socket or
    device ("is not a regular file": reading one could block or never end).
    """
    p = Path(path).expanduser()
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} '{path}' does not exist") from None
    except NotADirectoryError:
        raise FileNotFoundError(f"{what} '{path}' does not exist (a part of the path is a file)") from None
    except PermissionError:
        raise PermissionError(f"{what} '{path}' cannot be read: permission denied") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{what} '{path}' is a directory; pass a file")
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} '{path}' is not a regular file (a pipe, socket or device?); pass a file")
    return p


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``"auto"`` -> bfloat16 on CUDA cards that support it, float32 elsewhere."""
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype '{name}'; choose auto, float32, bfloat16 or float16")
    return table[name]


def transformers_major() -> int:
    """The installed transformers major version (4 or 5), from the package metadata (no import)."""
    from importlib.metadata import version

    return int(version("transformers").split(".")[0])


def load_dtype_kwargs(dtype: torch.dtype | None = None) -> dict:
    """The ``from_pretrained`` keyword for loading weights in ``dtype`` (default float32) on either
    transformers major: 4.x calls it ``torch_dtype``, 5.x ``dtype`` and, unasked, loads the dtype
    the checkpoint was saved in where 4.x loaded float32."""
    return {"dtype" if transformers_major() >= 5 else "torch_dtype": dtype or torch.float32}


def current_umask() -> int:
    """The process's umask, read without changing it where ``/proc`` allows (no window for other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half of one.

    The file gets the mode an ordinary ``open(path, "w")`` would give
    (``0o666 & ~umask``), not ``mkstemp``'s private 0600: results are shared.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def strict_json(obj):
    """``obj`` with every NaN/inf float (also numpy/torch scalars) replaced by ``None``.

    ``json.dumps`` would write them as bare ``NaN``/``Infinity``, which strict
    JSON readers (``jq``, JavaScript, many languages' parsers) reject.
    Containers are rebuilt (dicts, lists, tuples -> lists); other values are kept.
    """
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if not isinstance(obj, (str, bytes, int, float)) and hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()  # a numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """``atomic_write_text`` of strict ``json.dumps(obj, indent=2)`` (NaN/inf written as ``null``)."""
    atomic_write_text(path, json.dumps(strict_json(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
