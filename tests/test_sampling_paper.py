"""The samplers as the paper's code runs them: its n-gram drafter and its draft-only temperature.

``ngram_draft="paper"``: bigram counts of the known context, else unigram
counts, untempered; a round whose first position has no known left token is
a self-draft (model) round; oracle calls carry no query beyond the drafts.
``draft_only_temperature="paper"``: draft 0 untempered, kept without a test.
Exactness of both is in ``test_exactness.py``; here: the drafter's rules,
the call structure, the call bound, and both on real WikiText-2 text.
"""

import pytest
import torch

import asarm
from conftest import random_batch, recording_decoder
from asarm import drafters, orders, sampling
from asarm.acceptance import draft_temperatures
from asarm.drafters import context_counts, context_ngram_draft


# ---------------------------------------------------------------------------- the pure drafter
def test_counts_cover_known_positions_and_known_adjacent_pairs_only():
    tokens = [5, 7, 5, 9, 7, 5]
    known = [True, True, True, False, True, True]
    bigrams, unigrams = context_counts(tokens, known)
    assert {a: dict(c) for a, c in bigrams.items()} == {5: {7: 1}, 7: {5: 2}}  # (5, 9) and (9, 7) skip the gap
    assert dict(unigrams) == {5: 3, 7: 2}


def test_paper_draft_uses_bigrams_then_unigrams_then_drafted_left_tokens():
    # known: 5 7 5 8 _ _ _ ; 8 has no successor -> unigram counts {5: 2, 7: 1, 8: 1}
    tokens = [5, 7, 5, 8, 0, 0, 0]
    known = [True] * 4 + [False] * 3
    order = list(range(7))
    # u = 0.1 draws 5 from the unigrams; then 5 -> {7: 1, 8: 1} (u = 0.9 -> 8); then 8 -> unigrams again
    drafts, dists = context_ngram_draft(tokens, known, order, 4, 3, [0.1, 0.9, 0.6])
    assert dists[0] == pytest.approx({5: 0.5, 7: 0.25, 8: 0.25})
    assert dists[1] == pytest.approx({7: 0.5, 8: 0.5})
    assert dists[2] == dists[0]
    assert drafts == [5, 8, 7]
    assert all(sum(d.values()) == pytest.approx(1.0) for d in dists)


def test_paper_draft_drafts_past_unknown_left_tokens_and_ignores_its_own_drafts():
    # known: 3 4 _ _ 3 _ _ -> bigrams {3: {4: 1}}, unigrams {3: 2, 4: 1}
    tokens = [3, 4, 0, 0, 3, 0, 0]
    known = [True, True, False, False, True, False, False]
    order = [0, 1, 4, 6, 5, 2, 3]  # drafts at positions 6 (left unknown), 5 (left 3), 2 (left 4)
    drafts, dists = context_ngram_draft(tokens, known, order, 3, 3, [0.0, 0.0, 0.99])
    unigrams = pytest.approx({3: 2 / 3, 4: 1 / 3})
    assert dists[0] == unigrams  # no left token: unigrams (the bigram drafter would stop here)
    assert dists[1] == {4: 1.0}  # left token 3: its bigram successor
    # left token 4 has no counted successor; the drafted pair (4, 3) at positions 5, 6 is not counted
    assert dists[2] == unigrams
    assert drafts == [3, 4, 4]


def test_draft_temperatures():
    assert draft_temperatures(0.5, "both", "paper") == (0.5, 0.5, 0.5)  # the option only acts in "draft" mode
    assert draft_temperatures(0.5, "draft", "verify0") == (0.5, 0.5, 1.0)
    assert draft_temperatures(0.5, "draft", "paper") == (1.0, 0.5, 1.0)


# ---------------------------------------------------------------------------- the sampler
def _batch(model, b=8, n=24, seed=0):
    return random_batch(model, b, n, seed)


def test_paper_ngram_rounds_follow_the_left_token_rule(tiny_model, monkeypatch):
    """Count rounds start where the left neighbour is known; model rounds where it is not."""
    x, sigma, m = _batch(tiny_model, seed=1)
    seen = {"ngram": 0, "model": 0}
    real_draft, real_propose = drafters.context_ngram_draft, drafters.SelfDrafter.propose

    def draft(tokens, known, order, start, k, u):
        pos = order[start]
        assert pos >= 1 and known[pos - 1], "a count draft without a known left token"
        seen["ngram"] += 1
        return real_draft(tokens, known, order, start, k, u)

    def model_round(self, run, rows, k, bonus=None):
        for r in rows.tolist():
            pos = int(run.order[r, run.n[r]])
            assert pos == 0 or int(run.sigma[r, pos - 1]) >= int(run.n[r]), "a model round with a known left token"
        seen["model"] += 1
        assert bonus is False  # the paper's sampler has no bonus token
        return real_propose(self, run, rows, k, bonus)

    monkeypatch.setattr(drafters, "context_ngram_draft", draft)
    monkeypatch.setattr(drafters.SelfDrafter, "propose", model_round)
    out = asarm.sample(tiny_model, x, sigma, m, method="ngram", k=4, ngram_draft="paper",
                       generator=torch.Generator().manual_seed(0))
    assert seen["ngram"] > 0 and seen["model"] > 0
    assert (out.nfe <= x.shape[1] - m).all()


