"""ROCStories infilling and the density tasks under both protocols, on the real files in shared/data:
the oracle middle scores ROUGE 100, LAMBADA masks exactly the target word's tokens, the paper's
density logits differ from asarm's only by the banned ids, and the summaries pick the protocol's headline."""

import math

import pytest
import torch

from asarm.evaluation import density, infill_nlp, metrics
from asarm.sampling import SamplingConfig
from asarm.tokenizer import decode_text, lossy_reason, make_encoder, opens_segment

ORACLE_STORIES = 120
LAMBADA_ITEMS = 400


@pytest.fixture(scope="module")
def stories(shared_data):
    return infill_nlp.load_stories(str(shared_data / "rocstories" / "cloze_test_val__spring2016.csv"))


@pytest.fixture(scope="module")
def lambada_items(shared_data):
    return density.load_lambada(str(shared_data / "lambada" / "lambada_test_plain_text.txt"))


def _oracle_cfg(stemmer):
    return {"method": "oracle", "order": "sorted", "trials": 2, "max_length": 10_000,
            "rouge_stemmer": stemmer}


# ---------------------------------------------------------------------------- ROCStories
@pytest.mark.parametrize("stemmer", [False, True])
def test_oracle_middle_scores_rouge_100_on_real_rocstories(stories, both_tokenizers, stemmer):
    """The generation path with the true middle written in: decoded in context it is ``" " + middle``
    (unless the normaliser is lossy, counted) and ROUGE is 100, in both settings, fast and slow."""
    units = infill_nlp.build_units(stories[:ORACLE_STORIES], ["middle", "long"])
    records = [r for u in units for r in infill_nlp.process_story(u, 0, None, both_tokenizers, _oracle_cfg(stemmer))]
    assert len(records) == 2 * 2 * ORACLE_STORIES and {r["setting"] for r in records} == {"middle", "long"}
    lossy = [r for r in records if lossy_reason(r["reference"], both_tokenizers, False)]
    assert len(lossy) <= 0.02 * len(records)  # measured on the whole file: 8 of 3742, all whitespace
    for r in records:
        assert r["nfe"] == 0 and r["num_masked"] == len(make_encoder(both_tokenizers, False)(r["reference"]))
        if r not in lossy:
            assert r["generated"] == " " + r["reference"]  # the space that joins it to the prompt
        # rouge-score's tokenizer lowercases and keeps [a-z0-9] runs: even lossy whitespace scores 100
        assert all(r[k] == pytest.approx(100.0) for k in ("rouge1", "rouge2", "rougeL", "rouge_mean"))
    boot = metrics.rouge_bootstrap([infill_nlp.record_scores(r) for r in records])
    assert boot["rouge_mean"]["mid"] == pytest.approx(100.0)


@pytest.mark.parametrize("stemmer", [False, True])
def test_story_rouge_precision_is_over_the_generation_and_recall_over_the_middle(local_tokenizer, monkeypatch,
                                                                                  stemmer):
    """A generation that writes only "the cat sat" (then full stops) for the middle "the cat sat on the mat":
    by hand ROUGE-1 precision 100 (3 of 3 words match), recall 50 (3 of 6), so a swapped call fails."""
    story = {"id": "s", "sentences": ["Ann went out.", "It was sunny.", "the cat sat on the mat", "Ann smiled.",
                                      "She went home."]}
    encode, dot = make_encoder(local_tokenizer, False), local_tokenizer.convert_tokens_to_ids(".")
    assert dot != local_tokenizer.unk_token_id

    def fill(encs, seeds, model, tokenizer, cfg):
        out = []
        for enc in encs:
            part = encode("the cat sat")
            assert len(part) < len(enc["middle"])
            row = enc["prefix"] + part + [dot] * (len(enc["middle"]) - len(part)) + enc["suffix"]
            out.append(([row] * cfg["trials"], [1] * cfg["trials"], 0.0))
        return out

    monkeypatch.setattr(infill_nlp, "fill_middles", fill)
    cfg = {"method": "sequential", "trials": 1, "max_length": 10_000, "order": "sorted", "rouge_stemmer": stemmer}
    (rec,) = infill_nlp.process_story(infill_nlp.build_units([story], ["middle"])[0], 0, None, local_tokenizer, cfg)
    assert rec["reference"] == "the cat sat on the mat" and rec["generated"].split(".")[0].strip() == "the cat sat"
    assert (rec["rouge1_p"], rec["rouge1_r"], rec["rouge1"]) == pytest.approx((100.0, 50.0, 100 * 2 * 0.5 / 1.5))
    assert (rec["rouge2_p"], rec["rouge2_r"]) == pytest.approx((100.0, 40.0))  # bigrams: 2 of 2, 2 of 5
    assert (rec["rougeL_p"], rec["rougeL_r"]) == pytest.approx((100.0, 50.0))


