"""Tokenizers and the text codec: XLNet's special tokens (named once, here), hub/local
loading, an offline XLNet-pipeline tokenizer, and ``encode``/``decode`` that invert
each other on the real SentencePiece pipeline.

The XLNet pipeline (``xlnet-base-cased`` through ``AutoTokenizer``):

* normaliser: two backticks and two single quotes -> ``"``, NFKD, accents
  stripped, SentencePiece's precompiled NFKC map, runs of spaces -> one space;
* pre-tokenizer: Metaspace, i.e. spaces become ``▁`` and every *segment* gets a
  ``▁`` prepended, where a segment is the text between added/special tokens.
  So text right after a special token (``<cls>`` for a newline in code) is
  encoded as if a space preceded it;
* characters outside the vocabulary become ``<unk>`` (no byte fallback).

``decode_text`` therefore does not call ``tokenizer.decode`` (whose Metaspace
decoder turns that segment marker into a space, and whose slow and fast
versions disagree around special tokens): it rebuilds the text from the pieces,
dropping the one ``▁`` that opens each segment. ``make_encoder(...)(text,
continues=True)`` encodes text that continues a segment mid-line (an infill
boundary inside a line) without that marker, so that ``decode`` of the
concatenated ids gives back the concatenated text. What the normaliser changes
(``''`` -> ``"``, accents, NFKC forms, a space that opens a segment, characters
outside the vocabulary) cannot come back; ``lossy_reason`` names it.

The pipeline is the one transformers 4 builds and saves in ``tokenizer.json``: the released
checkpoints were trained on it. transformers 5 rebuilds XLNet's pipeline from its class
(WhitespaceSplit + Metaspace, no collapse of space runs), which changes the ids of most
text; ``load_tokenizer`` therefore serves every tokenizer as ``PreTrainedTokenizerFast``
over the pipeline its files define, on either major (``pipeline_fingerprint`` and
``xlnet_pipeline_drift`` tell when a tokenizer differs; ``tests/test_tokenizer_drift.py``
pins the ids of the real data files).

The local tokenizer (``build_local_tokenizer``) is that pipeline trained offline:
a SentencePiece unigram model with XLNet's nine special tokens at XLNet's ids,
converted as transformers 4's ``XLNetConverter`` converts ``xlnet-base-cased``
(``spiece_backend``), or, under transformers 4 only, the slow ``XLNetTokenizer``
from the same model file. ``save_tokenizer`` writes a directory both majors load.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from .hub import load_or_explain

# XLNet's special tokens and their ids in ``xlnet-base-cased``. The code never
# uses a literal special id: it reads them from here or from a tokenizer.
XLNET_SPECIAL_TOKENS: dict[str, int] = {
    "<unk>": 0,
    "<s>": 1,
    "</s>": 2,
    "<cls>": 3,
    "<sep>": 4,
    "<pad>": 5,
    "<mask>": 6,
    "<eod>": 7,
    "<eop>": 8,
}
XLNET_MASK_TOKEN_ID = XLNET_SPECIAL_TOKENS["<mask>"]
XLNET_DEFAULT_BANNED_IDS = tuple(XLNET_SPECIAL_TOKENS.values())
SPIECE_UNDERLINE = "\u2581"  # SentencePiece's "▁": a space, and the mark that opens a segment

# Code whitespace: the XLNet tokenizer drops newlines and tabs and collapses
# runs of spaces, so the paper maps them to spare specials before tokenizing,
# in this order. Two spaces are replaced before three, so the ``<pad>`` rule
# never fires (a run of s spaces becomes s // 2 ``<unk>`` and, for odd s, one
# plain space); it stays so the mapping is the one the ``code`` checkpoint was
# trained with. ``<unk>`` is also the tokenizer's unknown token, so a character
# outside the vocabulary decodes as two spaces (counted by ``lossy_reason``).
CODE_WHITESPACE: tuple[tuple[str, str], ...] = (("\n", "<cls>"), ("\t", "<sep>"), ("  ", "<unk>"), ("   ", "<pad>"))


def encode_code_whitespace(text: str) -> str:
    """Map whitespace to XLNet's spare specials, rules applied in ``CODE_WHITESPACE`` order."""
    for char, token in CODE_WHITESPACE:
        text = text.replace(char, token)
    return text


def decode_code_whitespace(text: str) -> str:
    """Inverse of ``encode_code_whitespace`` for text without literal ``<cls>``/``<sep>``/``<unk>``/``<pad>``."""
    for char, token in CODE_WHITESPACE:
        text = text.replace(token, char)
    return text


