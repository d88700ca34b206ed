"""Drafters: where the proposals of a speculative round come from (docs/design.md, ASSD round).

A drafter proposes, for each row of a round, up to ``k`` tokens for the next
ranks together with the distributions ``q`` they were drawn from; the oracle
call then verifies them (``asarm.sampling``). Speculative sampling is exact for
ANY proposal distribution fixed before its verification, so drafters differ
only in cost and acceptance:

* ``none``: no drafts; each oracle call queries the next rank (sequential decoding).
* ``self``: the model's own draft call, every next rank conditioned on the
  known tokens only (ASSD). Draft 0 is then the oracle's own conditional.
* ``bigram``: asarm's count drafter (tempered bigram counts of the row's
  known tokens, no network call), plus a query after the last draft.
* ``ngram-paper``: the paper's ``ContextNGram`` (bigram, else unigram counts,
  untempered); a row whose first rank has no known left neighbour gets a
  self draft instead.
* ``lookahead-full`` / ``lookahead-cheap``: one-call rounds. The oracle call
  that verifies this round's drafts also asks for the NEXT round's draft
  distributions, so a round costs one call. ``full`` asks, for every possible
  number ``a`` of accepted drafts, for the ranks ``n+a+1 .. n+a+k``
  conditioned on the ranks ``< n+a`` (``k (k + 1)`` extra queries); ``cheap``
  conditions all of them on the ranks ``< n`` (``K + k`` extra queries for ``K``
  drafts, at most ``2k``). After
  verification the set of the realised ``a`` is used. The first round of a
  row is a self draft.

Interface (``Drafter``): ``propose(run, rows, k) -> Draft``; lookahead drafters
also implement ``lookahead_queries`` (extra queries of the oracle call) and
``receive`` (keep the next round's drafts). A new drafter is one class and one
entry in ``DRAFTERS``.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from .acceptance import probs_from_logits, sample_from_probs
from .decoders import Queries


def context_counts(tokens: list[int], known: list[bool]) -> tuple[dict[int, Counter], Counter]:
    """Bigram and unigram counts of one row's known tokens.

    ``bigrams[a][b]`` counts the adjacent known positions ``(j, j + 1)`` holding
    ``(a, b)``; ``unigrams[a]`` counts the known positions holding ``a``. These
    are the counts the paper's ``ContextNGram`` holds at the start of a round
    (it logs each known position and each known adjacent pair once).

    Args:
        tokens, known: the row's ids and known flags (length ``N``).
    """
    bigrams: dict[int, Counter] = defaultdict(Counter)
    for j in range(len(tokens) - 1):
        if known[j] and known[j + 1]:
            bigrams[tokens[j]][tokens[j + 1]] += 1
    unigrams = Counter(t for t, kn in zip(tokens, known) if kn)
    return bigrams, unigrams


def _inverse_cdf(dist: dict[int, float], u: float) -> int:
    """The first id (in ``dist``'s order) whose cumulative probability exceeds ``u``; the last on round-off."""
    acc = 0.0
    for t, w in dist.items():
        acc += w
        if u < acc:
            return t
    return t


def _left_token(tokens: list[int], known: list[bool], pos: int) -> int | None:
    """The token on the left of ``pos`` if that position is known (or drafted), else ``None``."""
    return tokens[pos - 1] if pos >= 1 and known[pos - 1] else None


def context_bigram_draft(tokens: list[int], known: list[bool], order: list[int], start: int, k: int,
                         u: list[float], temperature: float = 1.0) -> tuple[list[int], list[dict[int, float]]]:
    """asarm's bigram draft for one row from its known tokens (``ngram_draft="bigram"``).

    Counts every pair of adjacent known positions. The position of rank
    ``start + i`` is drafted from the counts that follow the token on its
    left (known, or drafted earlier in this round), tempered as
    ``count ** (1 / T)``; drafting stops at the first position without such a
    left context. Exact decoding does not depend on the draft being good: the
    oracle corrects it.

    Args:
        tokens, known: the row's ids and known flags (length ``N``).
        order: ``order_to_pos`` of the row. start: first rank to draft.
        k: at most this many drafts. u: ``k`` uniforms (one per draft).
    Returns:
        ``(drafts, dists)``: drafted ids, and each draft's distribution (id -> prob).
    """
    counts, _ = context_counts(tokens, known)

    def rule(left):
        if left is None or left not in counts:
            return None
        c = counts[left]
        top = max(c.values())  # count ** (1 / T), scaled by the largest count: no overflow at small T
        weights = {t: math.exp(math.log(c[t] / top) / temperature) for t in sorted(c)}
        total = sum(weights.values())
        return {t: w / total for t, w in weights.items()}

    return _draft_round(tokens, known, order, start, k, u, rule)


def context_ngram_draft(tokens: list[int], known: list[bool], order: list[int], start: int, k: int,
                        u: list[float]) -> tuple[list[int], list[dict[int, float]]]:
    """The paper's n-gram draft for one row (``ngram_draft="paper"``, its ``ContextNGram``).

    The position of rank ``start + i`` is drafted from the bigram counts that
    follow its left token (known, or drafted earlier in this round) when that
    token has any; otherwise (no successor counted, or no left token) from
    the unigram counts of the known tokens. Counts are used as they are (the
    paper applies no temperature to them) and are not updated with this
    round's drafts. Drafts all ``k`` positions as long as a known token exists.

    The sampler never calls this for a round whose first position has no
    known left neighbour: the paper drafts that round with the model
    (``_ngram``).

    Args:
        tokens, known: the row's ids and known flags (length ``N``).
        order: ``order_to_pos`` of the row. start: first rank to draft.
        k: at most this many drafts. u: ``k`` uniforms (one per draft).
    Returns:
        ``(drafts, dists)``: drafted ids, and each draft's distribution (id -> prob),
        empty only when no token is known.
    """
    bigrams, unigrams = context_counts(tokens, known)

    def rule(left):
        c = bigrams[left] if left in bigrams else unigrams
        if not c:
            return None
        total = sum(c.values())
        return {t: c[t] / total for t in sorted(c)}

    return _draft_round(tokens, known, order, start, k, u, rule)


def _draft_round(tokens, known, order, start: int, k: int, u, rule) -> tuple[list[int], list[dict[int, float]]]:
    """The loop both count drafters share: rank ``start + i`` is drawn from ``rule(left token)``
    (``None`` ends the round), and the draft becomes the next position's left context."""
    tokens, known = list(tokens), list(known)
    drafts, dists = [], []
    for i in range(k):
        pos = order[start + i]
        dist = rule(_left_token(tokens, known, pos))
        if dist is None:
            break
        tok = _inverse_cdf(dist, u[i])
        tokens[pos], known[pos] = tok, True
        drafts.append(tok)
        dists.append(dist)
    return drafts, dists


def next_draft_length(k, drafted, accepted, k_max: int):
    """Adaptive draft length: ``k + 1`` after a round that kept all its drafts, else ``accepted + 1``,
    within ``[1, k_max]``. A function of the row's past only, so it keeps sampling exact. Shapes ``(R,)``."""
    return torch.where(accepted >= drafted, k + 1, accepted + 1).clamp(1, k_max)


# ---------------------------------------------------------------------------- the drafter classes
@dataclass
class Draft:
    """The proposals of one round for ``R`` rows (a prefix of ``K`` slots per row).

    Attributes:
        tokens: ``(R, K)`` long drafted ids; q: ``(R, K, V)`` the distribution each was drawn from.
        count: ``(R,)`` real drafts per row.
        exact_first: ``(R,)`` bool, draft 0 was drawn from the oracle's own conditional
            (``q_0 = p_0``): it is kept without a test.
        extra_query: ``(R,)`` bool, the oracle call also queries the rank after the last draft, so
            that a round that keeps every draft still yields one more token (the "bonus").
    """

    tokens: torch.Tensor
    q: torch.Tensor
    count: torch.Tensor
    exact_first: torch.Tensor
    extra_query: torch.Tensor

    def select(self, keep: torch.Tensor) -> "Draft":
        return Draft(self.tokens[keep], self.q[keep], self.count[keep], self.exact_first[keep], self.extra_query[keep])


def _flags(rows, value: bool) -> torch.Tensor:
    return torch.full((len(rows),), bool(value), device=rows.device)


def merge_drafts(parts: list[tuple[torch.Tensor, Draft]], num_rows: int, vocab: int, device) -> Draft:
    """One ``Draft`` for ``num_rows`` rows from ``(row_index, draft)`` parts (each row in exactly one part)."""
    width = max([d.tokens.shape[1] for _, d in parts] + [0])
    tokens = torch.zeros(num_rows, width, dtype=torch.long, device=device)
    q = torch.zeros(num_rows, width, vocab, device=device)
    q[..., 0] = 1.0  # padding slots: any valid distribution (never verified)
    count = torch.zeros(num_rows, dtype=torch.long, device=device)
    exact, extra = (torch.zeros(num_rows, dtype=torch.bool, device=device) for _ in range(2))
    for idx, d in parts:
        w = d.tokens.shape[1]
        tokens[idx, :w], q[idx, :w], count[idx] = d.tokens, d.q, d.count
        exact[idx], extra[idx] = d.exact_first, d.extra_query
    return Draft(tokens, q, count, exact, extra)


class Drafter:
    """Interface: ``propose`` the drafts of ``rows`` (``k``: ``(R,)`` lengths wanted). Built once per
    ``sample`` call (``run`` is the sampler's state: ``n``, ``end``, ``x``, ``temps``, ``rand``, ``call``...)."""

    name = ""

    def __init__(self, config):
        self.config = config

    def propose(self, run, rows, k) -> Draft:
        raise NotImplementedError

    def lookahead_queries(self, run, rows, draft: Draft):
        """Extra queries for the oracle call that verifies ``draft`` (``None``: none)."""
        return None

    def receive(self, run, rows, draft: Draft, accepted, logits) -> None:
        """The extra queries' logits, after the round verified ``draft`` and kept ``accepted`` of it."""


class NoDrafter(Drafter):
    """Sequential decoding: no drafts, the oracle call queries the next rank."""

    name = "none"

    def propose(self, run, rows, k):
        R = len(rows)
        return Draft(torch.zeros(R, 0, dtype=torch.long, device=rows.device),
                     torch.zeros(R, 0, run.vocab, device=rows.device),
                     torch.zeros(R, dtype=torch.long, device=rows.device), _flags(rows, False), _flags(rows, True))


class SelfDrafter(Drafter):
    """ASSD's draft call: the next ``k`` ranks, each conditioned on the known tokens only."""

    name = "self"

    def propose(self, run, rows, k, bonus=None):
        n = run.n[rows]
        kk = torch.minimum(run.end[rows] - n, k)
        logits = run.call(rows, n, Queries.span(n, n, kk))
        t_first, t_rest, t_oracle = run.temps
        q = probs_from_logits(logits, t_rest, run.banned)  # (R, K, V)
        if t_first != t_rest:
            q[:, 0] = probs_from_logits(logits[:, 0], t_first, run.banned)
        tokens = sample_from_probs(q, run.rand(rows)[:, :q.shape[1]])
        bonus = self.config.bonus if bonus is None else bonus
        return Draft(tokens, q, kk, _flags(rows, t_first == t_oracle), _flags(rows, bonus))


def _count_drafts(drafted, vocab: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens (R, K), q (R, K, V), count (R,))`` of per-row ``(ids, dists)`` lists from a count drafter."""
    width = max(1, max(len(d) for d, _ in drafted))
    tokens = torch.zeros(len(drafted), width, dtype=torch.long)
    q = torch.zeros(len(drafted), width, vocab)
    q[:, :, 0] = 1.0  # padding slots: any valid distribution (never verified)
    for r, (toks, dists) in enumerate(drafted):
        for i, (tok, dist) in enumerate(zip(toks, dists)):
            tokens[r, i] = tok
            q[r, i, 0] = 0.0
            q[r, i, list(dist)] = torch.tensor(list(dist.values()))
    count = torch.tensor([len(d) for d, _ in drafted])
    return tokens.to(device), q.to(device), count.to(device)


def _row_lists(run, rows):
    """Python lists the count drafters read: ids, known flags and ``order_to_pos`` of each row."""
    n = run.n[rows]
    return run.x[rows].tolist(), (run.sigma[rows] < n[:, None]).tolist(), run.order[rows].tolist()


class BigramDrafter(Drafter):
    """asarm's count drafter (``context_bigram_draft``), plus a query after the last draft."""

    name = "bigram"

    def propose(self, run, rows, k):
        n = run.n[rows]
        # leave room for the query after the last draft: each call yields >= 1 token
        room = torch.minimum(run.end[rows] - 1 - n, k).clamp(min=0).tolist()
        x, known, order = _row_lists(run, rows)
        u = run.rand(rows).tolist()
        drafted = [context_bigram_draft(x[r], known[r], order[r], int(n[r]), room[r], u[r], run.temps[1])
                   for r in range(len(rows))]
        tokens, q, count = _count_drafts(drafted, run.vocab, rows.device)
        return Draft(tokens, q, count, _flags(rows, False), _flags(rows, True))


class PaperNGramDrafter(Drafter):
    """The paper's n-gram drafter (``context_ngram_draft``); a self draft where the first rank of the
    round has no known left neighbour (its ``order_to_pos[n] == 0``, or the left position unknown)."""

    name = "ngram-paper"

    def propose(self, run, rows, k):
        n = run.n[rows]
        pos = run.order[rows].gather(1, n[:, None]).squeeze(1)
        left_rank = run.sigma[rows].gather(1, (pos - 1).clamp(min=0)[:, None]).squeeze(1)
        by_model = (pos == 0) | (left_rank >= n)
        parts = []
        if by_model.any():
            idx = by_model.nonzero().squeeze(-1)
            parts.append((idx, SelfDrafter(self.config).propose(run, rows[idx], k[idx], bonus=False)))
        if (~by_model).any():
            idx = (~by_model).nonzero().squeeze(-1)
            parts.append((idx, self._counts(run, rows[idx], k[idx])))
        return merge_drafts(parts, len(rows), run.vocab, rows.device)

    def _counts(self, run, rows, k):
        n = run.n[rows]
        room = torch.minimum(run.end[rows] - n, k).tolist()  # no extra query: every rank left may be drafted
        x, known, order = _row_lists(run, rows)
        u = run.rand(rows).tolist()
        drafted = [context_ngram_draft(x[r], known[r], order[r], int(n[r]), room[r], u[r]) for r in range(len(rows))]
        tokens, q, count = _count_drafts(drafted, run.vocab, rows.device)
        return Draft(tokens, q, count, _flags(rows, False), _flags(rows, False))


class LookaheadDrafter(Drafter):
    """One-call ASSD rounds (module docstring): the oracle call also drafts the next round.

    Keeps, per batch row, the drafts of its next round (``pending_*``, valid while
    ``pending_at`` equals the row's ``n``). A row without them (its first round)
    gets a self draft with the bonus query on.
    """

    variant = ""

    def __init__(self, config):
        super().__init__(config)
        self.pending = None  # (tokens (B, k), q (B, k, V), count (B,), at (B,)), allocated on first use

    def propose(self, run, rows, k):
        if self.pending is None:
            B, kmax = run.x.shape[0], run.k
            self.pending = (torch.zeros(B, kmax, dtype=torch.long, device=rows.device),
                            torch.zeros(B, kmax, run.vocab, device=rows.device),
                            torch.zeros(B, dtype=torch.long, device=rows.device),
                            torch.full((B,), -1, dtype=torch.long, device=rows.device))
        tokens, q, count, at = self.pending
        ready = (at[rows] == run.n[rows]) & (count[rows] > 0)
        parts = []
        if ready.any():
            idx, r = ready.nonzero().squeeze(-1), rows[ready]
            parts.append((idx, Draft(tokens[r], q[r], count[r], _flags(r, False), _flags(r, True))))
        if (~ready).any():
            idx = (~ready).nonzero().squeeze(-1)
            parts.append((idx, SelfDrafter(self.config).propose(run, rows[idx], k[idx], bonus=True)))
        return merge_drafts(parts, len(rows), run.vocab, rows.device)

    def lookahead_queries(self, run, rows, draft):
        """The next round's draft queries for every outcome ``a``, flattened to ``(R, A * k)`` slots, for
        the longest next round the draft length allows (``k``, or ``k_row + 1`` with ``adaptive_k``)."""
        n, end = run.n[rows], run.end[rows]
        longest = (run.k_row[rows] + 1).clamp(max=run.k) if self.config.adaptive_k else run.k_row[rows]
        rank, limit = self.layout(n, draft.tokens.shape[1], run.k)
        valid = self.usable(rank, draft.count, longest) & (rank < end[:, None, None])
        return Queries(rank.flatten(1), limit.flatten(1), valid.flatten(1))

    def receive(self, run, rows, draft, accepted, logits):
        """Draw the next round's drafts from the queries of the realised outcome ``accepted``; the round
        is as long as the draft length the row has now (``next_draft_length`` with ``adaptive_k``)."""
        slots = self.slots(accepted, run.k)  # (R, k): the slot of each next draft
        chosen = logits.gather(1, slots[..., None].expand(-1, -1, logits.shape[-1]))
        q = probs_from_logits(chosen, run.temps[1], run.banned)
        tokens = sample_from_probs(q, run.rand(rows))
        k_next = run.k_row[rows]
        if self.config.adaptive_k:  # the length speculative_round is about to set, known now
            k_next = next_draft_length(k_next, draft.count, accepted, run.k)
        at = run.n[rows]  # after the corrected / bonus token; a finished row drafts nothing
        count = torch.minimum(k_next, run.end[rows] - at).clamp(min=0)
        p_tokens, p_q, p_count, p_at = self.pending
        p_tokens[rows], p_q[rows], p_count[rows], p_at[rows] = tokens, q, count, at


class FullLookahead(LookaheadDrafter):
    """Next drafts of ranks ``n+a+1 .. n+a+k`` conditioned on the ranks ``< n+a``, for every ``a``."""

    name = "lookahead-full"

    @staticmethod
    def layout(n, width: int, kmax: int):
        """``(rank, limit)`` ``(R, width + 1, kmax)``: outcome ``a`` drafts ranks ``n+a+1+i`` seeing ``< n+a``."""
        a = torch.arange(width + 1, device=n.device)[None, :, None]
        i = torch.arange(kmax, device=n.device)[None, None, :]
        rank = n[:, None, None] + a + 1 + i
        return rank, (n[:, None, None] + a).expand_as(rank)

    @staticmethod
    def usable(rank, count, next_k):
        """Slots of a possible outcome (``a <= count``) within the next round's length."""
        a = torch.arange(rank.shape[1], device=rank.device)[None, :, None]
        i = torch.arange(rank.shape[2], device=rank.device)[None, None, :]
        return (a <= count[:, None, None]) & (i < next_k[:, None, None])

    @staticmethod
    def slots(accepted, kmax: int):
        return accepted[:, None] * kmax + torch.arange(kmax, device=accepted.device)


class CheapLookahead(LookaheadDrafter):
    """Next drafts of ranks ``n+1 .. n+K+k``, all conditioned on the ranks ``< n`` (``K + k`` queries)."""

    name = "lookahead-cheap"

    @staticmethod
    def layout(n, width: int, kmax: int):
        """``(rank, limit)`` ``(R, 1, width + kmax)``: slot ``j`` drafts rank ``n+1+j`` seeing ``< n``."""
        j = torch.arange(width + kmax, device=n.device)[None, None, :]
        rank = n[:, None, None] + 1 + j
        return rank, n[:, None, None].expand_as(rank)

    @staticmethod
    def usable(rank, count, next_k):
        """Slots that some outcome ``a <= count`` uses: ``j < count + next_k``."""
        j = torch.arange(rank.shape[2], device=rank.device)[None, None, :]
        return j < (count + next_k)[:, None, None]

    @staticmethod
    def slots(accepted, kmax: int):
        return accepted[:, None] + torch.arange(kmax, device=accepted.device)


DRAFTERS: dict[str, type[Drafter]] = {d.name: d for d in (NoDrafter, SelfDrafter, BigramDrafter, PaperNGramDrafter,
                                                          FullLookahead, CheapLookahead)}
