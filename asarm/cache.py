"""Cached decoding backend: a content-stream key/value cache for arbitrary orders.

Why a cache is exact here (docs/design.md, Cache invariant). In rank space every mask of
``step_mask`` is a *prefix*: with ``m`` prompt tokens and ``n`` known tokens,

* the content stream of a known rank ``r`` attends to ranks ``< max(m, r + 1)``
  (lower ranks, itself, and the whole prompt if ``r < m``);
* a query at a known rank ``r`` attends to ranks ``< r`` (``< m`` if ``r < m``);
* a query at an unknown rank attends to ranks ``< n`` (every known token);
* nobody attends to an unknown token.

So the content stream of rank ``r`` depends only on the tokens of ranks
``<= max(r, m - 1)``. XLNet's relative attention depends on the positions
only through ``pos_i - pos_j``, so nothing else changes as tokens are filled
in. Each layer's content-stream keys and values can therefore be cached per
rank and reused as long as the tokens of lower ranks are unchanged.

What one call computes, for each row: the content streams of the ranks that
became known since the last call (causal among themselves over the cache),
and the query streams asked for, in ONE pass through the layers. Hence

* prompt (first call of a row): the prompt block, bidirectional, plus queries;
* ASSD draft call: ``k`` query streams over the cache (plus the one token the
  last oracle round corrected);
* ASSD oracle call: the ``k`` drafted tokens' content streams plus their queries;
* sequential: the previous token's content stream plus the next query.

Keeping it exact: per row we store the tokens whose keys/values are cached.
At every call the row's cache is cut at the first rank whose token in ``x``
differs (a rejected draft that was overwritten); everything below is still
exact. Cached ranks above ``n_known`` (drafts not yet rewritten) stay, but are
never attended: every mask is a prefix of at most ``n_known`` ranks.

Cost: per call O(R x T x (d^2 + d x d_inner + L x d + 2N x d)) for R rows, T new
streams per row and L cached keys; the plain path pays O(N x d^2 + N^2 x d)
per row and call. Memory: ``2 x d_model x itemsize`` bytes per token per layer
(K and V) for ``B x N`` tokens, plus one ``2N x d_model`` table of projected
relative embeddings per layer; never an ``N x N`` tensor. The attention of one
call is computed in chunks of new streams (``stream_chunk``), so even the
first call of a long prompt (``T ~ L ~ N`` new streams and keys) builds score
and index tensors of at most ``ATTENTION_CHUNK_ELEMENTS`` entries (or one
stream's worth, ``R x H x 3N``, if that is larger): memory linear in ``N``.
"""

from __future__ import annotations

import torch

from .orders import order_to_pos, visible_ranks

# Most entries (R x H x streams x (L + 2N)) that the attention of one chunk of new streams may
# build: 2**24 float32 scores are 64 MiB per tensor. Without the chunking, a 15k-token prompt's first
# call built R x T x L int64 indices and H x T x 2N position scores (gigabytes).
ATTENTION_CHUNK_ELEMENTS = 1 << 24


def cache_bytes_per_token_per_layer(config, dtype=torch.float32) -> int:
    """Bytes the cache holds per token and layer: keys and values, ``2 x n_head x d_head x itemsize``."""
    return 2 * config.n_head * config.d_head * torch.empty((), dtype=dtype).element_size()


