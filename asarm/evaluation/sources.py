"""Where evaluation data comes from: a local file (default under ``eval_datasets/``) or a hub data set.

``--data`` takes a file path, or ``hf:NAME[:CONFIG][@SPLIT][#REVISION]`` for a Hugging Face
hub data set (needs the ``datasets`` package and network or its cache).
Default paths are relative to ``$ASARM_EVAL_DATA`` (default ``eval_datasets``),
laid out like ``eval_datasets/README.md`` says.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path

from ..hub import HUB_PREFIX



def default_data(relative: str) -> str:
    """``$ASARM_EVAL_DATA/relative`` (default ``eval_datasets/relative``)."""
    return str(Path(os.environ.get("ASARM_EVAL_DATA", "eval_datasets")) / relative)


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"data file '{path}' not found. Put it there (eval_datasets/README.md says where to get it), "
        f"set ASARM_EVAL_DATA to the folder that holds it, or pass --data PATH (or --data hf:NAME[:CONFIG][@SPLIT][#REVISION])")


def read_text(path: str) -> str:
    """The text of a local (optionally ``.gz``) file, with ``\\r\\n`` normalised to ``\\n``.

    ``FileNotFoundError`` (saying where to get the data) when nothing is at
    ``path``; ``IsADirectoryError`` / ``ValueError`` ("is not a regular file")
    for a directory or a pipe, as ``utils.check_input_file``.
    """
    from ..utils import check_input_file

    if not Path(path).exists():
        raise _missing(path)
    p = check_input_file(path, "data file")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            return f.read().replace("\r\n", "\n")
    except (UnicodeDecodeError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read '{path}' as UTF-8 text: {exc}") from exc


def read_jsonl(path: str) -> list[dict]:
    """Rows of a local ``.jsonl`` / ``.jsonl.gz`` file (``ValueError`` naming the bad line)."""
    rows = []
    for i, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}, line {i}: not valid JSON ({exc.msg}); is this the right file?") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {i}: expected a JSON object per line")
        rows.append(row)
    return rows


def read_csv(path: str) -> list[dict]:
    """Rows of a local CSV file with a header line."""
    return list(csv.DictReader(io.StringIO(read_text(path))))


def load_hub_rows(spec: str, default_split: str) -> list[dict]:
    """Rows of ``hf:NAME[:CONFIG][@SPLIT][#REVISION]`` (``asarm.hub.parse_hub_source``) via ``datasets.load_dataset``."""
    from ..hub import hub_offline, hub_reachable, parse_hub_source

    source = parse_hub_source(spec)

    # Offline mode on: `datasets` serves its cache without touching the network. Off, with the network
    # down: fail now, not after the hub client's retries.
    if not hub_offline(datasets=True) and not hub_reachable():
        raise OSError(f"could not load the hub data set '{spec}': the Hugging Face hub cannot be reached (network "
                      "down?). Pass a local file with --data, or, if it is in the local cache, set "
                      "HF_HUB_OFFLINE=1 to use the cached copy")
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"loading '{spec}' needs the `datasets` package (pip install datasets), "
                          "or pass a local file with --data") from exc
    try:
        ds = datasets.load_dataset(**source.load_kwargs(default_split))
    except Exception as exc:  # offline, unknown name: one clear message
        raise OSError(f"could not load the hub data set '{spec}' ({type(exc).__name__}: {exc}); "
                      "offline? pass a local file with --data") from exc
    return [dict(r) for r in ds]


def load_rows(source: str, default_split: str, reader) -> list[dict]:
    """Rows from ``hf:...`` or from a local file through ``reader`` (``read_jsonl``, ``read_csv``...)."""
    if source.startswith(HUB_PREFIX):
        return load_hub_rows(source, default_split)
    return reader(source)


def require_fields(rows: list[dict], fields: list[str], source: str) -> None:
    """``ValueError`` unless every row has every field."""
    if not rows:
        raise ValueError(f"'{source}' holds no rows")
    for i, row in enumerate(rows):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"'{source}', row {i + 1}: missing field(s) {', '.join(missing)}; expected {', '.join(fields)} "
                             "(malformed or wrong file?)")