def code_whitespace_ids(tokenizer) -> list[int]:
    """Ids of the four whitespace specials: a code model must be allowed to sample them."""
    return [tokenizer.convert_tokens_to_ids(token) for _, token in CODE_WHITESPACE]


def unban_code_whitespace(banned_ids, tokenizer) -> list[int]:
    """``banned_ids`` without the code whitespace specials (``code_whitespace_ids``), sorted: the banned
    ids of a code model, which writes newlines, tabs and runs of spaces as those specials."""
    allowed = set(code_whitespace_ids(tokenizer))
    return sorted(int(i) for i in banned_ids if int(i) not in allowed)


# ---------------------------------------------------------------------------- building and loading
# transformers 5 rebuilds a model-specific tokenizer's pipeline from its class (for XLNet:
# WhitespaceSplit + Metaspace, and no collapse of space runs) instead of the one saved in
# ``tokenizer.json``, and has no SentencePiece-backed slow tokenizer. asarm therefore serves
# every tokenizer as the generic fast class (``PreTrainedTokenizerFast``) over the pipeline
# the files define, which both majors load verbatim: the released checkpoints were trained
# on transformers 4's pipeline, and the token streams must not depend on the installed major.
def _train_sentencepiece(texts: Iterable[str], vocab_size: int, prefix: str) -> None:
    import sentencepiece as spm

    lines = (line for text in texts for line in text.split("\n") if line.strip())
    by_id = sorted(XLNET_SPECIAL_TOKENS, key=XLNET_SPECIAL_TOKENS.get)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=5, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        control_symbols=[t for t in by_id if XLNET_SPECIAL_TOKENS[t] not in (0, 1, 2, 5)],
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)


TOKENIZER_FILE = "tokenizer.json"
GENERIC_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}  # 4.x's name, 5.x's
SPIECE_FILE = "spiece.model"
SLOW_ONLY_ON_V4 = ("the slow (SentencePiece) XLNet tokenizer exists only under transformers 4.x "
                   "(installed: {version}); use the fast tokenizer (slow=False), which asarm "
                   "serves with transformers 4's pipeline on either major")


def transformers_version() -> str:
    """The installed transformers version (read from the package metadata: no import)."""
    from importlib.metadata import version

    return version("transformers")


def has_slow_tokenizer() -> bool:
    """True when transformers ships the slow SentencePiece ``XLNetTokenizer`` (major 4 only)."""
    return int(transformers_version().split(".")[0]) < 5


def _read_spiece(model_file: str):
    """The SentencePiece ``ModelProto`` stored in ``model_file`` (needs ``protobuf``)."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(model_file, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def xlnet_pipeline(precompiled_charsmap: bytes, lowercase: bool = False,
                   keep_accents: bool = False):
    """``(normalizer, pre_tokenizer, decoder)`` of transformers 4's XLNet converter.

    Normaliser: two backticks / two single quotes -> ``"``, NFKD and accents stripped
    (unless ``keep_accents``), lower case (if ``lowercase``), SentencePiece's precompiled
    map, runs of spaces -> one space; pre-tokenizer and decoder: Metaspace, ``▁``
    prepended to every segment.
    """
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers

    steps = [normalizers.Replace("``", '"'), normalizers.Replace("''", '"')]
    if not keep_accents:
        steps += [normalizers.NFKD(), normalizers.StripAccents()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if precompiled_charsmap:
        steps.append(normalizers.Precompiled(precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    metaspace = dict(replacement=SPIECE_UNDERLINE, prepend_scheme="always")
    return (normalizers.Sequence(steps), pre_tokenizers.Metaspace(**metaspace),
            decoders.Metaspace(**metaspace))


def _number_comma(piece: str) -> bool:
    """Pieces such as ``3,`` that transformers 4's XLNet converter scores 100 lower."""
    return len(piece) >= 2 and piece[-1] == "," and piece[-2].isdigit()


