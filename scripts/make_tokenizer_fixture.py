"""Write ``tests/fixtures/xlnet_v4_tokenizer``: an XLNet tokenizer as transformers 4 saves it.

Run under transformers 4.x (the pipeline the released checkpoints were trained on):

    python scripts/make_tokenizer_fixture.py tests/fixtures/xlnet_v4_tokenizer

The SentencePiece model is asarm's offline one (vocabulary 1000, trained on this Python's
standard library); ``XLNetTokenizerFast`` converts it with transformers 4's own converter
and ``save_pretrained`` writes ``spiece.model``, ``tokenizer.json`` and the configs, the
files of ``xlnet-base-cased`` and of the released AS-ARMs. The tests load it on either
major and compare its ids on the real data with ids pinned from transformers 4.
"""

import sys
import tempfile
from pathlib import Path

from asarm.data import stdlib_texts
from asarm.tokenizer import _train_sentencepiece, has_slow_tokenizer


def main(out: str) -> None:
    if not has_slow_tokenizer():
        sys.exit("run this under transformers 4.x: the fixture is what transformers 4 writes")
    from transformers import XLNetTokenizerFast

    folder = tempfile.mkdtemp(prefix="asarm-fixture-")
    _train_sentencepiece(stdlib_texts(300_000), 1000, str(Path(folder) / "spiece"))
    XLNetTokenizerFast(vocab_file=str(Path(folder) / "spiece.model")).save_pretrained(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/xlnet_v4_tokenizer")
