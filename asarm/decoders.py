"""Decoders: the one question the sampler asks the network, and the backends that answer it.

A decoder is built once per sampling run for a batch of orders ``sigma``
``(B, N)`` and prompt sizes ``num_visible`` ``(B,)`` and then called for any
subset of rows with

    decoder(rows, x, n_known, queries) -> logits (R, K, V)

"the tokens of the ``n_known`` lowest ranks of each row are those in ``x``;
what are the logits of each query?" A query is a pair (``rank``, ``limit``):
the token at rank ``rank`` predicted from the tokens of the ``limit`` lowest
ranks (``docs/design.md``, Decoders). ``limit = n_known`` for every query is
the ordinary step: a query at an unknown rank sees every known token, one at a
known rank ``r`` sees the ranks below ``r`` (the verification of a draft). A
smaller ``limit`` asks what the model would have predicted with less known,
which is what the one-call ASSD round needs (``asarm.sampling``).

Backends (``DECODERS``): ``"plain"`` recomputes every position in every call,
as the paper's sampler does; ``"cached"`` (``asarm.cache``) keeps the content
stream's keys and values. Both give the same logits up to float rounding.
``make_decoder`` takes a name, a decoder instance (used as it is), or a factory
``(model, sigma, num_visible) -> decoder``; tests and benchmarks inject theirs
this way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Union

import torch

from .cache import CachedDecoder
from .orders import order_to_pos, step_mask, visible_ranks


@dataclass(frozen=True)
class Queries:
    """Which predictions one decoder call returns, for ``R`` rows and ``K`` slots.

    Attributes:
        rank: ``(R, K)`` long, the rank each slot predicts.
        limit: ``(R, K)`` long, each slot conditions on the ``limit`` lowest ranks, with
            ``m <= limit <= n_known`` of its row (the prompt is always known; a larger limit is
            read as ``n_known``); see ``visible_ranks`` for queries at known ranks.
        valid: ``(R, K)`` bool; invalid slots are padding (their logits are meaningless).
    """

    rank: torch.Tensor
    limit: torch.Tensor
    valid: torch.Tensor

    @classmethod
    def span(cls, n_known, start, count, num_slots: int | None = None) -> "Queries":
        """The ranks ``start .. start + count - 1`` of each row, at ``limit = n_known`` (an ordinary step).

        Args:
            n_known, start, count: ``(R,)`` long. num_slots: ``K >= max(count)`` (default ``max(count)``).
        """
        rank, valid = _span_ranks(start, count, num_slots)
        return cls(rank, n_known[:, None].expand_as(rank), valid)

    @property
    def shape(self):
        return self.rank.shape

    def cat(self, other: "Queries") -> "Queries":
        """These slots, then ``other``'s (same rows)."""
        return Queries(*(torch.cat([a, b], 1) for a, b in ((self.rank, other.rank), (self.limit, other.limit),
                                                          (self.valid, other.valid))))


def _span_ranks(start, count, num_slots):
    k = int(count.max()) if num_slots is None else num_slots
    if len(count) and k < int(count.max()):
        raise ValueError(f"num_slots={k} is smaller than the largest count {int(count.max())}")
    t = torch.arange(k, device=start.device)
    return start[:, None] + t, t < count[:, None]


class Decoder(Protocol):
    """What the sampler calls; ``PlainDecoder`` and ``asarm.cache.CachedDecoder`` implement it."""

    def __call__(self, rows: torch.Tensor, x: torch.Tensor, n_known: torch.Tensor, queries: Queries) -> torch.Tensor:
        """Float32 logits ``(R, K, V)`` of ``queries`` for ``rows`` (``(R,)`` indices into the run's batch),
        whose current ids are ``x`` ``(R, N)`` and whose ``n_known`` ``(R,)`` lowest ranks are known.
        Dropout is off whatever mode the model is in."""


class PlainDecoder:
    """The reference backend: every call runs the full network on every position.

    One forward pass per distinct ``limit`` among a row's queries: the pass with
    ``step_mask(sigma, m, limit)`` answers every query of that limit (an ordinary
    step has one limit per row, hence one pass).
    """

    def __init__(self, model, sigma: torch.Tensor, num_visible: torch.Tensor):
        self.model, self.sigma, self.num_visible = model, sigma, num_visible

    @torch.no_grad()
    def __call__(self, rows, x, n_known, queries: Queries) -> torch.Tensor:
        sigma, m = self.sigma[rows], self.num_visible[rows]
        positions = order_to_pos(sigma).gather(1, queries.rank.clamp(0, sigma.shape[1] - 1))
        limit = torch.minimum(queries.limit, n_known[:, None])
        out = torch.zeros(*queries.shape, self.model.vocab_size, device=x.device)
        todo = queries.valid.clone()
        with self.model.without_dropout():
            while todo.any():
                part = self._next_pass(todo, limit, positions)
                lim = torch.where(part, limit, 0).amax(1)
                r = part.any(1).nonzero().squeeze(-1)
                mapping = torch.nn.functional.one_hot(positions[r], sigma.shape[1]).float() * part[r, :, None]
                logits = self.model(x[r], step_mask(sigma[r], m[r], lim[r]), mapping)
                out[r] = torch.where(part[r, :, None], logits.float(), out[r])
                todo &= ~part
        return out

    @staticmethod
    def _next_pass(todo, limit, positions):
        """The slots one forward pass answers: per row, the smallest limit still to do, and at most one
        slot per position (XLNet's ``target_mapping`` would sum two queries of one position)."""
        lim = torch.where(todo, limit, torch.iinfo(limit.dtype).max).min(1).values
        cand = todo & (limit == lim[:, None])
        K = cand.shape[1]
        earlier = torch.ones(K, K, dtype=torch.bool, device=cand.device).tril(-1)  # [i, j]: j < i
        same = (positions[:, :, None] == positions[:, None, :]) & cand[:, None, :] & earlier
        return cand & ~same.any(-1)


DecoderFactory = Callable[[object, torch.Tensor, torch.Tensor], Decoder]
DECODERS: dict[str, DecoderFactory] = {"cached": CachedDecoder, "plain": PlainDecoder}


def make_decoder(backend: Union[str, Decoder, DecoderFactory], model, sigma, num_visible) -> Decoder:
    """The decoder of one run from ``backend``: a name of ``DECODERS``; a class, called as
    ``backend(model, sigma, num_visible)``; or an already built decoder (any other callable), used as it is."""
    if isinstance(backend, str):
        if backend not in DECODERS:
            raise ValueError(f"unknown decoding backend '{backend}'; choose one of {', '.join(DECODERS)}")
        return DECODERS[backend](model, sigma, num_visible)
    if isinstance(backend, type):
        return backend(model, sigma, num_visible)
    return backend


__all__ = ["DECODERS", "Decoder", "PlainDecoder", "Queries", "make_decoder", "visible_ranks"]
