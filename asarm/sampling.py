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
* ``ngram``: drafts come from counts of the row's known tokens (no draft
  call); each oracle call yields at least one token. Two drafters
  (``ngram_draft``): ``"bigram"`` (asarm's: tempered bigram counts, the draft
  stops at the first position without a left token, and every oracle call
  also queries the rank after the last draft) and ``"paper"`` (the paper's
  ``ContextNGram``: bigram counts, else unigram counts, untempered; a round
  whose first position has no known left neighbour is a self-draft ASSD
  round instead; no extra query).

Draft-only temperature (``temperature_mode="draft"``: the oracle is at
``T = 1``, so the sample is exact for the ``T = 1`` joint) has two forms
(``draft_only_temperature``): ``"verify0"`` tempers every draft, draft 0
included, which must then be verified like the others (a two-call round can
yield one token, so ``nfe <= N - m`` no longer holds); ``"paper"`` leaves
draft 0 untempered (it is then exactly ``p_0`` and kept without a test, as
the paper's ``no_temp_oracle``) and tempers drafts 1.., so the bound holds.

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
import numbers
import operator
from collections import Counter, defaultdict
from dataclasses import dataclass

import torch

from .orders import order_to_pos, scatter_by_rank

METHODS = ("sequential", "assd", "ngram")
TEMPERATURE_MODES = ("both", "draft")
# value names match the protocol fields ``ngram_draft`` / ``draft_only_temperature`` 1:1
NGRAM_DRAFTS = ("bigram", "paper")
DRAFT_ONLY_TEMPERATURES = ("verify0", "paper")


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


class NonFiniteLogitsError(FloatingPointError, ValueError):
    """A softmax over the model's logits came out NaN (also a ``ValueError``: it is the input's fault)."""


def check_probabilities(out: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``out`` (a softmax or log-softmax of ``logits / temperature``) if it holds no NaN, else raise.

    A NaN there means NaN/inf logits (the model) or ``logits / T`` overflowing to
    ``inf`` (the temperature); without this check inverse-CDF sampling would
    silently return the last vocabulary id. One reduction per call; the cause is
    looked for only after a failure.

    Raises:
        NonFiniteLogitsError: naming the likely cause and the fix.
    """
    if not torch.isnan(out).any():
        return out
    if not torch.isfinite(logits).all():
        raise NonFiniteLogitsError(
            "the model returned non-finite logits (NaN or inf): its weights are probably NaN/inf (a diverged "
            "or corrupted checkpoint), or float16 overflowed; check torch.isfinite(p).all() for p in "
            "model.parameters(), or run in float32/bfloat16")
    raise NonFiniteLogitsError(
        f"softmax(logits / temperature) is not finite at temperature={temperature!r}: logits / T overflows "
        "float32; use a temperature of at least 1e-30 (1e-4 is already practically greedy)")


def probs_from_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """``softmax(logits / T)`` with ``banned`` ids at probability 0.

    Args:
        logits: ``(..., V)``; banned: ``(V,)`` bool.
    Returns:
        float32 ``(..., V)``, rows summing to 1.
    Raises:
        NonFiniteLogitsError: NaN/inf logits, or ``T`` so small that ``logits / T`` overflows.
    """
    z = (logits.float() / temperature).masked_fill(banned, float("-inf"))
    return check_probabilities(torch.softmax(z, dim=-1), logits, temperature)


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


# ---------------------------------------------------------------------------- sampler
def _as_number(value):
    """``value`` as a Python float if it is a real number (int, float, numpy scalar, one-element
    tensor; not bool or str), else ``None``."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.dtype.is_complex:
            return None
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def check_temperature(temperature, name: str = "temperature") -> float:
    """``temperature`` as a float, or ``ValueError`` unless it is a finite real number ``> 0``.

    numpy scalars and one-element tensors are accepted (e.g. a value read from a config array).
    """
    t = _as_number(temperature)
    if t is None or not math.isfinite(t) or t <= 0:
        raise ValueError(f"{name} must be a finite number > 0 (1.0 samples the model as it is; smaller "
                         f"is greedier), got {temperature!r}")
    return t


def check_draft_length(k) -> int:
    """``k`` as an int, or ``ValueError`` unless it is an integer ``>= 1`` (numpy / 0-d tensor ints accepted)."""
    try:
        value = None if isinstance(k, bool) else operator.index(k)
    except TypeError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"k (draft length) must be an integer >= 1 (the paper uses 5), got {k!r}")
    return value


def _check_args(method, k, temperature, temperature_mode, r_atol, ngram_draft, draft_only_temperature):
    """Validate ``sample``'s options; returns ``(k, temperature, r_atol)`` as Python numbers."""
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}")
    k = check_draft_length(k)
    temperature = check_temperature(temperature)
    if temperature_mode not in TEMPERATURE_MODES:
        raise ValueError(f"temperature_mode must be one of {TEMPERATURE_MODES}, got {temperature_mode!r}")
    atol = _as_number(r_atol)
    if atol is None or not math.isfinite(atol) or atol < 0:
        raise ValueError(f"r_atol must be a finite number >= 0 (0 keeps sampling exact), got {r_atol!r}")
    if ngram_draft not in NGRAM_DRAFTS:
        raise ValueError(f"ngram_draft must be one of {NGRAM_DRAFTS}, got {ngram_draft!r}")
    if draft_only_temperature not in DRAFT_ONLY_TEMPERATURES:
        raise ValueError(f"draft_only_temperature must be one of {DRAFT_ONLY_TEMPERATURES}, "
                         f"got {draft_only_temperature!r}")
    return k, temperature, atol