def spiece_backend(model_file: str, lowercase: bool = False, keep_accents: bool = False):
    """A ``tokenizers.Tokenizer`` from an XLNet SentencePiece model file, built as
    transformers 4's ``XLNetConverter`` builds it (same vocabulary scores, same pipeline,
    XLNet's ``<sep><cls>`` post-processor), on either transformers major."""
    from tokenizers import Tokenizer, processors
    from tokenizers.models import Unigram

    proto = _read_spiece(model_file)
    if proto.trainer_spec.model_type != 1:
        raise ValueError(f"'{model_file}' is not a SentencePiece unigram model (XLNet's kind)")
    vocab = [(p.piece, p.score - 100 if _number_comma(p.piece) else p.score) for p in proto.pieces]
    backend = Tokenizer(Unigram(vocab, unk_id=proto.trainer_spec.unk_id, byte_fallback=False))
    backend.normalizer, backend.pre_tokenizer, backend.decoder = xlnet_pipeline(
        proto.normalizer_spec.precompiled_charsmap, lowercase, keep_accents)
    ids = {p.piece: i for i, p in enumerate(proto.pieces)}
    backend.post_processor = processors.TemplateProcessing(
        single="$A:0 <sep>:0 <cls>:2", pair="$A:0 <sep>:0 $B:1 <sep>:1 <cls>:2",
        special_tokens=[("<sep>", ids["<sep>"]), ("<cls>", ids["<cls>"])])
    return backend


def _special_kwargs(source) -> dict:
    """The special-token arguments of ``PreTrainedTokenizerFast``: ``source``'s (a loaded
    tokenizer, each as the ``AddedToken`` it holds, so ``<mask>`` keeps stripping the space
    before it), else XLNet's."""
    from tokenizers import AddedToken

    if source is None:
        names = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="<sep>",
                     pad_token="<pad>", cls_token="<cls>")
        mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=True, special=True)
        return names | dict(mask_token=mask, additional_special_tokens=["<eop>", "<eod>"])
    held = {str(t): t for t in source.added_tokens_decoder.values()}
    keys = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
            "mask_token")
    out = {k: held.get(str(v), str(v)) for k in keys if (v := getattr(source, k, None)) is not None}
    extra = list(getattr(source, "additional_special_tokens", None) or [])
    named = getattr(source, "extra_special_tokens", None)
    extra += list(named) if isinstance(named, list) else []
    extra = list(dict.fromkeys(str(t) for t in extra))
    return out | ({"additional_special_tokens": [held.get(t, t) for t in extra]} if extra else {})


def wrap_backend(backend, source=None, padding_side: str = "left", spiece_file: str | None = None):
    """A ``PreTrainedTokenizerFast`` over ``backend`` (a ``tokenizers.Tokenizer``), with the
    special tokens of ``source`` (or XLNet's). ``spiece_file`` travels along so that
    ``save_tokenizer`` can write it for transformers 4's slow tokenizer."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side=padding_side,
                                  **_special_kwargs(source))
    tok.asarm_spiece_file = spiece_file
    return tok


def build_local_tokenizer(texts: Iterable[str], vocab_size: int = 1000, slow: bool = False):
    """Train an XLNet-pipeline tokenizer on ``texts``, offline, in a few seconds.

    A SentencePiece unigram model with XLNet's nine special tokens at XLNet's ids
    (``XLNET_SPECIAL_TOKENS``), served through ``spiece_backend``: the normaliser,
    Metaspace segments and decoder of ``xlnet-base-cased`` under transformers 4, on
    either major. ``slow=True`` returns transformers 4's slow ``XLNetTokenizer`` over the
    same model file instead (``ValueError`` under transformers 5, which has none).

    Args:
        texts: training text (any iterable of strings; split into lines).
        vocab_size: SentencePiece vocabulary size, specials included (>= 100).
        slow: return the slow (Python, ``sentencepiece``) tokenizer.
    Returns:
        a tokenizer; ``save_tokenizer`` writes it in a form both majors load.
    """
    if vocab_size < 100:
        raise ValueError(f"vocab_size={vocab_size} is too small for a SentencePiece tokenizer; "
                         "use at least 100")
    if slow and not has_slow_tokenizer():
        raise ValueError(SLOW_ONLY_ON_V4.format(version=transformers_version()))
    folder = tempfile.mkdtemp(prefix="asarm-spm-")
    _train_sentencepiece(texts, vocab_size, os.path.join(folder, "spiece"))
    model_file = os.path.join(folder, SPIECE_FILE)
    if slow:
        from transformers import XLNetTokenizer

        tok = XLNetTokenizer(model_file)
    else:
        tok = wrap_backend(spiece_backend(model_file), spiece_file=model_file)
    for name, idx in XLNET_SPECIAL_TOKENS.items():
        if tok.convert_tokens_to_ids(name) != idx:
            raise RuntimeError(f"local tokenizer puts {name} at {tok.convert_tokens_to_ids(name)}, "
                               f"not XLNet's {idx}")
    return tok


def _tokenizer_file(name_or_path: str, filename: str, revision: str | None) -> str | None:
    """Path of ``filename`` of a tokenizer directory or a hub repository already in the local
    cache (``AutoTokenizer`` has just fetched what exists), or ``None``; never the network."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path / filename) if (path / filename).is_file() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(name_or_path, filename, revision=revision)
    return found if isinstance(found, str) else None


