"""ASARM: density estimation in one pass, checkpoints both ways, special ids, offline errors."""

import itertools

import pytest
import torch
from transformers import XLNetLMHeadModel

import asarm
from asarm import ASARM, orders
from asarm.decoders import PlainDecoder, Queries
from asarm.tokenizer import XLNET_DEFAULT_BANNED_IDS, XLNET_MASK_TOKEN_ID, XLNET_SPECIAL_TOKENS

SPECIALS = len(XLNET_SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def small():
    return ASARM.from_config(vocab_size=SPECIALS + 4, d_model=32, n_layer=2, n_head=2, d_inner=64,
                             initializer_range=0.5, seed=1)


def test_joint_log_prob_sums_to_one_over_all_completions(small):
    n, m = 6, 3
    usable = range(SPECIALS, SPECIALS + 4)
    for sigma in (orders.random_sorted_order(1, n, m, generator=torch.Generator().manual_seed(0))[0],
                  orders.random_order(1, n, generator=torch.Generator().manual_seed(1))[0]):
        pos = orders.order_to_pos(sigma[None])[0]
        outcomes = torch.tensor(list(itertools.product(usable, repeat=n - m)))
        x = torch.full((len(outcomes), n), SPECIALS)
        x[:, pos[:m]] = torch.tensor([SPECIALS + 1, SPECIALS + 3, SPECIALS])
        x[:, pos[m:]] = outcomes
        lp = small.joint_log_prob(x, sigma.repeat(len(x), 1), torch.full((len(x),), m))
        assert lp.shape == (len(x),)
        assert torch.isclose(lp.double().exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)
        # tempered joint is normalised too
        lp_t = small.joint_log_prob(x, sigma.repeat(len(x), 1), torch.full((len(x),), m), temperature=0.5)
        assert torch.isclose(lp_t.double().exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-5)


def test_joint_log_prob_equals_chain_of_single_token_calls(small):
    """One pass with the joint mask == N - m separate calls, each with the future unknown."""
    g = torch.Generator().manual_seed(2)
    b, n = 5, 7
    m = torch.tensor([1, 2, 3, 4, 6])
    sigma = torch.cat([orders.random_order(3, n, generator=g), orders.random_sorted_order(2, n, m[3:], generator=g)])
    x = torch.randint(SPECIALS, SPECIALS + 4, (b, n), generator=g)
    one_pass = small.joint_log_prob(x, sigma, m)
    decoder = PlainDecoder(small, sigma, m)
    chain = torch.zeros(b)
    for r in range(b):
        rows = torch.tensor([r])
        for rank in range(int(m[r]), n):
            hidden = torch.where(sigma[r] >= rank, small.mask_token_id, x[r])[None]  # future really unknown
            logits = decoder(rows, hidden, torch.tensor([rank]), Queries.span(torch.tensor([rank]), torch.tensor([rank]), torch.tensor([1])))
            pos = int(orders.order_to_pos(sigma[r:r + 1])[0, rank])
            chain[r] += small.log_probs(logits)[0, 0, x[r, pos]]
    assert torch.allclose(one_pass, chain, atol=1e-4)


def test_log_probs_ban_and_normalise(small):
    logits = torch.randn(3, 2, small.vocab_size)
    lp = small.log_probs(logits, temperature=0.7)
    assert torch.isinf(lp[..., list(XLNET_DEFAULT_BANNED_IDS)]).all()
    assert torch.allclose(lp.exp().sum(-1), torch.ones(3, 2), atol=1e-6)


def _same_logits(a, b):
    g = torch.Generator().manual_seed(0)
    n, m = 8, 3
    sigma = orders.random_sorted_order(2, n, m, generator=g)
    x = torch.randint(SPECIALS, a.config.vocab_size, (2, n), generator=g)
    mapping, _, _ = orders.target_mapping(sigma, m, n - m)
    perm = orders.joint_mask(sigma, m).float()
    with torch.no_grad():
        la = a(x, perm, mapping) if isinstance(a, ASARM) else a(input_ids=x, perm_mask=perm, target_mapping=mapping).logits
        lb = b(x, perm, mapping) if isinstance(b, ASARM) else b(input_ids=x, perm_mask=perm, target_mapping=mapping).logits
    return torch.allclose(la, lb, atol=1e-6)


def test_checkpoint_round_trips_with_plain_xlnet(tmp_path, local_tokenizer):
    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=4)
    model.save_pretrained(tmp_path / "asarm", tokenizer=local_tokenizer)
    plain = XLNetLMHeadModel.from_pretrained(tmp_path / "asarm").eval()
    assert _same_logits(model, plain)
    # and the reverse: a plain XLNet checkpoint loads as an ASARM with XLNet's special ids
    fresh = XLNetLMHeadModel(plain.config.__class__(vocab_size=40, d_model=32, n_layer=1, n_head=2, d_inner=64)).eval()
    fresh.save_pretrained(tmp_path / "xlnet")
    loaded = ASARM.from_pretrained(str(tmp_path / "xlnet"))
    assert loaded.mask_token_id == XLNET_MASK_TOKEN_ID
    assert loaded.banned_token_ids == sorted(XLNET_DEFAULT_BANNED_IDS)
    assert _same_logits(loaded, fresh)


