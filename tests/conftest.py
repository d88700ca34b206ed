"""Test setup: no network, few threads, tiny models and the offline tokenizer."""

import os

# must be set before transformers / huggingface_hub are imported
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("WANDB_MODE", "disabled")
# the hub reachability check follows proxies: a proxy set on the machine must not lead a test out
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)

import json
import socket
from pathlib import Path

import pytest
import torch

from asarm.tokenizer import has_slow_tokenizer, save_tokenizer, transformers_version

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The evaluation data: $ASARM_EVAL_DATA (the variable the commands read), else ../shared/data beside the
# repository. ASARM_SHARED_DATA, the tests' former name for it, is still accepted (deprecated).
DATA_ENV, OLD_DATA_ENV = "ASARM_EVAL_DATA", "ASARM_SHARED_DATA"
SHARED_DATA = Path(os.environ.get(DATA_ENV) or os.environ.get(OLD_DATA_ENV)
                   or Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
if os.environ.get(OLD_DATA_ENV) and not os.environ.get(DATA_ENV):
    import warnings

    warnings.warn(f"{OLD_DATA_ENV} is deprecated: set {DATA_ENV} (the variable the commands read)",
                  DeprecationWarning, stacklevel=1)

_real_connect = socket.socket.connect


def _local_only_connect(self, address):
    """Tests may talk to this machine (DDP rendezvous, Slurm) but never to the network."""
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = address[0]
        local = {"localhost", "127.0.0.1", "::1", socket.gethostname()}
        try:
            local.add(socket.gethostbyname(socket.gethostname()))
        except OSError:
            pass
        if not (host in local or str(host).startswith("127.")):
            raise OSError(f"network access blocked in tests (tried to connect to {address})")
    return _real_connect(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    monkeypatch.setattr(socket.socket, "connect", _local_only_connect)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$ASARM_EVAL_DATA``, else ``../shared/data``; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"evaluation data not found at {SHARED_DATA} (set {DATA_ENV})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def local_tokenizer():
    """The offline XLNet-pipeline tokenizer (SentencePiece unigram, XLNet's specials at XLNet's ids,
    transformers 4's XLNet pipeline on either major; vocabulary 800), trained on the stdlib."""
    from asarm.data import stdlib_texts
    from asarm.tokenizer import build_local_tokenizer

    return build_local_tokenizer(stdlib_texts(200_000), vocab_size=800)


@pytest.fixture(scope="session")
def slow_tokenizer(local_tokenizer):
    """The slow ``XLNetTokenizer`` from the same SentencePiece model file as ``local_tokenizer``
    (transformers 4 only: 5.x has no slow XLNet tokenizer)."""
    if not has_slow_tokenizer():
        pytest.skip(f"transformers {transformers_version()} has no slow (SentencePiece) tokenizer")
    from transformers import XLNetTokenizer

    return XLNetTokenizer(local_tokenizer.asarm_spiece_file)


# the kinds of XLNet tokenizer the installed transformers has: fast always, slow on 4.x only
TOKENIZER_KINDS = ["fast", "slow"] if has_slow_tokenizer() else ["fast"]


@pytest.fixture(scope="session", params=TOKENIZER_KINDS)
def both_tokenizers(request, local_tokenizer):
    """Each kind of XLNet-pipeline tokenizer that exists (same model file, same ids)."""
    return local_tokenizer if request.param == "fast" else request.getfixturevalue("slow_tokenizer")


@pytest.fixture(scope="session")
def tiny_model(local_tokenizer):
    """A tiny random ASARM over the local tokenizer (float32, eval mode)."""
    from asarm import ASARM

    return ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)


@pytest.fixture(scope="session")
def peaked_model(local_tokenizer):
    """A tiny random ASARM whose conditionals are peaked and context-dependent (initializer range 0.6):
    drafts get rejected, tempering changes them, adaptive k moves."""
    from asarm import ASARM

    return ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64,
                             initializer_range=0.6, seed=1)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny
    models train ~10x faster on one thread than on two when other jobs share the cores, and every run of
    the module does the same arithmetic (the thread count changes float sums, so the weights)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_batch(model, b: int = 6, n: int = 24, seed: int = 0):
    """``(ids, sigma, m)``: ``b`` rows of ``n`` random non-special ids, half sorted and half random orders,
    prompt sizes in ``[1, n / 2)``, masked positions holding the mask id."""
    from asarm import XLNET_SPECIAL_TOKENS, orders

    g = torch.Generator().manual_seed(seed)
    m = torch.randint(1, n // 2, (b,), generator=g)
    sigma = torch.cat([orders.random_sorted_order(b // 2, n, m[: b // 2], generator=g),
                       orders.random_order(b - b // 2, n, generator=g)])
    x = torch.randint(len(XLNET_SPECIAL_TOKENS), model.vocab_size, (b, n), generator=g)
    x = torch.where(sigma < m[:, None], x, torch.full_like(x, model.mask_token_id))
    return x, sigma, m


def recording_decoder(calls: list, base=None):
    """A decoder class (inject with ``sample(..., decoder=...)``) that answers as ``base`` (default
    ``PlainDecoder``) and appends ``(n_known, [valid query ranks per row])`` of every call to ``calls``."""
    from asarm.decoders import PlainDecoder

    base = base or PlainDecoder

    class Recording(base):
        def __call__(self, rows, x, n_known, queries):
            ranks = [[int(r) for r, ok in zip(rr, vv) if ok] for rr, vv in zip(queries.rank, queries.valid)]
            calls.append((n_known.tolist(), ranks))
            return super().__call__(rows, x, n_known, queries)

    return Recording


# ---------------------------------------------------------------------------- evaluation commands (test_eval_*.py)
FAST = ["--device", "cpu", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, local_tokenizer):
    path = tmp_path_factory.mktemp("models") / "tiny-asarm"
    tiny_model.save_pretrained(path, tokenizer=local_tokenizer)
    return path


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory, local_tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    judge = GPT2LMHeadModel(GPT2Config(vocab_size=len(local_tokenizer), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    path = tmp_path_factory.mktemp("models") / "tiny-judge"
    judge.save_pretrained(path)
    save_tokenizer(local_tokenizer, path)
    return path


@pytest.fixture(scope="session")
def wiki_subset(shared_data, tmp_path_factory):
    """The first 30 lines of the real WikiText-2 test file (a temp copy, outside the repo)."""
    lines = (shared_data / "wikitext-2-raw" / "wiki.test.raw").read_text(encoding="utf-8").splitlines()[:30]
    path = tmp_path_factory.mktemp("data") / "wiki.small.raw"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _results(out):
    return json.loads((Path(out) / "results.json").read_text())


def _samples(out):
    rows = {}
    for f in sorted(Path(out).glob("samples.*.jsonl")):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            rows[row["uid"]] = [{k: v for k, v in r.items() if not k.startswith("time_")} for r in row["records"]]
    return rows


def _spec_args(model, data, out, *extra):
    return ["speculative", "--model", str(model), "--data", str(data), "--seq-len", "24", "--trials", "4",
            "--output-dir", str(out), *FAST, *extra]


def _without_time(results):
    return {m: {k: v for k, v in r.items() if not k.startswith("time")} for m, r in results["methods"].items()}
