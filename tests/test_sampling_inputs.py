"""Sampling whatever state the caller leaves things in: the module's mode, non-finite logits, odd argument types.

Contracts under test:
* ``sample``, ``joint_log_prob`` and both decoders run the network without dropout in
  ``train()`` mode too, give the eval-mode results, and restore every submodule's mode
  (also when the run raises).
* A softmax that comes out NaN (NaN/inf weights, ``temperature=1e-300``) raises
  ``NonFiniteLogitsError`` (a ``ValueError``) naming the likely cause, instead of
  returning the last vocabulary id everywhere.
* ``k``/``temperature``/``r_atol`` given as numpy scalars or 0-d tensors are accepted and
  give the same samples; bad values are refused with the option named. Token ids of
  any integer dtype are range-checked correctly.
"""

import copy

import numpy as np
import pytest
import torch

import asarm
from asarm import ASARM
from asarm.cache import CachedDecoder
from asarm.decoders import PlainDecoder, Queries
from asarm.model import without_dropout
from asarm.sampling import NonFiniteLogitsError, probs_from_logits
from conftest import random_batch

METHODS = ["sequential", "assd", "ngram"]
BACKENDS = ["cached", "plain"]


@pytest.fixture(scope="module")
def dropout_model(local_tokenizer):
    """A tiny model with heavy dropout, so that train-mode forwards differ visibly from eval-mode ones."""
    return ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=1,
                             dropout=0.5)


def _draw(model, batch, seed=0, **kwargs):
    x, sigma, m = batch
    return asarm.sample(model, x, sigma, m, generator=torch.Generator().manual_seed(seed), **kwargs)


def _modes(model):
    return [mod.training for mod in model.modules()]


# ---------------------------------------------------------------------------- mode independence
def test_dropout_really_changes_train_mode_forwards(dropout_model):
    """The premise: without the guard, a train()-mode network is random (so the tests below can fail)."""
    x, sigma, m = random_batch(dropout_model, b=2, n=12, seed=1)
    mapping, _, _ = asarm.orders.target_mapping(sigma, m, torch.ones_like(m))
    mask = asarm.orders.joint_mask(sigma, m)
    dropout_model.train()
    try:
        with torch.no_grad():
            a, b = dropout_model(x, mask, mapping), dropout_model(x, mask, mapping)
    finally:
        dropout_model.eval()
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_train_mode_samples_equal_eval_mode_samples(dropout_model, method, backend):
    batch = random_batch(dropout_model, b=4, n=16, seed=2)
    kw = dict(method=method, k=3, backend=backend)
    reference = _draw(dropout_model, batch, **kw)  # eval mode
    dropout_model.train()
    try:
        first, second = _draw(dropout_model, batch, **kw), _draw(dropout_model, batch, **kw)
        assert all(_modes(dropout_model)), "sample() left the model out of train mode"
    finally:
        dropout_model.eval()
    for out in (first, second):
        assert torch.equal(out.sequences, reference.sequences)
        assert torch.equal(out.nfe, reference.nfe)


def test_train_mode_scoring_equals_eval_mode_scoring(dropout_model):
    x, sigma, m = random_batch(dropout_model, b=3, n=12, seed=3)
    done = _draw(dropout_model, (x, sigma, m), method="sequential").sequences
    reference = dropout_model.joint_log_prob(done, sigma, m)
    rows, q = torch.arange(3), torch.full((3,), 2)
    plain_ref = PlainDecoder(dropout_model, sigma, m)(rows, done, m, Queries.span(m, m, q))
    dropout_model.train()
    try:
        scores = [dropout_model.joint_log_prob(done, sigma, m) for _ in range(2)]
        plain = PlainDecoder(dropout_model, sigma, m)(rows, done, m, Queries.span(m, m, q))
        cached = CachedDecoder(dropout_model, sigma, m)(rows, done, m, Queries.span(m, m, q))
        assert all(_modes(dropout_model))
    finally:
        dropout_model.eval()
    for s in scores:
        torch.testing.assert_close(s, reference)
    torch.testing.assert_close(plain, plain_ref)
    torch.testing.assert_close(cached, plain_ref, atol=1e-5, rtol=0)


def test_mixed_modes_are_restored_and_also_after_an_error(dropout_model):
    x, sigma, m = random_batch(dropout_model, b=2, n=10, seed=4)
    dropout_model.train()
    dropout_model.xlnet.lm_loss.eval()  # a frozen part: must stay in eval mode
    before = _modes(dropout_model)
    try:
        _draw(dropout_model, (x, sigma, m), method="assd")
        assert _modes(dropout_model) == before

        def failing_decoder(*args, **kwargs):
            assert not any(_modes(dropout_model)), "the network ran with dropout on"
            raise RuntimeError("decoder failed")

        with pytest.raises(RuntimeError, match="decoder failed"):
            _draw(dropout_model, (x, sigma, m), method="assd", decoder=failing_decoder)
        assert _modes(dropout_model) == before
    finally:
        dropout_model.eval()


