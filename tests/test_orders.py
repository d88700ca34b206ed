"""Orders and masks: each vectorised function against a slow, obviously-correct loop, plus properties."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asarm import orders


# ---------------------------------------------------------------------------- slow references
def slow_sorted_order(visible):
    out = []
    for row in visible.tolist():
        vis = [p for p, v in enumerate(row) if v]
        hid = [p for p, v in enumerate(row) if not v]
        sigma = [0] * len(row)
        for rank, p in enumerate(vis + hid):
            sigma[p] = rank
        out.append(sigma)
    return torch.tensor(out)


def slow_step_mask(sigma, m, n_known):
    b, n = sigma.shape
    out = torch.ones(b, n, n, dtype=torch.bool)
    for r in range(b):
        s, mm, nk = sigma[r].tolist(), int(m[r]), int(n_known[r])
        for i in range(n):
            for j in range(n):
                if s[j] >= nk:
                    continue  # unknown tokens are never attended
                if s[i] >= nk:
                    out[r, i, j] = False  # unknown rows see every known token
                elif s[j] < s[i] or (s[i] < mm and s[j] < mm):
                    out[r, i, j] = False
    return out


def slow_joint_mask(sigma, m):
    """The joint mask from its definition alone: ``i`` may attend ``j`` iff ``j`` has a lower rank,
    or both are in the prompt (``rank < m``). True = may NOT attend."""
    b, n = sigma.shape
    out = torch.ones(b, n, n, dtype=torch.bool)
    for r in range(b):
        s, mm = sigma[r].tolist(), int(m[r])
        for i in range(n):
            for j in range(n):
                if s[j] < s[i] or (s[i] < mm and s[j] < mm):
                    out[r, i, j] = False
    return out


def slow_draft_mask(sigma, m, n_known):
    """The draft mask at step ``n`` from its definition: rows of known positions (rank ``< n``) are
    joint-mask rows; an unknown position attends every known position and no unknown one."""
    joint = slow_joint_mask(sigma, m)
    b, n = sigma.shape
    out = torch.ones(b, n, n, dtype=torch.bool)
    for r in range(b):
        s, nk = sigma[r].tolist(), int(n_known[r])
        for i in range(n):
            for j in range(n):
                if s[i] < nk:
                    out[r, i, j] = joint[r, i, j]
                else:
                    out[r, i, j] = not s[j] < nk
    return out


def slow_target_mapping(sigma, start, count, k):
    b, n = sigma.shape
    out = torch.zeros(b, k, n)
    for r in range(b):
        for t in range(int(count[r])):
            pos = sigma[r].tolist().index(int(start[r]) + t)
            out[r, t, pos] = 1
    return out


# ---------------------------------------------------------------------------- strategies
@st.composite
def batches(draw, max_b=4, max_n=9):
    """(sigma, num_visible, n_known) with mixed orders, prompt sizes and steps per row."""
    b = draw(st.integers(1, max_b))
    n = draw(st.integers(2, max_n))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    m = torch.tensor([draw(st.integers(1, n - 1)) for _ in range(b)])
    if draw(st.booleans()):
        sigma = orders.random_order(b, n, generator=g)
    else:
        sigma = torch.cat([orders.random_sorted_order(1, n, int(m[r]), generator=g) for r in range(b)])
    n_known = torch.tensor([draw(st.integers(int(m[r]), n)) for r in range(b)])
    return sigma, m, n_known


# ---------------------------------------------------------------------------- tests
@settings(max_examples=60, deadline=None)
@given(batches())
def test_step_mask_matches_loop(batch):
    sigma, m, n_known = batch
    assert torch.equal(orders.step_mask(sigma, m, n_known), slow_step_mask(sigma, m, n_known))


@settings(max_examples=60, deadline=None)
@given(batches())
def test_joint_and_draft_masks_match_their_definitions(batch):
    """Both against loops written from the definitions, and the three references agree with each other
    (the draft mask with every token known is the joint mask)."""
    sigma, m, n_known = batch
    n = sigma.shape[1]
    joint = slow_joint_mask(sigma, m)
    assert torch.equal(orders.joint_mask(sigma, m), joint)
    assert torch.equal(slow_step_mask(sigma, m, torch.full_like(m, n)), joint)
    draft = slow_draft_mask(sigma, m, n_known)
    assert torch.equal(orders.draft_mask(sigma, m, n_known), draft)
    assert torch.equal(slow_step_mask(sigma, m, n_known), draft)
    assert torch.equal(slow_draft_mask(sigma, m, torch.full_like(m, n)), joint)


def test_masks_on_a_hand_worked_example():
    """sigma = [2, 0, 3, 1], m = 2: positions 1 and 3 are the prompt (ranks 0, 1), then 0 and 2."""
    sigma, m = torch.tensor([[2, 0, 3, 1]]), torch.tensor([2])
    may = lambda rows: ~torch.tensor([rows], dtype=torch.bool)  # rows of "may attend" -> perm_mask
    prompt_row = [0, 1, 0, 1]  # the prompt sees the prompt, itself included
    joint = may([[0, 1, 0, 1],   # pos 0, rank 2: ranks 0, 1
                 prompt_row,     # pos 1, rank 0
                 [1, 1, 0, 1],   # pos 2, rank 3: ranks 0, 1, 2
                 prompt_row])    # pos 3, rank 1
    assert torch.equal(orders.joint_mask(sigma, m), joint)
    # step 2: positions 0 and 2 unknown; they see the prompt only, and nobody sees them
    assert torch.equal(orders.draft_mask(sigma, m, 2), may([prompt_row, prompt_row, prompt_row, prompt_row]))
    # step 3: position 0 (rank 2) known with its joint row; position 2 sees every known position
    assert torch.equal(orders.draft_mask(sigma, m, 3), may([[0, 1, 0, 1], prompt_row, [1, 1, 0, 1], prompt_row]))
    assert torch.equal(orders.draft_mask(sigma, m, 4), joint)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_mask_properties(batch):
    sigma, m, n_known = batch
    joint = orders.joint_mask(sigma, m)
    draft = orders.draft_mask(sigma, m, n_known)
    may = ~joint
    for r in range(sigma.shape[0]):
        s, mm, nk = sigma[r], int(m[r]), int(n_known[r])
        prompt = s < mm
        # the joint mask is consistent with sigma: a masked token sees exactly the lower ranks
        for i in (~prompt).nonzero().flatten().tolist():
            assert torch.equal(may[r, i], s < s[i])
        # the prompt block sees itself (and nothing of higher rank)
        for i in prompt.nonzero().flatten().tolist():
            assert torch.equal(may[r, i], prompt)
        # draft-mask rows of known tokens equal their joint-mask rows
        known = s < nk
        assert torch.equal(draft[r][known], joint[r][known])
        # nothing ever attends to an unknown token
        assert draft[r][:, ~known].all()
        # a query at an unknown rank sees every known token, nothing else
        for i in (~known).nonzero().flatten().tolist():
            assert torch.equal(~draft[r, i], known)


@settings(max_examples=40, deadline=None)
@given(batches())
def test_target_mapping_matches_loop(batch):
    sigma, m, n_known = batch
    n = sigma.shape[1]
    count = torch.minimum(n - m, torch.full_like(m, 3))
    k = int(count.max()) + 1
    mapping, positions, valid = orders.target_mapping(sigma, m, count, num_queries=k)
    assert torch.equal(mapping, slow_target_mapping(sigma, m, count, k))
    assert torch.equal(valid, torch.arange(k)[None] < count[:, None])
    # positions are the argmax of the mapping rows on valid queries
    assert torch.equal(positions[valid], mapping.argmax(-1)[valid])


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_orders_are_permutations_and_sorted(b, n, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randint(1, n, (b,), generator=g)
    visible = torch.rand(b, n, generator=g) < 0.5
    assert torch.equal(orders.sorted_order(visible), slow_sorted_order(visible))
    sigma = orders.random_sorted_order(b, n, m, generator=g)
    orders.check_order(sigma, m)
    assert torch.equal((sigma < m[:, None]).sum(-1), m)
    # sorted: inside the visible set and inside the masked set ranks increase with position
    assert torch.equal(sigma, slow_sorted_order(sigma < m[:, None]))
    perm = orders.random_order(b, n, generator=g)
    orders.check_order(perm)
    assert torch.equal(orders.order_to_pos(perm).gather(1, perm), torch.arange(n).expand(b, n))


def test_random_sorted_order_covers_subsets_uniformly():
    g = torch.Generator().manual_seed(0)
    sigma = orders.random_sorted_order(30_000, 4, 2, generator=g)
    visible = (sigma < 2).long()
    codes = (visible * torch.tensor([8, 4, 2, 1])).sum(-1)
    counts = torch.bincount(codes, minlength=16)[[3, 5, 6, 9, 10, 12]].float()  # the 6 subsets of size 2
    assert counts.sum() == 30_000
    assert ((counts / 5000 - 1).abs() < 0.06).all(), counts


def test_infill_order():
    mask = 6
    x = torch.tensor([[10, mask, mask, 11, mask, 12]])
    sigma, m = orders.infill_order(x, mask)
    assert m.tolist() == [3]
    assert sigma.tolist() == [[0, 3, 4, 1, 5, 2]]
    g = torch.Generator().manual_seed(1)
    shuffled, m2 = orders.infill_order(x.repeat(200, 1), mask, shuffle=True, generator=g)
    orders.check_order(shuffled, m2)
    assert (shuffled[:, [0, 3, 5]] == torch.tensor([0, 1, 2])).all()  # visible ranks unchanged
    assert len({tuple(r) for r in shuffled[:, [1, 2, 4]].tolist()}) == 6  # all 3! masked orders occur


def test_scatter_by_rank():
    sigma = torch.tensor([[2, 0, 3, 1]])
    x = torch.zeros(1, 4, dtype=torch.long)
    out = orders.scatter_by_rank(x, orders.order_to_pos(sigma), torch.tensor([2]), torch.tensor([[7, 8, 9]]),
                                 torch.tensor([2]))
    assert out.tolist() == [[7, 0, 8, 0]]
    assert x.sum() == 0  # input untouched


def test_check_order_errors():
    with pytest.raises(ValueError, match="not a permutation"):
        orders.check_order(torch.tensor([[0, 0, 1]]))
    with pytest.raises(ValueError, match="no visible position"):
        orders.check_order(torch.tensor([[0, 1, 2]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="no masked position"):
        orders.check_order(torch.tensor([[0, 1, 2]]), torch.tensor([3]))
    with pytest.raises(ValueError, match="exceeds"):
        orders.target_mapping(torch.tensor([[0, 1, 2]]), 2, 2)