def test_story_parts_encoded_separately_are_the_story_encoding(stories, local_tokenizer):
    """Prompt, middle and suffix encoded each on its own give the ids of the whole story text."""
    encode = make_encoder(local_tokenizer, False)
    for st in stories[:50]:
        for setting in infill_nlp.SETTINGS:
            prompt, middle, suffix = infill_nlp.split_story(st["sentences"], setting)
            enc = infill_nlp.encode_story(prompt, middle, suffix, encode, local_tokenizer.mask_token_id, 10_000)
            assert enc["prefix"] + enc["middle"] + enc["suffix"] == encode(f"{prompt} {middle} {suffix}")
            assert enc["ids"].count(local_tokenizer.mask_token_id) == len(enc["middle"]) > 0
    with pytest.raises(ValueError, match="--max-length 8"):
        infill_nlp.encode_story("A b c d e.", "F g h i.", "J k l m.", encode, local_tokenizer.mask_token_id, 8)


def test_opens_segment_only_after_nothing_or_a_special(local_tokenizer):
    cls = local_tokenizer.convert_tokens_to_ids("<cls>")
    word = make_encoder(local_tokenizer, False)("Hello")
    assert opens_segment([], local_tokenizer) and opens_segment(word + [cls], local_tokenizer)
    assert not opens_segment(word, local_tokenizer)


def _record(setting, trial, f1s, nfe=3):
    scores = {t: (f, f, f) for t, f in zip(metrics.ROUGE_TYPES, f1s)}
    return {"setting": setting, "trial": trial, "nfe": nfe, "num_masked": 4, **infill_nlp.score_fields(scores)}


@pytest.mark.parametrize("headline", ["mean", "bootstrap"])
def test_infill_summary_reports_both_aggregates_and_the_protocols_headline(headline, tmp_path):
    records = [_record("middle", i, (10.0 * i, 5.0 * i, 8.0 * i)) for i in range(6)] + [_record("long", 0, (50, 0, 40))]
    results, table = infill_nlp.summarize(records, {"rouge": headline, "seed": 3, "rouge_stemmer": False}, tmp_path)
    mid = results["middle"]
    boot = metrics.rouge_bootstrap([infill_nlp.record_scores(r) for r in records[:6]], seed=3)
    assert mid["rouge1_mean"] == pytest.approx(25.0) and mid["rouge1_se"] == pytest.approx(
        metrics.mean_se([10.0 * i for i in range(6)])[1])
    assert mid["rouge1_bootstrap"] == pytest.approx(boot["rouge1"]["mid"])
    assert mid["rouge_mean_bootstrap"] == pytest.approx(boot["rouge_mean"]["mid"])
    assert mid["rouge_aggregate"] == headline and mid["rouge1"] == mid[f"rouge1_{headline}"]
    assert results["long"]["n"] == 1 and results["long"]["rouge2_bootstrap"] == 0.0
    other = "bootstrap mid" if headline == "mean" else "mean +- SE"
    assert f"ROUGE avg ({other})" in table and "without stemmer" in table


# ---------------------------------------------------------------------------- LAMBADA
def test_lambada_masks_exactly_the_target_words_tokens(lambada_items, shared_data, both_tokenizers):
    """On the real file: context ids + target ids = the passage's ids; the masks are the target's tokens."""
    lines = [ln.strip() for ln in (shared_data / "lambada" / "lambada_test_plain_text.txt").read_text().splitlines()
             if ln.strip()]
    encode, mask = make_encoder(both_tokenizers, False), both_tokenizers.mask_token_id
    for item, line in zip(lambada_items[:LAMBADA_ITEMS], lines):
        inputs = density.lambada_inputs(item, encode, mask, 10_000)
        n, target = len(inputs["context"]), inputs["target"]
        assert inputs["context"] + target == encode(line)
        assert mask not in inputs["context"] and inputs["ids"][n:] == [mask] * len(target) and len(inputs["ids"]) == n + len(target)
        if lossy_reason(item["target"], both_tokenizers, False) is None:
            assert decode_text(target, both_tokenizers, False, starts_segment=False) == " " + item["target"]


def test_lambada_sampled_path_samples_exactly_the_masked_target(lambada_items, tiny_model, local_tokenizer, monkeypatch):
    """The sampler receives the passage with exactly the target's tokens masked (ASSD, T = 1); a sampler that
    writes the true tokens there is judged correct, so masking, decoding and the comparison line up."""
    import asarm.sampling as sampling

    seen = []

    def truthful(model, ids, sigma, m, config, *, generator, lengths):
        seen.append((ids.clone(), int(m[0]), config.method, config.k, config.temperature))
        out = ids.clone()
        out[0, int(m[0]):] = torch.tensor(target)
        return sampling.SampleOutput(out, torch.tensor([1]), torch.tensor([0]), torch.tensor([0]))

    monkeypatch.setattr(sampling, "sample", truthful)
    encode = make_encoder(local_tokenizer, False)
    for item in lambada_items[:15]:
        target = encode(item["target"])
        rec = density.score_lambada(item, 0, tiny_model, local_tokenizer, {"sampling": SamplingConfig(k=10), "max_length": 96})
        ids, m, method, k, temperature = seen[-1]
        assert (method, k, temperature) == ("assd", 10, 1.0)
        context = encode(item["context"])[-(96 - len(target)):]  # cut from the left to fit
        assert ids[0].tolist() == context + [tiny_model.mask_token_id] * len(target) and m == len(context)
        assert rec["target_tokens"] == len(target)
        assert rec["correct_sampled"] == (lossy_reason(item["target"], local_tokenizer, False) is None)
        assert rec["sampled"].strip() == item["target"] or not rec["correct_sampled"]