def test_without_dropout_leaves_an_eval_model_alone(dropout_model):
    with without_dropout(dropout_model) as module:
        assert module is dropout_model and not any(_modes(dropout_model))
    assert not any(_modes(dropout_model))


# ---------------------------------------------------------------------------- non-finite logits
@pytest.fixture
def nan_model(tiny_model):
    broken = copy.deepcopy(tiny_model)
    with torch.no_grad():
        broken.xlnet.transformer.word_embedding.weight[10] = float("nan")  # one poisoned prompt token suffices
    return broken


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", METHODS)
def test_nan_model_raises_naming_the_weights(nan_model, method, backend):
    x, sigma, m = random_batch(nan_model, b=2, n=10, seed=5)
    x = torch.where(sigma < m[:, None], torch.full_like(x, 10), x)  # every prompt token is the NaN one
    with pytest.raises(NonFiniteLogitsError, match="non-finite logits .* weights are probably NaN/inf"):
        _draw(nan_model, (x, sigma, m), method=method, backend=backend)
    with pytest.raises(ValueError, match="non-finite logits"):  # also a ValueError: it is the input's fault
        nan_model.joint_log_prob(x.where(x != nan_model.mask_token_id, 11), sigma, m)


@pytest.mark.parametrize("method", METHODS)
def test_underflowing_temperature_raises_naming_the_temperature(tiny_model, method):
    batch = random_batch(tiny_model, b=2, n=10, seed=6)
    with pytest.raises(NonFiniteLogitsError, match=r"temperature=1e-300: logits / T overflows"):
        _draw(tiny_model, batch, method=method, temperature=1e-300)
    x, sigma, m = batch
    with pytest.raises(NonFiniteLogitsError, match="temperature=1e-300"):
        tiny_model.joint_log_prob(x.where(x != tiny_model.mask_token_id, 11), sigma, m, temperature=1e-300)


def test_tiny_but_representable_temperature_is_greedy(tiny_model):
    x, sigma, m = random_batch(tiny_model, b=3, n=10, seed=7)
    a = _draw(tiny_model, (x, sigma, m), seed=0, method="sequential", temperature=1e-30).sequences
    b = _draw(tiny_model, (x, sigma, m), seed=1, method="sequential", temperature=1e-30).sequences
    assert torch.equal(a, b)  # argmax at every step, whatever the uniforms


def test_huge_temperature_is_uniform_over_allowed_ids():
    banned = torch.tensor([True, False, False, False, True])
    logits = torch.tensor([[3.0, -2.0, 0.5, 9.0, 1.0]])
    p = probs_from_logits(logits, 1e300, banned)
    assert torch.allclose(p, torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3, 0]]))


def test_inf_logits_raise_unless_only_at_banned_ids():
    banned = torch.tensor([True, False, False])
    with pytest.raises(NonFiniteLogitsError, match="non-finite logits"):
        probs_from_logits(torch.tensor([[0.0, float("inf"), 1.0]]), 1.0, banned)
    with pytest.raises(NonFiniteLogitsError, match="non-finite logits"):
        probs_from_logits(torch.tensor([[0.0, float("nan"), 1.0]]), 1.0, banned)
    p = probs_from_logits(torch.tensor([[float("inf"), 0.0, 0.0]]), 1.0, banned)  # banned: never sampled anyway
    assert torch.allclose(p, torch.tensor([[0.0, 0.5, 0.5]]))


# ---------------------------------------------------------------------------- argument types and values
@pytest.mark.parametrize("method", METHODS)
def test_numpy_and_tensor_scalars_give_the_same_samples(tiny_model, method):
    batch = random_batch(tiny_model, b=3, n=12, seed=8)
    reference = _draw(tiny_model, batch, method=method, k=3, temperature=0.5, r_atol=0.0).sequences
    variants = [  # 0.5 is exact in every float type, so the samples must be identical
        dict(k=np.int64(3), temperature=np.float32(0.5), r_atol=np.float64(0.0)),
        dict(k=np.int32(3), temperature=np.float64(0.5), r_atol=0),
        dict(k=torch.tensor(3), temperature=torch.tensor(0.5), r_atol=torch.tensor(0.0)),
    ]
    for kw in variants:
        out = _draw(tiny_model, batch, method=method, **kw).sequences
        assert torch.equal(out, reference), kw


