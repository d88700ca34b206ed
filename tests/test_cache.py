"""The cached decoding backend (asarm/cache.py) against the plain one.

Contract under test: for every call the samplers make (and any other call
pattern, including rewrites of tokens the cache was computed from),
``CachedDecoder`` returns the same logits as ``PlainDecoder`` within 1e-5 in
float32. Since the samplers consume the same uniforms whatever the backend,
equal logits mean equal samples, which is tested too.
"""

import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import asarm
from asarm import ASARM, orders
from asarm import cache
from asarm.cache import CachedDecoder, attend, cache_bytes_per_token_per_layer, stream_chunk
from asarm.decoders import PlainDecoder, Queries

ATOL = 1e-5
VOCAB = 64
MASK = 6


def make_model(seed=0, **overrides):
    """A tiny random model; a larger init scale gives peaked, context-dependent logits."""
    cfg = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=2, d_inner=64, initializer_range=0.1, seed=seed)
    cfg.update(overrides)
    return ASARM.from_config(**cfg)


@pytest.fixture(scope="module")
def model():
    return make_model()


def make_batch(batch, length, prompt_sizes, kind, seed):
    """``(x, sigma, m)``: random prompt tokens, masked elsewhere; sorted or fully random orders."""
    g = torch.Generator().manual_seed(seed)
    m = torch.as_tensor(prompt_sizes).long().expand(batch).clone()
    if kind == "sorted":
        sigma = orders.random_sorted_order(batch, length, m, generator=g)
    else:
        sigma = orders.random_order(batch, length, generator=g)
    x = torch.randint(10, VOCAB, (batch, length), generator=g)
    x = torch.where(sigma < m[:, None], x, torch.full_like(x, MASK))
    return x, sigma, m


class TwinDecoder:
    """Calls the plain and the cached decoder on the same input; returns plain's logits, records the gap."""

    def __init__(self, model, sigma, m):
        self.plain, self.cached = PlainDecoder(model, sigma, m), CachedDecoder(model, sigma, m)
        self.calls, self.worst = 0, 0.0

    def __call__(self, rows, x, n_known, queries):
        a = self.plain(rows, x, n_known, queries)
        b = self.cached(rows, x, n_known, queries)
        assert a.shape == b.shape
        real = queries.valid  # padding slots are not part of the contract
        self.worst = max(self.worst, (a - b).abs()[real].max().item())
        self.calls += 1
        return a


def twin_sample(model, x, sigma, m, **kwargs):
    twin = TwinDecoder(model, sigma, m)
    out = asarm.sample(model, x, sigma, m, generator=torch.Generator().manual_seed(0), decoder=twin, **kwargs)
    return out, twin


