"""Evaluation metrics against hand computations, scipy and rouge-score."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from asarm.evaluation import metrics


def test_unigram_entropy_by_hand():
    # p = (1/2, 1/4, 1/4) -> H = 1.5 bits
    assert metrics.unigram_entropy([7, 7, 8, 9]) == pytest.approx(1.5)
    assert metrics.unigram_entropy([3, 3, 3]) == 0.0
    assert metrics.unigram_entropy(list(range(8))) == pytest.approx(3.0)


def test_entropy_bits_by_hand():
    # H(1/2, 1/4, 1/4) = 1/2 * 1 + 2 * 1/4 * 2 = 1.5 bits; zeros add nothing; a certain outcome is 0 (not -0)
    assert metrics.entropy_bits([0.5, 0.25, 0.25]) == pytest.approx(1.5)
    assert metrics.entropy_bits([0.5, 0.0, 0.25, 0.25, 0.0]) == pytest.approx(1.5)
    assert math.copysign(1.0, metrics.entropy_bits([0.0, 1.0])) == 1.0
    assert metrics.entropy_bits(torch.full((8,), 1 / 8, dtype=torch.float64)) == pytest.approx(3.0)
    batch = metrics.entropy_bits(np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]))
    assert batch.shape == (2,) and batch == pytest.approx([1.0, 2.0])


def test_mean_se_by_hand():
    mean, se = metrics.mean_se([1.0, 2.0, 3.0, None, float("nan")])
    assert mean == pytest.approx(2.0)
    assert se == pytest.approx(1.0 / math.sqrt(3))  # std(ddof=1) = 1


def _zero_gpt2(local_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=len(local_tokenizer), n_positions=16, n_embd=8, n_layer=1, n_head=2)
    judge = GPT2LMHeadModel(cfg).eval()
    for p in judge.parameters():
        torch.nn.init.zeros_(p)
    return judge


def test_judge_perplexity_by_hand(local_tokenizer):
    """All-zero GPT-2 -> uniform next-token distribution -> perplexity = vocabulary size, any text."""
    judge = _zero_gpt2(local_tokenizer)
    nll, n = metrics.judge_nll(judge, local_tokenizer, "def f(x):\n    return x")
    vocab = len(local_tokenizer)
    assert nll == pytest.approx(math.log(vocab), rel=1e-5)
    assert metrics.perplexity_from_nll(nll) == pytest.approx(vocab, rel=1e-4)
    ids = local_tokenizer("def f(x):\n    return x", add_special_tokens=False)["input_ids"]
    assert n == min(len(ids) + 1, 16) - 1  # BOS in front, every text token scored, cut to the context


def test_judge_nll_matches_manual_cross_entropy(local_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    judge = GPT2LMHeadModel(GPT2Config(vocab_size=len(local_tokenizer), n_positions=8, n_embd=8, n_layer=1,
                                       n_head=2)).eval()
    text = "import os, sys; print(os.sep, sys.argv)"
    ids = [local_tokenizer.bos_token_id] + local_tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[:8]  # cut to the judge's context (8)
    logits = judge(torch.tensor([ids])).logits[0]
    manual = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item()
    nll, n = metrics.judge_nll(judge, local_tokenizer, text)
    assert n == 7 and nll == pytest.approx(manual, rel=1e-5)


def test_paired_tests_by_hand():
    """Small asymmetric samples: every statistic computed by hand, so a swapped or missing argument shows."""
    a, b = [2.0, 4.0, 9.0], [1.0, 1.0, 2.0]
    out = metrics.paired_tests(a, b)
    assert out["n"] == 3 and out["mean_diff"] == pytest.approx(11 / 3)
    # paired: d = (1, 3, 7), mean 11/3, sd sqrt(28/3) -> t = 11/sqrt(28); dof 2: p = 1 - t/sqrt(2 + t^2)
    assert out["ttest_stat"] == pytest.approx(11 / math.sqrt(28))
    assert out["ttest_p"] == pytest.approx(1 - 11 / math.sqrt(177))
    # independent, pooled: var a = 13, var b = 1/3, s_p^2 = 20/3 -> t = (11/3) / sqrt(20/3 * 2/3) = 11/sqrt(40), dof 4
    assert out["ttest_ind_stat"] == pytest.approx(11 / math.sqrt(40))
    assert out["ttest_ind_p"] == pytest.approx(2 * stats.t.sf(11 / math.sqrt(40), 4))
    # Wilcoxon: every difference positive -> smaller rank sum 0; exact two-sided p = 2 / 2^3
    assert out["wilcoxon_stat"] == 0.0 and out["wilcoxon_p"] == pytest.approx(0.25)
    # Mann-Whitney U of a: 2 beats (1, 1), ties 2 -> 2.5; 4 and 9 beat all three -> 8.5
    assert out["mannwhitney_stat"] == pytest.approx(8.5)
    flipped = metrics.paired_tests(b, a)
    assert flipped["ttest_stat"] == pytest.approx(-out["ttest_stat"]) and flipped["mannwhitney_stat"] == pytest.approx(0.5)
    assert flipped["mannwhitney_p"] == pytest.approx(out["mannwhitney_p"])  # two-sided


def test_wilcoxon_splits_zero_differences():
    """zsplit (the paper's): the zero difference keeps rank 1, half on each side -> W = 0.5 (dropping it gives 0)."""
    out = metrics.paired_tests([2.0, 4.0, 9.0, 5.0], [1.0, 1.0, 2.0, 5.0])
    assert out["wilcoxon_stat"] == pytest.approx(0.5)


def test_paired_tests_drop_nonfinite_pairs_and_refuse_ragged_input():
    out = metrics.paired_tests([2.0, float("nan"), 4.0, 9.0], [1.0, 5.0, 1.0, None])
    assert out["n"] == 2 and out["mean_diff"] == pytest.approx(2.0)  # pairs (2, 1) and (4, 1)
    with pytest.raises(ValueError, match="equally long"):
        metrics.paired_tests([1.0, 2.0], [1.0])


def test_pass_at_k():
    assert metrics.pass_at_k(1, 1, 1) == 1.0 and metrics.pass_at_k(1, 0, 1) == 0.0
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(10, 3, 5) == pytest.approx(1 - math.comb(7, 5) / math.comb(10, 5))
    assert metrics.pass_at_k(5, 4, 2) == 1.0
    with pytest.raises(ValueError):
        metrics.pass_at_k(3, 1, 5)


@pytest.mark.parametrize("stemmer", [True, False])
def test_rouge_equals_rouge_score(stemmer):
    from rouge_score import rouge_scorer

    pairs = [("The cat sat on the mat.", "A cat was sitting on the mat."),
             ("She baked brownies for the party.", "She decided to bake a batch of brownies."),
             ("", "Nothing generated."),
             ("running runs ran", "He runs and running.")]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=stemmer)
    for pred, ref in pairs:
        ours = metrics.rouge_f1(pred, ref, use_stemmer=stemmer)
        theirs = scorer.score(ref, pred)  # rouge-score: score(target, prediction)
        prf = metrics.rouge_scores(pred, ref, use_stemmer=stemmer)
        for key in ("rouge1", "rouge2", "rougeL"):
            assert ours[key] == pytest.approx(100 * theirs[key].fmeasure)
            # precision and recall too: F1 alone is symmetric and would not notice swapped arguments
            assert prf[key] == pytest.approx(tuple(100 * v for v in theirs[key]))
        assert ours["rouge_mean"] == pytest.approx(sum(100 * theirs[k].fmeasure for k in theirs) / 3)


