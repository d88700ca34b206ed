"""Sampler: input validation, reproducibility, banned ids, call counts, and the pure acceptance math."""

import pytest
import torch

import asarm
from conftest import random_batch
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