def _saved_backend(tok, name_or_path: str, revision: str | None):
    """The backend the tokenizer's files define, or ``None`` when ``tok`` already has it:
    ``tokenizer.json`` verbatim, else (an XLNet tokenizer saved as ``spiece.model`` only)
    transformers 4's conversion of ``spiece.model``."""
    from tokenizers import Tokenizer

    current = json.loads(tok.backend_tokenizer.to_str())
    saved_json = _tokenizer_file(name_or_path, TOKENIZER_FILE, revision)
    if saved_json is not None:
        saved = Tokenizer.from_file(saved_json)
    elif "XLNet" in type(tok).__name__ and _tokenizer_file(name_or_path, SPIECE_FILE, revision):
        saved = spiece_backend(_tokenizer_file(name_or_path, SPIECE_FILE, revision),
                               bool(getattr(tok, "do_lower_case", False)),
                               bool(getattr(tok, "keep_accents", False)))
    else:
        return None
    parts = ("model", "normalizer", "pre_tokenizer", "post_processor", "decoder")
    wanted = json.loads(saved.to_str())
    return None if all(current.get(p) == wanted.get(p) for p in parts) else saved


def load_tokenizer(name_or_path: str, revision: str | None = None, slow: bool = False):
    """Load a tokenizer from a local directory or the Hugging Face hub, with the pipeline its
    files define on either transformers major (``slow``: transformers 4's Python one).

    Under transformers 5, a model-specific class (``XLNetTokenizer``) rebuilds its own
    pipeline; the tokenizer is then served as ``PreTrainedTokenizerFast`` over the pipeline
    of ``tokenizer.json`` (or of ``spiece.model``, converted as transformers 4 does), so the
    ids are the ones the checkpoint was trained on. Offline, a hub id that is not in the
    local cache raises ``OSError`` with a message that says how to pass a local directory.
    """
    if slow:
        if not has_slow_tokenizer():
            raise ValueError(SLOW_ONLY_ON_V4.format(version=transformers_version()))
        from transformers import XLNetTokenizer

        return load_or_explain(XLNetTokenizer.from_pretrained, name_or_path, revision, "tokenizer")
    tok = load_or_explain(_auto_tokenizer, name_or_path, revision, "tokenizer")
    spiece = _tokenizer_file(str(name_or_path), SPIECE_FILE, revision)
    backend = _saved_backend(tok, str(name_or_path), revision)
    if backend is None and type(tok).__name__ in GENERIC_CLASSES:
        tok.asarm_spiece_file = spiece
        return tok
    # one class on both majors: the files' pipeline (or the loaded one, when it is that already)
    return wrap_backend(backend or tok.backend_tokenizer, tok, padding_side=tok.padding_side,
                        spiece_file=spiece)


def _auto_tokenizer(name_or_path: str, **kwargs):
    """``AutoTokenizer.from_pretrained``, also for a directory that transformers 5 wrote
    (``TokenizersBackend`` and a list of ``extra_special_tokens``), which 4.x cannot read."""
    from transformers import AutoTokenizer

    config = Path(name_or_path) / "tokenizer_config.json"
    if has_slow_tokenizer() and config.is_file():
        fields = json.loads(config.read_text(encoding="utf-8"))
        if fields.get("tokenizer_class") == "TokenizersBackend":
            from transformers import PreTrainedTokenizerFast

            fields = _portable_config(fields)
            specials = {k: v for k, v in fields.items() if k.endswith("_token") or
                        k == "additional_special_tokens"}
            return PreTrainedTokenizerFast(tokenizer_file=str(Path(name_or_path) / TOKENIZER_FILE),
                                           padding_side=fields.get("padding_side", "right"),
                                           **specials)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def _portable_config(fields: dict) -> dict:
    """``tokenizer_config.json`` fields that transformers 4.44+ and 5 both read: the generic
    fast class, and the extra special tokens under 4.x's name."""
    fields = dict(fields)
    for key in ("backend", "is_local", "local_files_only"):  # 5.x's notes on how it was loaded
        fields.pop(key, None)
    fields["tokenizer_class"] = "PreTrainedTokenizerFast"  # XLNet's class rebuilds it under 5.x
    extra = fields.pop("extra_special_tokens", None)
    if isinstance(extra, list):
        fields["additional_special_tokens"] = list(dict.fromkeys(
            (fields.get("additional_special_tokens") or []) + extra))
    elif extra:  # a dict of named extras: 4.x reads it under the same name
        fields["extra_special_tokens"] = extra
    return fields


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> None:
    """``tokenizer.save_pretrained(directory)`` in a form both transformers majors load with
    the same pipeline: the generic fast class, 4.x's key names, and ``spiece.model`` beside
    ``tokenizer.json`` when the tokenizer came from one (for 4.x's slow tokenizer)."""
    directory = Path(directory)
    tokenizer.save_pretrained(str(directory))
    config = directory / "tokenizer_config.json"
    if config.is_file() and (directory / TOKENIZER_FILE).is_file():
        fields = _portable_config(json.loads(config.read_text(encoding="utf-8")))
        config.write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    spiece = getattr(tokenizer, "asarm_spiece_file", None) or getattr(tokenizer, "vocab_file", None)
    if spiece and Path(spiece).is_file() and not (directory / SPIECE_FILE).exists():
        shutil.copyfile(spiece, directory / SPIECE_FILE)


