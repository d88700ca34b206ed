"""The masking-distribution objective: schedule, strata, batches, and what each query may see."""

import math

import pytest
import torch

from asarm import objective as obj

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


def _may_attend(perm_mask, r, i):
    """Positions row ``r``'s position ``i`` may attend, as a set (perm_mask: True = may not attend)."""
    return set((~perm_mask[r, i]).nonzero().flatten().tolist())


def _check_targets_and_labels(b, x, known):
    """From first principles: ``known`` tokens per row, the targets are the other positions in rank order
    (query t predicts rank known + t), the labels are the original ids there."""
    rows, length = x.shape
    assert b.num_known == known
    assert b.labels.shape == (rows, length - known) and b.target_mapping.shape == (rows, length - known, length)
    for r in range(rows):
        s = b.sigma[r].tolist()
        assert sorted(s) == list(range(length))  # a permutation
        assert sum(rank < known for rank in s) == known
        for t in range(length - known):
            row = b.target_mapping[r, t]
            assert row.sum() == 1 and set(row.unique().tolist()) == {0.0, 1.0}  # one-hot
            pos = int(row.argmax())
            assert s[pos] == known + t
            assert b.labels[r, t] == x[r, pos]


# the masking-rate rule K = floor(N r) targets, clamped to 1..N-1, worked out by hand: known = N - K
RATES = [(24, 0.6, 10), (20, 0.5, 10), (20, 0.99, 1), (20, 0.01, 19), (10, 0.95, 1)]


@pytest.mark.parametrize("length, rate, known", RATES)
def test_known_count_follows_the_masking_rate_rule(length, rate, known):
    x = torch.randint(10, 100, (3, length))
    for objective in ("joint", "parallel"):
        b = obj.make_batch(x, rate, MASK, objective=objective, generator=torch.Generator().manual_seed(0))
        _check_targets_and_labels(b, x, known)
    assert obj.make_batch(torch.randint(10, 100, (1, 512)), 0.15, MASK).num_known == 512 - 76  # floor(76.8)


@pytest.mark.parametrize("order", ["sorted", "random"])
def test_joint_batch_from_first_principles(order):
    """Each target sees exactly the lower ranks (never itself or a later target), the known block sees
    itself, every true token stays in the input but the last-ranked one, labels are the true ids."""
    x = torch.randint(10, 100, (5, 24))
    b = obj.make_batch(x, 0.6, MASK, order=order, generator=torch.Generator().manual_seed(0))
    known = 10  # 24 - floor(24 * 0.6)
    _check_targets_and_labels(b, x, known)
    for r in range(5):
        s = b.sigma[r].tolist()
        block = {j for j in range(24) if s[j] < known}
        for i in range(24):
            if s[i] < known:
                assert _may_attend(b.perm_mask, r, i) == block
            else:
                assert _may_attend(b.perm_mask, r, i) == {j for j in range(24) if s[j] < s[i]}
            # teacher forcing: the true token everywhere but at the last rank, which no query reads
            assert int(b.input_ids[r, i]) == (MASK if s[i] == 23 else int(x[r, i]))
        if order == "sorted":  # inside the known block and inside the targets, rank grows with position
            for part in (block, set(range(24)) - block):
                ranks = [s[j] for j in sorted(part)]
                assert ranks == sorted(ranks)
    assert len({tuple(row) for row in b.sigma.tolist()}) > 1  # every row draws its own order


@pytest.mark.parametrize("attention", ["all", "prompt", "causal"])
def test_parallel_batch_from_first_principles(attention):
    """Targets see every known token and no target; inside the known block: everyone (all), strictly lower
    ranks (causal), or lower ranks plus a bidirectional prompt of some size p in 1..n (prompt)."""
    x = torch.randint(10, 100, (6, 20))
    b = obj.make_batch(x, 0.5, MASK, objective="parallel", visible_attention=attention,
                       generator=torch.Generator().manual_seed(1))
    known = 10  # 20 - floor(20 * 0.5)
    _check_targets_and_labels(b, x, known)
    for r in range(6):
        s = b.sigma[r].tolist()
        block = {j for j in range(20) if s[j] < known}

        def expected_known_rows(p):
            """{i: may-attend set} of the known rows for a bidirectional prompt of the p lowest ranks."""
            return {i: {j for j in block if s[j] < s[i] or (s[i] < p and s[j] < p)} for i in block}

        got = {i: _may_attend(b.perm_mask, r, i) for i in block}
        if attention == "all":
            assert got == {i: block for i in block}
        elif attention == "causal":
            assert got == expected_known_rows(0)
        else:
            assert any(got == expected_known_rows(p) for p in range(1, known + 1))
        for i in set(range(20)) - block:
            assert _may_attend(b.perm_mask, r, i) == block  # a target sees the known tokens only
            assert int(b.input_ids[r, i]) == MASK
        for i in block:
            assert int(b.input_ids[r, i]) == int(x[r, i])
    if attention == "prompt":  # p is drawn per row: some prompt is smaller than the known block
        assert any(not (~b.perm_mask[r][:, b.sigma[r] < known]).all() for r in range(6))


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


# ---------------------------------------------------------------------------- objective choices
def test_loss_scaling_applies_only_to_the_joint_objective():
    assert obj.loss_weight(0.8, "snr", "joint") == pytest.approx(4.0)
    assert obj.loss_weight(0.8, "r", "joint") == pytest.approx(0.8)
    assert obj.loss_weight(0.8, "none", "parallel") == 1.0
    for scale in ("r", "snr"):
        with pytest.raises(ValueError, match="only to the joint objective.*loss_scale: none"):
            obj.loss_weight(0.8, scale, "parallel")
    with pytest.raises(ValueError, match="unknown loss scale"):
        obj.check_loss_scale("joint", "bogus")


@pytest.mark.parametrize("objective", ["joint", "parallel"])
def test_left_to_right_order_conditions_on_a_prefix(objective):
    n_tokens, rate = 10, 0.6
    x = torch.arange(100, 100 + 3 * n_tokens).view(3, n_tokens)
    gen = torch.Generator().manual_seed(0)
    b = obj.make_batch(x, rate, 6, objective=objective, order="left_to_right", generator=gen)
    n = n_tokens - obj.num_targets(n_tokens, rate)
    assert (b.sigma == torch.arange(n_tokens)).all()
    assert (b.positions == torch.arange(n, n_tokens)).all() and (b.labels == x[:, n:]).all()
    if objective == "joint":
        i, j = torch.arange(n_tokens)[:, None], torch.arange(n_tokens)[None, :]
        may_attend = (j < i) | ((i < n) & (j < n))  # a bidirectional prefix, then causal: a prefix LM
        assert torch.equal(b.perm_mask, ~may_attend.expand(3, -1, -1))
        # the joint objective draws nothing for this order: the same generator gives the same next number
        assert torch.rand((), generator=gen) == torch.rand((), generator=torch.Generator().manual_seed(0))
    else:
        assert b.perm_mask[:, n:, n:].all(dim=(1, 2)).all()  # targets never see each other
        assert not b.perm_mask[:, n:, :n].any()              # and see the whole known prefix
