"""Exact samplers for AS-ARMs: sequential, ASSD (self-draft, optionally one call per round), n-gram drafts.

Every method samples the order-``sigma`` autoregressive joint
``prod_{r >= m} p_T(x at rank r | x at ranks < r)`` of the masked block
(docs/design.md, ASSD round); they differ only in how many network calls that
takes (``nfe``, "number of function evaluations"). One speculative *round*
has three named phases:

1. **draft**: a drafter (``asarm.drafters``) proposes tokens ``d_i ~ q_i`` for
   the next ranks (the model's draft call, the context's counts, or the
   drafts the previous oracle call already computed);
2. **verify**: ONE oracle call scores the drafts with the joint mask, and
   speculative sampling keeps the longest prefix it accepts
   (``asarm.acceptance.accept_drafts``);
3. **correct**: one more token at the first rejected rank from the residual
   ``max(0, p - q)``, or from the query after the last draft when every
   draft was kept (the bonus), so every oracle call yields a token.

Sequential decoding is the round with no drafts. The methods:

* ``sequential``: ``nfe = N - m``.
* ``assd``: a draft call + an oracle call per round, at least two tokens
  per round, so ``nfe <= N - m``. ``lookahead="full" | "cheap"``: the oracle
  call also computes the next round's drafts (one call per round; see
  ``asarm.drafters``). ``bonus``: query the rank after the last draft.
* ``ngram``: drafts from the counts of the row's known tokens (no draft call):
  ``ngram_draft="bigram"`` (asarm's) or ``"paper"`` (the paper's ContextNGram).

Draft-only temperature (``temperature_mode="draft"``: the oracle at ``T = 1``,
exact for the ``T = 1`` joint) has two forms (``draft_only_temperature``):
``"verify0"`` tempers every draft, draft 0 included, which must then be
verified (``nfe <= N - m`` no longer holds); ``"paper"`` leaves draft 0
untempered (exactly ``p_0``, kept without a test), so the bound holds.

``adaptive_k``: each row's draft length follows its own past (one more after a
round that kept every draft, else one more than the round kept, at most
``k``); it depends only on what is known, so sampling stays exact.

Rows are batched: each row has its own order, prompt size, length
(``lengths``: the ranks from ``lengths[b]`` on are padding, never decoded or
attended), progress and draft length; finished rows leave the batch. The
network is reached only through a decoder (``asarm.decoders``).

Randomness: every random number is a uniform drawn from ``generator``. Pass
one ``torch.Generator`` per row (a list) for per-row streams: each row then
draws a fixed number of uniforms per phase (``k`` or 1) from its own stream,
so a row's sample depends only on its own generator, not on the other rows of
its batch (up to float rounding: batched matmuls of other shapes may differ in
the last bits, which could flip a draw whose uniform lies within ~1e-7 of a
threshold). Tokens come from inverse-CDF sampling, so two backends whose
logits agree give the same samples.
"""

from __future__ import annotations

import argparse
import math
import numbers
import operator
from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

import torch

from .acceptance import (NonFiniteLogitsError, accept_drafts, check_probabilities, draft_temperatures,  # noqa: F401
                         probs_from_logits, residual_probs, sample_from_probs)
from .decoders import DECODERS, Queries, make_decoder
from .drafters import DRAFTERS, Draft, next_draft_length  # noqa: F401 (next_draft_length: part of the API)
from .orders import order_to_pos, scatter_by_rank

METHODS = ("sequential", "assd", "ngram")
TEMPERATURE_MODES = ("both", "draft")
# value names match the protocol fields ``ngram_draft`` / ``draft_only_temperature`` 1:1
NGRAM_DRAFTS = ("bigram", "paper")
DRAFT_ONLY_TEMPERATURES = ("verify0", "paper")
LOOKAHEADS = ("off", "full", "cheap")


