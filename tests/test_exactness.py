"""Exactness: every sampler draws from the order-sigma joint of the model.

For a tiny model whose conditionals are far from uniform we enumerate the
exact joint of the masked block (``joint_log_prob`` over every completion),
draw 20,000 samples per method in one batch, and require a chi-square
goodness-of-fit p-value > 1e-3 and a total-variation distance within what
the sample size explains. The same test rejects deliberately broken samplers,
which shows it has the power to notice a wrong distribution.
"""

import copy
import itertools
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import stats

import asarm
from asarm import drafters, orders, sampling
from asarm.tokenizer import XLNET_SPECIAL_TOKENS

# slow: statistical exactness sweeps (20,000 samples per case)
pytestmark = pytest.mark.slow

NUM_SAMPLES = 20_000
P_MIN = 1e-3
USABLE = list(range(len(XLNET_SPECIAL_TOKENS), len(XLNET_SPECIAL_TOKENS) + 6))  # 6 sampleable ids
N = 6

BACKENDS = ["plain", "cached"]  # a missing backend fails the tests (asarm.decoders imports both)


@pytest.fixture(scope="module")
def model():
    # a large init scale makes conditionals peaked and strongly dependent on context,
    # so the draft (conditionally independent) differs visibly from the joint
    return asarm.ASARM.from_config(vocab_size=len(XLNET_SPECIAL_TOKENS) + len(USABLE), d_model=32, n_layer=2,
                                   n_head=2, d_inner=64, initializer_range=0.6, seed=3)


def _prompt(sigma_row: torch.Tensor, m: int, tokens) -> torch.Tensor:
    """A row with ``tokens`` at the visible positions (rank order) and the mask id elsewhere."""
    x = torch.full((N,), XLNET_SPECIAL_TOKENS["<mask>"], dtype=torch.long)
    pos = orders.order_to_pos(sigma_row[None])[0]
    x[pos[:m]] = torch.tensor(tokens)
    return x


def exact_joint(model, x, sigma, m, temperature=1.0):
    """All completions of the masked block of one row and their probabilities."""
    pos = orders.order_to_pos(sigma[None])[0][m:]
    outcomes = torch.tensor(list(itertools.product(USABLE, repeat=len(pos))))
    seqs = x.repeat(len(outcomes), 1)
    seqs[:, pos] = outcomes
    rows = len(outcomes)
    logp = model.joint_log_prob(seqs, sigma.repeat(rows, 1), torch.full((rows,), m), temperature=temperature)
    return seqs, logp.double().exp().numpy()


def goodness_of_fit(samples: torch.Tensor, seqs: torch.Tensor, probs: np.ndarray, seed: int = 0):
    """``(p_value, tv, tv_bound)`` of samples against the enumerated joint.

    Bins with expected count < 5 are pooled. ``tv_bound`` is the 99.9th
    percentile of the TV distance between ``probs`` and the empirical
    distribution of as many exact samples (simulated).
    """
    index = {tuple(s): i for i, s in enumerate(seqs.tolist())}
    ids = [index.get(tuple(s), -1) for s in samples.tolist()]
    assert -1 not in ids, "a sample is outside the support (banned token, or a prompt token changed)"
    s = len(ids)
    counts = np.bincount(ids, minlength=len(probs)).astype(float)
    expected = probs * s
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:  # merge a small pooled bin into the smallest big one
        obs, exp = obs[:-1], exp[:-1]
        obs[np.argmin(exp)] += counts[~big].sum()
        exp[np.argmin(exp)] += expected[~big].sum()
    exp = exp * obs.sum() / exp.sum()
    p_value = stats.chisquare(obs, exp).pvalue
    tv = 0.5 * np.abs(counts / s - probs).sum()
    rng = np.random.default_rng(seed)
    sim = 0.5 * np.abs(rng.multinomial(s, probs / probs.sum(), size=300) / s - probs).sum(-1)
    return p_value, tv, float(np.quantile(sim, 0.999))


def draw(model, x, sigma, m, seed=0, **kwargs):
    b = NUM_SAMPLES
    g = torch.Generator().manual_seed(seed)
    return asarm.sample(model, x.repeat(b, 1), sigma.repeat(b, 1), torch.full((b,), m), generator=g, **kwargs)


