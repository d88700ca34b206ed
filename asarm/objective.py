"""The masking-distribution training objective (docs/design.md, Objective), as pure functions.

One *micro-batch* of packed sequences ``x (B, N)`` becomes one training batch:
draw a masking rate ``r``, predict ``K = floor(N r)`` tokens (clamped to
``1..N-1``), keep ``n = N - K`` known, and build XLNet's inputs.

* ``joint`` (the paper's objective, default): a sorted order over a uniformly
  random visible set of size ``n`` (or a uniformly random permutation),
  the joint mask, queries at ranks ``n..N-1``. Query ``t`` sees the TRUE
  tokens of every lower rank (teacher forcing), so the loss is
  ``-sum_{i>=n} log p(x_sigma(i) | x_sigma(<i))``, the conditionals ASSD's
  oracle and sequential decoding use. Target tokens therefore stay in
  ``input_ids``: replacing them with the mask id would hide them from the
  higher-ranked queries and silently turn this into the parallel objective.
  Only the last-ranked position, which no query reads, holds the mask id.
* ``parallel`` (ablation, "conditionally independent"): the draft mask at
  step ``n``: every target sees the known tokens only. As in the paper's code,
  the order is sorted over a random prompt of ``p ~ U{1..n}`` positions, so
  the known block is "prompt + the leftmost decoded tokens", the situation
  of an ASSD draft call. ``visible_attention`` says who inside the known
  block sees whom: ``all`` (each other, default), ``prompt`` (only the
  ``p`` prompt positions see each other, the rest is causal: exactly
  ``draft_mask(sigma, p, n)``) or ``causal``. Targets hold the mask id (no
  query reads them).

Orders: ``sorted`` (the paper's: visible set uniformly random, each block
left to right, 2^N orders), ``random`` (any of the N! permutations; the
paper's ``--any_permutation``) or ``left_to_right`` (the AR-order ablation,
the paper's ``--left_to_right``: the identity order, so the known block is the
first ``n`` positions and the targets are the rest, left to right; a
prefix-conditioned left-to-right model).

Loss scaling (``loss_weight``: ``r`` or ``snr``) is defined for the joint
objective only, as in the paper's trainer, which scales the joint loss and
leaves the parallel one alone; asarm refuses the combination
(``check_loss_scale``) instead of silently ignoring it.

Randomness is counter-based: ``batch_generator(seed, step, slot)`` is a pure
function of the optimizer step and the micro-batch *slot*
(``slot = rank * accumulation + micro``), so a run's batches do not depend on
how its slots are spread over processes, and resuming needs no RNG replay.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .orders import draft_mask, joint_mask, random_order, random_sorted_order, step_mask, target_mapping

OBJECTIVES = ("joint", "parallel")
VISIBLE_ATTENTION = ("all", "prompt", "causal")
ORDERS = ("sorted", "random", "left_to_right")
LOSS_SCALES = ("none", "r", "snr")


# ---------------------------------------------------------------------------- masking rates
def rate_range(step: int, start: float, final_min: float, final_max: float, warmup_steps: int) -> tuple[float, float]:
    """``[min, max]`` of the masking rate at optimizer step ``step`` (0-based).

    Both ends move linearly from ``start`` (step 0) to ``final_min`` /
    ``final_max`` (step ``warmup_steps`` and after). ``warmup_steps = 0``
    starts at the final range.
    """
    frac = 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)
    return start + (final_min - start) * frac, start + (final_max - start) * frac


def stratum(lo: float, hi: float, slot: int, num_slots: int) -> tuple[float, float]:
    """The ``slot``-th of ``num_slots`` equal sub-intervals of ``[lo, hi]``."""
    if not 0 <= slot < num_slots:
        raise ValueError(f"slot {slot} is outside 0..{num_slots - 1}")
    width = (hi - lo) / num_slots
    return lo + slot * width, lo + (slot + 1) * width


def stratified_rate(lo: float, hi: float, slot: int, num_slots: int, generator: torch.Generator) -> float:
    """A rate drawn uniformly from this slot's stratum of ``[lo, hi]`` (low-variance sampling:
    the ``num_slots`` micro-batches of one optimizer step cover the range evenly)."""
    a, b = stratum(lo, hi, slot, num_slots)
    return a + (b - a) * float(torch.rand((), generator=generator, dtype=torch.float64))


def num_targets(length: int, rate: float) -> int:
    """``K = floor(N r)`` clamped to ``1..N-1`` (at least one target and one known token)."""
    return min(max(int(math.floor(length * rate)), 1), length - 1)


def check_loss_scale(objective: str, scale: str) -> None:
    """Raise ``ValueError`` unless ``scale`` is a known loss scale that ``objective`` accepts.

    ``r`` and ``snr`` weight the joint objective's masking rates (a higher rate's
    joint loss also covers the lower rates' conditionals); the paper's trainer
    applies them to the joint objective only. A parallel run asking for them
    would get a weighting the paper never used, so it is refused.
    """
    if scale not in LOSS_SCALES:
        raise ValueError(f"unknown loss scale '{scale}'; choose one of {LOSS_SCALES}")
    if scale != "none" and objective != "joint":
        raise ValueError(f"loss_scale '{scale}' applies only to the joint objective (the paper scales only the joint "
                         f"loss); set loss_scale: none for objective '{objective}'")


def loss_weight(rate: float, scale: str, objective: str = "joint") -> float:
    """Multiplier of the mean target cross-entropy: ``none`` 1, ``r`` r, ``snr`` 1/SNR = r/(1-r).

    Raises ``ValueError`` (``check_loss_scale``) for an unknown scale or a
    scale other than ``none`` with a non-joint ``objective``.
    """
    check_loss_scale(objective, scale)
    if scale == "none":
        return 1.0
    if scale == "r":
        return rate
    return rate / (1.0 - rate)  # snr


def batch_generator(seed: int, step: int, slot: int, device="cpu") -> torch.Generator:
    """A ``torch.Generator`` seeded by a hash of ``(seed, step, slot)``: the randomness of one micro-batch."""
    digest = hashlib.sha256(f"{seed}/{step}/{slot}".encode()).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


# ---------------------------------------------------------------------------- batches
@dataclass
class TrainingBatch:
    """XLNet inputs for one micro-batch. Shapes: ``B`` rows, ``N`` positions, ``K`` targets.

    Attributes:
        input_ids: ``(B, N)`` long; positions no query reads hold the mask id.
        perm_mask: ``(B, N, N)`` bool, True = may not attend.
        target_mapping: ``(B, K, N)`` float one-hot; query ``t`` predicts ``positions[b, t]``.
        labels: ``(B, K)`` long, ``labels[b, t] = x[b, positions[b, t]]``.
        positions: ``(B, K)`` long.
        sigma: ``(B, N)`` long orders.
        num_known: ``n = N - K`` known tokens per row (ranks ``< n``).
        rate: the masking rate drawn.
    """

    input_ids: torch.Tensor
    perm_mask: torch.Tensor
    target_mapping: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    sigma: torch.Tensor
    num_known: int
    rate: float


def make_batch(x: torch.Tensor, rate: float, mask_token_id: int, *, objective: str = "joint",
               order: str = "sorted", visible_attention: str = "all",
               generator: torch.Generator | None = None) -> TrainingBatch:
    """Build the training inputs of one micro-batch (every row its own order, all rows ``K`` targets).

    Args:
        x: ``(B, N)`` long, the true tokens.
        rate: masking rate in ``(0, 1)``; ``K = num_targets(N, rate)``.
        objective: ``joint`` or ``parallel`` (module docstring).
        order: ``sorted`` (2^N orders, the paper's), ``random`` (any permutation) or
            ``left_to_right`` (the identity order: known = the first ``n`` positions).
        visible_attention: ``parallel`` only: ``all``, ``prompt`` or ``causal``.
    Returns:
        a ``TrainingBatch``; ``labels (B, K)`` lines up with the rows of ``target_mapping``.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective '{objective}'; choose one of {OBJECTIVES}")
    if order not in ORDERS:
        raise ValueError(f"unknown order '{order}'; choose one of {ORDERS}")
    if visible_attention not in VISIBLE_ATTENTION:
        raise ValueError(f"unknown visible_attention '{visible_attention}'; choose one of {VISIBLE_ATTENTION}")
    b, length = x.shape
    k = num_targets(length, rate)
    n = length - k
    dev = x.device
    if objective == "joint":
        sigma = _order(order, b, length, n, generator, dev)
        perm = joint_mask(sigma, n)
        hidden = sigma == length - 1  # read by no query
    else:
        prompt = 1 + torch.randint(0, n, (b,), generator=generator)  # p ~ U{1..n}
        sigma = _order(order, b, length, prompt, generator, dev)
        prompt = prompt.to(dev)
        if visible_attention == "all":
            perm = draft_mask(sigma, n, n)
        elif visible_attention == "prompt":
            perm = draft_mask(sigma, prompt, n)
        else:
            perm = step_mask(sigma, 0, n)
        hidden = sigma >= n
    mapping, positions, _ = target_mapping(sigma, n, k)
    labels = x.gather(1, positions)
    input_ids = x.masked_fill(hidden, mask_token_id)
    return TrainingBatch(input_ids, perm, mapping, labels, positions, sigma, n, rate)


def _order(order: str, batch: int, length: int, num_visible, generator, device) -> torch.Tensor:
    """sigma ``(B, N)`` of one micro-batch for ``order`` (see ``make_batch``); ``num_visible``: int or ``(B,)``.

    ``random`` ignores ``num_visible`` (any rank prefix can be the visible set);
    ``left_to_right`` is the identity whatever the visible count (the first
    positions are the visible ones), drawing no random numbers.
    """
    if order == "random":
        return random_order(batch, length, generator=generator).to(device)
    if order == "left_to_right":
        return torch.arange(length, device=device).expand(batch, length).clone()
    return random_sorted_order(batch, length, num_visible, generator=generator).to(device)


def target_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the targets only: ``logits (B, K, V)``, ``labels (B, K)`` -> scalar float32."""
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
