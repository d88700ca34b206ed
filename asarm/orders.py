"""Orders and attention masks for any-subset autoregressive models.

Vocabulary used throughout (docs/design.md, Orders and Masks):

* ``sigma`` ``(B, N)`` long: ``sigma[b, pos]`` is the *rank* at which position
  ``pos`` is decoded. The ``m = num_visible[b]`` visible (prompt) positions take
  ranks ``0..m-1``; the masked positions take ranks ``m..N-1``.
* ``order_to_pos = argsort(sigma)``: the position decoded at each rank.
* ``perm_mask`` ``(B, N, N)`` bool, XLNet's convention: ``perm_mask[b, i, j]``
  is True when position ``i`` may NOT attend to position ``j``.
* ``target_mapping`` ``(B, K, N)`` float: ``target_mapping[b, t, j] = 1`` says
  query ``t`` predicts position ``j``. All-zero rows are padding queries.

Every function here is pure and batched: each row may have its own order, its
own prompt size and its own decoding step.
"""

from __future__ import annotations

import torch

__all__ = [
    "sorted_order",
    "random_sorted_order",
    "random_order",
    "infill_order",
    "order_to_pos",
    "check_order",
    "step_mask",
    "joint_mask",
    "draft_mask",
    "target_mapping",
    "rank_positions",
    "scatter_by_rank",
]


def _as_rows(value, batch: int, device) -> torch.Tensor:
    """Broadcast an int or a ``(B,)`` tensor to a ``(B,)`` long tensor."""
    t = torch.as_tensor(value, dtype=torch.long, device=device)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"expected a scalar or a tensor of shape ({batch},), got shape {tuple(t.shape)}")
    return t


def sorted_order(visible: torch.Tensor) -> torch.Tensor:
    """The paper's "sorted" order for a given visible set.

    Args:
        visible: ``(B, N)`` bool, True at prompt positions.
    Returns:
        sigma ``(B, N)`` long: visible positions get ranks ``0..m-1`` left to
        right, masked positions get ranks ``m..N-1`` left to right.
    """
    visible = visible.bool()
    m = visible.sum(-1, keepdim=True)
    rank_visible = visible.long().cumsum(-1) - 1
    rank_masked = m + (~visible).long().cumsum(-1) - 1
    return torch.where(visible, rank_visible, rank_masked)


def _random_visible(batch: int, length: int, num_visible, generator=None, device=None) -> torch.Tensor:
    """``(B, N)`` bool with exactly ``num_visible[b]`` uniformly chosen True entries per row."""
    m = _as_rows(num_visible, batch, device)
    scores = torch.rand(batch, length, generator=generator, device=device)
    ranks = scores.argsort(-1).argsort(-1)
    return ranks < m[:, None]


def random_sorted_order(batch: int, length: int, num_visible, *, generator=None, device=None) -> torch.Tensor:
    """Sorted orders over a uniformly random visible subset of size ``num_visible`` per row.

    Returns sigma ``(B, N)``; the visible set is ``sigma < num_visible``.
    """
    return sorted_order(_random_visible(batch, length, num_visible, generator, device))


def random_order(batch: int, length: int, *, generator=None, device=None) -> torch.Tensor:
    """Uniformly random permutations: sigma ``(B, N)``.

    Any prefix of ranks can serve as the prompt, so ``num_visible`` is chosen
    by the caller (the visible set is ``sigma < num_visible``).
    """
    return torch.rand(batch, length, generator=generator, device=device).argsort(-1).argsort(-1)


def infill_order(input_ids: torch.Tensor, mask_token_id: int, *, shuffle: bool = False, generator=None):
    """The order implied by an input with mask tokens (infilling).

    Visible = positions that are not ``mask_token_id``. Visible ranks follow
    position order; masked ranks follow position order too, or a uniformly
    random order among the masked positions when ``shuffle``.

    Args:
        input_ids: ``(B, N)`` long.
    Returns:
        ``(sigma (B, N), num_visible (B,))``.
    """
    visible = input_ids != mask_token_id
    sigma = sorted_order(visible)
    if shuffle:
        scores = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
        # visible positions keep their (lower) rank order; masked ones are shuffled among themselves
        key = torch.where(visible, sigma.to(scores.dtype) - input_ids.shape[1], scores)
        sigma = key.argsort(-1).argsort(-1)
    return sigma, visible.sum(-1)


