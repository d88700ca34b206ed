"""Metrics shared by the evaluations: pure functions on numbers, token ids and strings.

* ``mean_se``: mean and standard error of a sample.
* ``entropy_bits``: Shannon entropy (bits) of a distribution; the one entropy definition of asarm
  (the evaluations' ``unigram_entropy`` and the trainer's ``assd_entropy_bits`` both use it).
* ``unigram_entropy``: entropy (bits) of a sequence's own token histogram.
* ``perplexity_from_nll`` / ``judge_nll`` / ``load_judge``: generative
  perplexity under a causal "judge" LM. Convention: per sequence,
  ``ppl = exp(mean token NLL)``; the judge's BOS token (if it has one) is put
  in front so every text token is scored, and the text is cut to the judge's
  context (``n_positions``, BOS included). A method's perplexity is the mean
  (and SE) of its per-sequence perplexities.
* ``paired_tests``: paired and independent-samples t-tests, Wilcoxon signed-rank
  (``zero_method="zsplit"``) and Mann-Whitney U (scipy), the paper's four.
* ``pass_at_k``: the unbiased pass@k estimator of Chen et al. (2021).
* ``rouge_scores`` / ``rouge_f1``: ROUGE-1/2/L precision, recall, F1 x 100 via the
  ``rouge-score`` package; ``rouge_bootstrap``: ``evaluate``'s aggregate (bootstrap mid F1).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from typing import Sequence

import numpy as np


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, standard error)`` of finite ``values``; SE = sample std (ddof 1) / sqrt(n).

    NaNs/None are ignored; returns ``(nan, nan)`` for no value and SE ``nan`` for one.
    """
    x = np.array([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan
    return float(x.mean()), se


def entropy_bits(probs) -> float | np.ndarray:
    """Shannon entropy in bits, ``-sum p log2 p``, of the distribution(s) along the last dimension of ``probs``
    (an array, list or CPU tensor of probabilities summing to 1); zero probabilities contribute nothing.
    A float for one distribution, an array of entropies for a batch of them."""
    p = np.asarray(probs, dtype=float)
    terms = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1.0)), 0.0)
    h = -terms.sum(axis=-1) + 0.0  # + 0.0: a certain outcome gives 0.0, not -0.0
    return float(h) if h.ndim == 0 else h


def unigram_entropy(token_ids: Sequence[int]) -> float:
    """Entropy in bits of the empirical unigram distribution of ``token_ids`` (0 for < 2 distinct)."""
    counts = np.array(list(Counter(token_ids).values()), dtype=float)
    if counts.sum() == 0:
        return 0.0
    return entropy_bits(counts / counts.sum())


def perplexity_from_nll(mean_nll: float) -> float:
    """``exp(mean token NLL)`` (natural log)."""
    return float(math.exp(mean_nll))