def test_lambada_real_sampling_runs_and_scores_greedy(lambada_items, tiny_model, local_tokenizer):
    rec = density.score_lambada(lambada_items[0], 1, tiny_model, local_tokenizer, {"sampling": SamplingConfig(k=4), "max_length": 64})
    assert 1 <= rec["nfe"] <= rec["target_tokens"] and rec["logp"] < 0
    assert isinstance(rec["correct_greedy"], bool) and rec["correct_sampled"] == (rec["sampled"].strip() == rec["target"])


def test_lambada_summary_headline_follows_the_protocol(tmp_path):
    records = [{"correct_sampled": s, "correct_greedy": g, "logp": -1.0, "nfe": 1}
               for s, g in [(True, False), (True, True), (False, False), (True, False)]]
    for kind, acc in (("sampled", 75.0), ("greedy", 25.0)):
        res, table = density.summarize(records, {"task": "lambada", "lambada": kind}, tmp_path)
        assert res["accuracy"] == acc and res["accuracy_kind"] == kind
        assert (res["accuracy_sampled"], res["accuracy_greedy"]) == (75.0, 25.0)
        other = "greedy" if kind == "sampled" else "sampled"
        assert table.index(f"{kind} exact match") < table.index(f"{other} exact match")  # headline first


# ---------------------------------------------------------------------------- density logits, HellaSwag
def test_raw_density_logits_differ_from_banned_only_by_the_banned_ids(tiny_model, local_tokenizer):
    """``raw`` keeps every id but ``<mask>``; on the ids both allow, the two log-softmaxes differ by one
    constant per query (the banned ids' mass), so rankings agree and only the banned ids' scores move."""
    from asarm.orders import joint_mask, sorted_order, target_mapping

    raw = density.density_model(tiny_model, "raw")
    assert density.density_model(tiny_model, "banned") is tiny_model
    assert raw.banned_token_ids == [tiny_model.mask_token_id] and raw.xlnet is tiny_model.xlnet
    ids = torch.tensor([make_encoder(local_tokenizer, False)("The cat sat on the mat.")])
    visible = torch.zeros_like(ids, dtype=torch.bool)
    visible[0, :3] = True
    sigma, m = sorted_order(visible), torch.tensor([3])
    mapping, _, _ = target_mapping(sigma, m, ids.shape[1] - 3)
    logits = tiny_model(ids, joint_mask(sigma, m), mapping)
    lp_b, lp_r = tiny_model.log_probs(logits), raw.log_probs(logits)
    banned = torch.tensor(tiny_model.banned_token_ids)
    allowed = torch.ones(lp_b.shape[-1], dtype=torch.bool)
    allowed[banned] = False
    assert torch.isinf(lp_b[..., banned]).all() and torch.isinf(lp_r[..., tiny_model.mask_token_id]).all()
    others = [i for i in tiny_model.banned_token_ids if i != tiny_model.mask_token_id]
    assert torch.isfinite(lp_r[..., others]).all()
    shift = -torch.logsumexp(lp_r[..., allowed], dim=-1, keepdim=True)  # log of the allowed ids' share of the mass
    assert torch.allclose(lp_b[..., allowed], lp_r[..., allowed] + shift, atol=1e-5) and (shift > 0).all()
    # a target holding a special (here <unk>) is impossible under banned and finite under raw
    ctx, tgt = ids[0, :3].tolist(), [local_tokenizer.unk_token_id]
    assert density.masked_block_scores(tiny_model, ctx, tgt)[0] == -math.inf
    assert math.isfinite(density.masked_block_scores(raw, ctx, tgt)[0])
    with pytest.raises(ValueError, match="--density-logits"):
        density.density_model(tiny_model, "softmax")


def test_hellaswag_scores_the_best_ending_and_reports_the_paper_scripts_number(tmp_path):
    """acc counts argmax == label; the paper's script compares the label with its loop variable (3)."""
    records = [{"label": lab, "pred": p, "pred_norm": p, "correct": p == lab, "correct_norm": p == lab}
               for lab, p in [(3, 3), (0, 0), (1, 2), (3, 1), (2, 2)]]
    res, table = density.summarize(records, {"task": "hellaswag"}, tmp_path)
    assert res["acc"] == pytest.approx(60.0) and res["paper_script_acc"] == pytest.approx(40.0)
    assert "labelled 3" in table