CASES = {
    # name: (order kind, m, prompt tokens, sample kwargs)
    "sequential": ("sorted", 2, [9, 12], dict(method="sequential")),
    "assd_k2": ("sorted", 2, [9, 12], dict(method="assd", k=2)),
    "assd_k5": ("random", 2, [10, 13], dict(method="assd", k=5)),
    "assd_T0.7": ("sorted", 2, [11, 9], dict(method="assd", k=3, temperature=0.7)),
    "assd_bonus": ("random", 3, [9, 14, 12], dict(method="assd", k=2, bonus=True)),
    "ngram": ("prefix", 3, [13, 9, 13], dict(method="ngram", k=3)),
    "assd_draft_only_T": ("sorted", 2, [12, 10], dict(method="assd", k=3, temperature=0.6, temperature_mode="draft")),
    # the paper's draft-only temperature: draft 0 untempered, kept without a test
    "assd_draft0_paper": ("sorted", 2, [12, 10], dict(method="assd", k=3, temperature=0.6, temperature_mode="draft",
                                                      draft_only_temperature="paper")),
    # the paper's n-gram drafter: 13 has no successor in the prompt, so it falls back to unigrams
    "ngram_paper": ("prefix", 3, [9, 12, 13], dict(method="ngram", k=3, ngram_draft="paper")),
    # random order: first positions without a known left token take self-draft (model) rounds
    "ngram_paper_random": ("random", 2, [10, 13], dict(method="ngram", k=3, ngram_draft="paper")),
    "ngram_paper_draft0_paper": ("random", 2, [11, 9], dict(method="ngram", k=3, ngram_draft="paper", temperature=0.6,
                                                            temperature_mode="draft", draft_only_temperature="paper")),
    # one-call rounds: the oracle call drafts the next round (for every outcome, or from the ranks < n)
    "lookahead_full": ("random", 2, [10, 13], dict(method="assd", k=2, lookahead="full")),
    "lookahead_full_k3_T": ("sorted", 2, [11, 9], dict(method="assd", k=3, lookahead="full", temperature=0.7)),
    "lookahead_cheap": ("random", 2, [10, 13], dict(method="assd", k=2, lookahead="cheap")),
    "lookahead_cheap_k3_draft_T": ("sorted", 2, [12, 10], dict(method="assd", k=3, lookahead="cheap", temperature=0.6,
                                                               temperature_mode="draft", draft_only_temperature="paper")),
    # adaptive draft length: each row's k follows its own acceptance
    "assd_adaptive": ("random", 2, [10, 13], dict(method="assd", k=3, adaptive_k=True)),
    "lookahead_full_adaptive": ("sorted", 2, [9, 12], dict(method="assd", k=3, lookahead="full", adaptive_k=True)),
    "ngram_adaptive": ("prefix", 3, [13, 9, 13], dict(method="ngram", k=3, adaptive_k=True)),
}


def call_bound(masked: int, kwargs) -> int:
    """The most calls a row may take: ``N - m``, except draft-only temperature with draft 0 verified."""
    verified_draft0 = (kwargs.get("temperature_mode") == "draft"
                       and kwargs.get("draft_only_temperature", "verify0") == "verify0")
    return 2 * masked if verified_draft0 else masked


def _order(kind, m, seed):
    g = torch.Generator().manual_seed(seed)
    if kind == "prefix":  # the prompt is the first m positions: adjacent pairs feed the n-gram draft
        return torch.arange(N)
    if kind == "sorted":
        return orders.random_sorted_order(1, N, m, generator=g)[0]
    return orders.random_order(1, N, generator=g)[0]


def count_rounds(monkeypatch) -> Counter:
    """Count the paper n-gram sampler's rounds by kind: ``"ngram"`` (count draft) and ``"model"`` (self-draft)."""
    rounds = Counter()

    def counted(kind, fn):
        def wrapper(*args, **kwargs):
            rounds[kind] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(drafters, "context_ngram_draft", counted("ngram", drafters.context_ngram_draft))
    monkeypatch.setattr(drafters.SelfDrafter, "propose", counted("model", drafters.SelfDrafter.propose))
    return rounds