BAD_OPTIONS = [
    (dict(k=0), r"k \(draft length\) must be an integer >= 1 .*got 0"),
    (dict(k=-2), r"k \(draft length\) must be an integer >= 1 .*got -2"),
    (dict(k=2.5), r"k \(draft length\) must be an integer >= 1 .*got 2.5"),
    (dict(k=True), r"k \(draft length\) must be an integer >= 1 .*got True"),
    (dict(k="5"), r"k \(draft length\) must be an integer >= 1 .*got '5'"),
    (dict(k=np.int64(0)), r"k \(draft length\) must be an integer >= 1"),
    (dict(k=torch.tensor([3, 3])), r"k \(draft length\) must be an integer >= 1"),
    (dict(temperature=0.0), r"temperature must be a finite number > 0 .*got 0.0"),
    (dict(temperature=-1), r"temperature must be a finite number > 0 .*got -1"),
    (dict(temperature=float("nan")), r"temperature must be a finite number > 0 .*got nan"),
    (dict(temperature=float("inf")), r"temperature must be a finite number > 0 .*got inf"),
    (dict(temperature="1.0"), r"temperature must be a finite number > 0 .*got '1.0'"),
    (dict(temperature=True), r"temperature must be a finite number > 0 .*got True"),
    (dict(temperature=np.float64(0.0)), r"temperature must be a finite number > 0"),
    (dict(temperature=torch.tensor([1.0, 2.0])), r"temperature must be a finite number > 0"),
    (dict(r_atol=-0.5), r"r_atol must be a finite number >= 0"),
    (dict(r_atol=float("nan")), r"r_atol must be a finite number >= 0"),
]


@pytest.mark.parametrize("override,pattern", BAD_OPTIONS, ids=[str(o) for o, _ in BAD_OPTIONS])
def test_bad_options_are_named(tiny_model, override, pattern):
    batch = random_batch(tiny_model, b=2, n=8, seed=9)
    with pytest.raises(ValueError, match=pattern):
        _draw(tiny_model, batch, **(dict(method="assd") | override))


def test_bad_temperature_in_joint_log_prob_is_named(tiny_model):
    x, sigma, m = random_batch(tiny_model, b=2, n=8, seed=9)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        tiny_model.joint_log_prob(x, sigma, m, temperature=0)


def _small_id_batch(model, seed):
    """A batch whose ids all fit int8 (< 128)."""
    x, sigma, m = random_batch(model, b=3, n=12, seed=seed)
    x = torch.where(sigma < m[:, None], 10 + x % 100, x)
    assert int(x.max()) < 128
    return x, sigma, m


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32])
def test_ids_of_any_integer_dtype_are_accepted(tiny_model, dtype):
    assert tiny_model.vocab_size > 255  # the old check compared against a bound wrapped to the narrow dtype
    x, sigma, m = _small_id_batch(tiny_model, seed=10)
    reference = _draw(tiny_model, (x, sigma, m), method="assd")
    narrow_sigma = sigma.to(dtype)  # N = 12 fits every dtype
    out = _draw(tiny_model, (x.to(dtype), narrow_sigma, m.to(dtype)), method="assd")
    assert torch.equal(out.sequences, reference.sequences)
    done = reference.sequences
    if int(done.max()) > torch.iinfo(dtype).max:  # sampled ids need not fit int8 / uint8
        return
    torch.testing.assert_close(tiny_model.joint_log_prob(done.to(dtype), narrow_sigma, m.to(dtype)),
                               tiny_model.joint_log_prob(done, sigma, m))


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int64])
def test_ids_outside_the_vocabulary_are_named_with_their_place(tiny_model, dtype):
    x, sigma, m = _small_id_batch(tiny_model, seed=11)
    x[1, 4] = -3
    vocab = tiny_model.vocab_size
    with pytest.raises(ValueError, match=rf"token id -3 \(row 1, position 4\) is outside the model's vocabulary "
                                         rf"\[0, {vocab}\): the ids come from another tokenizer"):
        _draw(tiny_model, (x.to(dtype), sigma, m))
    if dtype != torch.int8:
        x[1, 4] = tiny_model.vocab_size + 7
        with pytest.raises(ValueError, match=rf"token id {tiny_model.vocab_size + 7} \(row 1, position 4\)"):
            _draw(tiny_model, (x.to(dtype), sigma, m))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool, torch.complex64])
def test_non_integer_ids_are_refused(tiny_model, dtype):
    x, sigma, m = _small_id_batch(tiny_model, seed=12)
    with pytest.raises(TypeError, match=r"input_ids must hold integers, got dtype .*convert it with \.long\(\)"):
        _draw(tiny_model, (x.to(dtype), sigma, m))