def pipeline_fingerprint(tokenizer) -> str | None:
    """A short hash of how a fast tokenizer turns text into pieces (normaliser, pre-tokenizer,
    post-processor, decoder; not the vocabulary), or ``None`` for a slow one. Saved with a
    model (``ASARM.save_pretrained``) so that a later run can tell when its tokenizer
    differs from the one the model was trained with."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    fields = json.loads(backend.to_str())
    parts = {p: fields.get(p) for p in ("normalizer", "pre_tokenizer", "post_processor", "decoder")}
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def xlnet_pipeline_drift(tokenizer) -> str | None:
    """Why a SentencePiece (XLNet-family) tokenizer's pipeline is not transformers 4's XLNet
    pipeline, or ``None`` when it is (or the tokenizer is of another family or slow)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not is_sentencepiece(tokenizer):
        return None
    fields = json.loads(backend.to_str())
    pre = fields.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace" or pre.get("prepend_scheme", "always") != "always":
        return f"its pre-tokenizer is {_describe(pre)}, not Metaspace alone"
    steps = (fields.get("normalizer") or {}).get("normalizers") or []
    collapse = {"type": "Replace", "pattern": {"Regex": " {2,}"}}
    if not steps or any(steps[-1].get(k) != v for k, v in collapse.items()):
        return "its normaliser does not collapse runs of spaces"
    return None


def _describe(component: dict) -> str:
    """``Sequence(WhitespaceSplit, Metaspace)``-style name of a pipeline component."""
    inner = component.get("pretokenizers") or component.get("normalizers")
    if inner:
        return f"{component.get('type')}({', '.join(_describe(c) for c in inner)})"
    return str(component.get("type"))


def special_ids(tokenizer) -> tuple[int, list[int]]:
    """``(mask_token_id, banned_token_ids)`` of a HF-style tokenizer.

    Banned = every special token: never sampled as content (asarm's default;
    the paper bans only ``<mask>``, see ``evaluation.protocol``).
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; AS-ARMs need one (XLNet's is '<mask>')")
    return int(tokenizer.mask_token_id), sorted(int(i) for i in tokenizer.all_special_ids)


# ---------------------------------------------------------------------------- the text codec
def is_sentencepiece(tokenizer) -> bool:
    """True for Metaspace/SentencePiece tokenizers (XLNet's), whose pieces mark spaces with ``▁``."""
    if hasattr(tokenizer, "sp_model"):
        return True
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.pre_tokenizer).__name__ in {"Metaspace", "Sequence"} \
        and type(backend.decoder).__name__ == "Metaspace"


@functools.lru_cache(maxsize=8)
def _added_ids(tokenizer) -> frozenset:
    return frozenset(int(i) for i in tokenizer.added_tokens_decoder) | frozenset(int(i) for i in tokenizer.all_special_ids)


def opens_segment(prefix_ids, tokenizer) -> bool:
    """True when text after ``prefix_ids`` opens a Metaspace segment: nothing before it, or an added token.

    Then the first ``▁`` of what follows is the segment marker (``decode_text(...,
    starts_segment=True)`` drops it); otherwise it is a real space.
    """
    return not prefix_ids or int(prefix_ids[-1]) in _added_ids(tokenizer)