def test_rouge_precision_recall_by_hand_on_an_asymmetric_pair():
    """Prediction longer than the reference: precision and recall differ, so swapping them fails."""
    scores = metrics.rouge_scores("The cat sat on the mat.", "the cat sat", use_stemmer=False)
    # unigrams: 3 of the prediction's 6 match, all 3 of the reference's; bigrams: 2 of 5, 2 of 2; LCS 3
    for key, (p, r) in {"rouge1": (3 / 6, 3 / 3), "rouge2": (2 / 5, 2 / 2), "rougeL": (3 / 6, 3 / 3)}.items():
        assert scores[key] == pytest.approx((100 * p, 100 * r, 100 * 2 * p * r / (p + r)))
    f1 = metrics.rouge_f1("The cat sat on the mat.", "the cat sat", use_stemmer=False)
    assert f1["rouge1"] == pytest.approx(100 * 2 / 3) and f1["rouge2"] == pytest.approx(100 * 4 / 7)
    # the other way round: a short prediction of a longer reference is precise and recalls half
    short = metrics.rouge_scores("the cat sat", "the cat sat on the mat", use_stemmer=False)
    assert short["rouge1"] == pytest.approx((100.0, 50.0, 100 * 2 * 0.5 / 1.5))
    assert short["rouge2"] == pytest.approx((100.0, 40.0, 100 * 2 * 0.4 / 1.4))  # 2 of 2 bigrams; 2 of 5
    assert short["rougeL"] == pytest.approx((100.0, 50.0, 100 * 2 * 0.5 / 1.5))