def attend(q, k, v, rel_k, rel_idx, allowed, r_w_bias, r_r_bias, scale: float):
    """XLNet's relative multi-head attention of new streams over cached keys.

    ``score[t, j] = ((q_t + r_w_bias) . k_j + (q_t + r_r_bias) . rel_k[rel_idx[t, j]]) * scale``,
    restricted to ``allowed`` keys, softmax, weighted sum of ``v``. Pure and
    shape-static given its inputs (``torch.compile`` friendly).

    Args:
        q: ``(R, T, H, D)`` queries of the new streams.
        k, v: ``(R, H, L, D)`` cached content keys / values (rank order).
        rel_k: ``(H, P, D)`` projected relative embeddings, one per distance (head-major, so that
            the product below is a plain batched matmul over heads without copying the table).
        rel_idx: ``(R, T, L)`` long, row of ``rel_k`` for each (stream, key) pair.
        allowed: ``(R, T, L)`` bool; each stream must allow at least one key.
        r_w_bias, r_r_bias: ``(H, D)``.
    Returns:
        ``(R, T, H, D)``.
    """
    content = torch.einsum("rthd,rhld->rhtl", q + r_w_bias, k)
    # position term against every distance, then pick the (stream, key) distances:
    # (T x 2N) per row instead of HF's (N x 2N) block.
    position = torch.einsum("rthd,hpd->rhtp", q + r_r_bias, rel_k)
    position = position.gather(3, rel_idx[:, None].expand(-1, position.shape[1], -1, -1))
    score = (content + position) * scale
    # finite fill in the score's own dtype: safe in fp16/bf16, and a fully masked
    # (padding) row gives a uniform softmax instead of NaN
    score = score.masked_fill(~allowed[:, None], torch.finfo(score.dtype).min)
    prob = torch.softmax(score.float(), dim=-1).to(v.dtype)
    return torch.einsum("rhtl,rhld->rthd", prob, v)


