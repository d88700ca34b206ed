"""The WikiText speculative-decoding evaluation's data and protocol choices, on the real test file.

Each paper-protocol choice (``--protocol paper``) is pinned here against the
paper's released code as docs/protocols.md describes it; the asarm choices next to it.
"""

import pytest

from asarm.evaluation import speculative as spec
from asarm.evaluation.protocol import PROTOCOLS, apply_protocol

# slow: end-to-end speculative runs
pytestmark = pytest.mark.slow

SEQ_LEN = 512


@pytest.fixture(scope="module")
def wiki_file(shared_data):
    return shared_data / "wikitext-2-raw" / "wiki.test.raw"


@pytest.fixture(scope="module")
def wiki_rows(wiki_file):
    return spec.load_wikitext_rows(str(wiki_file))


def _ends(tokenizer):
    return [tokenizer.sep_token_id, tokenizer.cls_token_id, tokenizer.eos_token_id]


def test_local_file_rows_look_like_hub_rows(wiki_file, wiki_rows):
    raw = wiki_file.read_bytes().decode("utf-8")
    assert "\r\n" in raw  # the shared copy has CRLF ends ...
    assert len(wiki_rows) == raw.count("\r\n") + (not raw.endswith("\r\n"))  # ... one row per line
    assert wiki_rows[0] == " = Robert Boulter = \n"  # the hub's row, "\n"-terminated, no "\r"
    assert all(r.endswith("\n") and "\r" not in r for r in wiki_rows)


def test_paper_chunks_hold_sep_cls_eos_exactly_where_each_row_ends(wiki_rows, local_tokenizer):
    rows = wiki_rows[:40]
    chunks = spec.pack_chunks(spec.encode_rows(rows, local_tokenizer, specials=True), SEQ_LEN)
    # the row ends, computed one row at a time the way the paper's packer calls the tokenizer
    ends, pos = [], 0
    for row in rows:
        pos += len(local_tokenizer.encode(row)) + 1  # with specials, then </s>
        ends.append(pos)
    eos = local_tokenizer.eos_token_id
    for c, chunk in enumerate(chunks):
        assert len(chunk) == SEQ_LEN
        at_eos = [c * SEQ_LEN + i + 1 for i, t in enumerate(chunk) if t == eos]
        assert at_eos == [e for e in ends if c * SEQ_LEN < e <= (c + 1) * SEQ_LEN]
        for e in at_eos:
            i = e - 1 - c * SEQ_LEN
            if i >= 2:
                assert chunk[i - 2:i + 1] == _ends(local_tokenizer)
    assert sum(chunk.count(local_tokenizer.sep_token_id) for chunk in chunks) == \
        sum(e <= len(chunks) * SEQ_LEN for e in ends)  # one <sep> per row, none elsewhere


def test_asarm_chunks_are_plain_rows_joined_by_eos(wiki_rows, local_tokenizer):
    rows = ["", *wiki_rows[:3], ""]
    ids = spec.encode_rows(rows, local_tokenizer, specials=False)
    expected = []
    for row in wiki_rows[:3]:  # blank rows skipped, no <sep><cls>
        expected += local_tokenizer(row, add_special_tokens=False)["input_ids"] + [local_tokenizer.eos_token_id]
    assert ids == expected
    assert local_tokenizer.sep_token_id not in ids and local_tokenizer.cls_token_id not in ids


def test_blank_hub_rows_are_encoded_as_the_paper_does(wiki_rows, local_tokenizer, monkeypatch):
    # the hub's first rows: "", " = Robert Boulter = \n", "", " Robert Boulter is ... \n"
    hub = ["", wiki_rows[0], "", wiki_rows[1]]
    monkeypatch.setattr(spec, "load_rows", lambda source, split, reader: [{"text": t} for t in hub])
    rows = spec.load_wikitext_rows("hf:wikitext:wikitext-2-raw-v1@test")
    assert rows == hub  # hub rows are used as given, blank ones included
    ids = spec.encode_rows(rows, local_tokenizer, specials=True)
    blank = _ends(local_tokenizer)  # tokenizer.encode("") = <sep><cls>, then </s>
    title = local_tokenizer.encode(wiki_rows[0]) + [local_tokenizer.eos_token_id]
    assert ids[:3] == blank and ids[3:3 + len(title)] == title and ids[3 + len(title):6 + len(title)] == blank
    assert ids.count(local_tokenizer.eos_token_id) == 4
    assert spec.encode_rows(rows, local_tokenizer, specials=False).count(local_tokenizer.eos_token_id) == 2