def test_rouge_stemmer_on_and_off_by_hand():
    """Porter stemming (tokens longer than 3 characters): dogs -> dog, running/runs -> run."""
    pred, ref = "The dogs were running.", "The dog runs."
    assert metrics.rouge_scores(pred, ref, use_stemmer=False)["rouge1"] == pytest.approx(
        (100 / 4, 100 / 3, 100 * 2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3)))  # only "the" matches
    assert metrics.rouge_scores(pred, ref, use_stemmer=True)["rouge1"] == pytest.approx(
        (100 * 3 / 4, 100.0, 100 * 2 * (3 / 4) / (3 / 4 + 1)))  # the, dog, run


@pytest.mark.parametrize("seed", [0, 7])
def test_rouge_bootstrap_is_rouge_scores_aggregator_mid(seed):
    """``rouge_bootstrap`` = evaluate's rouge: BootstrapAggregator() defaults, mid F1, x 100 (seeded)."""
    from rouge_score import rouge_scorer, scoring

    pairs = [("The cat sat on the mat.", "A cat was sitting on the mat."),
             ("She baked brownies for the party.", "She decided to bake a batch of brownies."),
             ("", "Nothing generated."), ("running runs ran", "He runs and running."),
             ("He went home.", "He went home."), ("Tom lost his keys at the park.", "Tom found his keys.")]
    # evaluate's rouge: four types (rougeLsum last, so it does not move the others' draws), no stemmer
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    aggregator = scoring.BootstrapAggregator()
    for pred, ref in pairs:
        aggregator.add_scores(scorer.score(ref, pred))
    np.random.seed(seed)
    theirs = aggregator.aggregate()
    before = np.random.get_state()[1].copy()
    ours = metrics.rouge_bootstrap([metrics.rouge_scores(p, r, use_stemmer=False) for p, r in pairs], seed=seed)
    assert (np.random.get_state()[1] == before).all()  # the caller's RNG is left as it was
    for key in metrics.ROUGE_TYPES:
        for bound in ("low", "mid", "high"):
            assert ours[key][bound] == pytest.approx(100 * getattr(theirs[key], bound).fmeasure, abs=1e-9)
    assert ours["rouge_mean"]["mid"] == pytest.approx(sum(ours[k]["mid"] for k in metrics.ROUGE_TYPES) / 3)
    assert ours["rouge1"]["low"] < ours["rouge1"]["mid"] < ours["rouge1"]["high"]
    with pytest.raises(ValueError, match="at least one"):
        metrics.rouge_bootstrap([])


def test_judge_must_be_causal():
    from transformers import BertConfig, GPT2Config, T5Config, XLNetConfig

    metrics.check_causal_lm_config(GPT2Config())
    for cfg in (BertConfig(), T5Config(), XLNetConfig()):
        with pytest.raises(ValueError, match="causal"):
            metrics.check_causal_lm_config(cfg)