def test_special_ids_come_from_the_tokenizer_and_are_saved(tmp_path, local_tokenizer):
    import copy

    tok = copy.deepcopy(local_tokenizer)
    tok.add_special_tokens({"additional_special_tokens": ["<eod>", "<eop>", "<extra>"]})
    extra = tok.convert_tokens_to_ids("<extra>")
    model = ASARM.from_config(tokenizer=tok, d_model=16, n_layer=1, n_head=2, d_inner=32, seed=0)
    assert model.vocab_size == len(tok)
    assert extra in model.banned_token_ids and model.mask_token_id == tok.mask_token_id
    model.save_pretrained(tmp_path / "m")
    again = ASARM.from_pretrained(str(tmp_path / "m"))
    assert again.banned_token_ids == model.banned_token_ids
    # saved ids win over a tokenizer's (a code model keeps its whitespace specials sampleable)
    code = again.allowing([3, 4])
    code.save_pretrained(tmp_path / "code")
    reloaded = ASARM.from_pretrained(str(tmp_path / "code"), tokenizer=tok)
    assert 3 not in reloaded.banned_token_ids and 4 not in reloaded.banned_token_ids
    assert reloaded.banned_token_ids == code.banned_token_ids
    assert code.xlnet is again.xlnet and again.banned_token_ids == model.banned_token_ids
    with pytest.raises(ValueError, match="mask token"):
        again.allowing([again.mask_token_id])
    # explicit ids win over the saved ones; the mask id is always banned
    custom = ASARM(again.xlnet, mask_token_id=6, banned_token_ids=[0])
    assert custom.banned_token_ids == [0, 6]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ASARM(again.xlnet, banned_token_ids=[10_000])


def test_offline_hub_id_fails_fast_with_instructions():
    with pytest.raises(OSError, match="local directory|local-dir"):
        ASARM.from_pretrained("therealgabeguo/ASARM", revision="nlp")
    with pytest.raises(OSError, match="hf download"):
        asarm.load_tokenizer("xlnet/xlnet-base-cased")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ASARM.from_pretrained("./no/such/dir")


def test_mistyped_local_directory_is_not_taken_for_a_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match="'runs/mymodel' does not exist"):
        ASARM.from_pretrained("runs/mymodel")


def test_half_precision_forward_is_finite(small):
    """The masking constants are safe in bf16 (CPU) — fp16 is exercised on CUDA only."""
    m16 = ASARM(XLNetLMHeadModel(small.config).eval().to(torch.bfloat16))
    m16.xlnet.load_state_dict(small.xlnet.state_dict())
    sigma = orders.random_sorted_order(3, 8, 2, generator=torch.Generator().manual_seed(0))
    x = torch.randint(SPECIALS, small.vocab_size, (3, 8))
    lp32 = small.joint_log_prob(x, sigma, torch.full((3,), 2))
    lp16 = m16.joint_log_prob(x, sigma, torch.full((3,), 2))
    assert torch.isfinite(lp16).all()
    assert torch.allclose(lp16, lp32, atol=0.5)


def test_a_callers_autocast_reaches_the_network(small):
    """Mixed-precision training runs the fp32-weight model under the caller's autocast: the
    forward must not switch it off (it did: ``autocast(enabled=False)`` for fp32 weights)."""
    seen = []  # output dtypes of the first feed-forward layer (called once per stream)
    hook = small.xlnet.transformer.layer[0].ff.layer_1.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    x = torch.randint(SPECIALS, small.vocab_size, (1, 6))
    sigma = orders.random_sorted_order(1, 6, 2, generator=torch.Generator().manual_seed(0))
    try:
        small.joint_log_prob(x, sigma, torch.full((1,), 2))
        plain = set(seen)
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            small.joint_log_prob(x, sigma, torch.full((1,), 2))
    finally:
        hook.remove()
    assert plain == {torch.float32} and set(seen) == {torch.bfloat16}


