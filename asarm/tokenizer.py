"""Tokenizers: XLNet's special tokens (named once, here), hub/local loading, and an
offline byte-level BPE tokenizer for tests and tiny local runs.

The local tokenizer is a ``transformers.PreTrainedTokenizerFast``, so it has
the same interface as ``xlnet-base-cased``'s tokenizer (``__call__``,
``decode``, ``mask_token_id``, ``all_special_ids``, ``save_pretrained``) and
puts the same special tokens at the same ids.
"""

from __future__ import annotations

from typing import Iterable

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

_SPECIAL_ROLES = dict(
    unk_token="<unk>",
    bos_token="<s>",
    eos_token="</s>",
    cls_token="<cls>",
    sep_token="<sep>",
    pad_token="<pad>",
    mask_token="<mask>",
    additional_special_tokens=["<eod>", "<eop>"],
)


def build_local_tokenizer(texts: Iterable[str], vocab_size: int = 1000):
    """Train a byte-level BPE tokenizer on ``texts``, offline, in about a second.

    Special tokens take XLNet's ids (``XLNET_SPECIAL_TOKENS``); every other
    string round-trips exactly through ``encode``/``decode`` (byte level).

    Args:
        texts: training text (any iterable of strings).
        vocab_size: total size including the 9 specials and 256 byte symbols.
    Returns:
        a ``transformers.PreTrainedTokenizerFast``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    min_size = len(XLNET_SPECIAL_TOKENS) + 256
    if vocab_size < min_size:
        raise ValueError(f"vocab_size={vocab_size} is too small for a byte-level tokenizer; use at least {min_size}")
    specials = sorted(XLNET_SPECIAL_TOKENS, key=XLNET_SPECIAL_TOKENS.get)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **_SPECIAL_ROLES)
    for name, idx in XLNET_SPECIAL_TOKENS.items():
        assert fast.convert_tokens_to_ids(name) == idx, (name, idx)
    return fast


def load_tokenizer(name_or_path: str, revision: str | None = None):
    """Load a tokenizer from a local directory or the Hugging Face hub.

    Offline, a hub id that is not in the local cache raises ``OSError`` with
    a message that says how to pass a local directory instead.
    """
    from transformers import AutoTokenizer

    return load_or_explain(AutoTokenizer.from_pretrained, name_or_path, revision, "tokenizer")


def special_ids(tokenizer) -> tuple[int, list[int]]:
    """``(mask_token_id, banned_token_ids)`` of a HF-style tokenizer.

    Banned = every special token: never sampled as content.
    """
    if tokenizer.mask_token_id is None:
        raise ValueError("the tokenizer has no mask token; AS-ARMs need one (XLNet's is '<mask>')")
    return int(tokenizer.mask_token_id), sorted(int(i) for i in tokenizer.all_special_ids)
