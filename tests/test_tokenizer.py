"""The offline tokenizer: XLNet's special ids, exact round trips, save/load through the HF interface."""

import pytest

from asarm import XLNET_SPECIAL_TOKENS, build_local_tokenizer, load_tokenizer
from asarm.tokenizer import special_ids


def test_special_tokens_have_xlnet_ids(local_tokenizer):
    for name, idx in XLNET_SPECIAL_TOKENS.items():
        assert local_tokenizer.convert_tokens_to_ids(name) == idx
    assert local_tokenizer.mask_token_id == XLNET_SPECIAL_TOKENS["<mask>"]
    mask, banned = special_ids(local_tokenizer)
    assert mask == 6 and banned == sorted(XLNET_SPECIAL_TOKENS.values())


@pytest.mark.parametrize("text", ["Hello, world!", "def f(x):\n\treturn  x  # ünïcödé ✓", "   leading and trailing   ",
                                  "emoji 🙂 and \r\n CRLF"])
def test_round_trip_is_exact(local_tokenizer, text):
    ids = local_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert local_tokenizer.decode(ids) == text
    assert not set(ids) & set(XLNET_SPECIAL_TOKENS.values())


def test_save_and_load_locally(tmp_path, local_tokenizer):
    local_tokenizer.save_pretrained(tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"))
    text = "import sys\nprint(sys.argv)"
    assert again(text, add_special_tokens=False)["input_ids"] == local_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert again.mask_token_id == 6


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_local_tokenizer(["abc"], vocab_size=100)
