"""The offline XLNet-pipeline tokenizer and the text codec (encode/decode inverses on the real pipeline)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from asarm import XLNET_SPECIAL_TOKENS, build_local_tokenizer, load_tokenizer
from asarm.tokenizer import (code_whitespace_ids, decode_text, has_slow_tokenizer, is_sentencepiece,
                             lossy_reason, make_encoder, pipeline_fingerprint, save_tokenizer,
                             special_ids, spiece_backend, wrap_backend, xlnet_pipeline_drift)
from conftest import TOKENIZER_KINDS


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


@pytest.mark.parametrize("kind", TOKENIZER_KINDS)
def test_save_and_load_locally(tmp_path, local_tokenizer, kind):
    save_tokenizer(local_tokenizer, tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"), slow=kind == "slow")
    text = "import sys\nprint(sys.argv)"
    assert make_encoder(again, True)(text) == make_encoder(local_tokenizer, True)(text)
    assert again.mask_token_id == 6
    if kind == "slow":
        assert type(again).__name__ == "XLNetTokenizer"
    else:
        assert isinstance(again, PreTrainedTokenizerFast) and again.padding_side == "left"


# ---------------------------------------------------------------------------- both transformers majors
FIXTURE = Path(__file__).parent / "fixtures" / "xlnet_v4_tokenizer"  # transformers 4's save
FIXTURE_V5 = Path(__file__).parent / "fixtures" / "transformers5_tokenizer"  # 5.x's, as it writes
PIPELINE = ("model", "normalizer", "pre_tokenizer", "post_processor", "decoder")
TEXTS = [" = Robert Boulter = ", "x = bar", "  two  spaces  ", "''a''  ``b``\n\tc", "caf\u00e9 1,2,",
         "x<cls>y <mask> z", "a\n\n b", " @-@ 3 @,@ 000 "]


def _pipeline(tokenizer) -> dict:
    return _comparable(json.loads(tokenizer.backend_tokenizer.to_str()))


def _saved_pipeline(directory: Path) -> dict:
    return _comparable(json.loads((directory / "tokenizer.json").read_text()))


def _comparable(fields: dict) -> dict:
    """The pipeline parts of a ``tokenizer.json``, vocabulary scores rounded to float32's
    precision (SentencePiece stores float32; JSON writers of different ``tokenizers``
    releases print the widened value to different last digits)."""
    parts = {part: fields[part] for part in PIPELINE}
    model = dict(parts["model"])
    model["vocab"] = [(piece, float(f"{score:.6g}")) for piece, score in model["vocab"]]
    return parts | {"model": model}


def test_spiece_conversion_is_transformers_4s(tmp_path):
    """asarm's own conversion of a SentencePiece model (the offline builder's, and the loader's
    for a directory without tokenizer.json) gives exactly the backend transformers 4's
    converter wrote into the fixture: vocabulary scores, normaliser, Metaspace, post-processor."""
    assert _pipeline(wrap_backend(spiece_backend(str(FIXTURE / "spiece.model")))) == _saved_pipeline(FIXTURE)


def test_a_transformers_4_directory_loads_with_its_pipeline(tmp_path):
    tok = load_tokenizer(str(FIXTURE))
    assert _pipeline(tok) == _saved_pipeline(FIXTURE) and xlnet_pipeline_drift(tok) is None
    assert (tok.mask_token_id, tok.padding_side) == (6, "left")
    # the same files without tokenizer.json (spiece.model and the configs only): the same pipeline
    for name in ("spiece.model", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(FIXTURE / name, tmp_path / name)
    spiece_only = load_tokenizer(str(tmp_path))
    assert _pipeline(spiece_only) == _saved_pipeline(FIXTURE)
    assert [spiece_only(t)["input_ids"] for t in TEXTS] == [tok(t)["input_ids"] for t in TEXTS]


def test_transformers_5s_own_xlnet_pipeline_is_replaced():
    """Under 5.x a plain ``AutoTokenizer`` rebuilds XLNet's pipeline from its class; asarm's
    loader gives the saved one back (and ids differ between the two on WikiText-like text)."""
    if has_slow_tokenizer():
        pytest.skip("transformers 4 keeps the saved pipeline")
    from transformers import AutoTokenizer

    native = AutoTokenizer.from_pretrained(str(FIXTURE))
    assert xlnet_pipeline_drift(native) and _pipeline(native) != _saved_pipeline(FIXTURE)
    ours = load_tokenizer(str(FIXTURE))
    assert [native(t)["input_ids"] for t in TEXTS] != [ours(t)["input_ids"] for t in TEXTS]


def test_what_asarm_saves_loads_under_both_majors(tmp_path):
    """``save_tokenizer`` writes the generic fast class, 4.x's key names and spiece.model, so
    the directory loads with plain ``AutoTokenizer`` on either major, pipeline unchanged."""
    from transformers import AutoTokenizer

    save_tokenizer(load_tokenizer(str(FIXTURE)), tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["additional_special_tokens"] == ["<eop>", "<eod>"]
    assert "extra_special_tokens" not in config and "backend" not in config
    assert (tmp_path / "spiece.model").read_bytes() == (FIXTURE / "spiece.model").read_bytes()
    plain = AutoTokenizer.from_pretrained(str(tmp_path))
    assert _pipeline(plain) == _saved_pipeline(FIXTURE) and plain.mask_token_id == 6


def test_a_directory_transformers_5_wrote_loads_here():
    """5.x's own ``save_pretrained`` (``TokenizersBackend``, a list of extra specials), which
    4.x's ``AutoTokenizer`` refuses: asarm's loader reads it on either major."""
    tok = load_tokenizer(str(FIXTURE_V5))
    reference = load_tokenizer(str(FIXTURE))
    assert [tok(t)["input_ids"] for t in TEXTS] == [reference(t)["input_ids"] for t in TEXTS]
    assert sorted(tok.all_special_ids) == list(range(9)) and tok.mask_token_id == 6


def test_slow_tokenizer_is_refused_clearly_where_it_does_not_exist():
    if has_slow_tokenizer():
        pytest.skip("transformers 4 has the slow tokenizer")
    for call in (lambda: load_tokenizer(str(FIXTURE), slow=True),
                 lambda: build_local_tokenizer(["a b c"] * 50, vocab_size=100, slow=True)):
        with pytest.raises(ValueError, match="only under transformers 4.x"):
            call()


def test_pipeline_fingerprint_sees_a_changed_pipeline(local_tokenizer):
    from tokenizers import pre_tokenizers

    before = pipeline_fingerprint(local_tokenizer)
    same = wrap_backend(spiece_backend(local_tokenizer.asarm_spiece_file))
    assert pipeline_fingerprint(same) == before
    same.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    assert pipeline_fingerprint(same) != before
    assert "WhitespaceSplit" in xlnet_pipeline_drift(same)


def test_too_small_vocab_is_refused():
    with pytest.raises(ValueError, match="too small"):
        build_local_tokenizer(["abc"], vocab_size=50)


HUB_LOAD = """
import json, sys
import asarm
tok = asarm.load_tokenizer("xlnet/xlnet-base-cased")
from asarm.tokenizer import xlnet_pipeline_drift
print(json.dumps({"drift": xlnet_pipeline_drift(tok), "mask": tok.mask_token_id,
                  "ids": [tok(t)["input_ids"] for t in json.loads(sys.argv[1])]}))
"""


@pytest.mark.slow
def test_a_hub_id_from_the_local_cache_keeps_its_saved_pipeline(tmp_path):
    """``xlnet/xlnet-base-cased`` as the hub cache holds it (config.json, spiece.model,
    tokenizer.json, no tokenizer_config.json), offline: the loader finds the cached
    tokenizer.json and serves its pipeline on either major (a fresh process, so that
    ``HF_HUB_CACHE`` is read)."""
    snapshot = tmp_path / "models--xlnet--xlnet-base-cased" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "models--xlnet--xlnet-base-cased" / "refs").mkdir()
    (tmp_path / "models--xlnet--xlnet-base-cased" / "refs" / "main").write_text("0" * 40)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "xlnet", "vocab_size": 1000}))
    for name in ("spiece.model", "tokenizer.json"):
        shutil.copy(FIXTURE / name, snapshot / name)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", HUB_LOAD, json.dumps(TEXTS)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    reference = load_tokenizer(str(FIXTURE))
    assert got["drift"] is None and got["mask"] == 6
    assert got["ids"] == [reference(t)["input_ids"] for t in TEXTS]
