"""Sampler: input validation, reproducibility, banned ids, call counts, and the pure acceptance math."""

import pytest
import torch

import asarm
from conftest import random_batch, recording_decoder
from asarm.sampling import accept_drafts, probs_from_logits, residual_probs, sample_from_probs


def _batch(model, b=6, n=24, seed=0):
    return random_batch(model, b, n, seed)


@pytest.mark.parametrize("method", ["sequential", "assd", "ngram"])
def test_completes_rows_keeps_prompt_and_respects_call_bounds(tiny_model, method):
    x, sigma, m = _batch(tiny_model)
    out = asarm.sample(tiny_model, x, sigma, m, method=method, k=4, generator=torch.Generator().manual_seed(0))
    prompt = sigma < m[:, None]
    assert torch.equal(out.sequences[prompt], x[prompt])
    assert not torch.isin(out.sequences[~prompt], torch.tensor(tiny_model.banned_token_ids)).any()
    masked = x.shape[1] - m
    assert (out.nfe <= masked).all() and (out.nfe >= 1).all()
    if method == "sequential":
        assert torch.equal(out.nfe, masked)
    assert (out.accepted <= out.drafted).all()


@pytest.mark.parametrize("method", ["sequential", "assd", "ngram"])
def test_same_seed_same_samples(tiny_model, method):
    x, sigma, m = _batch(tiny_model, seed=3)
    run = lambda seed: asarm.sample(tiny_model, x, sigma, m, method=method, k=3,
                                    generator=torch.Generator().manual_seed(seed))
    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.nfe, b.nfe)
    assert not torch.equal(a.sequences, c.sequences)


def test_int32_inputs_give_the_same_samples(tiny_model):
    x, sigma, m = _batch(tiny_model, seed=5)
    for method in ("sequential", "assd", "ngram"):
        a = asarm.sample(tiny_model, x, sigma, m, method=method, generator=torch.Generator().manual_seed(0))
        b = asarm.sample(tiny_model, x.int(), sigma.int(), m.int(), method=method,
                         generator=torch.Generator().manual_seed(0))
        assert torch.equal(a.sequences, b.sequences)
    lp = tiny_model.joint_log_prob(a.sequences.int(), sigma.int(), m.int())
    assert torch.allclose(lp, tiny_model.joint_log_prob(a.sequences, sigma, m))


def test_ngram_draft_at_tiny_temperature_is_the_most_frequent_bigram():
    from asarm.drafters import context_bigram_draft

    tokens = [5, 7, 5, 7, 5, 8, 5, 0]
    known = [True] * 7 + [False]
    drafts, dists = context_bigram_draft(tokens, known, list(range(8)), 7, 1, [0.99], temperature=0.003)
    assert drafts == [7] and dists[0][7] > 0.999  # counts {7: 2, 8: 1}: no overflow, argmax wins


def test_bonus_token_saves_calls(tiny_model):
    x, sigma, m = _batch(tiny_model, b=16, n=40, seed=4)
    kw = dict(method="assd", k=4, temperature=0.3)
    plain = asarm.sample(tiny_model, x, sigma, m, generator=torch.Generator().manual_seed(0), **kw)
    bonus = asarm.sample(tiny_model, x, sigma, m, bonus=True, generator=torch.Generator().manual_seed(0), **kw)
    assert bonus.nfe.sum() < plain.nfe.sum()  # some rounds accept every draft and gain a token
    assert (bonus.nfe <= x.shape[1] - m).all()


def test_bad_inputs_raise_clear_errors(tiny_model):
    x, sigma, m = _batch(tiny_model, b=2, n=8)
    cases = [
        (dict(num_visible=torch.tensor([8, 2])), ValueError, "no masked position"),
        (dict(num_visible=torch.tensor([0, 2])), ValueError, "no visible position"),
        (dict(k=0), ValueError, "k .* >= 1"),
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature=-1.0), ValueError, "temperature"),
        (dict(method="beam"), ValueError, "unknown method"),
        (dict(sigma=sigma[:, :7]), ValueError, "disagrees"),
        (dict(sigma=torch.zeros_like(sigma)), ValueError, "not a permutation"),
        (dict(input_ids=x.clone().fill_(tiny_model.vocab_size)), ValueError, "outside the model's vocabulary"),
        (dict(input_ids=x[0]), ValueError, r"\(B, N\)"),
        (dict(num_visible=torch.tensor([2])), ValueError, "num_visible must have shape"),
        (dict(input_ids=x.float()), TypeError, "integers"),
        (dict(r_atol=-0.1), ValueError, "r_atol"),
        (dict(temperature_mode="oracle"), ValueError, "temperature_mode"),
        (dict(backend="magic"), ValueError, "unknown decoding backend"),
    ]
    for override, exc, pattern in cases:
        kw = dict(input_ids=x, sigma=sigma, num_visible=m, method="assd", k=2)
        kw.update(override)
        with pytest.raises(exc, match=pattern):
            asarm.sample(tiny_model, kw.pop("input_ids"), kw.pop("sigma"), kw.pop("num_visible"), **kw)


