"""Batched sampling for the evaluations (``--batch-size``): several units' rows in ONE ``sample`` call.

The contract: a unit's samples do not depend on the batch it lands in. Each
row brings its own ids, order ``sigma``, prompt size ``m`` and
``torch.Generator`` (seeded from its unit's seed alone, ``row_generator``);
``sample`` draws every random number of a row from that row's generator
(per-row streams), so batch 1, batch B and a resumed run give the same
per-unit samples. Rows of different lengths are padded to the longest with
the mask id; the padding takes the highest ranks of the row's order and
``sample`` gets each row's real length (``lengths``), so it is never decoded
or attended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

ROW_SEED_STRIDE = 7919  # row t of a unit seeded with unit_seed + STRIDE * (t + 1): independent streams


@dataclass
class Row:
    """One sequence to complete: ``ids`` (list), ``sigma`` (list, a permutation of its ranks),
    prompt size ``m`` and its own ``generator``."""

    ids: list[int]
    sigma: list[int]
    m: int
    generator: Any


@dataclass
class Completed:
    """What ``sample_rows`` gives back per row: ``sequence`` (the row's length), ``nfe``, ``drafted``, ``accepted``."""

    sequence: list[int]
    nfe: int
    drafted: int
    accepted: int


def row_generator(seed: int, row: int, device="cpu"):
    """The generator of row ``row`` of a unit seeded ``seed`` (a pure function of both)."""
    import torch

    return torch.Generator(device=device).manual_seed((seed + ROW_SEED_STRIDE * (row + 1)) % 2**63)


def pad_rows(rows: list[Row], mask_id: int, device):
    """``(ids (B, N), sigma (B, N), num_visible (B,), lengths (B,))`` long tensors, every row padded to
    the longest with ``mask_id`` at ranks ``len(row), ..., N - 1`` (after all its real positions)."""
    import torch

    n = max(len(r.ids) for r in rows)
    ids = [r.ids + [mask_id] * (n - len(r.ids)) for r in rows]
    sigma = [list(r.sigma) + list(range(len(r.ids), n)) for r in rows]
    as_long = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return (as_long(ids), as_long(sigma), as_long([r.m for r in rows]), as_long([len(r.ids) for r in rows]))


def synchronize(device) -> None:
    """Wait for the device (CUDA) so that wall-clock times cover the work."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def sample_rows(model, rows: list[Row], config, backend: str | None = None) -> tuple[list[Completed], float]:
    """Complete every row in ONE ``sample`` call with ``config`` (``backend`` overrides its decoder);
    returns the rows' results and the call's wall-clock seconds (CUDA synchronised)."""
    from ..sampling import sample

    ids, sigma, m, lengths = pad_rows(rows, model.mask_token_id, model.device)
    config = config.replace(backend=backend) if backend else config
    synchronize(model.device)
    t0 = time.perf_counter()
    out = sample(model, ids, sigma, m, config, generator=[r.generator for r in rows], lengths=lengths)
    synchronize(model.device)
    seconds = time.perf_counter() - t0
    done = [Completed(out.sequences[i, :len(r.ids)].tolist(), int(out.nfe[i]), int(out.drafted[i]),
                      int(out.accepted[i])) for i, r in enumerate(rows)]
    return done, seconds


def unit_orders(ids, mask_id: int, shuffle: bool, seed: int):
    """``(sigma (R, N), m (R,))`` of a unit's rows ``ids`` (``infill_order``): a random order
    (``shuffle``) comes from a generator seeded with the unit's ``seed``, never from the batch."""
    import torch

    from ..orders import infill_order

    return infill_order(ids, mask_id, shuffle=shuffle, generator=torch.Generator().manual_seed(seed))


def throughput(records: list[dict], key: str = "time_s") -> float | None:
    """Samples per second: the records' count over the sum of their ``key`` (each record holds its share
    of its batch's sampling time); ``None`` when no record has one."""
    times = [r.get(key) for r in records if r.get(key) is not None]
    return len(times) / sum(times) if times and sum(times) > 0 else None


def batched(records: list[dict]) -> bool:
    """True when some record was sampled in a batch of several units (the tables then add samples/s)."""
    return any((r.get("batch_size") or 1) > 1 for r in records)
