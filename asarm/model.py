"""The AS-ARM: a thin wrapper around ``transformers.XLNetLMHeadModel``.

XLNet's two-stream attention is what makes an any-subset autoregressive model
(docs/design.md, Two streams): the content stream ``h`` carries tokens, the query stream
``g`` carries only "which position do I predict", and ``perm_mask`` /
``target_mapping`` say who sees whom and who is predicted. With the joint mask
one forward pass scores every masked token given all lower-ranked ones, which
is the parallel density estimation ASSD verifies drafts with.

The wrapper adds what sampling needs: the mask token, the ids that are never
sampled (``banned_token_ids``), log-probabilities with those ids removed,
and the joint log-likelihood of a masked block. The backends the sampler
calls for logits are in ``asarm.decoders``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

from .hub import load_or_explain
from .orders import check_order, joint_mask, target_mapping
from .acceptance import check_probabilities, masked_tempered_logits
from .sampling import check_temperature
from .tokenizer import (XLNET_DEFAULT_BANNED_IDS, XLNET_MASK_TOKEN_ID, pipeline_fingerprint,
                        save_tokenizer, special_ids, xlnet_pipeline_drift)
from .utils import load_dtype_kwargs

# Keys under which the AS-ARM's own settings travel inside XLNet's config.json
# (plain XLNet ignores them, so the directory still loads as XLNetLMHeadModel).
_CFG_MASK = "asarm_mask_token_id"
_CFG_BANNED = "asarm_banned_token_ids"
# tokenizer.pipeline_fingerprint of the tokenizer the model was saved with
_CFG_PIPELINE = "asarm_tokenizer_pipeline"


@contextmanager
def without_dropout(module: nn.Module):
    """Run ``module`` with every submodule in eval mode (dropout off) inside the block.

    Sampling and scoring are exact only for the deterministic network, whatever
    mode the caller left it in (e.g. halfway through training). On exit, normal or
    by an exception, each submodule gets back its own ``training`` flag, so a
    mixed state (a frozen, eval-mode part) survives too.
    """
    flags = [(m, m.training) for m in module.modules()]
    if not any(training for _, training in flags):  # already eval: nothing to change or restore
        yield module
        return
    module.eval()
    try:
        yield module
    finally:
        for m, training in flags:
            m.training = training


def tokenizer_mismatch(config, tokenizer) -> str | None:
    """Why ``tokenizer`` may not turn text into the ids the model in ``config`` was trained on,
    or ``None``: its pipeline differs from the one saved with the model
    (``asarm_tokenizer_pipeline``), or, for a SentencePiece tokenizer, from transformers 4's
    XLNet pipeline (the released checkpoints' own). Said before any evaluation starts."""
    saved, now = getattr(config, _CFG_PIPELINE, None), pipeline_fingerprint(tokenizer)
    if saved and now and saved != now:
        return (f"the tokenizer's pipeline (fingerprint {now}) differs from the one this model was "
                f"trained with ({saved}): its token streams, and so its numbers, may differ")
    drift = xlnet_pipeline_drift(tokenizer)
    if drift:
        return (f"the tokenizer is not transformers 4's XLNet pipeline ({drift}); load it with "
                "asarm.load_tokenizer, which keeps the pipeline of its files")
    return None


class ASARM(nn.Module):
    """Any-subset autoregressive model over an ``XLNetLMHeadModel``.

    Attributes:
        xlnet: the wrapped ``XLNetLMHeadModel`` (its parameters are the model's).
        mask_token_id: id written at positions still to be generated.
        banned_token_ids: ids that get ``-inf`` logits before every softmax.
    """

    def __init__(self, xlnet, mask_token_id: int | None = None, banned_token_ids=None):
        super().__init__()
        self.xlnet = xlnet
        cfg = xlnet.config
        cfg.use_mems_eval = False  # XLNet's recurrence memory is not used by AS-ARMs
        cfg.use_mems_train = False
        if mask_token_id is None:
            mask_token_id = getattr(cfg, _CFG_MASK, XLNET_MASK_TOKEN_ID)
        if banned_token_ids is None:
            banned_token_ids = getattr(cfg, _CFG_BANNED, XLNET_DEFAULT_BANNED_IDS)
        self.mask_token_id = int(mask_token_id)
        self.banned_token_ids = sorted({int(i) for i in banned_token_ids} | {self.mask_token_id})
        for i in self.banned_token_ids:
            if not 0 <= i < cfg.vocab_size:
                raise ValueError(f"banned token id {i} is outside the vocabulary (size {cfg.vocab_size})")
        banned = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        banned[self.banned_token_ids] = True
        self.register_buffer("banned", banned, persistent=False)
        self.eval()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config=None, *, tokenizer=None, seed: int | None = None, **overrides) -> "ASARM":
        """A randomly initialised model (tiny ones for tests and local runs).

        Args:
            config: an ``XLNetConfig``, a dict of its fields, or None.
            tokenizer: if given, sets ``vocab_size``, the mask id and the banned ids.
            seed: seeds the initialisation.
            overrides: ``XLNetConfig`` fields (``d_model``, ``n_layer``, ``n_head``, ``d_inner``, ...).
        """
        from transformers import XLNetConfig, XLNetLMHeadModel

        fields = dict(config.to_dict() if isinstance(config, XLNetConfig) else (config or {}))
        fields.update(overrides)
        if tokenizer is not None:
            fields.setdefault("vocab_size", len(tokenizer))
        if "d_model" in fields and "n_head" in fields:
            fields["d_head"] = fields["d_model"] // fields["n_head"]
        cfg = XLNetConfig(**fields)
        if seed is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                xlnet = XLNetLMHeadModel(cfg)
        else:
            xlnet = XLNetLMHeadModel(cfg)
        mask, banned = special_ids(tokenizer) if tokenizer is not None else (None, None)
        return cls(xlnet, mask, banned)

    @classmethod
    def from_pretrained(cls, name_or_path: str, revision: str | None = None, *, tokenizer=None, dtype=None, **kwargs):
        """Load a checkpoint: a local directory, or a hub id such as ``therealgabeguo/ASARM``
        with ``revision`` (``nlp``, ``nlp_210k_plus_75k``, ``code``).

        Offline, a hub id that is not cached raises ``OSError`` saying how to
        pass a local directory. Any directory written by
        ``XLNetLMHeadModel.save_pretrained`` loads; the mask and banned ids come
        from the config an ``ASARM`` saved, else from ``tokenizer`` if given,
        else XLNet's defaults. ``dtype`` (default float32, whatever dtype the
        checkpoint was saved in) applies to every parameter.
        """
        from transformers import XLNetLMHeadModel

        dtype = dtype or torch.float32  # not the saved dtype, which 5.x would take unasked
        kwargs.update(load_dtype_kwargs(dtype))
        xlnet = load_or_explain(XLNetLMHeadModel.from_pretrained, name_or_path, revision, "model", **kwargs)
        xlnet = xlnet.to(dtype)  # XLNet's raw parameters (r_w_bias, mask_emb, ...) are left in fp32
        saved = getattr(xlnet.config, _CFG_BANNED, None) is not None
        # ids saved with an AS-ARM checkpoint win (e.g. a code model that samples whitespace specials)
        mask, banned = special_ids(tokenizer) if tokenizer is not None and not saved else (None, None)
        return cls(xlnet, mask, banned)

    def allowing(self, token_ids) -> "ASARM":
        """The same network (shared parameters) with ``token_ids`` removed from the banned ids.

        E.g. the released ``code`` checkpoint writes whitespace as XLNet specials
        (``asarm.data.code_whitespace_ids``), which are banned by default.
        """
        if self.mask_token_id in set(token_ids):
            raise ValueError("the mask token can never be sampled")
        return ASARM(self.xlnet, self.mask_token_id, [i for i in self.banned_token_ids if i not in set(token_ids)])

    def save_pretrained(self, directory: str | os.PathLike, tokenizer=None, atomic: bool = True) -> None:
        """Write a directory that ``XLNetLMHeadModel.from_pretrained`` and
        ``ASARM.from_pretrained`` both load. ``atomic``: write a temporary directory and
        rename it into place, so a crash leaves no half-written directory (pass False
        when ``directory`` is itself a temporary directory the caller renames)."""
        directory = Path(directory)
        # the wrapper's ids travel in config.json (wrappers may share one network, so set them now)
        setattr(self.config, _CFG_MASK, self.mask_token_id)
        setattr(self.config, _CFG_BANNED, list(self.banned_token_ids))
        if not atomic:
            if tokenizer is not None:  # the pipeline the model is trained on, checked at load
                setattr(self.config, _CFG_PIPELINE, pipeline_fingerprint(tokenizer))
            self.xlnet.save_pretrained(directory)
            if tokenizer is not None:
                save_tokenizer(tokenizer, directory)
            return
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            self.save_pretrained(tmp, tokenizer, atomic=False)
            if directory.exists():
                old = directory.with_name(f".{directory.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ properties
    @property
    def config(self):
        return self.xlnet.config

    @property
    def vocab_size(self) -> int:
        return self.xlnet.config.vocab_size

    @property
    def device(self) -> torch.device:
        return self.xlnet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.xlnet.dtype

    # ------------------------------------------------------------------ computation
    def forward(self, input_ids: torch.Tensor, perm_mask: torch.Tensor, target_mapping: torch.Tensor) -> torch.Tensor:
        """Query-stream logits, float32.

        Args:
            input_ids: ``(B, N)`` long.
            perm_mask: ``(B, N, N)``, nonzero = may not attend.
            target_mapping: ``(B, K, N)`` one-hot queries.
        Returns:
            ``(B, K, V)`` float32 logits (banned ids NOT yet removed).
        """
        # HF XLNet builds its relative position embeddings in float32 and does not cast them
        # on the two-stream path, so half-precision weights need autocast to run at all.
        # fp32 weights: no context at all, so a caller's autocast (mixed-precision training)
        # stays in force (``autocast(enabled=False)`` would switch it off).
        half = self.dtype in (torch.float16, torch.bfloat16)
        with torch.autocast(self.device.type, dtype=self.dtype) if half else nullcontext():
            out = self.xlnet(
                input_ids=input_ids,
                perm_mask=perm_mask.to(self.dtype),
                target_mapping=target_mapping.to(self.dtype),
                use_mems=False,
            )
        return out.logits.float()

    def without_dropout(self):
        """``with model.without_dropout():`` runs the network deterministically (``without_dropout``)."""
        return without_dropout(self)

    def log_probs(self, logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """``log_softmax(logits / T)`` over the allowed ids; banned ids get ``-inf``. Shape kept.

        Raises ``NonFiniteLogitsError`` (a ``ValueError``) when the result holds NaN: NaN/inf
        logits (a broken model) or a temperature so small that ``logits / T`` overflows.
        """
        z = masked_tempered_logits(logits, temperature, self.banned)
        return check_probabilities(torch.log_softmax(z, dim=-1), logits, temperature)

    def check_inputs(self, input_ids: torch.Tensor, sigma: torch.Tensor, num_visible: torch.Tensor) -> None:
        """Raise ``ValueError``/``TypeError`` for inputs the model cannot score or complete.

        Any integer dtype is accepted (values are compared as int64, so e.g. int8 ids
        are range-checked correctly); float and bool tensors are refused.
        """
        for name, t in (("input_ids", input_ids), ("sigma", sigma), ("num_visible", num_visible)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
                raise TypeError(f"{name} must hold integers, got dtype {t.dtype}; convert it with .long()")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must have shape (B, N), got {tuple(input_ids.shape)}; for one sequence use x[None]")
        if sigma.shape != input_ids.shape:
            raise ValueError(f"sigma shape {tuple(sigma.shape)} disagrees with input_ids shape {tuple(input_ids.shape)}")
        if num_visible.shape != input_ids.shape[:1]:
            raise ValueError(f"num_visible must have shape ({input_ids.shape[0]},), got {tuple(num_visible.shape)}")
        # int64 for the comparisons: against a narrow dtype (int8, uint8) the bound itself would wrap
        ids = input_ids.long()
        outside = (ids < 0) | (ids >= self.vocab_size)
        if outside.any():
            row, col = (int(i) for i in outside.nonzero()[0])
            raise ValueError(f"token id {int(ids[row, col])} (row {row}, position {col}) is outside the model's "
                             f"vocabulary [0, {self.vocab_size}): the ids come from another tokenizer or model")
        check_order(sigma.long(), num_visible.long())

    @torch.no_grad()
    def joint_log_prob(self, input_ids, sigma, num_visible, temperature: float = 1.0) -> torch.Tensor:
        """Log-probability of the masked block under order ``sigma``, in ONE forward pass.

        ``sum_{r=m}^{N-1} log p_T(x at rank r | x at ranks < r)`` with the joint
        mask, where ``p_T`` is the temperature-``T`` softmax over allowed ids.
        Dropout is off whatever the module's mode (which is restored).

        Args:
            input_ids: ``(B, N)`` complete sequences.
            sigma: ``(B, N)`` orders; num_visible: ``(B,)`` prompt sizes.
        Returns:
            ``(B,)`` float32.
        """
        self.check_inputs(input_ids, sigma, num_visible)
        temperature = check_temperature(temperature)
        input_ids, sigma, num_visible = (t.to(self.device, torch.long) for t in (input_ids, sigma, num_visible))
        n = input_ids.shape[1]
        count = n - num_visible
        mapping, positions, valid = target_mapping(sigma, num_visible, count)
        with self.without_dropout():  # the model's joint is that of the deterministic network
            logits = self(input_ids, joint_mask(sigma, num_visible), mapping)
        logp = self.log_probs(logits, temperature)
        token_lp = logp.gather(-1, input_ids.gather(1, positions)[..., None]).squeeze(-1)
        return torch.where(valid, token_lp, torch.zeros_like(token_lp)).sum(-1)
