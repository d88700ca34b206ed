"""Exact samplers for AS-ARMs: sequential, ASSD (self-draft), and n-gram-draft speculative decoding.

All three sample the order-``sigma`` autoregressive joint
``prod_{r >= m} p_T(x at rank r | x at ranks < r)`` of the masked block
(spec section 5). They differ only in how many network calls that takes
(``nfe``, "number of function evaluations"):

* ``sequential``: one call per masked token, ``nfe = N - m``.
* ``assd``: a *draft* call predicts the next ``k`` ranks conditionally
  independently (draft mask), an *oracle* call scores the drafts jointly
  (joint mask), and speculative rejection keeps the exact joint. Every
  two-call round yields at least two tokens, so ``nfe <= N - m``.
* ``ngram``: drafts come from bigram counts of the row's known tokens (no
  draft call); each oracle call yields at least one token.

Rows are batched: each row has its own order, prompt size and progress, and
finished rows leave the batch. The network is reached only through a
*decoder* (``ASARM.decoder``), so a faster backend changes nothing here.

Randomness: every random number is a uniform drawn from ``generator`` (one
call per draw site and round, shapes fixed by the active rows); tokens come
from inverse-CDF sampling. The same seed therefore gives the same output, and
two backends whose logits agree give the same samples.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from .orders import order_to_pos, scatter_by_rank

METHODS = ("sequential", "assd", "ngram")
TEMPERATURE_MODES = ("both", "draft")


@dataclass
class SampleOutput:
    """Result of ``sample``.

    Attributes:
        sequences: ``(B, N)`` completed ids.
        nfe: ``(B,)`` network calls made for each row.
        drafted: ``(B,)`` draft tokens sent to an oracle call.
        accepted: ``(B,)`` of those, the ones kept. In self-draft ASSD draft 0 is kept
            without a test (``p_0 = q_0``), so ``accepted / drafted`` counts it too.
    """

    sequences: torch.Tensor
    nfe: torch.Tensor
    drafted: torch.Tensor
    accepted: torch.Tensor


# ---------------------------------------------------------------------------- pure math
def probs_from_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """``softmax(logits / T)`` with ``banned`` ids at probability 0.

    Args:
        logits: ``(..., V)``; banned: ``(V,)`` bool.
    Returns:
        float32 ``(..., V)``, rows summing to 1.
    """
    z = (logits.float() / temperature).masked_fill(banned, float("-inf"))
    return torch.softmax(z, dim=-1)


def sample_from_probs(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: the first id whose cumulative mass exceeds ``u * total``.

    Never returns an id of probability 0.

    Args:
        probs: ``(..., V)`` non-negative (need not be normalised).
        u: ``(...)`` uniforms in ``[0, 1)``.
    Returns:
        ``(...)`` long.
    """
    cdf = probs.cumsum(-1)
    target = (u * cdf[..., -1]).unsqueeze(-1)
    return torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def residual_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Normalised ``max(0, p - q)``: where to sample after a rejected draft.

    If ``p == q`` everywhere (nothing to correct), returns ``p``.
    Shapes ``(..., V)``.
    """
    r = (p - q).clamp(min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / total.clamp(min=torch.finfo(r.dtype).tiny), p)


def accept_drafts(p_draft: torch.Tensor, q_draft: torch.Tensor, u: torch.Tensor, valid: torch.Tensor,
                  r_atol: float = 0.0, accept_first: bool = False) -> torch.Tensor:
    """How many leading drafts speculative sampling accepts, per row.

    Draft ``i`` passes with probability ``min(1, p_i(d_i) / q_i(d_i) + r_atol)``;
    the count stops at the first failure. ``r_atol > 0`` is lossy (ablations only).

    Args:
        p_draft, q_draft: ``(R, K)`` oracle and draft probabilities of the drafted ids.
        u: ``(R, K)`` uniforms. valid: ``(R, K)`` bool, real drafts (a prefix per row).
        accept_first: accept draft 0 unconditionally (exact when ``p_0 = q_0``
            mathematically, as in self-draft ASSD; it removes float noise).
    Returns:
        ``(R,)`` long, number of accepted leading drafts.
    """
    ok = u * q_draft < p_draft + r_atol * q_draft
    if accept_first:
        ok[:, 0] = True
    ok = ok & valid
    return ok.long().cumprod(-1).sum(-1)


def context_bigram_draft(tokens: list[int], known: list[bool], order: list[int], start: int, k: int,
                         u: list[float], temperature: float = 1.0) -> tuple[list[int], list[dict[int, float]]]:
    """Bigram draft for one row from its known tokens (the "n-gram" draft of the paper's code).

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
    counts: dict[int, Counter] = defaultdict(Counter)
    for j in range(len(tokens) - 1):
        if known[j] and known[j + 1]:
            counts[tokens[j]][tokens[j + 1]] += 1
    tokens, known = list(tokens), list(known)
    drafts, dists = [], []
    for i in range(k):
        pos = order[start + i]
        left = pos - 1
        if left < 0 or not known[left] or tokens[left] not in counts:
            break
        c = counts[tokens[left]]
        ids = sorted(c)
        # count ** (1 / T), scaled by the largest count: no overflow at small T
        top = max(c.values())
        weights = [math.exp(math.log(c[t] / top) / temperature) for t in ids]
        total = sum(weights)
        dist = {t: w / total for t, w in zip(ids, weights)}
        tok, acc = ids[-1], 0.0
        for t in ids:  # inverse CDF
            acc += dist[t]
            if u[i] < acc:
                tok = t
                break
        tokens[pos], known[pos] = tok, True
        drafts.append(tok)
        dists.append(dist)
    return drafts, dists


# ---------------------------------------------------------------------------- sampler
def _check_args(method, k, temperature, temperature_mode, r_atol):
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (draft length) must be an integer >= 1, got {k!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature_mode not in TEMPERATURE_MODES:
        raise ValueError(f"temperature_mode must be one of {TEMPERATURE_MODES}, got {temperature_mode!r}")
    if not isinstance(r_atol, (int, float)) or not math.isfinite(r_atol) or r_atol < 0:
        raise ValueError(f"r_atol must be a finite number >= 0, got {r_atol!r}")


class _Run:
    """Mutable state of one batched sampling run (kept out of the math above)."""

    def __init__(self, model, input_ids, sigma, num_visible, generator, backend):
        self.model = model
        self.x = input_ids.clone()
        self.sigma = sigma
        self.order = order_to_pos(sigma)  # position of each rank, computed once
        self.n = num_visible.clone()
        self.N = input_ids.shape[1]
        self.nfe = torch.zeros_like(num_visible)
        self.drafted = torch.zeros_like(num_visible)
        self.accepted = torch.zeros_like(num_visible)
        self.decoder = model.decoder(sigma, num_visible, backend)
        self.generator = generator
        self.banned = model.banned

    def rand(self, *shape):
        g = self.generator
        dev = g.device if g is not None else self.x.device
        return torch.rand(*shape, generator=g, device=dev).to(self.x.device)

    def active(self):
        return (self.n < self.N).nonzero().squeeze(-1)

    def write(self, rows, start, tokens, count):
        self.x[rows] = scatter_by_rank(self.x[rows], self.order[rows], start, tokens, count)

    def call(self, rows, n_known, q_start, q_count, num_queries=None):
        self.nfe[rows] += 1
        return self.decoder(rows, self.x[rows], n_known, q_start, q_count, num_queries)

    def oracle_round(self, rows, drafts, q_draft, num_drafts, *, T, extra_query, accept_first, r_atol):
        """Write the drafts, verify them in one oracle call, keep the accepted prefix plus one
        corrected token (the residual draw after a rejection, or a draw from the query after
        the last draft when ``extra_query``).

        Args:
            rows: ``(R,)``; drafts: ``(R, K)``; q_draft: ``(R, K, V)`` draft distributions;
            num_drafts: ``(R,)`` real drafts per row (a prefix of the K slots).
        """
        n = self.n[rows]
        self.write(rows, n, drafts, num_drafts)
        extra = (extra_query & (n + num_drafts < self.N)).long()
        k = drafts.shape[1]
        logits = self.call(rows, n + num_drafts, n, num_drafts + extra, max(k, int((num_drafts + extra).max())))
        p = probs_from_logits(logits, T, self.banned)  # (R, K' >= K, V)
        valid = torch.arange(k, device=n.device)[None, :] < num_drafts[:, None]
        p_d = p[:, :k].gather(-1, drafts[..., None]).squeeze(-1)
        q_d = q_draft.gather(-1, drafts[..., None]).squeeze(-1)
        a = accept_drafts(p_d, q_d, self.rand(*drafts.shape), valid, r_atol, accept_first)
        self.drafted[rows] += num_drafts
        self.accepted[rows] += a
        # one more token at rank n + a: residual after a rejection, else the extra query
        rejected = a < num_drafts
        idx = a.clamp(max=p.shape[1] - 1)
        p_a = p[torch.arange(len(rows)), idx]
        q_a = q_draft[torch.arange(len(rows)), idx.clamp(max=k - 1)]
        dist = torch.where(rejected[:, None], residual_probs(p_a, q_a), p_a)
        tok = sample_from_probs(dist, self.rand(len(rows)))
        more = (rejected | (extra > 0)).long()
        # accepted drafts are already in x; write the corrected / extra token at rank n + a
        self.write(rows, n + a, tok[:, None], more)
        self.n[rows] = n + a + more


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, sigma: torch.Tensor, num_visible: torch.Tensor, *,
           method: str = "assd", k: int = 5, temperature: float = 1.0, temperature_mode: str = "both",
           r_atol: float = 0.0, bonus: bool = False, generator: torch.Generator | None = None,
           backend: str = "cached") -> SampleOutput:
    """Complete the masked positions of every row by sampling the order-``sigma`` joint.

    Args:
        model: an ``ASARM``.
        input_ids: ``(B, N)`` ids; positions with ``sigma >= num_visible`` are
            overwritten (they usually hold ``model.mask_token_id``).
        sigma: ``(B, N)`` orders (``asarm.orders``); num_visible: ``(B,)`` prompt sizes ``m``.
        method: ``"sequential"``, ``"assd"`` or ``"ngram"``.
        k: draft length (ASSD and n-gram).
        temperature: ``T > 0``, applied to draft and oracle (``temperature_mode="both"``,
            exact for the tempered joint) or to the draft only (``"draft"``: exact for
            the ``T = 1`` joint; the ``nfe <= N - m`` bound then no longer holds).
        r_atol: slack added to the acceptance ratio. LOSSY: ablations only.
        bonus: ASSD only: when every draft is accepted, one more token from the
            oracle call's query at the next rank (lossless; off by default so that
            call counts match the paper's definition).
        generator: ``torch.Generator`` for reproducible sampling.
        backend: ``"cached"`` (content-stream K/V cache, ``asarm.cache``) or ``"plain"``
            (recomputes every position at every call, as the paper's code). Same samples.
    Returns:
        ``SampleOutput`` with ``sequences (B, N)`` and ``nfe (B,)``.
    """
    _check_args(method, k, temperature, temperature_mode, r_atol)
    num_visible = torch.as_tensor(num_visible, device=input_ids.device) if not isinstance(num_visible, torch.Tensor) else num_visible
    model.check_inputs(input_ids, sigma, num_visible)
    input_ids, sigma, num_visible = (t.to(model.device, torch.long) for t in (input_ids, sigma, num_visible))
    run = _Run(model, input_ids, sigma, num_visible, generator, backend)
    t_draft = float(temperature)
    t_oracle = t_draft if temperature_mode == "both" else 1.0
    {"sequential": _sequential, "assd": _assd, "ngram": _ngram}[method](run, k, t_draft, t_oracle, r_atol, bonus)
    return SampleOutput(run.x, run.nfe, run.drafted, run.accepted)


def _sequential(run: _Run, k, t_draft, t_oracle, r_atol, bonus):
    while len(rows := run.active()):
        n = run.n[rows]
        one = torch.ones_like(n)
        p = probs_from_logits(run.call(rows, n, n, one), t_oracle, run.banned)
        tok = sample_from_probs(p[:, 0], run.rand(len(rows)))
        run.write(rows, n, tok[:, None], one)
        run.n[rows] = n + 1


def _assd(run: _Run, k, t_draft, t_oracle, r_atol, bonus):
    exact_draft = t_draft == t_oracle  # then q_0 = p_0: draft 0 needs no verification
    while len(rows := run.active()):
        n = run.n[rows]
        kk = (run.N - n).clamp(max=k)
        q = probs_from_logits(run.call(rows, n, n, kk), t_draft, run.banned)  # (R, K, V)
        drafts = sample_from_probs(q, run.rand(*q.shape[:2]))
        if exact_draft:
            # a row with one token left keeps its draft: it is the exact conditional
            last = kk == 1
            if last.any():
                run.write(rows[last], n[last], drafts[last, :1], kk[last])
                run.n[rows[last]] = n[last] + 1
            keep = ~last
            rows, drafts, q, kk = rows[keep], drafts[keep], q[keep], kk[keep]
            if not len(rows):
                continue
        run.oracle_round(rows, drafts, q, kk, T=t_oracle, extra_query=bonus, accept_first=exact_draft,
                         r_atol=r_atol)


def _ngram(run: _Run, k, t_draft, t_oracle, r_atol, bonus):
    vocab = run.model.vocab_size
    while len(rows := run.active()):
        n = run.n[rows]
        u = run.rand(len(rows), k).tolist()
        x = run.x[rows].tolist()
        known = (run.sigma[rows] < n[:, None]).tolist()
        order = run.order[rows].tolist()
        # leave room for the query after the last draft: each call yields >= 1 token
        room = (run.N - 1 - n).clamp(min=0, max=k).tolist()
        drafted = [context_bigram_draft(x[r], known[r], order[r], int(n[r]), room[r], u[r], t_draft)
                   for r in range(len(rows))]
        width = max(1, max(len(d) for d, _ in drafted))
        drafts = torch.zeros(len(rows), width, dtype=torch.long)
        q = torch.zeros(len(rows), width, vocab)
        q[:, :, 0] = 1.0  # padding slots: any valid distribution (never verified)
        for r, (toks, dists) in enumerate(drafted):
            for i, (tok, dist) in enumerate(zip(toks, dists)):
                drafts[r, i] = tok
                q[r, i, 0] = 0.0
                q[r, i, list(dist)] = torch.tensor(list(dist.values()))
        num = torch.tensor([len(d) for d, _ in drafted], device=n.device)
        run.oracle_round(rows, drafts.to(n.device), q.to(n.device), num, T=t_oracle, extra_query=True,
                         accept_first=False, r_atol=r_atol)
