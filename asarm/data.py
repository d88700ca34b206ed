"""Text sources and the packed training stream.

``stdlib_texts``: an offline corpus every Python installation has (the
standard library's own source files), used for the local tokenizer, tiny
demo models and the offline quickstart.

Training data (``resolve_dataset`` -> ``open_split`` -> ``PackedStream``):

* Sources: ``stdlib`` (the standard library's sources, one file = one
  document, offline), ``openwebtext`` and ``starcoder``
  (``bigcode/starcoderdata``, ``data_dir="python"``, field ``content``)
  streamed from the Hugging Face hub with ``datasets``, ``hf:NAME[:CONFIG][@SPLIT][#REVISION]`` (``asarm.hub.parse_hub_source``), or
  local files / globs (``.jsonl``/``.json``: one document per record, field
  ``text`` unless told; anything else: one document per file).
* Held-out split: the first ``eval_docs`` documents of the source; training
  (``PackedStream(exclude=...)``) leaves out every document with the same text.
* Sharding: the training stream is split into ``num_slots`` disjoint shards,
  one per micro-batch *slot* (``rank * accumulation + micro``), so each rank
  reads its own shards and the global batch does not depend on how the slots
  are spread over processes.
* Packing: each document is tokenized WITHOUT the tokenizer's own special
  tokens (XLNet would append ``<sep><cls>``; set ``add_special_tokens`` to get
  the paper loader's behaviour back), followed by one EOS, and the stream is
  cut into ``seq_len`` chunks; documents run across chunk boundaries and
  nothing is dropped. Literal special-token strings inside a document become
  those special ids (that is how the code whitespace mapping reaches the
  model); the loss covers every token, EOS and whitespace specials included.
* Resume: ``PackedStream.state_dict()`` holds the source position (the
  ``datasets`` iterator state), the unused tokens of the current document
  and the epoch, so a resumed stream yields exactly the chunks the
  uninterrupted one would have; the state is right at every moment, also
  right after a resume while the stream still serves its buffer (a checkpoint
  written then keeps the loaded source position).

Code whitespace and the text codec (``make_encoder`` / ``decode_text``) live in
``asarm.tokenizer`` and are re-exported here.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from dataclasses import field as dc_field
from pathlib import Path
from typing import Callable

import torch

from .tokenizer import (CODE_WHITESPACE, code_whitespace_ids, decode_code_whitespace, decode_text,  # noqa: F401
                        encode_code_whitespace, make_encoder)
from .hub import HUB_PREFIX, parse_hub_source
from .utils import check_input_file


def stdlib_texts(max_chars: int = 2_000_000, skip: int = 0, stride: int = 1) -> list[str]:
    """Source files of the running Python's standard library, in a fixed (sorted) order.

    Args:
        max_chars: stop once this many characters are collected.
        skip, stride: take files ``skip, skip + stride, ...`` of the sorted list
            (disjoint splits: e.g. ``stride=10, skip=0`` for training, ``skip=5`` for held-out).
    Returns:
        list of file contents (tests and site-packages excluded).
    """
    texts, total = [], 0
    for path in stdlib_paths()[skip::stride]:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if not texts:
        raise FileNotFoundError(f"no Python standard-library sources found under {sysconfig.get_paths()['stdlib']}")
    return texts


def stdlib_paths() -> list[Path]:
    """The standard-library source files ``stdlib_texts`` reads, in its fixed order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    files += sorted(p for p in root.glob("*/*.py") if p.is_file() and not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
    return files


# ---------------------------------------------------------------------------- sources
HUB_DATASETS = {
    "openwebtext": dict(path="Skylion007/openwebtext", field="text", code=False),
    "starcoder": dict(path="bigcode/starcoderdata", data_dir="python", field="content", code=True),
}
ALIASES = {"bigcode/starcoderdata": "starcoder", "Skylion007/openwebtext": "openwebtext"}
JSON_SUFFIXES = (".jsonl", ".json")


@dataclass
class DataSpec:
    """A resolved training source (``resolve_dataset``).

    Attributes:
        name: as given. kind: ``files`` or ``hub``.
        files: the local files (kind ``files``).
        hub: ``datasets.load_dataset`` keyword arguments (kind ``hub``).
        field: the text field of a record. code: apply the code whitespace mapping.
    """

    name: str
    kind: str
    files: list[str] = dc_field(default_factory=list)
    hub: dict = dc_field(default_factory=dict)
    field: str = "text"
    code: bool = False


def resolve_dataset(name: str, text_field: str | None = None, code_whitespace: bool | None = None) -> DataSpec:
    """Turn a dataset name into a ``DataSpec``, checking what can be checked offline.

    Raises:
        FileNotFoundError: a path or glob that matches no file.
        ValueError: a name that is neither known, ``hf:NAME[...]`` nor a path.
    """
    name = str(name)
    key = ALIASES.get(name, name)
    if key == "stdlib":
        spec = DataSpec(name, "files", files=[str(p) for p in stdlib_paths()], code=True)
    elif key in HUB_DATASETS:
        entry = dict(HUB_DATASETS[key])
        spec = DataSpec(name, "hub", field=entry.pop("field"), code=entry.pop("code"), hub=entry)
    elif key.startswith(HUB_PREFIX):
        spec = DataSpec(name, "hub", hub=parse_hub_source(key).load_kwargs("train"))
    elif any(c in key for c in "/\\*?[") or Path(key).suffix or Path(key).exists():
        if os.path.isdir(os.path.expanduser(key)):
            raise IsADirectoryError(f"dataset '{name}' is a directory; pass a glob of its files, "
                                    f"e.g. '{os.path.join(key, '*.jsonl')}'")
        if os.path.exists(os.path.expanduser(key)):
            check_input_file(key, f"dataset {name!r}:")  # a pipe or device: say so, not "no file matches"
        matches = sorted(glob.glob(os.path.expanduser(key), recursive=True))
        files = [m for m in matches if os.path.isfile(m)]
        if not files:
            raise FileNotFoundError(f"dataset '{name}': no file matches this path/glob")
        kinds = {f.endswith(JSON_SUFFIXES) for f in files}
        if len(kinds) > 1:
            raise ValueError(f"dataset '{name}' mixes JSON and plain-text files; give one kind per run")
        spec = DataSpec(name, "files", files=files)
    else:
        raise ValueError(
            f"unknown dataset '{name}': use stdlib, openwebtext, starcoder (bigcode/starcoderdata), "
            "hf:NAME[:CONFIG][@SPLIT][#REVISION], or a path/glob of .txt/.jsonl files")
    if text_field:
        spec.field = text_field
    if code_whitespace is not None:
        spec.code = code_whitespace
    return spec


def _load(spec: DataSpec):
    """The whole source as a streaming ``datasets.IterableDataset`` with one ``text`` column."""
    import datasets

    if spec.kind == "files":
        if spec.files[0].endswith(JSON_SUFFIXES):
            ds = datasets.load_dataset("json", data_files=spec.files, split="train", streaming=True)
        else:
            ds = datasets.load_dataset("text", data_files=spec.files, sample_by="document", split="train", streaming=True)
            return ds
    else:
        try:
            ds = datasets.load_dataset(**({"split": "train"} | spec.hub), streaming=True)
        except Exception as exc:  # offline / unknown repo / no access / legacy script: one clear message
            if "scripts are no longer supported" in str(exc):
                raise OSError(
                    f"'{spec.name}' ({spec.hub['path']}) is still a script dataset, which datasets>=4 cannot load: "
                    "pip install 'datasets<4', or use its Parquet export, e.g. "
                    f"dataset: hf:{spec.hub['path']}#refs/convert/parquet (the Hub converts only part of large datasets)"
                ) from exc
            raise OSError(
                f"could not stream '{spec.name}' ({spec.hub}) from the Hugging Face hub: {type(exc).__name__}: {exc}. "
                "Offline? Train on local files (dataset: path/to/*.jsonl or *.txt) or on the bundled 'stdlib' corpus."
            ) from exc
    if spec.field != "text":
        ds = ds.select_columns([spec.field]).rename_column(spec.field, "text")
    return ds


def check_not_empty(spec: DataSpec) -> None:
    """``ValueError`` if a local-file source holds no document with text; ``OSError`` at once if a hub source
    cannot be streamed because the hub is unreachable (offline mode unset: the cache cannot serve a stream).

    Reads until the first non-blank document: at once for real data, the whole
    source only when it is all blank. Hub sources are not read here.
    """
    if spec.kind != "files":
        from .hub import hub_offline, hub_reachable

        if not hub_offline(datasets=True) and not hub_reachable():
            raise OSError(f"cannot stream '{spec.name}' ({spec.hub.get('path')}): the Hugging Face hub cannot be "
                          "reached (network down?). Train on local files (dataset: path/to/*.jsonl or *.txt) or on "
                          "the bundled 'stdlib' corpus")
        return
    for row in _load(spec):
        if (row.get("text") or "").strip():
            return
    shown = ", ".join(spec.files[:3]) + (f" and {len(spec.files) - 3} more" if len(spec.files) > 3 else "")
    raise ValueError(f"the training data '{spec.name}' is empty: {shown} hold(s) no text"
                     f"{f' in field {spec.field!r}' if spec.field != 'text' else ''}; point dataset at files with documents")


def open_split(spec: DataSpec, split: str, eval_docs: int, shard: int = 0, num_shards: int = 1):
    """One shard of the source (``split="train"``), or the held-out documents (``"eval"``).

    Held out = the first ``eval_docs`` documents of the source. A training
    shard still contains them: ``PackedStream(exclude=held_out_digests(...))``
    drops every document with the same text, however ``datasets`` splits the
    source into shards. (Not ``IterableDataset.filter``: in some ``datasets``
    releases a filtered stream loses the rest of a table when resumed from its
    ``state_dict``.)

    Returns a fresh ``datasets.IterableDataset`` of ``{"text": str}`` records.
    """
    from datasets.distributed import split_dataset_by_node

    ds = _load(spec)
    if split == "eval":
        return ds.take(eval_docs)
    return split_dataset_by_node(ds, rank=shard, world_size=num_shards) if num_shards > 1 else ds


def text_digest(text: str | None) -> str:
    """A stable content hash of a document."""
    return hashlib.blake2b((text or "").encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def held_out_digests(spec: DataSpec, eval_docs: int) -> frozenset:
    """``text_digest`` of the held-out documents (reads them once)."""
    return frozenset(text_digest(r["text"]) for r in open_split(spec, "eval", eval_docs)) if eval_docs else frozenset()


# ---------------------------------------------------------------------------- packing
class PackedStream:
    """Fixed-length chunks of token ids from one document stream; endless (epochs), resumable.

    Args:
        make_dataset: ``() -> IterableDataset`` of ``{"text": str}``; called at
            the start and at every new epoch (a fresh object, so that a loaded
            state never leaks into the next epoch).
        encode: ``text -> list[int]``; eos_id: appended after every document.
        seq_len: chunk length ``N``.
        exclude: ``text_digest`` of documents to skip (the held-out split).
    """

    def __init__(self, make_dataset: Callable, encode: Callable[[str], list[int]], eos_id: int, seq_len: int,
                 exclude: frozenset = frozenset()):
        self.make_dataset, self.encode, self.eos_id, self.seq_len = make_dataset, encode, eos_id, seq_len
        self.exclude = exclude
        self.epoch, self.docs, self.kept, self.buffer = 0, 0, 0, []
        self._new_epoch_dataset()

    def _new_epoch_dataset(self, source: dict | None = None):
        """A fresh dataset for this epoch, positioned at ``source`` (a ``datasets`` state; None: the start)."""
        self.dataset = self.make_dataset()
        if source is not None:
            self.dataset.load_state_dict(source)
        # Until the iterator is created the dataset has not moved, so its position is still ``source``:
        # state_dict() must report that (not "the start") however many checkpoints are written meanwhile.
        self._source = source
        self._iter = None

    def next_document(self) -> str:
        """The next document of the shard that is not excluded (a new epoch starts at the end)."""
        while True:
            if self._iter is None:
                self._iter = iter(self.dataset)
            try:
                text = next(self._iter)["text"] or ""
            except StopIteration:
                if self.kept == 0:
                    raise ValueError("a data shard holds no training document: use fewer slots "
                                     "(processes x accumulation), fewer eval_docs or more documents") from None
                self.epoch, self.docs, self.kept = self.epoch + 1, 0, 0
                self._new_epoch_dataset()
                continue
            self.docs += 1
            if self.exclude and text_digest(text) in self.exclude:
                continue
            self.kept += 1
            return text

    def next_chunk(self) -> list[int]:
        """The next ``seq_len`` token ids."""
        while len(self.buffer) < self.seq_len:
            self.buffer.extend(self.encode(self.next_document()))
            self.buffer.append(self.eos_id)
        chunk, self.buffer = self.buffer[: self.seq_len], self.buffer[self.seq_len:]
        return chunk

    def next_batch(self, batch_size: int) -> torch.Tensor:
        """``(batch_size, seq_len)`` long."""
        return torch.tensor([self.next_chunk() for _ in range(batch_size)], dtype=torch.long)

    def state_dict(self) -> dict:
        """Everything needed to continue exactly here (JSON-able), valid at any moment: also right after
        ``load_state_dict`` while the stream still serves its buffer (``source`` is then the loaded position;
        None means the start of the epoch)."""
        source = self.dataset.state_dict() if self._iter is not None else self._source
        return {"epoch": self.epoch, "docs": self.docs, "kept": self.kept, "buffer": list(self.buffer),
                "source": copy.deepcopy(source)}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` (from ``state_dict``) was taken."""
        missing = {"epoch", "docs", "kept", "buffer", "source"} - set(state)
        if missing:
            raise ValueError(f"not a PackedStream state: missing {sorted(missing)}")
        self.epoch, self.docs, self.kept, self.buffer = state["epoch"], state["docs"], state["kept"], list(state["buffer"])
        self._new_epoch_dataset(copy.deepcopy(state["source"]))