def draft_temperatures(temperature: float, temperature_mode: str, draft_only_temperature: str):
    """The temperatures ``(t_first, t_rest, t_oracle)`` of model draft 0, model drafts 1.., and the oracle.

    ``"both"``: all ``T`` (exact for the tempered joint). ``"draft"``: the oracle
    at 1 (exact for the ``T = 1`` joint) and drafts 1.. at ``T``; draft 0 at
    ``T`` (``"verify0"``) or at 1 (``"paper"``: then ``t_first == t_oracle``,
    so draft 0 is the oracle's own conditional and needs no test).
    """
    t = float(temperature)
    if temperature_mode == "both":
        return t, t, t
    return (1.0 if draft_only_temperature == "paper" else t), t, 1.0


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
           r_atol: float = 0.0, bonus: bool = False, ngram_draft: str = "bigram",
           draft_only_temperature: str = "verify0", generator: torch.Generator | None = None,
           backend: str = "cached") -> SampleOutput:
    """Complete the masked positions of every row by sampling the order-``sigma`` joint.

    Args:
        model: an ``ASARM``.
        input_ids: ``(B, N)`` ids; positions with ``sigma >= num_visible`` are
            overwritten (they usually hold ``model.mask_token_id``).
        sigma: ``(B, N)`` orders (``asarm.orders``); num_visible: ``(B,)`` prompt sizes ``m``.
        method: ``"sequential"``, ``"assd"`` or ``"ngram"``.
        k: draft length (ASSD and n-gram), an integer >= 1 (numpy / 0-d tensor ints too).
        temperature: finite ``T > 0`` (numpy / 0-d tensor scalars too), applied to draft and oracle (``temperature_mode="both"``,
            exact for the tempered joint) or to the drafts only (``"draft"``: exact for
            the ``T = 1`` joint; see ``draft_only_temperature``).
        r_atol: slack added to the acceptance ratio. LOSSY: ablations only.
        bonus: ASSD only: when every draft is accepted, one more token from the
            oracle call's query at the next rank (lossless; off by default so that
            call counts match the paper's definition).
        ngram_draft: method ``"ngram"`` only: ``"bigram"`` (asarm's drafter,
            ``context_bigram_draft``, plus a query after the last draft) or ``"paper"``
            (the paper's: ``context_ngram_draft``, a self-draft ASSD round where the
            first position has no known left neighbour, no extra query).
        draft_only_temperature: ``temperature_mode="draft"`` only (ignored otherwise):
            ``"verify0"`` tempers model draft 0 and verifies it (``nfe`` may exceed
            ``N - m``); ``"paper"`` draws draft 0 untempered, so it is kept without a
            test and ``nfe <= N - m``.
        generator: ``torch.Generator`` for reproducible sampling.
        backend: ``"cached"`` (content-stream K/V cache, ``asarm.cache``) or ``"plain"``
            (recomputes every position at every call, as the paper's code). Same samples.
    Returns:
        ``SampleOutput`` with ``sequences (B, N)`` and ``nfe (B,)``.
    Raises:
        ValueError: a bad option or input (the message names it); ``NonFiniteLogitsError`` (a
            ``ValueError``) when the model's logits, or ``logits / T``, are not finite.

    Dropout is off during the run whatever mode ``model`` is in; its mode is restored.
    """
    k, temperature, r_atol = _check_args(method, k, temperature, temperature_mode, r_atol, ngram_draft,
                                         draft_only_temperature)
    num_visible = torch.as_tensor(num_visible, device=input_ids.device) if not isinstance(num_visible, torch.Tensor) else num_visible
    model.check_inputs(input_ids, sigma, num_visible)
    input_ids, sigma, num_visible = (t.to(model.device, torch.long) for t in (input_ids, sigma, num_visible))
    temps = draft_temperatures(temperature, temperature_mode, draft_only_temperature)
    # exact only for the deterministic network: dropout off whatever mode the caller left the model in
    with model.without_dropout():
        run = _Run(model, input_ids, sigma, num_visible, generator, backend)
        if method == "sequential":
            _sequential(run, temps[2])
        elif method == "assd":
            while len(rows := run.active()):
                _assd_round(run, rows, k, temps, r_atol, bonus)
        else:
            _ngram(run, k, temps, r_atol, ngram_draft)
    return SampleOutput(run.x, run.nfe, run.drafted, run.accepted)