def test_sample_from_probs_is_inverse_cdf_and_skips_zero_mass():
    p = torch.tensor([0.0, 0.25, 0.0, 0.75, 0.0])
    u = torch.tensor([0.0, 0.2, 0.2499, 0.25, 0.9999])
    assert sample_from_probs(p.expand(5, 5), u).tolist() == [1, 1, 1, 3, 3]
    g = torch.Generator().manual_seed(0)
    draws = sample_from_probs(p.expand(40_000, 5), torch.rand(40_000, generator=g))
    freq = torch.bincount(draws, minlength=5).float() / 40_000
    assert torch.allclose(freq, p, atol=0.01)


def test_residual_and_acceptance_math():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    q = torch.tensor([[0.2, 0.6, 0.2]])
    assert torch.allclose(residual_probs(p, q), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.equal(residual_probs(p, p), p)  # nothing to correct
    # leading accepts stop at the first failure; invalid slots never count
    p_d = torch.tensor([[0.9, 0.1, 0.9], [0.9, 0.9, 0.9]])
    q_d = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]])
    u = torch.full((2, 3), 0.5)
    valid = torch.tensor([[True, True, True], [True, True, False]])
    assert accept_drafts(p_d, q_d, u, valid).tolist() == [1, 2]
    assert accept_drafts(p_d * 0, q_d, u, valid, accept_first=True).tolist() == [1, 1]
    assert accept_drafts(p_d * 0, q_d, u, valid, r_atol=0.6).tolist() == [3, 2]
    probs = probs_from_logits(torch.zeros(2, 4), 1.0, torch.tensor([True, False, False, True]))
    assert torch.allclose(probs, torch.tensor([[0, 0.5, 0.5, 0]] * 2))


# ---------------------------------------------------------------------------- batches: per-row streams, padding
VARIANTS = {
    "sequential": dict(method="sequential"),
    "assd": dict(method="assd", k=3),
    "assd_bonus_adaptive": dict(method="assd", k=4, bonus=True, adaptive_k=True),
    "lookahead_full": dict(method="assd", k=3, lookahead="full"),
    "lookahead_cheap": dict(method="assd", k=3, lookahead="cheap", adaptive_k=True),
    "ngram": dict(method="ngram", k=3),
    "ngram_paper": dict(method="ngram", k=3, ngram_draft="paper"),
}


