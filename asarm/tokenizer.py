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

The local tokenizer (``build_local_tokenizer``) is that pipeline trained offline:
a SentencePiece unigram model with XLNet's nine special tokens at XLNet's ids,
served as ``XLNetTokenizerFast`` built by transformers' own converter (so the
normaliser, pre-tokenizer and decoder are those of ``xlnet-base-cased``), or as
the slow ``XLNetTokenizer`` from the same model file.
"""

from __future__ import annotations

import functools
import os
import tempfile
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
def _train_sentencepiece(texts: Iterable[str], vocab_size: int, prefix: str) -> None:
    import sentencepiece as spm

    lines = (line for text in texts for line in text.split("\n") if line.strip())
    by_id = sorted(XLNET_SPECIAL_TOKENS, key=XLNET_SPECIAL_TOKENS.get)
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=prefix, vocab_size=vocab_size, model_type="unigram",
        unk_id=0, bos_id=1, eos_id=2, pad_id=5, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>",
        control_symbols=[t for t in by_id if XLNET_SPECIAL_TOKENS[t] not in (0, 1, 2, 5)],
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2, num_threads=1)


def build_local_tokenizer(texts: Iterable[str], vocab_size: int = 1000, slow: bool = False):
    """Train an XLNet-pipeline tokenizer on ``texts``, offline, in a few seconds.

    A SentencePiece unigram model (``spiece.model``) with XLNet's nine special
    tokens at XLNet's ids (``XLNET_SPECIAL_TOKENS``), loaded as
    ``XLNetTokenizerFast`` through transformers' converter (``slow=False``) or
    as ``XLNetTokenizer`` (``slow=True``): the normaliser, Metaspace segments
    and decoder of ``xlnet-base-cased``.

    Args:
        texts: training text (any iterable of strings; split into lines).
        vocab_size: SentencePiece vocabulary size, specials included (>= 100).
        slow: return the slow (Python, ``sentencepiece``) tokenizer.
    Returns:
        a tokenizer with ``save_pretrained``; the model file stays readable as
        ``tokenizer.vocab_file`` until the process exits.
    """
    from transformers import XLNetTokenizer, XLNetTokenizerFast

    if vocab_size < 100:
        raise ValueError(f"vocab_size={vocab_size} is too small for a SentencePiece tokenizer; use at least 100")
    folder = tempfile.mkdtemp(prefix="asarm-spm-")
    _train_sentencepiece(texts, vocab_size, os.path.join(folder, "spiece"))
    model_file = os.path.join(folder, "spiece.model")
    tok = XLNetTokenizer(model_file) if slow else XLNetTokenizerFast(vocab_file=model_file)
    for name, idx in XLNET_SPECIAL_TOKENS.items():
        if tok.convert_tokens_to_ids(name) != idx:
            raise RuntimeError(f"local tokenizer puts {name} at {tok.convert_tokens_to_ids(name)}, not XLNet's {idx}")
    return tok


def load_tokenizer(name_or_path: str, revision: str | None = None, slow: bool = False):
    """Load a tokenizer from a local directory or the Hugging Face hub (``slow``: the Python one).

    Offline, a hub id that is not in the local cache raises ``OSError`` with
    a message that says how to pass a local directory instead.
    """
    from transformers import AutoTokenizer

    return load_or_explain(AutoTokenizer.from_pretrained, name_or_path, revision, "tokenizer", use_fast=not slow)


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