def stream_chunk(rows: int, heads: int, streams: int, keys: int, n: int,
                 budget: int | None = None) -> int:
    """How many new streams one attention chunk takes: the most whose scores fit ``budget``.

    One stream costs ``rows x heads x (keys + 2n)`` entries (content scores against
    ``keys`` cached keys, position scores against ``2n`` distances). Returns a value
    in ``[1, max(1, streams)]``; ``budget`` defaults to ``ATTENTION_CHUNK_ELEMENTS``.
    """
    budget = ATTENTION_CHUNK_ELEMENTS if budget is None else budget
    per_stream = max(1, rows * heads * (keys + 2 * n))
    return max(1, min(max(1, streams), budget // per_stream))


def stream_masks(q_pos, key_pos, limit, n: int):
    """``(rel_idx, allowed)`` of ``attend`` for some streams, built only for those streams.

    Args:
        q_pos: ``(R, C)`` positions of the streams; key_pos: ``(R, L)`` positions of the keys
            (rank order); limit: ``(R, C)`` each stream sees the ``limit`` lowest ranks.
        n: sequence length (row ``n - d`` of ``rel_k`` is distance ``d``).
    Returns:
        ``(R, C, L)`` long and ``(R, C, L)`` bool.
    """
    rel_idx = n - (q_pos[:, :, None] - key_pos[:, None, :])
    allowed = torch.arange(key_pos.shape[1], device=key_pos.device) < limit[:, :, None]
    return rel_idx, allowed


class CachedDecoder:
    """Decoder backend with a per-layer content-stream K/V cache; ``asarm.decoders.Decoder``.

    Built once per sampling run for a batch of ``B`` rows with orders ``sigma``
    ``(B, N)`` and prompt sizes ``num_visible`` ``(B,)``. Calls may pass any
    subset of rows; each row's cache lives in slot ``rows[i]``. The logits equal
    ``asarm.decoders.PlainDecoder``'s up to float rounding for every call pattern (tokens of any
    rank may change between calls; the cache notices and recomputes).

    Attributes:
        length: ``(B,)`` number of lowest ranks whose keys/values are cached.
        tokens: ``(B, N)`` the token (by rank) each cached entry was computed from.
    """

    def __init__(self, model, sigma: torch.Tensor, num_visible: torch.Tensor):
        cfg = model.config
        if cfg.attn_type != "bi" or cfg.bi_data:
            raise NotImplementedError("the cached backend supports XLNet with attn_type='bi' and bi_data=False")
        self.model = model
        self.net = model.xlnet.transformer
        self.sigma = sigma
        self.m = torch.as_tensor(num_visible, device=sigma.device).long()
        batch, self.N = sigma.shape
        self.pos_of_rank = order_to_pos(sigma)  # (B, N): position decoded at each rank
        self.length = torch.zeros(batch, dtype=torch.long, device=sigma.device)
        self.tokens = torch.full((batch, self.N), -1, dtype=torch.long, device=sigma.device)
        self.k_cache = self.v_cache = None  # (n_layer, B, H, N, D) each, allocated at the first call
        self.rel_k = None  # (n_layer, H, 2N, D), projected at the first call

    # ------------------------------------------------------------------ bookkeeping
    def nbytes(self) -> int:
        """Bytes held by the K/V cache and the relative-position tables."""
        return sum(t.numel() * t.element_size() for t in (self.k_cache, self.v_cache, self.rel_k) if t is not None)

    def _allocate(self, dtype):
        """K/V storage and the per-layer relative tables, in the compute dtype (autocast's if on)."""
        layers, cfg = self.net.layer, self.model.config
        shape = (len(layers), self.sigma.shape[0], cfg.n_head, self.N, cfg.d_head)
        # zeros, not empty: masked keys get probability 0, and 0 * garbage could be NaN
        self.k_cache = torch.zeros(shape, dtype=dtype, device=self.sigma.device)
        self.v_cache = torch.zeros(shape, dtype=dtype, device=self.sigma.device)
        # HF's sinusoids for distances N, N-1, ..., -N+1 (clamp_len applied): row N - d is distance d
        pos_emb = self.net.relative_positional_encoding(self.N, self.N)[:, 0].to(self.sigma.device)
        self.rel_k = torch.stack([torch.einsum("pi,ihd->hpd", pos_emb.to(layer.rel_attn.r.dtype), layer.rel_attn.r)
                                  for layer in layers]).to(dtype).contiguous()

    def _valid_length(self, rows, x_rank, m):
        """``(R,)`` how many lowest ranks of each row are still exactly cached, given its tokens now.

        Cut at the first rank whose token changed; a change inside the prompt
        invalidates the whole prompt block (it is bidirectional).
        """
        length = self.length[rows]
        width = int(length.max())
        if width == 0:
            return length
        rank = torch.arange(width, device=rows.device)
        differs = (x_rank[:, :width] != self.tokens[rows, :width]) & (rank < length[:, None])
        first = torch.where(differs.any(1), differs.long().argmax(1), length)
        return torch.where(first < m, torch.zeros_like(first), first)

    def _select(self, cache_layer, rows, width):
        """``(R, H, width, D)`` cached entries of ``rows``: a view when rows are a contiguous range."""
        r0, count = int(rows[0]), len(rows)
        if int(rows[-1]) - r0 + 1 == count and bool((rows[1:] > rows[:-1]).all()):
            return cache_layer[r0:r0 + count, :, :width]
        return cache_layer[rows, :, :width]

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, rows, x, n_known, queries) -> torch.Tensor:
        """Logits of ``queries`` for a subset of rows (``asarm.decoders.Decoder``'s contract).

        Args:
            rows: ``(R,)`` long, distinct indices into the decoder's batch.
            x: ``(R, N)`` the rows' current token ids (unknown ranks hold anything).
            n_known: ``(R,)`` long. queries: ``asarm.decoders.Queries`` ``(R, K)``.
        Returns:
            ``(R, K, V)`` float32 logits (dropout off in any mode); invalid query slots are padding.
        """
        with self.model.without_dropout():  # the cached keys/values must be those of the deterministic network
            return self._logits(rows, x, n_known, queries)

    def _new_streams(self, rows, x_rank, n_known, queries):
        """The streams of one pass: content slots for the ranks that became known, then the query slots.

        Returns ``(start, U, rank, valid, limit)``: ``(R,)`` ranks still exactly cached, ``U`` content
        slots per row, and ``(R, U + K)`` ranks, real-slot flags and how many lowest ranks each stream
        sees (all ``<= n_known``).
        """
        dev, N, m = x_rank.device, self.N, self.m[rows]
        start = self._valid_length(rows, x_rank, m)
        new = (n_known - start).clamp(min=0)
        U = int(new.max())
        t_u = torch.arange(U, device=dev)
        c_rank, c_valid = start[:, None] + t_u, t_u < new[:, None]
        rank = torch.cat([c_rank, queries.rank], 1).clamp(0, N - 1)  # (R, T)
        valid = torch.cat([c_valid, queries.valid], 1)
        # content stream of rank r: lower ranks and itself, the whole prompt inside the prompt
        c_limit = torch.maximum(m[:, None], c_rank + 1)
        q_limit = visible_ranks(queries.rank, torch.minimum(queries.limit, n_known[:, None]), m[:, None])
        limit = torch.where(valid, torch.cat([c_limit, q_limit], 1), torch.ones_like(rank))  # padding sees rank 0
        return start, U, rank, valid, limit

    def _logits(self, rows, x, n_known, queries):
        dev, N = x.device, self.N
        rows, n_known = (torch.as_tensor(t, device=dev).long() for t in (rows, n_known))
        R, K = queries.shape
        if R == 0:
            return torch.zeros(0, K, self.model.vocab_size, device=dev)
        order = self.pos_of_rank[rows]
        x_rank = x.gather(1, order)  # (R, N) tokens in rank order
        start, U, rank, valid, limit = self._new_streams(rows, x_rank, n_known, queries)
        L = int(n_known.max())
        key_pos, q_pos = order[:, :L], order.gather(1, rank)

        # embeddings: tokens for content streams, XLNet's mask_emb for query streams
        c_tok = x_rank.gather(1, rank[:, :U])
        h = self.net.word_embedding(c_tok)
        s = torch.cat([h, self.net.mask_emb.expand(R, K, -1).to(h.dtype)], 1)  # (R, T, d_model)
        if self.k_cache is None:
            self._allocate(self._compute_dtype(dev))
        c_valid = valid[:, :U]
        slots = (rows[:, None].expand(R, U)[c_valid], rank[:, :U][c_valid])  # where new keys/values go
        s = self._layers(s, U, rows, slots, c_valid, (q_pos, key_pos, limit), L)

        # bookkeeping: the new content entries are cached now
        self.tokens[slots] = c_tok[c_valid]
        self.length[rows] = torch.maximum(start, n_known)
        return self.model.xlnet.lm_loss(s[:, U:]).float()

    def _layers(self, s, U, rows, slots, c_valid, geometry, L):
        """Run the ``(R, T, d_model)`` streams ``s`` through every layer, writing the ``U`` new content
        streams' keys/values into the cache at ``slots`` first. ``geometry = (q_pos, key_pos, limit)``."""
        q_pos, key_pos, limit = geometry
        R, T, N = s.shape[0], s.shape[1], self.N
        # attention in chunks of C streams: (R, C, L) masks and (R, H, C, L + 2N) scores within the budget
        C = stream_chunk(R, self.model.config.n_head, T, L, N)
        chunks = [slice(a, min(a + C, T)) for a in range(0, T, C)]
        # one chunk (every call but a long prompt's first): build its masks once for all layers
        masks = stream_masks(q_pos, key_pos, limit, N) if len(chunks) == 1 else None
        for layer, kc, vc, rel_k in zip(self.net.layer, self.k_cache, self.v_cache, self.rel_k):
            att = layer.rel_attn
            if U:
                hc = s[:, :U][c_valid]  # (P, d_model) real new content streams
                kc[slots[0], :, slots[1]] = (hc @ att.k.flatten(1)).unflatten(-1, att.k.shape[1:]).to(kc.dtype)
                vc[slots[0], :, slots[1]] = (hc @ att.v.flatten(1)).unflatten(-1, att.v.shape[1:]).to(vc.dtype)
            q = (s @ att.q.flatten(1)).unflatten(-1, att.q.shape[1:])  # (R, T, H, D)
            k_l, v_l = self._select(kc, rows, L), self._select(vc, rows, L)
            if masks is not None:
                out = attend(q, k_l, v_l, rel_k, *masks, att.r_w_bias, att.r_r_bias, att.scale)
            else:
                # written in place: chunk results kept alive between the large score tensors would
                # fragment the heap (peak RSS grew with N^2 although no tensor did)
                out = q.new_empty(q.shape, dtype=v_l.dtype)  # attend returns the values' dtype
                for c in chunks:
                    out[:, c] = attend(q[:, c], k_l, v_l, rel_k, *stream_masks(q_pos[:, c], key_pos, limit[:, c], N),
                                       att.r_w_bias, att.r_r_bias, att.scale)
            # HF's post_attention, as a matmul on a view of `o` (its einsum copies the weight every call)
            s = att.layer_norm(s + out.flatten(2) @ att.o.flatten(1).t())
            s = layer.ff(s)  # same weights for both streams
        return s

    def _compute_dtype(self, device):
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.model.dtype