def _row_generators(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_rows_sample_depends_only_on_its_own_generator(tiny_model, variant):
    """Per-row streams: row r of a batch equals row r sampled alone, and a batch in another order."""
    x, sigma, m = _batch(tiny_model, b=5, n=20, seed=11)
    seeds = [3, 1, 4, 1, 5]
    kw = VARIANTS[variant]
    batch = asarm.sample(tiny_model, x, sigma, m, generator=_row_generators(seeds), **kw)
    perm = torch.tensor([4, 2, 0, 3, 1])
    shuffled = asarm.sample(tiny_model, x[perm], sigma[perm], m[perm],
                            generator=_row_generators([seeds[i] for i in perm.tolist()]), **kw)
    assert torch.equal(shuffled.sequences, batch.sequences[perm]) and torch.equal(shuffled.nfe, batch.nfe[perm])
    for r in (0, 3):
        alone = asarm.sample(tiny_model, x[r:r + 1], sigma[r:r + 1], m[r:r + 1],
                             generator=_row_generators([seeds[r]]), **kw)
        assert torch.equal(alone.sequences[0], batch.sequences[r]) and int(alone.nfe[0]) == int(batch.nfe[r])
    # and the streams matter: another seed for row 0 changes row 0 only
    other = asarm.sample(tiny_model, x, sigma, m, generator=_row_generators([9] + seeds[1:]), **kw)
    assert torch.equal(other.sequences[1:], batch.sequences[1:])
    assert not torch.equal(other.sequences[0], batch.sequences[0])


@pytest.mark.parametrize("variant", ["assd", "lookahead_full", "ngram_paper"])
def test_padded_rows_sample_as_their_unpadded_selves(tiny_model, variant):
    """``lengths``: a short row padded to the batch's length (padding at the highest ranks) gives the
    sample it gives alone, and its padding is left untouched."""
    n_short, n_long, pad = 12, 20, tiny_model.mask_token_id
    x, sigma, m = _batch(tiny_model, b=2, n=n_short, seed=12)
    x1, sigma1, _ = _batch(tiny_model, b=2, n=n_long, seed=13)
    alone = asarm.sample(tiny_model, x[:1], sigma[:1], m[:1], generator=_row_generators([7]), **VARIANTS[variant])
    xp = torch.cat([x[:1], torch.full((1, n_long - n_short), pad)], 1)
    sp = torch.cat([sigma[:1], torch.arange(n_short, n_long)[None]], 1)  # padding: the highest ranks
    both = asarm.sample(tiny_model, torch.cat([xp, x1[:1]]), torch.cat([sp, sigma1[:1]]), torch.tensor([int(m[0]), 5]),
                        lengths=torch.tensor([n_short, n_long]), generator=_row_generators([7, 8]), **VARIANTS[variant])
    assert torch.equal(both.sequences[0, :n_short], alone.sequences[0])
    assert (both.sequences[0, n_short:] == pad).all() and int(both.nfe[0]) == int(alone.nfe[0])
    assert (both.sequences[1] != pad).all()


def test_bad_lengths_and_generators_are_refused(tiny_model):
    x, sigma, m = _batch(tiny_model, b=2, n=8)
    with pytest.raises(ValueError, match="lengths"):
        asarm.sample(tiny_model, x, sigma, m, lengths=torch.tensor([8, 0]))
    with pytest.raises(ValueError, match="one per row"):
        asarm.sample(tiny_model, x, sigma, m, generator=_row_generators([1]))
    with pytest.raises(ValueError, match="lookahead"):
        asarm.sample(tiny_model, x, sigma, m, method="ngram", lookahead="full")


@pytest.mark.parametrize("lookahead", ["full", "cheap"])
def test_one_call_rounds_make_one_call_per_round(tiny_model, lookahead):
    """After its first (self-draft) round a row makes one call per round, and every call yields a token."""
    x, sigma, m = _batch(tiny_model, b=8, n=32, seed=14)
    calls = []
    out = asarm.sample(tiny_model, x, sigma, m, method="assd", k=3, lookahead=lookahead,
                       decoder=recording_decoder(calls), generator=torch.Generator().manual_seed(0))
    two_call = asarm.sample(tiny_model, x, sigma, m, method="assd", k=3, bonus=True,
                            generator=torch.Generator().manual_seed(0))
    masked = x.shape[1] - m
    assert (out.nfe <= masked).all()
    # a draft call has every query at or after n_known; after the first round there are none
    draft_calls = sum(1 for n_known, ranks in calls for nk, rk in zip(n_known, ranks) if min(rk) >= nk)
    assert draft_calls == len(x)  # one per row: its first round
    assert out.nfe.sum() < two_call.nfe.sum()


def test_for_method_keeps_lookahead_for_assd_only():
    from asarm.sampling import SamplingConfig

    cfg = SamplingConfig(k=3, lookahead="cheap", bonus=True)
    assert cfg.for_method("assd") == cfg
    assert cfg.for_method("sequential").lookahead == "off" and cfg.for_method("ngram").method == "ngram"
    assert cfg.for_method("ngram").k == 3 and cfg.for_method("ngram").bonus


@pytest.mark.parametrize("lookahead", ["off", "full", "cheap"])
def test_adaptive_k_follows_its_rule_round_by_round(peaked_model, lookahead):
    """From the decoder's calls alone: each round verifies k_t drafts and keeps a_t; the next round
    verifies min(k_{t+1}, ranks left) with k_{t+1} = k_t + 1 after a full round, else a_t + 1 (in [1, k])."""
    x, sigma, m = _batch(peaked_model, b=1, n=40, seed=15)
    calls, k = [], 4
    # bonus on (one-call rounds imply it): every round yields kept + 1 tokens, which the calls then show
    asarm.sample(peaked_model, x, sigma, m, method="assd", k=k, lookahead=lookahead, adaptive_k=True, bonus=True,
                 decoder=recording_decoder(calls), generator=torch.Generator().manual_seed(3))
    # an oracle call: queries below n_known (the drafts, verified at their own ranks); n = its lowest rank
    rounds = [(min(ranks[0]), n_known[0] - min(ranks[0])) for n_known, ranks in calls if min(ranks[0]) < n_known[0]]
    assert len(rounds) > 3
    lengths = set()
    k_t = None
    for (n0, drafted), (n1, drafted_next) in zip(rounds, rounds[1:]):
        kept = n1 - n0 - 1  # the next round starts after the kept drafts and one corrected / bonus token
        k_t = drafted if k_t is None else k_t
        k_t = min(k, k_t + 1) if kept >= drafted else max(1, kept + 1)
        assert drafted_next == min(k_t, x.shape[1] - n1), (n0, drafted, kept, drafted_next)
        lengths.add(drafted_next)
    assert len(lengths) >= 3, "k never moved: the case does not test the rule"