@functools.lru_cache(maxsize=8)
def _unprefixed_backend(tokenizer):
    """A copy of a fast tokenizer's backend whose Metaspace does not prepend ``▁`` (text continuing a segment)."""
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="never")
    return backend


def _split_at_first_added(text: str, tokenizer) -> tuple[str, str]:
    """``(head, rest)``: ``rest`` starts at the first added token's text (or is empty)."""
    cut = min((i for t in tokenizer.added_tokens_encoder if (i := text.find(t)) >= 0), default=len(text))
    return text[:cut], text[cut:]


def encode_plain(tokenizer, text):
    """Ids of ``text`` (a string, or a list of strings: a list of id lists) without the tokenizer's
    specials (XLNet would append ``<sep><cls>``): the one place text is tokenised plainly."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def make_encoder(tokenizer, code: bool, add_special_tokens: bool = False) -> Callable[..., list[int]]:
    """``encode(text, continues=False) -> ids``: the code whitespace mapping (if ``code``), then the tokenizer.

    ``continues=True`` (SentencePiece tokenizers only): ``text`` follows a
    non-special piece in the same segment (an infill boundary inside a line),
    so its first segment gets no ``▁`` marker: ``decode(a + b) == text_a +
    text_b`` when ``b`` was encoded with ``continues=True``. Text that starts
    with a space keeps it (``▁`` is then a real space). Needs a fast tokenizer;
    a slow one encodes ``continues`` text like any other.
    """

    def encode(text: str, continues: bool = False) -> list[int]:
        text = encode_code_whitespace(text) if code else text
        if continues and text and not text[0].isspace() and hasattr(tokenizer, "backend_tokenizer") \
                and is_sentencepiece(tokenizer):
            head, rest = _split_at_first_added(text, tokenizer)
            ids = _unprefixed_backend(tokenizer).encode(head, add_special_tokens=False).ids if head else []
            return ids + (encode_plain(tokenizer, rest) if rest else [])
        if not add_special_tokens:
            return encode_plain(tokenizer, text)
        return tokenizer(text, add_special_tokens=True)["input_ids"]

    return encode


def decode_text(ids, tokenizer, code: bool, starts_segment: bool = True, skip_special: bool = False) -> str:
    """``ids -> text``, the inverse of ``make_encoder`` as far as the tokenizer allows.

    SentencePiece tokenizers are decoded from their pieces: ``▁`` is a space
    except the one that opens a segment (the first piece when
    ``starts_segment``, and the first piece after every added token), which
    the encoder added. Special tokens are kept as their text (``<sep>``) unless
    ``skip_special``; with ``code`` the four whitespace specials become their
    whitespace. Other tokenizers use ``tokenizer.decode``.

    Args:
        ids: token ids (any iterable of ints).
        starts_segment: the ids open a segment (start of text, or right after a
            special token); ``False`` for a middle that follows a normal piece.
    """
    ids = [int(i) for i in ids]
    if not is_sentencepiece(tokenizer):
        text = tokenizer.decode(ids, skip_special_tokens=skip_special, clean_up_tokenization_spaces=False)
        return decode_code_whitespace(text) if code else text
    added = _added_ids(tokenizer)
    whitespace = dict(zip(code_whitespace_ids(tokenizer), (c for c, _ in CODE_WHITESPACE))) if code else {}
    out, at_start = [], starts_segment
    for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(ids)):
        if i in added:
            out.append(whitespace[i] if i in whitespace else "" if skip_special else piece)
            at_start = True
            continue
        text = piece.replace(SPIECE_UNDERLINE, " ")
        out.append(text[1:] if at_start and text.startswith(" ") else text)
        at_start = False
    return "".join(out)


def lossy_reason(text: str, tokenizer, code: bool) -> str | None:
    """Why ``decode(encode(text)) != text``, or ``None`` when it round-trips: what the tokenizer cannot keep."""
    ids = make_encoder(tokenizer, code)(text)
    if decode_text(ids, tokenizer, code) == text:
        return None
    mapped = encode_code_whitespace(text) if code else text
    if ids.count(tokenizer.unk_token_id) > (mapped.count("<unk>") if code else 0):
        return "a character outside the vocabulary (becomes <unk>)"
    if "''" in mapped or "``" in mapped:
        return "normaliser: two quotes or backticks become \""
    if not mapped.isascii():
        return "normaliser: Unicode normalisation or accents"
    if any(not c.isprintable() for c in mapped):
        return "normaliser: a control character (carriage return, form feed, ...) becomes a space"
    return "a space that opens a segment (at the start or after a special token) is the segment marker"