# ---------------------------------------------------------------------------- parity over full decodes
DECODES = {
    "sequential_sorted": ("sorted", dict(method="sequential")),
    "sequential_random": ("random", dict(method="sequential")),
    "assd_sorted": ("sorted", dict(method="assd", k=4)),
    "assd_random_bonus": ("random", dict(method="assd", k=3, bonus=True)),
    "assd_draft_only_T": ("random", dict(method="assd", k=5, temperature=0.5, temperature_mode="draft")),
    "ngram_sorted": ("sorted", dict(method="ngram", k=4)),
    # one-call rounds: queries of several limits (< n_known) in one call
    "lookahead_full_random": ("random", dict(method="assd", k=3, lookahead="full", temperature=0.5)),
    "lookahead_cheap_sorted_adaptive": ("sorted", dict(method="assd", k=4, lookahead="cheap", adaptive_k=True)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(DECODES))
def test_every_call_of_a_decode_matches_plain(model, case):
    kind, kwargs = DECODES[case]
    # a batch mixing prompt sizes (rows finish at different times, calls pass row subsets)
    x, sigma, m = make_batch(5, 24, [1, 3, 8, 12, 20], kind, seed=len(case))
    out, twin = twin_sample(model, x, sigma, m, **kwargs)
    assert twin.calls == int(out.nfe.max())  # one decoder call per round; the longest row is in every round
    assert twin.worst < ATOL, f"{case}: max |cached - plain| = {twin.worst:.2e}"
    assert ((out.sequences == x) | (sigma >= m[:, None])).all()


@pytest.mark.slow
def test_parity_with_clamped_relative_positions():
    model = make_model(seed=1, clamp_len=5)  # distances beyond 5 share one embedding
    x, sigma, m = make_batch(3, 20, [2, 4, 9], "random", seed=3)
    _, twin = twin_sample(model, x, sigma, m, method="assd", k=3)
    assert twin.worst < ATOL


@pytest.mark.slow
def test_random_call_sequences_with_rewrites(model):
    """Calls in arbitrary order on row subsets; tokens anywhere (even the prompt) change between calls."""
    g = torch.Generator().manual_seed(7)
    B, N = 6, 16
    x, sigma, m = make_batch(B, N, [1, 2, 4, 6, 9, 15], "random", seed=11)
    plain, cached = PlainDecoder(model, sigma, m), CachedDecoder(model, sigma, m)
    pos = orders.order_to_pos(sigma)
    worst = 0.0
    for step in range(60):
        rows = torch.randperm(B, generator=g)[: int(torch.randint(1, B + 1, (1,), generator=g))].sort().values
        mm = m[rows]
        n_known = mm + (torch.rand(len(rows), generator=g) * (N - mm + 1)).long().clamp(max=N - mm)
        q_start = (torch.rand(len(rows), generator=g) * n_known).long().clamp(min=0)
        q_start = torch.where(torch.rand(len(rows), generator=g) < 0.6, n_known.clamp(max=N - 1), q_start)
        q_count = torch.minimum(torch.randint(0, 5, (len(rows),), generator=g), N - q_start)
        num_queries = int(q_count.max()) + int(torch.randint(0, 3, (1,), generator=g))
        if num_queries == 0:
            continue
        # rewrite random tokens: mostly unverified ranks (>= q_start), sometimes any rank
        for i, r in enumerate(rows.tolist()):
            if torch.rand(1, generator=g) < 0.7:
                lo = int(q_start[i]) if torch.rand(1, generator=g) < 0.8 else 0
                rank = int(torch.randint(lo, N, (1,), generator=g))
                x[r, pos[r, rank]] = int(torch.randint(10, VOCAB, (1,), generator=g))
        queries = Queries.span(n_known, q_start, q_count, num_queries)
        a = plain(rows, x[rows], n_known, queries)
        b = cached(rows, x[rows], n_known, queries)
        real = torch.arange(num_queries)[None, :] < q_count[:, None]
        if real.any():
            worst = max(worst, (a - b).abs()[real].max().item())
    assert worst < ATOL, f"max |cached - plain| = {worst:.2e}"


def test_cache_reuse_is_what_the_issue_asks(model):
    """Prompt = one pass; draft = queries only; oracle = drafts' content + queries; sequential = 1 + 1."""
    x, sigma, m = make_batch(1, 20, [5], "sorted", seed=0)
    dec = CachedDecoder(model, sigma, m)
    one, rows = torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    dec(rows, x, m, Queries.span(m, m, 4 * one))  # first draft call: the prompt block and 4 queries
    assert int(dec.length[0]) == 5
    pos = orders.order_to_pos(sigma)[0]
    x[0, pos[5:9]] = torch.tensor([11, 12, 13, 14])  # drafts written
    dec(rows, x, m + 4, Queries.span(m + 4, m, 4 * one))  # oracle: 4 new content streams
    assert int(dec.length[0]) == 9
    x[0, pos[7]] = 20  # rejected at rank 7: residual written, ranks 8.. are stale drafts
    assert int(dec._valid_length(rows, x.gather(1, pos[None]), m)[0]) == 7  # cut at the rewrite
    dec(rows, x, 8 * one, Queries.span(8 * one, 8 * one, 4 * one))
    assert int(dec.length[0]) == 8


# ---------------------------------------------------------------------------- same samples
@pytest.mark.parametrize("method,kwargs", [("sequential", {}), ("assd", dict(k=4)), ("assd", dict(k=3, bonus=True)),
                                           ("ngram", dict(k=3))])
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sorted", "random"])
def test_same_generator_gives_same_samples(model, method, kwargs, kind):
    x, sigma, m = make_batch(6, 20, [1, 2, 3, 5, 8, 13], kind, seed=4)
    outs = [asarm.sample(model, x, sigma, m, method=method, generator=torch.Generator().manual_seed(1),
                         backend=backend, **kwargs) for backend in ("plain", "cached")]
    for field in ("sequences", "nfe", "drafted", "accepted"):
        assert torch.equal(getattr(outs[0], field), getattr(outs[1], field)), field


def test_same_samples_on_the_tokenizer_model(tiny_model, local_tokenizer):
    ids = local_tokenizer("def main():\n    return 0\n", return_tensors="pt")["input_ids"][:, :16]
    n = ids.shape[1]
    sigma = orders.random_sorted_order(2, n, 4, generator=torch.Generator().manual_seed(0))
    x = torch.where(sigma < 4, ids.expand(2, -1), torch.full_like(sigma, tiny_model.mask_token_id))
    m = torch.full((2,), 4)
    a, b = (asarm.sample(tiny_model, x, sigma, m, method="assd", k=5, generator=torch.Generator().manual_seed(2),
                         backend=backend) for backend in ("plain", "cached"))
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)


