"""The pipeline-drift guard: the real data files encoded by the tokenizer asarm loads must give
the ids transformers 4 gives (the pipeline the released checkpoints were trained on).

``tests/fixtures/xlnet_v4_tokenizer`` is an XLNet tokenizer as transformers 4 saves it
(``scripts/make_tokenizer_fixture.py``). ``PINNED`` holds, per data file, the token count
and a hash of the ids that plain transformers 4.44 (``AutoTokenizer`` -> ``XLNetTokenizerFast``)
gives on it, computed once with ``python tests/test_tokenizer_drift.py`` under 4.x. A
transformers release that changes the pipeline fails here instead of changing the tables.
"""

import csv
import gzip
import hashlib
import json
import sys
from pathlib import Path

import pytest

# slow: whole data files encoded
pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent / "fixtures" / "xlnet_v4_tokenizer"
HUMANEVAL = ("SingleLineInfilling", "MultiLineInfilling", "RandomSpanInfilling",
             "RandomSpanInfillingLight")

# name -> (tokens, sha256 of the ids): plain transformers 4.44 on FIXTURE
PINNED = {
    "wikitext-2-test": (742478, "0301c5adbde4d8697835bbac683406343740f91c1bf97d4cc8563635c2b7248d"),
    "lambada-test": (982906, "0b4f730ee9409034cb4c08603e8977add55a496a6899e56f286862b14e8d16de"),
    "rocstories-val": (294122, "34d09c2780182b1545576a00d894ff11ee3e965dfaa535836d39e52d72a93079"),
    "humaneval-SingleLineInfilling": (439533, "0516835f499658874751291d289a3445496ece780ad0cb9cef5a222ca88f54c5"),
    "humaneval-MultiLineInfilling": (3005183, "4df48ff983d0908064430a28ee287802c0992be6447c2eda491d17813b9bc214"),
    "humaneval-RandomSpanInfilling": (543536, "3186f403655dbd9a31bd0cd43285777e5f84bfcf9a8ceba761dcac9bcbc67686"),
    "humaneval-RandomSpanInfillingLight": (54285, "918928854d007a65391696a8c09feaa0edced878e7a413197ab49dc313a61c1d"),
}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _units(data: Path) -> dict[str, list[tuple[str, bool]]]:
    """Per data file, its texts as ``(text, code)`` in file order (``code``: HumanEval's
    whitespace mapping, the middle and suffix encoded as continuations of a line)."""
    units = {"wikitext-2-test": [(t, False) for t in _lines(data / "wikitext-2-raw" / "wiki.test.raw")],
             "lambada-test": [(t, False) for t in _lines(data / "lambada" / "lambada_test_plain_text.txt")]}
    with open(data / "rocstories" / "cloze_test_val__spring2016.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    units["rocstories-val"] = [(cell, False) for row in rows for cell in row[1:7]]
    for kind in HUMANEVAL:
        path = data / "human-eval-infilling" / f"HumanEval-{kind}.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as f:
            problems = [json.loads(line) for line in f]
        units[f"humaneval-{kind}"] = [(p[k], True) for p in problems
                                      for k in ("prompt", "canonical_solution", "suffix")]
    return units


def digests(tokenizer, data: Path) -> dict[str, tuple[int, str]]:
    """``{file: (token count, sha256 of the ids)}`` of ``tokenizer`` on the real data files."""
    from asarm.tokenizer import make_encoder

    out = {}
    for name, texts in _units(data).items():
        code = texts[0][1]
        encode = make_encoder(tokenizer, code=code)
        h, count = hashlib.sha256(), 0
        for i, (text, _) in enumerate(texts):
            # HumanEval: the middle and suffix continue the line the prompt ended in
            ids = encode(text, continues=code and i % 3 > 0)
            h.update((json.dumps(ids) + "\n").encode())
            count += len(ids)
        out[name] = (count, h.hexdigest())
    return out


@pytest.fixture(scope="module")
def fixture_tokenizer():
    from asarm.tokenizer import load_tokenizer

    return load_tokenizer(str(FIXTURE))


def test_every_data_file_encodes_to_the_pinned_ids(fixture_tokenizer, shared_data):
    got = digests(fixture_tokenizer, shared_data)
    assert set(got) == set(PINNED)
    drifted = {name: (got[name], PINNED[name]) for name in PINNED if got[name] != tuple(PINNED[name])}
    assert not drifted, f"the tokenizer pipeline drifted from transformers 4's: {drifted}"


def test_the_guard_catches_transformers_5s_own_xlnet_pipeline(shared_data):
    """Power check: transformers 5's ``XLNetTokenizer`` class pipeline (what a plain
    ``AutoTokenizer`` gives there) encodes WikiText differently, and the guard sees it."""
    from transformers import AutoTokenizer

    from asarm.tokenizer import has_slow_tokenizer, xlnet_pipeline_drift

    if has_slow_tokenizer():
        pytest.skip("transformers 4 keeps the saved pipeline; the drift exists under 5.x")
    native = AutoTokenizer.from_pretrained(str(FIXTURE))
    assert "WhitespaceSplit" in xlnet_pipeline_drift(native)
    texts = _lines(shared_data / "wikitext-2-raw" / "wiki.test.raw")
    count = sum(len(ids) for ids in native(texts, add_special_tokens=False)["input_ids"])
    assert count != PINNED["wikitext-2-test"][0]


if __name__ == "__main__":  # print PINNED (run under transformers 4.x, from the repository root)
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).parents[1]))
    data = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[2] / "shared" / "data")
    print(json.dumps(digests(AutoTokenizer.from_pretrained(str(FIXTURE)), data), indent=4))