def _sequential(run: _Run, t_oracle):
    while len(rows := run.active()):
        n = run.n[rows]
        one = torch.ones_like(n)
        p = probs_from_logits(run.call(rows, n, n, one), t_oracle, run.banned)
        tok = sample_from_probs(p[:, 0], run.rand(len(rows)))
        run.write(rows, n, tok[:, None], one)
        run.n[rows] = n + 1


def _assd_round(run: _Run, rows, k, temps, r_atol, bonus):
    """One self-draft round for ``rows``: a draft call, then (unless one token is left) an oracle call."""
    t_first, t_draft, t_oracle = temps
    exact_draft = t_first == t_oracle  # then q_0 = p_0: draft 0 needs no verification
    n = run.n[rows]
    kk = (run.N - n).clamp(max=k)
    logits = run.call(rows, n, n, kk)
    q = probs_from_logits(logits, t_draft, run.banned)  # (R, K, V)
    if t_first != t_draft:
        q[:, 0] = probs_from_logits(logits[:, 0], t_first, run.banned)
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
            return
    run.oracle_round(rows, drafts, q, kk, T=t_oracle, extra_query=bonus, accept_first=exact_draft,
                     r_atol=r_atol)


def _ngram(run: _Run, k, temps, r_atol, ngram_draft):
    t_first, t_draft, t_oracle = temps
    paper = ngram_draft == "paper"
    vocab = run.model.vocab_size
    while len(rows := run.active()):
        if paper:
            # the paper drafts with the model when the first position has no left token
            # (its ``order_to_pos[n] == 0``; with other orders also an unknown left neighbour)
            n = run.n[rows]
            pos = run.order[rows].gather(1, n[:, None]).squeeze(1)
            left_rank = run.sigma[rows].gather(1, (pos - 1).clamp(min=0)[:, None]).squeeze(1)
            by_model = (pos == 0) | (left_rank >= n)
            if by_model.any():
                _assd_round(run, rows[by_model], k, temps, r_atol, bonus=False)
                rows = rows[~by_model]
                if not len(rows):
                    continue
        n = run.n[rows]
        u = run.rand(len(rows), k).tolist()
        x = run.x[rows].tolist()
        known = (run.sigma[rows] < n[:, None]).tolist()
        order = run.order[rows].tolist()
        if paper:
            # no extra query: every rank left may be drafted; >= 1 draft per row since m >= 1
            room = (run.N - n).clamp(max=k).tolist()
            drafted = [context_ngram_draft(x[r], known[r], order[r], int(n[r]), room[r], u[r])
                       for r in range(len(rows))]
        else:
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
        run.oracle_round(rows, drafts.to(n.device), q.to(n.device), num, T=t_oracle, extra_query=not paper,
                         accept_first=False, r_atol=r_atol)