# The plain backend recomputes everything (one pass per distinct query limit: k + 2 passes per one-call
# round), so it runs one case of each one-call and adaptive variant, not all; tests/test_cache.py shows that
# both backends return the same logits on every call of those decodes, and the same samples.
PLAIN_ONCE = {"lookahead_cheap_k3_draft_T", "lookahead_full_k3_T", "assd_adaptive", "ngram_adaptive"}
CASE_BACKENDS = [(case, b) for case in CASES for b in BACKENDS if not (b == "plain" and case in PLAIN_ONCE)]


@pytest.mark.parametrize("case, backend", CASE_BACKENDS)
def test_sampler_matches_exact_joint(model, case, backend, monkeypatch):
    kind, m, tokens, kwargs = CASES[case]
    rounds = count_rounds(monkeypatch)
    sigma = _order(kind, m, seed=len(case))
    x = _prompt(sigma, m, tokens)
    target_t = 1.0 if kwargs.get("temperature_mode") == "draft" else kwargs.get("temperature", 1.0)
    seqs, probs = exact_joint(model, x, sigma, m, target_t)
    assert abs(probs.sum() - 1) < 1e-4  # the enumerated joint is normalised
    assert probs.max() > 4 / len(probs), "test model too flat to be a meaningful check"
    out = draw(model, x, sigma, m, seed=1, backend=backend, **kwargs)
    p_value, tv, bound = goodness_of_fit(out.sequences, seqs, probs)
    assert p_value > P_MIN, f"{case}: chi-square p = {p_value:.2e}"
    assert tv <= bound, f"{case}: TV {tv:.4f} > {bound:.4f}"
    masked = N - m
    assert (out.nfe <= call_bound(masked, kwargs)).all()
    if kwargs["method"] == "sequential":
        assert (out.nfe == masked).all()
    if kwargs["method"] == "ngram":
        assert out.drafted.sum() > 0, "the n-gram draft was never used: the case does not test it"
    if kwargs.get("ngram_draft") == "paper":
        assert rounds["ngram"] > 0, "no count-drafted round: the case does not test the paper's drafter"
        if kind == "random":
            assert rounds["model"] > 0, "no self-draft round: the case does not test the no-left-token rule"
    if kwargs["method"] == "assd" and call_bound(masked, kwargs) == masked and kwargs["k"] > 2:
        # (with k = 2 a two-call round always yields exactly two tokens, without bonus)
        assert out.nfe.float().mean() < masked, "ASSD saved no call at all"


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_mode_model_samples_its_exact_joint(model, backend):
    """A model left in train() mode (dropout on) is sampled and scored as the deterministic network:
    the samples match the enumerated joint, and the mode is train() again afterwards."""
    kind, m, tokens, kwargs = CASES["assd_k5"]
    training = copy.deepcopy(model).train()
    assert training.config.dropout > 0  # otherwise train() mode would change nothing
    sigma = _order(kind, m, seed=len("assd_k5"))
    x = _prompt(sigma, m, tokens)
    seqs, probs = exact_joint(training, x, sigma, m)
    np.testing.assert_allclose(probs, exact_joint(model, x, sigma, m)[1], rtol=1e-5)  # eval-mode joint
    out = draw(training, x, sigma, m, seed=1, backend=backend, **kwargs)
    assert all(mod.training for mod in training.modules())
    p_value, tv, bound = goodness_of_fit(out.sequences, seqs, probs)
    assert p_value > P_MIN, f"train mode: chi-square p = {p_value:.2e}"
    assert tv <= bound, f"train mode: TV {tv:.4f} > {bound:.4f}"


MIXED = {
    "assd": dict(method="assd", k=3),
    "lookahead_full": dict(method="assd", k=3, lookahead="full", adaptive_k=True),
    "lookahead_cheap": dict(method="assd", k=2, lookahead="cheap"),
    "assd_draft0_paper": dict(method="assd", k=3, temperature=0.6, temperature_mode="draft",
                              draft_only_temperature="paper"),
    "ngram_paper": dict(method="ngram", k=3, ngram_draft="paper"),
}