def test_from_pretrained_dtype_casts_every_parameter(tmp_path, local_tokenizer):
    """``dtype=`` reaches XLNet's raw parameters too (``r_w_bias``, ``mask_emb``, ...), so a
    bf16 model scores and samples with no cast by the caller."""
    from asarm.sampling import sample

    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    bf16 = ASARM.from_pretrained(str(tmp_path / "m"), dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    x = torch.randint(SPECIALS, model.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    sigma = orders.random_sorted_order(2, 8, 3, generator=torch.Generator().manual_seed(1))
    lp16, lp32 = bf16.joint_log_prob(x, sigma, torch.full((2,), 3)), model.joint_log_prob(x, sigma, torch.full((2,), 3))
    assert torch.isfinite(lp16).all() and torch.allclose(lp16, lp32, rtol=0.05)
    masked = torch.where(sigma < 3, x, torch.full_like(x, bf16.mask_token_id))
    out = sample(bf16, masked, sigma, torch.full((2,), 3), generator=torch.Generator().manual_seed(0))
    assert (out.sequences[sigma < 3] == x[sigma < 3]).all()
    assert not (out.sequences == bf16.mask_token_id).any() and (out.nfe > 0).all()


def test_a_checkpoint_saved_in_bf16_loads_in_fp32_unless_asked(tmp_path, local_tokenizer):
    """transformers 5 loads a checkpoint in the dtype its config records; asarm keeps 4.x's
    float32 default on both majors, so the numbers do not depend on how a model was saved."""
    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    ASARM(model.xlnet.to(torch.bfloat16)).save_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in ASARM.from_pretrained(str(tmp_path / "bf16")).parameters()} == {torch.float32}
    half = ASARM.from_pretrained(str(tmp_path / "bf16"), dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_a_tokenizer_with_another_pipeline_is_named(tmp_path, local_tokenizer):
    """The pipeline the model was trained with travels in config.json; a tokenizer that splits
    text another way (transformers 5's own XLNet pipeline) is reported, the same one is not."""
    from tokenizers import pre_tokenizers

    from asarm.model import tokenizer_mismatch
    from asarm.tokenizer import spiece_backend, wrap_backend

    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    config = ASARM.from_pretrained(str(tmp_path / "m")).config
    assert tokenizer_mismatch(config, asarm.load_tokenizer(str(tmp_path / "m"))) is None
    drifted = wrap_backend(spiece_backend(local_tokenizer.asarm_spiece_file))
    drifted.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    assert "differs from the one this model was trained with" in tokenizer_mismatch(config, drifted)
    del config.asarm_tokenizer_pipeline  # a released checkpoint: checked against XLNet's pipeline
    assert "WhitespaceSplit" in tokenizer_mismatch(config, drifted)


# joint_log_prob of the fixture run's model (tests/fixtures/run_transformers4, written under
# transformers 4.44) on the inputs of test_xlnets_numbers_are_the_same_on_either_major, as
# transformers 4.44 computes them (one thread)
PINNED_JOINT_LOG_PROB = [-62.37066650390625, -51.467437744140625, -39.73434829711914, -22.831207275390625]


def test_xlnets_numbers_are_the_same_on_either_major(one_thread):
    """The model-side drift guard: a checkpoint written under transformers 4 scores the same
    rows to the same log-likelihoods under the installed major (a refactor of XLNet's forward
    in a later release fails here instead of moving the tables)."""
    from pathlib import Path

    ckpt = Path(__file__).parent / "fixtures" / "run_transformers4" / "checkpoints" / "step_00000002"
    model = ASARM.from_pretrained(str(ckpt))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(SPECIALS, model.vocab_size, (4, 12), generator=g)
    m = torch.tensor([1, 3, 5, 8])
    sigma = torch.cat([orders.random_sorted_order(2, 12, m[:2], generator=g),
                       orders.random_order(2, 12, generator=g)])
    got = model.joint_log_prob(x, sigma, m)
    assert torch.allclose(got, torch.tensor(PINNED_JOINT_LOG_PROB), rtol=0, atol=1e-4), got.tolist()