def test_paper_ngram_makes_no_extra_query_and_bigram_does(tiny_model):
    x, sigma, m = _batch(tiny_model, seed=2)
    calls = []
    recorder = recording_decoder(calls)
    asarm.sample(tiny_model, x, sigma, m, method="ngram", k=4, ngram_draft="paper", decoder=recorder,
                 generator=torch.Generator().manual_seed(0))
    # every call is a draft call (queries from rank n_known on) or an oracle call whose queries are the drafts
    for n_known, ranks in calls:
        for nk, rk in zip(n_known, ranks):
            assert min(rk) == nk or max(rk) == nk - 1
    calls.clear()
    asarm.sample(tiny_model, x, sigma, m, method="ngram", k=4, ngram_draft="bigram", decoder=recorder,
                 generator=torch.Generator().manual_seed(0))
    # the query after the last draft: an oracle call (drafts below n_known) that also asks for rank n_known
    assert any(min(rk) < nk == max(rk) for n_known, ranks in calls for nk, rk in zip(n_known, ranks))


def test_draft0_paper_keeps_the_call_bound_where_verify0_breaks_it(peaked_model):
    x, sigma, m = _batch(peaked_model, b=16, n=24, seed=3)
    kw = dict(method="assd", k=4, temperature=0.3, temperature_mode="draft")
    verify0 = asarm.sample(peaked_model, x, sigma, m, generator=torch.Generator().manual_seed(0), **kw)
    paper = asarm.sample(peaked_model, x, sigma, m, draft_only_temperature="paper",
                         generator=torch.Generator().manual_seed(0), **kw)
    masked = x.shape[1] - m
    assert (paper.nfe <= masked).all()
    assert (verify0.nfe > masked).any(), "verify0 never lost draft 0: the comparison shows nothing"
    assert paper.nfe.sum() < verify0.nfe.sum()


def test_new_options_are_validated(tiny_model):
    x, sigma, m = _batch(tiny_model, b=2, n=8)
    with pytest.raises(ValueError, match=r"unknown ngram_draft 'unigram'; choose one of bigram, paper"):
        asarm.sample(tiny_model, x, sigma, m, method="ngram", ngram_draft="unigram")
    with pytest.raises(ValueError, match=r"unknown draft_only_temperature 'verify'; choose one of verify0, paper"):
        asarm.sample(tiny_model, x, sigma, m, temperature_mode="draft", draft_only_temperature="verify")


def test_protocol_values_are_sampler_values():
    """The lead wires the protocol fields straight into ``sample``: their values must be accepted ones."""
    from asarm.evaluation.protocol import PROTOCOLS

    for protocol in PROTOCOLS.values():
        assert protocol.ngram_draft in sampling.NGRAM_DRAFTS
        assert protocol.draft_only_temperature in sampling.DRAFT_ONLY_TEMPERATURES
    assert (PROTOCOLS["paper"].ngram_draft, PROTOCOLS["paper"].draft_only_temperature) == ("paper", "paper")
    assert (PROTOCOLS["asarm"].ngram_draft, PROTOCOLS["asarm"].draft_only_temperature) == ("bigram", "verify0")


# ---------------------------------------------------------------------------- real data
def _wikitext_rows(shared_data, tokenizer, rows: int, n: int) -> torch.Tensor:
    """``rows`` consecutive ``n``-token chunks of WikiText-2 test (blank rows dropped), plain text."""
    from asarm.tokenizer import make_encoder

    lines = [line.strip() for line in (shared_data / "wikitext-2-raw" / "wiki.test.raw")
             .read_text(encoding="utf-8").splitlines() if line.strip()]
    encode = make_encoder(tokenizer, code=False)
    ids = []
    for line in lines:
        ids += encode(line)
        if len(ids) >= rows * n:
            break
    return torch.tensor(ids[: rows * n]).view(rows, n)


@pytest.mark.parametrize("kind", ["sorted", "random"])
def test_paper_samplers_on_wikitext(shared_data, local_tokenizer, peaked_model, kind):
    """The paper's visible count (``int(0.05 N) + 1``) on WikiText-2 chunks: both paper samplers stay
    within ``N - m`` calls per row, and the paper's drafter drafts more than the bigram one."""
    n, rows = 64, 8
    text = _wikitext_rows(shared_data, local_tokenizer, rows, n)
    visible = int(0.05 * n) + 1
    g = torch.Generator().manual_seed(0)
    sigma = (orders.random_sorted_order(rows, n, visible, generator=g) if kind == "sorted"
             else orders.random_order(rows, n, generator=g))
    m = torch.full((rows,), visible)
    x = torch.where(sigma < visible, text, torch.full_like(text, peaked_model.mask_token_id))
    run = lambda **kw: asarm.sample(peaked_model, x, sigma, m, k=5, generator=torch.Generator().manual_seed(1), **kw)
    paper = run(method="ngram", ngram_draft="paper")
    bigram = run(method="ngram", ngram_draft="bigram")
    draft0 = run(method="assd", temperature=0.5, temperature_mode="draft", draft_only_temperature="paper")
    for out in (paper, bigram, draft0):
        assert torch.equal(out.sequences[sigma < visible], text[sigma < visible])  # the prompt is kept
        assert (out.nfe <= n - visible).all()
    # the bigram drafter finds almost no adjacent known pair in a 4-token context; the paper's falls back
    assert paper.drafted.sum() > bigram.drafted.sum()


def test_infill_command_takes_the_options(tmp_path, local_tokenizer, capsys):
    from asarm.cli import main

    model = asarm.ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    args = ["infill", "--model", str(tmp_path / "m"), "--text", "import os[MASK:6]\nprint(os.getcwd())",
            "--k", "3", "--device", "cpu", "--temperature", "0.5", "--temperature-mode", "draft"]
    assert main(args + ["--method", "ngram", "--ngram-draft", "paper", "--draft-only-temperature", "paper"]) == 0
    out = capsys.readouterr().out
    assert "[ngram] sample 0: NFE" in out and "print(os.getcwd())" in out
    with pytest.raises(SystemExit):
        main(args + ["--ngram-draft", "trigram"])