def judge_input_ids(text: str, tokenizer, max_tokens: int) -> list[int]:
    """The judge's ids for ``text``: BOS first when the tokenizer has one, cut to ``max_tokens``."""
    from ..tokenizer import encode_plain

    ids = encode_plain(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = [bos] + ids
    return ids[:max_tokens]


def judge_nll(model, tokenizer, text: str, max_tokens: int | None = None) -> tuple[float, int]:
    """Mean token NLL (nats) of ``text`` under a causal LM, and the number of scored tokens.

    Args:
        model: a ``transformers`` causal LM (``logits (1, L, V)``).
        max_tokens: context cut (default ``model.config.n_positions`` or
            ``max_position_embeddings``, else 1024).
    Returns:
        ``(mean_nll, scored)``; ``(nan, 0)`` if fewer than 2 ids remain.
    """
    import torch

    if max_tokens is None:
        max_tokens = judge_context(model)
    ids = judge_input_ids(text, tokenizer, max_tokens)
    if len(ids) < 2:
        return math.nan, 0
    x = torch.tensor([ids], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=x).logits.float()
    logp = torch.log_softmax(logits[0, :-1], dim=-1)
    nll = -logp.gather(-1, x[0, 1:, None]).squeeze(-1)
    return float(nll.mean()), len(ids) - 1


def judge_context(model) -> int:
    """The judge's context length from its config (GPT-2: ``n_positions``)."""
    cfg = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 1024


def check_causal_lm_config(config) -> None:
    """Raise ``ValueError`` unless ``config`` describes a left-to-right causal LM."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                         MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    kind = getattr(config, "model_type", None)
    bidirectional = kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or bidirectional or kind == "xlnet":
        raise ValueError(f"the judge must be a causal (left-to-right) LM such as gpt2-large; "
                         f"got a '{kind}' model ({type(config).__name__})")


def load_judge(name_or_path: str, device=None, revision: str | None = None):
    """``(model, tokenizer)`` of a causal judge LM (eval mode, on ``device``).

    Raises ``ValueError`` when it is not a causal LM (a user error), ``OSError``
    when it cannot be loaded (offline, missing): callers report the latter in
    the perplexity column and carry on.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..hub import load_or_explain
    from ..tokenizer import load_tokenizer
    from ..utils import load_dtype_kwargs

    config = load_or_explain(AutoConfig.from_pretrained, name_or_path, revision, "judge config")
    check_causal_lm_config(config)
    # the pipeline of the judge's tokenizer.json on either transformers major (5.x rebuilds
    # GPT-2's from its class), so generative perplexity is computed on the same token streams
    tokenizer = load_tokenizer(name_or_path, revision)
    model = load_or_explain(AutoModelForCausalLM.from_pretrained, name_or_path, revision, "judge model",
                            **load_dtype_kwargs())
    return model.to(device).eval(), tokenizer


def paired_tests(a: Sequence[float], b: Sequence[float]) -> dict:
    """The paper's four two-sided tests of ``a`` vs ``b`` (pair ``i`` = one trial, two methods).

    * ``ttest``: paired t-test (``scipy.stats.ttest_rel``).
    * ``ttest_ind``: independent-samples t-test, pooled variance (``ttest_ind``).
    * ``wilcoxon``: Wilcoxon signed-rank with ``zero_method="zsplit"``: a zero
      difference keeps its rank, split half to each side, so identical pairs
      (e.g. equal call counts) count as evidence of no difference instead of
      being dropped; the statistic is the smaller rank sum.
    * ``mannwhitney``: Mann-Whitney U; the statistic is ``a``'s U.

    Pairs with a non-finite value on either side are dropped. A test that is
    undefined (too few pairs, zero variance, all differences zero) gets ``nan``.
    Returns ``{"n", "mean_diff", "<test>_stat", "<test>_p"}`` for the four tests,
    ``mean_diff = mean(a - b)``; t statistics are positive when ``a`` is larger.
    """
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired tests need two equally long 1-D samples, got shapes {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(len(x)), "mean_diff": float((x - y).mean()) if len(x) else math.nan}
    tests = {
        "ttest": lambda: stats.ttest_rel(x, y),
        "ttest_ind": lambda: stats.ttest_ind(x, y),
        "wilcoxon": lambda: stats.wilcoxon(x, y, zero_method="zsplit"),
        "mannwhitney": lambda: stats.mannwhitneyu(x, y, alternative="two-sided"),
    }
    for name, test in tests.items():
        try:
            with warnings.catch_warnings():  # degenerate data: scipy warns, we report nan
                warnings.simplefilter("ignore", RuntimeWarning)
                warnings.simplefilter("ignore", UserWarning)  # Wilcoxon: "exact p not available with zeros"
                res = test() if len(x) >= 2 else None
            stat, p = (float(res.statistic), float(res.pvalue)) if res is not None else (math.nan, math.nan)
        except ValueError:  # e.g. Wilcoxon with all differences zero
            stat, p = math.nan, math.nan
        out[f"{name}_stat"], out[f"{name}_p"] = stat, p
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: ``1 - C(n - c, k) / C(n, k)`` for ``n`` samples of which ``c`` pass (``k <= n``)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
ROUGE_AGGREGATES = ("mean", "bootstrap")
# ``evaluate``'s rouge builds ``scoring.BootstrapAggregator()`` with its defaults
# (1000 resamples, 95% interval) and draws from numpy's global RNG, unseeded;
# asarm seeds it (``rouge_bootstrap``'s ``seed``) so a rerun gives the same figure.
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CONFIDENCE = 0.95


def rouge_scores(prediction: str, reference: str, use_stemmer: bool = True) -> dict[str, tuple[float, float, float]]:
    """``{type: (precision, recall, F1)}`` x 100 of one pair for ``ROUGE_TYPES`` (``rouge_score.rouge_scorer``).

    Precision is over the prediction's n-grams, recall over the reference's
    (rouge-score's ``score(target, prediction)``, with ``target = reference``).
    rouge-score's tokenizer lowercases, keeps ``[a-z0-9]`` runs and drops the
    rest; ``use_stemmer`` adds Porter stemming of tokens longer than 3 characters.
    """
    scores = _rouge_scorer(use_stemmer).score(reference, prediction)
    return {t: (100.0 * scores[t].precision, 100.0 * scores[t].recall, 100.0 * scores[t].fmeasure) for t in ROUGE_TYPES}


def rouge_f1(prediction: str, reference: str, use_stemmer: bool = True) -> dict[str, float]:
    """ROUGE-1/2/L F1 x 100 of one pair (``rouge_scores``), plus their mean as ``"rouge_mean"``."""
    out = {t: f for t, (_, _, f) in rouge_scores(prediction, reference, use_stemmer).items()}
    out["rouge_mean"] = sum(out.values()) / len(ROUGE_TYPES)
    return out


def rouge_bootstrap(scores: Sequence[dict[str, tuple[float, float, float]]], seed: int = 0,
                    n_samples: int = BOOTSTRAP_SAMPLES) -> dict[str, dict[str, float]]:
    """``evaluate``'s aggregate ROUGE: bootstrap over all pairs pooled, F1 of the ``mid`` (median) x 100.

    Args:
        scores: one ``rouge_scores`` dict per pair (x 100), all pairs pooled.
        seed: seeds numpy's global RNG for the resampling (rouge-score draws
            from it); the caller's RNG state is restored afterwards.
    Returns:
        ``{type: {"low", "mid", "high"}}`` F1 x 100 for ``ROUGE_TYPES`` (the
        ``BOOTSTRAP_CONFIDENCE`` interval), plus ``"rouge_mean"``: the mean of
        the three types' bounds (the paper's ``rougeAvg`` is that ``mid``).
        ``mid`` is the median of the bootstrap means, close to but not the plain mean.
    """
    from rouge_score import scoring

    if not scores:
        raise ValueError("rouge_bootstrap needs at least one scored pair")
    aggregator = scoring.BootstrapAggregator(confidence_interval=BOOTSTRAP_CONFIDENCE, n_samples=n_samples)
    for s in scores:  # rouge-score's own 0-1 scale, so the figure is the one evaluate's rouge prints (x 100)
        aggregator.add_scores({t: scoring.Score(*(v / 100.0 for v in s[t])) for t in ROUGE_TYPES})
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        agg = aggregator.aggregate()
    finally:
        np.random.set_state(state)
    out = {t: {b: 100.0 * getattr(agg[t], b).fmeasure for b in ("low", "mid", "high")} for t in ROUGE_TYPES}
    out["rouge_mean"] = {b: sum(out[t][b] for t in ROUGE_TYPES) / len(ROUGE_TYPES) for b in ("low", "mid", "high")}
    return out


_SCORERS: dict = {}


def _rouge_scorer(use_stemmer: bool):
    if use_stemmer not in _SCORERS:
        try:
            from rouge_score import rouge_scorer
        except ImportError as exc:
            raise ImportError("ROUGE needs the rouge-score package: pip install rouge-score") from exc
        _SCORERS[use_stemmer] = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    return _SCORERS[use_stemmer]
