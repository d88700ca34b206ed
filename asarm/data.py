"""Text sources.

``stdlib_texts``: an offline corpus every Python installation has (the
standard library's own source files), used for the local tokenizer, tiny
demo models and the offline quickstart.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


def stdlib_texts(max_chars: int = 2_000_000, skip: int = 0, stride: int = 1) -> list[str]:
    """Source files of the running Python's standard library, in a fixed (sorted) order.

    Args:
        max_chars: stop once this many characters are collected.
        skip, stride: take files ``skip, skip + stride, ...`` of the sorted list
            (disjoint splits: e.g. ``stride=10, skip=0`` for training, ``skip=5`` for held-out).
    Returns:
        list of file contents (tests and site-packages excluded).
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    files += sorted(p for p in root.glob("*/*.py") if p.is_file() and not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    texts, total = [], 0
    for path in files[skip::stride]:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not texts:
        raise FileNotFoundError(f"no Python standard-library sources found under {root}")
    return texts