def order_to_pos(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse permutation ``(B, N)``: the position decoded at each rank."""
    return sigma.argsort(-1)


def check_order(sigma: torch.Tensor, num_visible: torch.Tensor | None = None) -> None:
    """Raise ``ValueError`` unless every row of ``sigma`` is a permutation of ``0..N-1``
    (and, if given, ``1 <= num_visible < N``)."""
    if sigma.dim() != 2:
        raise ValueError(f"sigma must have shape (B, N), got {tuple(sigma.shape)}")
    n = sigma.shape[1]
    expected = torch.arange(n, device=sigma.device)
    bad = (sigma.sort(-1).values != expected).any(-1)
    if bad.any():
        row = int(bad.nonzero()[0])
        raise ValueError(
            f"sigma row {row} is not a permutation of 0..{n - 1}: every position needs a distinct rank "
            "(build one with asarm.orders.sorted_order / random_sorted_order / infill_order)"
        )
    if num_visible is not None:
        if num_visible.shape != sigma.shape[:1]:
            raise ValueError(f"num_visible must have shape ({sigma.shape[0]},), got {tuple(num_visible.shape)}")
        if (num_visible < 1).any():
            raise ValueError("no visible position: every row needs at least one prompt token (num_visible >= 1)")
        if (num_visible >= n).any():
            raise ValueError("no masked position: nothing to generate in a row (num_visible must be < N)")


def step_mask(sigma: torch.Tensor, num_visible, n_known) -> torch.Tensor:
    """The attention mask when the tokens of ranks ``< n_known`` are known.

    Known positions (``sigma < n_known``) keep their joint-mask rows: ``i``
    may attend ``j`` iff ``sigma[j] < sigma[i]``, or both are in the prompt
    (``sigma < num_visible``), which sees all of itself. Unknown positions
    are "decoded last, all together": they attend to every known position
    and to no unknown one. Hence no position ever attends to an unknown token.

    ``n_known = N`` gives the joint / oracle mask; ``n_known = n`` the draft
    mask at step ``n`` (docs/design.md, Masks).

    Args:
        sigma: ``(B, N)`` long orders.
        num_visible: int or ``(B,)``, the prompt size ``m`` per row.
        n_known: int or ``(B,)``, ``m <= n_known <= N``.
    Returns:
        perm_mask ``(B, N, N)`` bool, True = may not attend.
    """
    b = sigma.shape[0]
    m = _as_rows(num_visible, b, sigma.device)[:, None, None]
    n = _as_rows(n_known, b, sigma.device)[:, None, None]
    s_i = sigma[:, :, None]  # query row
    s_j = sigma[:, None, :]  # key column
    known_j = s_j < n
    may_attend = known_j & ((s_i >= n) | (s_j < s_i) | ((s_i < m) & (s_j < m)))
    return ~may_attend


def visible_ranks(rank, limit, num_visible):
    """How many lowest ranks a query sees: ``limit`` at a rank ``>= limit``; at a known rank ``r < limit``,
    the ranks below ``r`` (the whole prompt inside the prompt, which is bidirectional). Shapes broadcast."""
    inside = torch.where(rank < num_visible, num_visible, rank)
    return torch.where(rank >= limit, limit, inside)


def joint_mask(sigma: torch.Tensor, num_visible) -> torch.Tensor:
    """Joint / oracle mask ``(B, N, N)``: ``step_mask`` with every token known."""
    return step_mask(sigma, num_visible, sigma.shape[1])


def draft_mask(sigma: torch.Tensor, num_visible, n) -> torch.Tensor:
    """Draft / parallel mask at step ``n`` ``(B, N, N)``: ``step_mask`` with ``n`` tokens known."""
    return step_mask(sigma, num_visible, n)


def rank_positions(order: torch.Tensor, start, count, num_queries: int | None = None):
    """Positions of the ranks ``start .. start + count - 1`` of each row.

    Args:
        order: ``(B, N)`` ``order_to_pos(sigma)`` (precompute it once per run).
        start, count: int or ``(B,)``; ``start + count <= N``.
        num_queries: ``K``, at least ``max(count)`` (default: ``max(count)``).
    Returns:
        ``(positions (B, K) long, valid (B, K) bool)``; invalid slots hold position 0.
    """
    b, n = order.shape
    start = _as_rows(start, b, order.device)
    count = _as_rows(count, b, order.device)
    k = int(count.max()) if num_queries is None else num_queries
    if (start + count > n).any():
        raise ValueError("start + count exceeds the sequence length")
    t = torch.arange(k, device=order.device)
    valid = t[None, :] < count[:, None]
    positions = torch.gather(order, 1, (start[:, None] + t[None, :]).clamp(max=n - 1))
    return torch.where(valid, positions, torch.zeros_like(positions)), valid


def target_mapping(sigma: torch.Tensor, start, count, num_queries: int | None = None, dtype=torch.float32):
    """One-hot queries for the ranks ``start .. start + count - 1`` of each row.

    Args:
        sigma: ``(B, N)`` long.
        start: int or ``(B,)``: first rank to predict.
        count: int or ``(B,)``: number of ranks to predict (``start + count <= N``).
        num_queries: ``K``, at least ``max(count)`` (default: ``max(count)``).
    Returns:
        ``(mapping (B, K, N) dtype, positions (B, K) long, valid (B, K) bool)``.
        Query ``t < count[b]`` predicts position ``positions[b, t]``; the
        others are all-zero padding rows (``valid`` False, ``positions`` 0).
    """
    positions, valid = rank_positions(order_to_pos(sigma), start, count, num_queries)
    mapping = torch.nn.functional.one_hot(positions, sigma.shape[1]).to(dtype) * valid[..., None].to(dtype)
    return mapping, positions, valid


def scatter_by_rank(x: torch.Tensor, order: torch.Tensor, start, tokens: torch.Tensor, count) -> torch.Tensor:
    """Write ``tokens[b, t]`` at the position of rank ``start[b] + t`` for ``t < count[b]``.

    Args:
        x: ``(B, N)`` ids (not modified).
        order: ``(B, N)`` ``order_to_pos(sigma)``.
        tokens: ``(B, K)`` ids.
    Returns:
        a new ``(B, N)`` tensor.
    """
    positions, valid = rank_positions(order, start, count, num_queries=tokens.shape[1])
    out = x.clone()
    rows = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(positions)
    out[rows[valid], positions[valid]] = tokens[valid]
    return out