@dataclass
class SampleOutput:
    """Result of ``sample``.

    Attributes:
        sequences: ``(B, N)`` completed ids.
        nfe: ``(B,)`` network calls made for each row.
        drafted: ``(B,)`` draft tokens sent to an oracle call.
        accepted: ``(B,)`` of those, the ones kept. A self draft 0 is kept without a test
            (``p_0 = q_0``), so ``accepted / drafted`` counts it too.
    """

    sequences: torch.Tensor
    nfe: torch.Tensor
    drafted: torch.Tensor
    accepted: torch.Tensor
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


def _choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")
    return value


# ---------------------------------------------------------------------------- the config
@dataclass(frozen=True)
class SamplingConfig:
    """Every option of the sampler, with its default, validated when built (``ValueError`` naming it).

    One object travels from the command line (``add_sampling_arguments`` /
    ``from_args``) or a YAML config to ``sample``, and is written into every
    results file (``to_dict``). Fields: see ``sample`` and the module docstring.
    """

    method: str = "assd"
    k: int = 5
    temperature: float = 1.0
    temperature_mode: str = "both"
    draft_only_temperature: str = "verify0"
    bonus: bool = False
    r_atol: float = 0.0
    ngram_draft: str = "bigram"
    lookahead: str = "off"
    adaptive_k: bool = False
    backend: str = "cached"

    def __post_init__(self):
        _choice("method", self.method, METHODS)
        object.__setattr__(self, "k", check_draft_length(self.k))
        object.__setattr__(self, "temperature", check_temperature(self.temperature))
        _choice("temperature_mode", self.temperature_mode, TEMPERATURE_MODES)
        _choice("draft_only_temperature", self.draft_only_temperature, DRAFT_ONLY_TEMPERATURES)
        _choice("ngram_draft", self.ngram_draft, NGRAM_DRAFTS)
        _choice("lookahead", self.lookahead, LOOKAHEADS)
        _choice("decoding backend", self.backend, tuple(DECODERS))
        atol = _as_number(self.r_atol)
        if atol is None or not math.isfinite(atol) or atol < 0:
            raise ValueError(f"r_atol must be a finite number >= 0 (0 keeps sampling exact), got {self.r_atol!r}")
        object.__setattr__(self, "r_atol", atol)
        for name in ("bonus", "adaptive_k"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.lookahead != "off" and self.method != "assd":
            raise ValueError(f"lookahead={self.lookahead!r} needs method 'assd' (it drafts with the model), "
                             f"got method {self.method!r}")
        if self.lookahead != "off":  # one-call rounds always query the rank after the last draft
            object.__setattr__(self, "bonus", True)

    @property
    def drafter(self) -> str:
        """The name in ``asarm.drafters.DRAFTERS`` of this config's proposals."""
        if self.method == "sequential":
            return "none"
        if self.method == "ngram":
            return "bigram" if self.ngram_draft == "bigram" else "ngram-paper"
        return "self" if self.lookahead == "off" else f"lookahead-{self.lookahead}"

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "SamplingConfig":
        return replace(self, **changes)

    def for_method(self, method: str) -> "SamplingConfig":
        """This config with ``method``, for commands that compare several: the ASSD-only ``lookahead``
        is off for the other methods (as ``bonus`` and ``draft_only_temperature`` are ignored by them)."""
        return replace(self, method=method, lookahead=self.lookahead if method == "assd" else "off")

    @classmethod
    def from_args(cls, args: argparse.Namespace, **defaults) -> "SamplingConfig":
        """The config of ``add_sampling_arguments``'s options: a value given on the command line wins,
        then ``defaults`` (e.g. a protocol's), then the field's default."""
        values = {f.name: defaults[f.name] for f in fields(cls) if f.name in defaults}
        for f in fields(cls):
            if getattr(args, f.name, None) is not None:
                values[f.name] = getattr(args, f.name)
        return cls(**values)


_FLAG_HELP = {
    "method": "sequential, assd or ngram",
    "k": "draft length of assd/ngram, an integer >= 1 (the paper's default is 5, its infilling scripts use 10)",
    "temperature": "T > 0",
    "temperature_mode": "both: draft and oracle at T (the tempered joint); draft: drafts only (the T = 1 joint)",
    "draft_only_temperature": "with --temperature-mode draft: verify0 tempers and verifies draft 0 (asarm); "
                              "paper leaves it untempered and keeps it (keeps NFE <= N - m)",
    "bonus": "assd: when every draft is kept, one more token from the oracle call's query after the last draft",
    "r_atol": "slack added to the acceptance ratio; LOSSY, for the paper's ablation only",
    "ngram_draft": "ngram drafter: bigram (asarm's) or paper (bigram, else unigram counts, else a model draft)",
    "lookahead": "assd: off (two calls a round, the paper's), full or cheap (one call a round, lossless; "
                 "implies --bonus)",
    "adaptive_k": "per-row draft length from the row's own acceptance, at most --k (lossless)",
    "backend": "cached (content-stream K/V cache) or plain (recompute everything, the paper's); same samples",
}


def add_sampling_arguments(parser: argparse.ArgumentParser, skip: Sequence[str] = (),
                           defaults: dict | None = None) -> None:
    """One flag per ``SamplingConfig`` field (``--k``, ``--temperature-mode``, ``--bonus/--no-bonus``...),
    each defaulting to ``None`` ("not given"), so that ``SamplingConfig.from_args`` can tell a given
    value from a default. ``skip``: fields the command sets itself (e.g. ``method`` where it compares
    several); ``defaults``: values shown in ``--help`` where a command's default differs."""
    shown = SamplingConfig().to_dict() | (defaults or {})
    for f in fields(SamplingConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{_FLAG_HELP[f.name]} (default: {shown[f.name]})"
        choices = {"method": METHODS, "temperature_mode": TEMPERATURE_MODES, "ngram_draft": NGRAM_DRAFTS,
                   "draft_only_temperature": DRAFT_ONLY_TEMPERATURES, "lookahead": LOOKAHEADS,
                   "backend": tuple(DECODERS)}.get(f.name)
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif choices:
            parser.add_argument(flag, default=None, choices=choices, help=help_text)
        else:
            parser.add_argument(flag, type={"k": int}.get(f.name, float), default=None, help=help_text)


# ---------------------------------------------------------------------------- the sampler's state
class _Run:
    """Mutable state of one batched sampling run (kept out of the math)."""

    def __init__(self, model, input_ids, sigma, num_visible, lengths, config, generator, decoder):
        self.x = input_ids.clone()
        self.sigma, self.order = sigma, order_to_pos(sigma)  # position of each rank, computed once
        self.n, self.end = num_visible.clone(), lengths
        self.nfe, self.drafted, self.accepted = (torch.zeros_like(num_visible) for _ in range(3))
        self.k = config.k
        self.k_row = torch.full_like(num_visible, config.k)  # per-row draft length (adaptive_k changes it)
        self.temps = draft_temperatures(config.temperature, config.temperature_mode, config.draft_only_temperature)
        self.banned, self.vocab = model.banned, model.vocab_size
        self.decoder = make_decoder(decoder or config.backend, model, sigma, num_visible)
        self.generator = generator

    def rand(self, rows, width: int | None = None) -> torch.Tensor:
        """``(R, width)`` uniforms (``width`` defaults to ``k``): from each row's own generator when
        ``generator`` is a list, else from the shared one."""
        width = self.k if width is None else width
        g, dev = self.generator, self.x.device
        if isinstance(g, (list, tuple)):
            if not len(rows):
                return torch.zeros(0, width, device=dev)
            return torch.stack([torch.rand(width, generator=g[r], device=g[r].device) for r in rows.tolist()]).to(dev)
        return torch.rand(len(rows), width, generator=g, device=g.device if g is not None else dev).to(dev)

    def active(self):
        return (self.n < self.end).nonzero().squeeze(-1)

    def write(self, rows, start, tokens, count):
        self.x[rows] = scatter_by_rank(self.x[rows], self.order[rows], start, tokens, count)

    def call(self, rows, n_known, queries: Queries):
        self.nfe[rows] += 1
        return self.decoder(rows, self.x[rows], n_known, queries)


# ---------------------------------------------------------------------------- the three phases
def settle_exact_singletons(run: _Run, rows, draft: Draft):
    """Rows whose only draft is exact (``q_0 = p_0`` and one draft: one rank left, or a draft length of 1)
    keep it without an oracle call (counted as drafted and accepted). Returns ``(settled rows, the other
    rows, their drafts)``."""
    done = draft.exact_first & (draft.count == 1)
    if done.any():
        r = rows[done]
        run.write(r, run.n[r], draft.tokens[done, :1], draft.count[done])
        run.n[r] += 1
        run.drafted[r] += 1
        run.accepted[r] += 1
    return rows[done], rows[~done], draft.select(~done)


def verify(run: _Run, rows, draft: Draft, drafter, r_atol: float):
    """Write the drafts, score them in ONE oracle call, and count the accepted prefix.

    Returns ``(accepted (R,), p (R, K + 1, V), extra (R,) bool, lookahead logits (R, J, V))``: ``p`` is
    the oracle at each draft's rank and at the rank after the last draft (queried where ``extra``).
    """
    n, K = run.n[rows], draft.tokens.shape[1]
    run.write(rows, n, draft.tokens, draft.count)
    extra = draft.extra_query & (n + draft.count < run.end[rows])
    n_known = n + draft.count
    queries = Queries.span(n_known, n, draft.count + extra.long(), K + 1)
    more = drafter.lookahead_queries(run, rows, draft)
    if more is not None:
        queries = queries.cat(more)
    logits = run.call(rows, n_known, queries)
    p = probs_from_logits(logits[:, :K + 1], run.temps[2], run.banned)
    p_d = p[:, :K].gather(-1, draft.tokens[..., None]).squeeze(-1)
    q_d = draft.q.gather(-1, draft.tokens[..., None]).squeeze(-1)
    valid = torch.arange(K, device=n.device)[None, :] < draft.count[:, None]
    accepted = accept_drafts(p_d, q_d, run.rand(rows)[:, :K], valid, r_atol, draft.exact_first)
    return accepted, p, extra, logits[:, K + 1:]


def correct(run: _Run, rows, draft: Draft, p, accepted, extra) -> None:
    """The token at rank ``n + accepted``: from the residual after a rejection, else (when ``extra``)
    from the query after the last draft; the accepted drafts are already in place."""
    n, K, ar = run.n[rows], draft.tokens.shape[1], torch.arange(len(rows), device=rows.device)
    rejected = accepted < draft.count
    p_a = p[ar, accepted]
    dist = p_a
    if K:
        q_a = draft.q[ar, accepted.clamp(max=K - 1)]
        dist = torch.where(rejected[:, None], residual_probs(p_a, q_a), p_a)
    tok = sample_from_probs(dist, run.rand(rows, 1)[:, 0])
    more = (rejected | extra).long()
    run.write(rows, n + accepted, tok[:, None], more)
    run.n[rows] = n + accepted + more
    run.drafted[rows] += draft.count
    run.accepted[rows] += accepted


def speculative_round(run: _Run, rows, drafter, config: SamplingConfig) -> None:
    """One round for ``rows``: draft, verify, correct (module docstring)."""
    draft = drafter.propose(run, rows, run.k_row[rows])
    settled, rows, draft = settle_exact_singletons(run, rows, draft)
    if config.adaptive_k and len(settled):  # they drafted one and kept it
        one = torch.ones_like(settled)
        run.k_row[settled] = next_draft_length(run.k_row[settled], one, one, config.k)
    if not len(rows):
        return
    accepted, p, extra, lookahead = verify(run, rows, draft, drafter, config.r_atol)
    correct(run, rows, draft, p, accepted, extra)
    drafter.receive(run, rows, draft, accepted, lookahead)
    if config.adaptive_k:
        run.k_row[rows] = next_draft_length(run.k_row[rows], draft.count, accepted, config.k)


# ---------------------------------------------------------------------------- the entry point
def _inputs(model, input_ids, sigma, num_visible, lengths):
    """Checked ``(input_ids, sigma, num_visible, lengths)`` as long tensors on the model's device."""
    if not isinstance(num_visible, torch.Tensor):
        num_visible = torch.as_tensor(num_visible, device=input_ids.device)
    model.check_inputs(input_ids, sigma, num_visible)
    N = input_ids.shape[1]
    lengths = torch.full_like(num_visible, N) if lengths is None else torch.as_tensor(lengths).to(num_visible.device)
    if lengths.shape != num_visible.shape or bool(((lengths < num_visible) | (lengths > N)).any()):
        raise ValueError(f"lengths must have shape ({input_ids.shape[0]},) with num_visible <= lengths <= N = {N}, "
                         f"got {lengths.tolist()}")
    return tuple(t.to(model.device, torch.long) for t in (input_ids, sigma, num_visible, lengths))


@torch.no_grad()
def sample(model, input_ids: torch.Tensor, sigma: torch.Tensor, num_visible: torch.Tensor,
           config: SamplingConfig | None = None, *, generator=None, lengths=None, decoder=None,
           **options) -> SampleOutput:
    """Complete the masked positions of every row by sampling the order-``sigma`` joint.

    Args:
        model: an ``ASARM``.
        input_ids: ``(B, N)`` ids; positions with ``sigma >= num_visible`` are overwritten
            (they usually hold ``model.mask_token_id``).
        sigma: ``(B, N)`` orders (``asarm.orders``); num_visible: ``(B,)`` prompt sizes ``m``.
        config: a ``SamplingConfig``; ``options`` (its field names: ``method="assd"``, ``k=5``,
            ``temperature=1.0``, ``temperature_mode``, ``draft_only_temperature``, ``bonus``,
            ``r_atol`` (LOSSY), ``ngram_draft``, ``lookahead``, ``adaptive_k``, ``backend``)
            override it or build one. ``backend`` may also be a decoder class or instance.
        generator: a ``torch.Generator``, or a list of ``B`` (per-row random streams).
        lengths: ``(B,)`` real length of each row (default ``N``); the ranks from
            ``lengths[b]`` on must be the row's padding.
        decoder: a decoder class (built as ``decoder(model, sigma, num_visible)``) or instance
            (``asarm.decoders``), instead of ``config.backend``.
    Returns:
        ``SampleOutput`` with ``sequences (B, N)`` and ``nfe (B,)``.
    Raises:
        ValueError: a bad option or input (the message names it); ``NonFiniteLogitsError`` (a
            ``ValueError``) when the model's logits, or ``logits / T``, are not finite.

    Dropout is off during the run whatever mode ``model`` is in; its mode is restored.
    """
    if "backend" in options and not isinstance(options["backend"], str):
        decoder = options.pop("backend")
    config = (config or SamplingConfig()).replace(**options) if options else (config or SamplingConfig())
    if isinstance(generator, (list, tuple)) and len(generator) != input_ids.shape[0]:
        raise ValueError(f"generator: {len(generator)} generators for {input_ids.shape[0]} rows; pass one per row")
    input_ids, sigma, num_visible, lengths = _inputs(model, input_ids, sigma, num_visible, lengths)
    # exact only for the deterministic network: dropout off whatever mode the caller left the model in
    with model.without_dropout():
        run = _Run(model, input_ids, sigma, num_visible, lengths, config, generator, decoder)
        drafter = DRAFTERS[config.drafter](config)
        while len(rows := run.active()):
            speculative_round(run, rows, drafter, config)
    return SampleOutput(run.x, run.nfe, run.drafted, run.accepted)