def test_local_blank_line_becomes_a_blank_hub_row(tmp_path):
    path = tmp_path / "w.raw"
    path.write_bytes(b" = A = \r\n\r\n B c . \r\n")
    assert spec.load_wikitext_rows(str(path)) == [" = A = \n", "", " B c . \n"]


def test_trials_stop_when_the_chunks_run_out_without_reuse(wiki_rows, local_tokenizer):
    chunks = spec.pack_chunks(spec.encode_rows(wiki_rows[:300], local_tokenizer, True), SEQ_LEN)
    trials = len(chunks) + 7
    paper = spec.build_units(chunks, trials, reuse=False)
    assert [u.payload["chunk"] for u in paper] == list(range(len(chunks)))
    asarm = spec.build_units(chunks, trials, reuse=True)
    assert len(asarm) == trials and asarm[-1].payload["chunk"] == 6 and asarm[-1].payload["ids"] == chunks[6]
    assert len(spec.build_units(chunks, 3, reuse=False)) == 3  # enough chunks: --trials holds
    with pytest.raises(ValueError, match="--trials"):
        spec.build_units(chunks, 0)


def test_visible_count_rules():
    assert spec.num_visible_for(512, 0.05, "int_plus_one") == int(0.05 * 512) + 1 == 26
    assert spec.num_visible_for(512, 0.05, "round") == 26  # the rules agree at the paper's N ...
    assert spec.num_visible_for(500, 0.05, "int_plus_one") == 26  # ... not in general
    assert spec.num_visible_for(500, 0.05, "round") == 25
    assert spec.num_visible_for(24, 0.05, "int_plus_one") == 2 and spec.num_visible_for(24, 0.05, "round") == 1
    assert spec.num_visible_for(10, 0.01, "round") == 1  # at least one visible
    with pytest.raises(ValueError, match="nothing is left"):
        spec.num_visible_for(10, 0.95, "int_plus_one")
    with pytest.raises(ValueError, match="--visible-rule"):
        spec.num_visible_for(10, 0.5, "floor")
    with pytest.raises(ValueError, match="--visible-frac"):
        spec.num_visible_for(10, 1.5)


def test_judged_text_keeps_specials_under_the_paper_protocol(wiki_rows, local_tokenizer):
    chunk = spec.pack_chunks(spec.encode_rows(wiki_rows[:20], local_tokenizer, True), 128)[0]
    assert local_tokenizer.eos_token_id in chunk  # a row ends inside the chunk
    paper = spec.judged_text(chunk, local_tokenizer, keep_specials=True)
    assert paper == local_tokenizer.decode(chunk) and "<sep><cls></s>" in paper
    asarm = spec.judged_text(chunk, local_tokenizer, keep_specials=False)
    assert not any(t in asarm for t in ("<sep>", "<cls>", "</s>")) and "Robert Boulter" in asarm


def test_protocols_resolve_every_speculative_option():
    from asarm.cli import build_parser

    parser = build_parser()
    paper = parser.parse_args(["speculative", "--protocol", "paper"])
    apply_protocol(paper, spec.PROTOCOL_OPTIONS)
    assert (paper.wikitext_specials, paper.reuse_chunks, paper.visible_rule, paper.judge_specials, paper.banned) == \
        (True, False, "int_plus_one", True, "mask")
    asarm = parser.parse_args(["speculative", "--no-judge-specials"])
    apply_protocol(asarm, spec.PROTOCOL_OPTIONS)
    assert (asarm.wikitext_specials, asarm.reuse_chunks, asarm.visible_rule, asarm.judge_specials, asarm.banned) == \
        (False, True, "round", False, "specials")
    mixed = parser.parse_args(["speculative", "--protocol", "paper", "--reuse-chunks", "--visible-rule", "round"])
    apply_protocol(mixed, spec.PROTOCOL_OPTIONS)
    assert mixed.reuse_chunks is True and mixed.visible_rule == "round" and mixed.wikitext_specials is True
    assert PROTOCOLS["paper"].visible == "int_plus_one"  # the field the option maps to


def test_missing_eos_is_a_clear_error():
    class NoEos:
        eos_token_id = None

    with pytest.raises(ValueError, match="eos"):
        spec.encode_rows(["x"], NoEos(), True)
