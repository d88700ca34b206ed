"""The acceptance math of speculative sampling, as small pure functions (docs/design.md, ASSD round).

A round proposes drafts ``d_i ~ q_i``; the oracle gives ``p_i``. Draft ``i`` is
kept with probability ``min(1, p_i(d_i) / q_i(d_i))`` (``accept_drafts``); at
the first rejection the token is redrawn from ``max(0, p_i - q_i)``
normalised (``residual_probs``), which makes the kept token exactly ``p_i``
distributed. Tokens are drawn by inverse-CDF sampling from one uniform each
(``sample_from_probs``), so a fixed stream of uniforms fixes the sample.
"""

from __future__ import annotations

import torch


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


def masked_tempered_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """``logits / T`` in float32 with the ``banned`` ids (``(V,)`` bool) at ``-inf``: the one input of
    every sampling distribution (``probs_from_logits``) and score (``ASARM.log_probs``)."""
    return (logits.float() / temperature).masked_fill(banned, float("-inf"))


def probs_from_logits(logits: torch.Tensor, temperature: float, banned: torch.Tensor) -> torch.Tensor:
    """``softmax(logits / T)`` with ``banned`` ids at probability 0.

    Args:
        logits: ``(..., V)``; banned: ``(V,)`` bool.
    Returns:
        float32 ``(..., V)``, rows summing to 1.
    Raises:
        NonFiniteLogitsError: NaN/inf logits, or ``T`` so small that ``logits / T`` overflows.
    """
    z = masked_tempered_logits(logits, temperature, banned)
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
        accept_first: bool or ``(R,)`` bool, accept draft 0 unconditionally (exact when
            ``p_0 = q_0`` mathematically, as in self-draft ASSD; it removes float noise).
    Returns:
        ``(R,)`` long, number of accepted leading drafts.
    """
    ok = u * q_draft < p_draft + r_atol * q_draft
    if ok.shape[1]:
        ok[:, 0] |= torch.as_tensor(accept_first, device=ok.device)
    ok = ok & valid
    return ok.long().cumprod(-1).sum(-1)


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