# ---------------------------------------------------------------------------- memory on a long sequence
class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.slow
def test_long_sequence_without_quadratic_tensors():
    N, H, d, layers, k = 2048, 2, 32, 2, 5
    model = make_model(seed=5, n_head=H, d_model=d, n_layer=layers, initializer_range=0.02)
    x, sigma, m = make_batch(1, N, [N // 20], "sorted", seed=9)  # ~5% visible, as in the paper
    dec = CachedDecoder(model, sigma, m)
    row = torch.zeros(1, dtype=torch.long)
    with LargestTensor() as prompt_pass:  # the prompt pass (the sampler's first call would do the same)
        dec(row, x, m, Queries.span(m, m, torch.full((1,), k)))
    with LargestTensor() as decoding:  # every later call reuses the cache
        out = asarm.sample(model, x, sigma, m, method="assd", k=k, generator=torch.Generator().manual_seed(0),
                           decoder=dec)  # the decoder that made the prompt pass
    assert (out.sequences != MASK).all()
    # the cache: K and V, 2 * d_model floats per token per layer, for all N tokens, plus a 2N x d table per layer
    assert cache_bytes_per_token_per_layer(model.config) == 2 * d * 4
    assert dec.nbytes() == layers * N * cache_bytes_per_token_per_layer(model.config) + layers * 2 * N * d * 4
    # the prompt pass: position scores of (m + k) streams against 2N distances; decoding: O(N x d) tensors only
    assert prompt_pass.largest <= H * (int(m) + k) * 2 * N
    assert decoding.largest <= 4 * N * d
    # ...while a single plain call builds H x N x N attention scores
    with LargestTensor() as plain_call:
        PlainDecoder(model, sigma, m)(row, x, m, Queries.span(m, m, torch.full((1,), k)))
    assert plain_call.largest >= H * N * N >= 16 * decoding.largest


def test_long_prompt_first_call_stays_within_the_chunk_budget():
    """A long prompt's first call has T ~ L ~ N new streams and keys (a 60 KB prompt is ~15k tokens).
    Chunked over streams, no tensor exceeds the budget; unchunked, the position scores alone had
    H x T x 2N entries (and the indices T x L int64): gigabytes at 15k tokens."""
    N, H, d, layers, k = 4096, 2, 32, 2, 5
    model = make_model(seed=6, n_head=H, d_model=d, n_layer=layers, initializer_range=0.02)
    x, sigma, m = make_batch(1, N, [N - 16], "sorted", seed=10)
    row = torch.zeros(1, dtype=torch.long)
    with LargestTensor() as first:
        logits = CachedDecoder(model, sigma, m)(row, x, m, Queries.span(m, m, torch.full((1,), k)))
    assert logits.shape == (1, k, VOCAB) and torch.isfinite(logits).all()
    unchunked = H * (N - 16 + k) * 2 * N
    assert first.largest <= cache.ATTENTION_CHUNK_ELEMENTS < unchunked


_PEAK_RSS_SCRIPT = textwrap.dedent("""
    import resource, sys, torch
    torch.set_num_threads(1)
    from asarm import ASARM, orders
    from asarm.cache import CachedDecoder
    from asarm.decoders import Queries
    N = int(sys.argv[1])
    model = ASARM.from_config(vocab_size=64, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    m = torch.tensor([N - 16])
    sigma = orders.random_sorted_order(1, N, m, generator=torch.Generator().manual_seed(0))
    x = torch.randint(10, 64, (1, N), generator=torch.Generator().manual_seed(1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    CachedDecoder(model, sigma, m)(torch.zeros(1, dtype=torch.long), x, m, Queries.span(m, m, torch.full((1,), 5)))
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # KiB -> MiB on Linux
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_long_prompt_first_call_peak_memory_is_bounded():
    """What the process really holds (tensor sizes alone missed heap fragmentation): an 8192-token
    prompt's first call grew the peak RSS by 2.7 GiB before the chunking, ~0.33 GiB after."""
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_SCRIPT, "8192"], capture_output=True, text=True,
                         timeout=600, check=True)
    assert int(out.stdout.split()[-1]) < 1024, f"peak RSS grew by {out.stdout.split()[-1]} MiB"


@pytest.mark.slow
def test_chunked_attention_is_exact_and_memory_linear(monkeypatch):
    """With a tiny budget (one stream per chunk) the logits equal the unchunked ones, and the largest
    tensor is O(N x d): the K/V cache and the per-stream activations, not the T x L attention."""
    N, layers, d_inner = 1024, 2, 64
    model = make_model(seed=7)
    x, sigma, m = make_batch(2, N, [N - 40, 300], "random", seed=11)
    m = torch.tensor([N - 40, 300])
    x = torch.where(sigma < m[:, None], x.clamp(min=10), torch.full_like(x, MASK))
    rows, q = torch.arange(2), torch.full((2,), 6)
    monkeypatch.setattr(cache, "ATTENTION_CHUNK_ELEMENTS", 1 << 40)
    whole = CachedDecoder(model, sigma, m)(rows, x, m, Queries.span(m, m, q))
    monkeypatch.setattr(cache, "ATTENTION_CHUNK_ELEMENTS", 1 << 14)
    assert stream_chunk(2, 2, N - 40 + 6, N - 40, N) == 1  # the budget really forces one stream per chunk
    with LargestTensor() as small:
        chunked = CachedDecoder(model, sigma, m)(rows, x, m, Queries.span(m, m, q))
    torch.testing.assert_close(chunked, whole, atol=ATOL, rtol=0)
    assert small.largest <= 2 * layers * 2 * N * d_inner  # linear in N (quadratic: H x T x 2N ~ 8M)


@pytest.mark.slow
def test_chunked_attention_gives_the_same_samples(monkeypatch):
    x, sigma, m = make_batch(3, 96, [5, 20, 60], "random", seed=12)
    model = make_model(seed=8)
    kw = dict(method="assd", k=4, backend="cached")
    reference = asarm.sample(model, x, sigma, m, generator=torch.Generator().manual_seed(3), **kw)
    monkeypatch.setattr(cache, "ATTENTION_CHUNK_ELEMENTS", 1)
    chunked = asarm.sample(model, x, sigma, m, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(chunked.sequences, reference.sequences) and torch.equal(chunked.nfe, reference.nfe)


def test_stream_chunk_contract():
    assert stream_chunk(1, 2, 10, 5, 8, budget=10 ** 9) == 10  # everything in one chunk
    assert stream_chunk(1, 2, 10, 5, 8, budget=2 * 21 * 3) == 3  # a stream costs R x H x (L + 2N) = 42
    assert stream_chunk(4, 12, 10, 5000, 5000, budget=1) == 1  # never below one stream
    assert stream_chunk(1, 1, 0, 0, 1, budget=5) == 1  # no streams: still a valid slice width


# ---------------------------------------------------------------------------- precision and compile
def test_half_precision_and_autocast_stay_finite_and_close(model):
    x, sigma, m = make_batch(3, 24, [2, 5, 11], "random", seed=6)
    rows, q = torch.arange(3), torch.full((3,), 4)
    ref = CachedDecoder(model, sigma, m)(rows, x, m, Queries.span(m, m, q))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dec = CachedDecoder(model, sigma, m)
        low = dec(rows, x, m, Queries.span(m, m, q))
    assert dec.k_cache.dtype == torch.bfloat16  # the cache stores what autocast computes
    half = make_model().to(torch.float16)  # masking constant must be finite in fp16
    low16 = CachedDecoder(half, sigma, m)(rows, x, m, Queries.span(m, m, q))
    for out in (low, low16):
        assert torch.isfinite(out).all()
        assert (out - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


@pytest.mark.slow
def test_attention_core_compiles_without_graph_breaks():
    g = torch.Generator().manual_seed(0)
    R, T, H, L, D, P = 2, 3, 2, 7, 4, 20
    args = (torch.randn(R, T, H, D, generator=g), torch.randn(R, H, L, D, generator=g),
            torch.randn(R, H, L, D, generator=g), torch.randn(H, P, D, generator=g),
            torch.randint(0, P, (R, T, L), generator=g), torch.rand(R, T, L, generator=g) < 0.7,
            torch.randn(H, D, generator=g), torch.randn(H, D, generator=g), 0.5)
    args[5][..., 0] = True
    compiled = torch.compile(attend, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*args), attend(*args))


@pytest.mark.slow
def test_mixed_limit_and_duplicate_queries_match_the_plain_decoder(model):
    """Any queries, not only the samplers': random ranks (duplicates in one call included) with random
    limits in [m, n_known], on both decoders; each query equals the same query asked alone (plain)."""
    g = torch.Generator().manual_seed(21)
    B, N, K = 5, 14, 9
    x, sigma, m = make_batch(B, N, [1, 2, 4, 6, 9], "random", seed=22)
    plain, cached = PlainDecoder(model, sigma, m), CachedDecoder(model, sigma, m)
    rows = torch.arange(B)
    for _ in range(8):
        n_known = m + (torch.rand(B, generator=g) * (N - m + 1)).long().clamp(max=N - m)
        rank = torch.randint(0, N, (B, K), generator=g)
        rank[:, 1] = rank[:, 0]  # a duplicate in every row
        # any limit from the prompt size to n_known (the prompt is always known, and bidirectional)
        limit = m[:, None] + (torch.rand(B, K, generator=g) * (n_known - m + 1)[:, None]).long()
        limit = torch.minimum(limit, n_known[:, None])
        limit[:, 1] = limit[:, 0]  # same rank, same limit: XLNet's target_mapping would sum the two
        valid = torch.rand(B, K, generator=g) < 0.8
        valid[:, :2] = True
        queries = Queries(rank, limit, valid)
        a, b = plain(rows, x, n_known, queries), cached(rows, x, n_known, queries)
        assert (a - b).abs()[valid].max() < ATOL
        for r, j in [(0, 0), (2, 1), (4, K - 1)]:
            if valid[r, j]:
                one = Queries(rank[r:r + 1, j:j + 1], limit[r:r + 1, j:j + 1], valid[r:r + 1, j:j + 1])
                alone = PlainDecoder(model, sigma[r:r + 1], m[r:r + 1])(torch.zeros(1, dtype=torch.long),
                                                                        x[r:r + 1], n_known[r:r + 1], one)
                assert (alone[0, 0] - a[r, j]).abs().max() < ATOL
