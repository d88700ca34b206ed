"""The masking-distribution objective: schedule, strata, batches, and what each query may see."""

import math

import pytest
import torch

from asarm import objective as obj
from asarm.orders import draft_mask, joint_mask, order_to_pos, step_mask

MASK = 6


def test_rate_schedule_widens_linearly_then_stays():
    assert obj.rate_range(0, 0.15, 0.85, 0.99, 5000) == (0.15, 0.15)
    lo, hi = obj.rate_range(2500, 0.15, 0.85, 0.99, 5000)
    assert lo == pytest.approx(0.50) and hi == pytest.approx(0.57)
    assert obj.rate_range(5000, 0.15, 0.85, 0.99, 5000) == pytest.approx((0.85, 0.99))
    assert obj.rate_range(10**6, 0.15, 0.85, 0.99, 5000) == pytest.approx((0.85, 0.99))
    assert obj.rate_range(0, 0.15, 0.85, 0.99, 0) == pytest.approx((0.85, 0.99))


def test_strata_partition_the_range_and_rates_stay_in_their_stratum():
    lo, hi, s = 0.85, 0.99, 8
    edges = [obj.stratum(lo, hi, i, s) for i in range(s)]
    assert edges[0][0] == pytest.approx(lo) and edges[-1][1] == pytest.approx(hi)
    for (a0, b0), (a1, _) in zip(edges, edges[1:]):
        assert b0 == pytest.approx(a1)
    for step in range(20):
        rates = [obj.stratified_rate(lo, hi, i, s, obj.batch_generator(0, step, i)) for i in range(s)]
        for r, (a, b) in zip(rates, edges):
            assert a <= r <= b
        assert rates == sorted(rates)
    with pytest.raises(ValueError):
        obj.stratum(lo, hi, s, s)


def test_batch_generator_is_a_pure_function_of_seed_step_slot():
    draw = lambda *k: torch.rand(4, generator=obj.batch_generator(*k))
    assert torch.equal(draw(0, 3, 1), draw(0, 3, 1))
    assert not torch.equal(draw(0, 3, 1), draw(0, 3, 2))
    assert not torch.equal(draw(0, 3, 1), draw(0, 4, 1))
    assert not torch.equal(draw(0, 3, 1), draw(1, 3, 1))


def test_num_targets_and_loss_weights():
    assert obj.num_targets(512, 0.99) == 506 and obj.num_targets(512, 0.15) == 76
    assert obj.num_targets(8, 0.01) == 1 and obj.num_targets(8, 0.999) == 7
    assert obj.loss_weight(0.8, "none") == 1.0
    assert obj.loss_weight(0.8, "r") == 0.8
    assert obj.loss_weight(0.8, "snr") == pytest.approx(4.0)
    with pytest.raises(ValueError):
        obj.loss_weight(0.8, "bogus")


@pytest.mark.parametrize("order", ["sorted", "random"])
def test_joint_batch_labels_line_up_with_target_mapping_rows(order):
    x = torch.randint(10, 100, (5, 24))
    b = obj.make_batch(x, 0.6, MASK, order=order, generator=torch.Generator().manual_seed(0))
    k = obj.num_targets(24, 0.6)
    n = 24 - k
    assert b.num_known == n and b.labels.shape == (5, k) and b.target_mapping.shape == (5, k, 24)
    assert torch.equal(b.target_mapping.argmax(-1), b.positions)
    assert torch.equal(b.target_mapping.sum(-1), torch.ones(5, k))
    assert torch.equal(b.labels, x.gather(1, b.positions))
    # query t predicts rank n + t
    assert torch.equal(b.sigma.gather(1, b.positions), (n + torch.arange(k)).expand(5, k))
    assert torch.equal(b.perm_mask, joint_mask(b.sigma, n))
    # teacher forcing: only the last-ranked position (read by no query) holds the mask id
    assert torch.equal(b.input_ids == MASK, b.sigma == 23)
    if order == "sorted":  # masked positions are decoded left to right
        masked_pos = order_to_pos(b.sigma)[:, n:]
        assert torch.equal(masked_pos, masked_pos.sort(-1).values)


@pytest.mark.parametrize("attention", ["all", "prompt", "causal"])
def test_parallel_batch_targets_see_only_known_tokens(attention):
    x = torch.randint(10, 100, (6, 20))
    b = obj.make_batch(x, 0.5, MASK, objective="parallel", visible_attention=attention,
                       generator=torch.Generator().manual_seed(1))
    n = b.num_known
    unknown = b.sigma >= n
    assert not (~b.perm_mask & unknown[:, None, :]).any(), "nobody may attend to a target"
    assert torch.equal(b.input_ids == MASK, unknown)
    assert torch.equal(b.labels, x.gather(1, b.positions))
    if attention == "all":
        assert torch.equal(b.perm_mask, draft_mask(b.sigma, n, n))
    if attention == "causal":
        assert torch.equal(b.perm_mask, step_mask(b.sigma, 0, n))
    if attention == "prompt":  # some prompt size p in 1..n per row: the draft mask at step n
        ok = [any(torch.equal(b.perm_mask[r], draft_mask(b.sigma[r:r + 1], p, n)[0]) for p in range(1, n + 1))
              for r in range(6)]
        assert all(ok)


def test_bad_choices_raise():
    x = torch.zeros(1, 8, dtype=torch.long)
    for kw in (dict(objective="x"), dict(order="x"), dict(visible_attention="x")):
        with pytest.raises(ValueError):
            obj.make_batch(x, 0.5, MASK, **kw)


def _logits(model, b):
    return model(b.input_ids, b.perm_mask, b.target_mapping)


@torch.no_grad()
def test_joint_queries_see_lower_ranks_only(tiny_model):
    """Changing the token of rank r leaves queries of rank <= r unchanged and changes later ones."""
    x = torch.randint(20, 500, (1, 16))
    b = obj.make_batch(x, 0.5, tiny_model.mask_token_id, generator=torch.Generator().manual_seed(2))
    n = b.num_known
    base = _logits(tiny_model, b)
    t = 2  # target query index; its rank is n + t
    pos = int(b.positions[0, t])
    y = b.input_ids.clone()
    y[0, pos] = 21 if int(y[0, pos]) != 21 else 22
    changed = _logits(tiny_model, obj.TrainingBatch(y, b.perm_mask, b.target_mapping, b.labels, b.positions,
                                                    b.sigma, n, b.rate))
    diff = (changed - base).abs().amax(-1)[0]
    assert diff[: t + 1].max() == 0, "a query saw its own or a later target"
    assert diff[t + 1:].min() > 0, "teacher forcing: later queries must see the true token"


@torch.no_grad()
def test_parallel_queries_see_no_target(tiny_model):
    x = torch.randint(20, 500, (2, 16))
    b = obj.make_batch(x, 0.5, tiny_model.mask_token_id, objective="parallel", generator=torch.Generator().manual_seed(3))
    base = _logits(tiny_model, b)
    y = b.input_ids.masked_fill(b.sigma >= b.num_known, 30)
    changed = _logits(tiny_model, obj.TrainingBatch(y, b.perm_mask, b.target_mapping, b.labels, b.positions,
                                                    b.sigma, b.num_known, b.rate))
    assert torch.equal(base, changed)


def test_target_loss_is_the_mean_over_targets():
    logits = torch.randn(2, 3, 7)
    labels = torch.randint(0, 7, (2, 3))
    expected = -torch.log_softmax(logits, -1).gather(-1, labels[..., None]).mean()
    assert obj.target_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert math.isfinite(obj.target_loss(logits, labels).item())