@pytest.mark.parametrize("sampler, backend", [(s, b) for s in MIXED for b in BACKENDS
                                              if not (b == "plain" and s == "lookahead_full")])
def test_mixed_batch_each_row_matches_its_own_joint(model, backend, sampler):
    """One batch mixing orders, prompt sizes and prompts; every group against its own joint."""
    kwargs = MIXED[sampler]
    configs = [("sorted", 2, [9, 12]), ("random", 3, [10, 14, 11]), ("sorted", 1, [13])]
    per = 8000
    xs, sigmas, ms = [], [], []
    for i, (kind, m, tokens) in enumerate(configs):
        sigma = _order(kind, m, seed=10 + i)
        xs.append(_prompt(sigma, m, tokens))
        sigmas.append(sigma)
        ms.append(m)
    # interleave the groups so that rows finish at different times inside one batch
    group = torch.arange(per * len(configs)) % len(configs)
    x = torch.stack(xs)[group]
    sigma = torch.stack(sigmas)[group]
    m = torch.tensor(ms)[group]
    out = asarm.sample(model, x, sigma, m, generator=torch.Generator().manual_seed(5), backend=backend, **kwargs)
    for i in range(len(configs)):
        seqs, probs = exact_joint(model, xs[i], sigmas[i], ms[i])  # every sampler here targets the T = 1 joint
        p_value, tv, bound = goodness_of_fit(out.sequences[group == i], seqs, probs)
        assert p_value > P_MIN and tv <= bound, f"group {i}: p = {p_value:.2e}, TV {tv:.4f} (bound {bound:.4f})"
        assert (out.nfe[group == i] <= N - ms[i]).all()


def _broken_accept_ignoring_draft(p_d, q_d, u, valid, r_atol=0.0, accept_first=False):
    ok = u < p_d  # forgets to divide by q: wrong acceptance probability
    if ok.shape[1]:
        ok[:, 0] |= torch.as_tensor(accept_first)
    return (ok & valid).long().cumprod(-1).sum(-1)


_accept_drafts = sampling.accept_drafts


def _broken_accept_draft0_untested(p_d, q_d, u, valid, r_atol=0.0, accept_first=False):
    # keeps draft 0 without a test even when it was tempered (wrong unless q_0 = p_0)
    return _accept_drafts(p_d, q_d, u, valid, r_atol, accept_first=True)


BROKEN = {
    # name: (case, override of the sample kwargs, replacement of sampling.accept_drafts)
    "r_atol": ("assd_k2", dict(r_atol=0.5), None),
    "accept_ignores_draft": ("assd_k2", {}, _broken_accept_ignoring_draft),
    "ngram_paper_accept_ignores_draft": ("ngram_paper", {}, _broken_accept_ignoring_draft),
    "tempered_draft0_kept_untested": ("assd_draft_only_T", {}, _broken_accept_draft0_untested),
    # a lookahead draft was conditioned on less than the oracle: keeping it untested is wrong
    "lookahead_draft0_untested": ("lookahead_full", {}, _broken_accept_draft0_untested),
    "lookahead_cheap_accept_ignores_draft": ("lookahead_cheap", {}, _broken_accept_ignoring_draft),
}


@pytest.mark.parametrize("broken", list(BROKEN))
def test_the_test_rejects_a_broken_sampler(model, broken, monkeypatch):
    case, override, accept = BROKEN[broken]
    kind, m, tokens, kwargs = CASES[case]
    sigma = _order(kind, m, seed=len(case))
    x = _prompt(sigma, m, tokens)
    seqs, probs = exact_joint(model, x, sigma, m)  # every case here targets the T = 1 joint
    if accept is not None:
        monkeypatch.setattr(sampling, "accept_drafts", accept)
    out = draw(model, x, sigma, m, seed=1, **(kwargs | override))
    p_value, tv, bound = goodness_of_fit(out.sequences, seqs, probs)
    assert p_value < P_MIN and tv > bound, f"broken sampler not detected: p = {p_value:.2e}, TV {tv:.4f}"
