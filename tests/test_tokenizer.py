"""The offline XLNet-pipeline tokenizer and the text codec (encode/decode inverses on the real pipeline)."""

import pytest

from asarm import XLNET_SPECIAL_TOKENS, build_local_tokenizer, load_tokenizer
from asarm.tokenizer import (code_whitespace_ids, decode_text, is_sentencepiece, lossy_reason, make_encoder,
                             special_ids)


def test_special_tokens_have_xlnet_ids(both_tokenizers):
    for name, idx in XLNET_SPECIAL_TOKENS.items():
        assert both_tokenizers.convert_tokens_to_ids(name) == idx
    assert both_tokenizers.mask_token_id == XLNET_SPECIAL_TOKENS["<mask>"]
    mask, banned = special_ids(both_tokenizers)
    assert mask == 6 and banned == sorted(XLNET_SPECIAL_TOKENS.values())


def test_it_is_the_xlnet_pipeline(local_tokenizer):
    """Same normaliser, Metaspace pre-tokenizer, decoder and post-processor as xlnet-base-cased."""
    backend = local_tokenizer.backend_tokenizer
    assert type(backend.pre_tokenizer).__name__ == "Metaspace" and type(backend.decoder).__name__ == "Metaspace"
    assert is_sentencepiece(local_tokenizer)
    ids = local_tokenizer("a b")["input_ids"]
    assert ids[-2:] == [XLNET_SPECIAL_TOKENS["<sep>"], XLNET_SPECIAL_TOKENS["<cls>"]]  # XLNet appends <sep><cls>
    # the normaliser: two quotes -> ", runs of spaces -> one
    assert local_tokenizer.decode(local_tokenizer("''x''   y", add_special_tokens=False)["input_ids"]) == '"x" y'
    # a segment after a special token gets a "▁": the tokenizer's own decode shows it as a space
    ids = local_tokenizer("x<cls>y", add_special_tokens=False)["input_ids"]
    assert local_tokenizer.decode(ids) == "x<cls> y"
    assert decode_text(ids, local_tokenizer, code=False) == "x<cls>y"


CODE = ["def f(x):\n    return x\n", "x = 1  # two  spaces\n\tdone\n", "if a:\n        b = [1, 2]\n",
        "class A:\n    def g(self):\n        pass\n\n\nprint(A())\n", "s = 'a' + \"b\"\n"]


@pytest.mark.parametrize("text", CODE)
def test_code_round_trip_is_exact(both_tokenizers, text):
    ids = make_encoder(both_tokenizers, code=True)(text)
    assert decode_text(ids, both_tokenizers, code=True) == text
    assert set(code_whitespace_ids(both_tokenizers)[:2]) & set(ids)  # newline / tab became specials


@pytest.mark.parametrize("text", ["Hello, world!", "The cat sat on the mat. It was happy.", "A (b) c-d, e; f: g?"])
def test_text_round_trip_is_exact(both_tokenizers, text):
    ids = make_encoder(both_tokenizers, code=False)(text)
    assert decode_text(ids, both_tokenizers, code=False) == text
    assert not set(ids) & set(XLNET_SPECIAL_TOKENS.values())


@pytest.mark.parametrize("prefix,middle", [("    ret", "urn x\n"), ("x =", " 1\n"), ("print(", "a, b)\n"),
                                           ("def f(", "x):\n    return x\n")])
def test_continuation_is_lossless_inside_a_line(local_tokenizer, prefix, middle):
    encode = make_encoder(local_tokenizer, code=True)
    head = encode(prefix)
    tail = encode(middle, continues=True)
    assert decode_text(head + tail, local_tokenizer, code=True) == prefix + middle
    assert decode_text(tail, local_tokenizer, code=True, starts_segment=False) == middle
    # encoded on its own, a middle that starts inside a word gains the segment marker
    if not middle[0].isspace():
        assert decode_text(head + encode(middle), local_tokenizer, code=True) != prefix + middle


@pytest.mark.parametrize("text,reason", [("a ''b''", "two quotes"), ("caf\u00e9", "Unicode"), ("\n x", "opens a segment"),
                                         ("x \u2603 y", "outside the vocabulary")])
def test_what_cannot_round_trip_is_named(local_tokenizer, text, reason):
    assert reason in lossy_reason(text, local_tokenizer, code=True)


def test_fast_and_slow_decode_alike(local_tokenizer, slow_tokenizer):
    encode = make_encoder(local_tokenizer, code=True)
    for text in CODE:
        ids = encode(text)
        assert decode_text(ids, slow_tokenizer, code=True) == decode_text(ids, local_tokenizer, code=True) == text
        assert slow_tokenizer.convert_ids_to_tokens(ids) == local_tokenizer.convert_ids_to_tokens(ids)


def test_save_and_load_locally(tmp_path, local_tokenizer):
    local_tokenizer.save_pretrained(tmp_path / "tok")
    for slow in (False, True):
        again = load_tokenizer(str(tmp_path / "tok"), slow=slow)
        text = "import sys\nprint(sys.argv)"
        assert make_encoder(again, True)(text) == make_encoder(local_tokenizer, True)(text)
        assert again.mask_token_id == 6
        assert type(again).__name__ == ("XLNetTokenizer" if slow else "XLNetTokenizerFast")


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_local_tokenizer(["abc"], vocab_size=50)
