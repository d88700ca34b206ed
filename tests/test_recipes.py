"""Training recipes: every config validates offline, the paper recipes carry the paper's pipeline choices
(specials per document then </s>, fp32, one pass) and their launchers' values, the one-pass stop, the
joint-only loss scaling and the left-to-right (AR-order) ablation."""

import dataclasses
import gzip
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from asarm.data import PackedStream, decode_text, held_out_digests, make_encoder, resolve_dataset, text_digest
from asarm.tokenizer import lossy_reason
from asarm.train import TrainConfig, check_config, train
from asarm.train_config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PAPER_CONFIGS = [p for p in CONFIGS if p.name != "tiny_cpu.yaml"]
# The paper's launchers (gabeguo/any-order-speculative-decoding) a recipe may name in its header.
LAUNCHERS = {"_run_training.sh", "_continue_training_nlp.sh", "_continue_training_code.sh", "_train_nlp_infill.sh",
             "_ablation_ar.sh", "_ablation_pretrained.sh", "_ablation_masking_rate.sh"}


pytestmark = pytest.mark.usefixtures("one_thread")


def _header(path: Path) -> str:
    """The leading comment block of a YAML file."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, l in enumerate(lines) if not l.startswith("#"))])


# ---------------------------------------------------------------------------- every config validates
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates_offline_and_an_unknown_key_fails(path, tmp_path):
    cfg = TrainConfig.load(str(path))
    check_config(cfg)                       # what train() runs before loading anything
    resolve_dataset(cfg.dataset)            # hub names resolve without the network
    assert TrainConfig.from_dict(json.loads(json.dumps(vars(cfg)))) == cfg
    bad = tmp_path / path.name
    bad.write_text(f"inherit: {path}\nmasking_rate_max: 0.9\n")
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['masking_rate_max'\]"):
        TrainConfig.load(str(bad))


# ---------------------------------------------------------------------------- recipes as deltas (inherit:)
RESOLVED = json.loads((ROOT / "tests" / "fixtures" / "recipes_resolved.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_resolves_to_its_pinned_values(path):
    """The values each recipe resolved to before the derived ones were rewritten as deltas (inherit:)."""
    assert dataclasses.asdict(TrainConfig.load(str(path))) == RESOLVED[path.name]


def test_derived_recipes_set_only_what_differs_from_their_base():
    derived = 0
    for path in CONFIGS:
        own = yaml.safe_load(path.read_text())
        if "inherit" not in own:
            continue
        derived += 1
        base = load_recipe(path.parent / own.pop("inherit"))
        same = sorted(k for k, v in own.items() if k in base and base[k] == v)
        assert not same, f"{path.name} repeats its base's {same}"
    assert derived >= 11  # every ablation and stage-two recipe names its base


def test_inherit_is_relative_to_the_file_overrides_whole_values_and_refuses_cycles(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text("lr: 0.5\nmodel_config: {d_model: 8, n_layer: 1}\neval_rates: [0.1, 0.2]\n")
    (tmp_path / "sub" / "mid.yaml").write_text("inherit: ../base.yaml\nmodel_config: {n_head: 2}\nseed: 3\n")
    (tmp_path / "child.yaml").write_text("inherit: sub/mid.yaml\nseed: 4\n")
    cfg = TrainConfig.load(str(tmp_path / "child.yaml"), {"eval_rates": [0.3]})
    assert (cfg.lr, cfg.seed, cfg.eval_rates) == (0.5, 4, [0.3])
    assert cfg.model_config == {"n_head": 2}  # a dict given in a file replaces the base's, it is not merged
    assert "inherit" not in cfg.to_yaml()     # what a run writes: every value resolved
    (tmp_path / "base.yaml").write_text("inherit: child.yaml\n")
    with pytest.raises(ValueError, match="inherit makes a cycle"):
        TrainConfig.load(str(tmp_path / "child.yaml"))
    (tmp_path / "self.yaml").write_text("inherit: self.yaml\n")
    with pytest.raises(ValueError, match="cycle"):
        TrainConfig.load(str(tmp_path / "self.yaml"))
    (tmp_path / "none.yaml").write_text("inherit: missing.yaml\n")
    with pytest.raises(OSError, match="missing.yaml"):
        TrainConfig.load(str(tmp_path / "none.yaml"))
    (tmp_path / "two.yaml").write_text("inherit: [a.yaml, b.yaml]\n")
    with pytest.raises(ValueError, match="must name one YAML file"):
        TrainConfig.load(str(tmp_path / "two.yaml"))


def test_train_config_prints_a_resolved_recipe(capsys):
    from asarm.train_config import main as print_recipe

    assert print_recipe([str(ROOT / "configs" / "ablation_parallel.yaml")]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == RESOLVED["ablation_parallel.yaml"]
    assert print_recipe([str(ROOT / "configs" / "ablation_parallel.yaml"), "objective"]) == 0
    assert capsys.readouterr().out.strip() == "parallel"
    assert print_recipe([str(ROOT / "configs" / "nope.yaml"), "output_dir"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_recipes_name_their_launcher_and_keep_the_papers_pipeline(path):
    header = _header(path)
    named = set(re.findall(r"`(_[a-z_]+\.sh)`", header))
    assert named and named <= LAUNCHERS, f"{path.name} must name the paper launcher it mirrors: {named}"
    assert "gabeguo/any-order-speculative-decoding" in header
    cfg = TrainConfig.load(str(path))
    # the paper's loader, precision and stopping rule; its trainer's optimiser constants
    assert (cfg.add_special_tokens, cfg.mixed_precision, cfg.max_epochs) == (True, "no", 1)
    assert (cfg.seq_len, cfg.lr, cfg.scale_lr, cfg.grad_clip, cfg.weight_decay, cfg.loss_scale, cfg.sample_k) == \
        (512, 1e-5, True, 1.0, 0.01, "none", 10)


# (config) -> the values its launcher sets: masking range and warm-ups, batch, sequences, init, data, objective.
LAUNCHER_VALUES = {
    "openwebtext.yaml": dict(start_rate=0.15, min_rate=0.85, max_rate=0.99, rate_warmup_steps=5000, warmup_steps=5000,
                             batch_size=8, grad_accum=4, train_sequences=24_000_000, init="xlnet/xlnet-base-cased",
                             dataset="openwebtext", sample_rate=0.95, eval_steps=500),
    "starcoder_python.yaml": dict(start_rate=0.15, min_rate=0.85, max_rate=0.99, batch_size=8, grad_accum=4,
                                  dataset="starcoder", init="xlnet/xlnet-base-cased"),
    "openwebtext_stage2.yaml": dict(start_rate=0.90, min_rate=0.90, max_rate=0.99, rate_warmup_steps=5000,
                                    batch_size=12, grad_accum=2, train_sequences=120_000_000,
                                    init="therealgabeguo/ASARM", revision="nlp", save_steps=2500, eval_steps=5000),
    "starcoder_python_stage2.yaml": dict(start_rate=0.85, min_rate=0.85, max_rate=0.99, rate_warmup_steps=2500,
                                         warmup_steps=2500, batch_size=24, grad_accum=4, init="therealgabeguo/ASARM",
                                         revision="code", dataset="starcoder"),
    "code_single_line.yaml": dict(start_rate=0.01, min_rate=0.05, max_rate=0.25, rate_warmup_steps=2500,
                                  batch_size=24, grad_accum=2, sample_rate=0.1, dataset="starcoder"),
    "openwebtext_infill.yaml": dict(start_rate=0.15, min_rate=0.60, max_rate=0.75, rate_warmup_steps=2500,
                                    batch_size=24, grad_accum=2, sample_rate=0.6, dataset="openwebtext"),
    "ablation_pretrained.yaml": dict(batch_size=4, grad_accum=4, init="xlnet/xlnet-base-cased", order="sorted",
                                     objective="joint", sample_rows=4),
    "ablation_from_scratch.yaml": dict(batch_size=4, grad_accum=4, init="fresh", tokenizer="xlnet/xlnet-base-cased"),
    "ablation_left_to_right.yaml": dict(batch_size=4, grad_accum=4, order="left_to_right"),
    "ablation_masking_rate.yaml": dict(start_rate=0.85, min_rate=0.85, rate_warmup_steps=1, dataset="starcoder",
                                       batch_size=4, grad_accum=4),
    "ablation_parallel.yaml": dict(objective="parallel", visible_attention="all", batch_size=4, grad_accum=4),
    "ablation_random_order.yaml": dict(order="random", batch_size=4, grad_accum=4),
}


def test_each_recipe_carries_its_launchers_values():
    assert set(LAUNCHER_VALUES) == {p.name for p in PAPER_CONFIGS}, "a new recipe needs its launcher's values here"
    for name, values in LAUNCHER_VALUES.items():
        cfg = TrainConfig.load(str(ROOT / "configs" / name))
        got = {k: getattr(cfg, k) for k in values}
        assert got == values, name
    # the ablations differ from their control in exactly the ablated setting(s)
    control = vars(TrainConfig.load(str(ROOT / "configs" / "ablation_pretrained.yaml")))
    ignore = {"output_dir"}
    for name, diff in [("ablation_left_to_right.yaml", {"order"}), ("ablation_random_order.yaml", {"order"}),
                       ("ablation_parallel.yaml", {"objective"}),
                       ("ablation_from_scratch.yaml", {"init", "tokenizer", "model_config"})]:
        other = vars(TrainConfig.load(str(ROOT / "configs" / name)))
        assert {k for k in control if control[k] != other[k]} - ignore == diff, name


@pytest.mark.slow
def test_tiny_cpu_config_still_trains_on_the_local_tokenizer(tmp_path):
    from asarm.tokenizer import load_tokenizer, xlnet_pipeline_drift

    cfg = TrainConfig.load(str(ROOT / "configs" / "tiny_cpu.yaml"),
                           {"output_dir": str(tmp_path / "tiny"), "max_steps": 3, "save_steps": 3, "eval_steps": 0,
                            "eval_batches": 1, "sample_rows": 1, "progress": False})
    run = train(cfg)
    assert json.loads((run / "status.json").read_text())["state"] == "done"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "train"]
    assert len(losses) == 1 and 0 < losses[0] < 20  # log_steps 10: only the last step is logged
    tok = load_tokenizer(str(run / "model"))
    assert xlnet_pipeline_drift(tok) is None and len(tok) == cfg.local_vocab_size
    assert resolve_dataset(cfg.dataset).code  # stdlib is code: newlines survive as <cls>
    sample = json.loads((run / "samples.jsonl").read_text().splitlines()[-1])["samples"][0]["prompt"]
    assert "\n" in sample


# ---------------------------------------------------------------------------- the paper's packing, on real text
def _wikitext_rows(shared_data, count):
    with open(shared_data / "wikitext-2-raw" / "wiki.test.raw", encoding="utf-8") as f:  # CRLF -> "\n"
        rows = [line.rstrip("\n") for line in f]
    return [r for r in rows if r.strip()][:count]


def _pack(docs, encode, tokenizer, seq_len, chunks):
    stream = PackedStream(lambda: [{"text": t} for t in docs], encode, tokenizer.eos_token_id, seq_len)
    return [stream.next_chunk() for _ in range(chunks)]


def test_paper_config_packs_each_document_with_sep_cls_then_eos_on_wikitext(shared_data, both_tokenizers):
    tok = both_tokenizers
    docs = _wikitext_rows(shared_data, 12)
    cfg = TrainConfig.load(str(ROOT / "configs" / "openwebtext.yaml"))
    plain = make_encoder(tok, False)
    ends = [tok.sep_token_id, tok.cls_token_id, tok.eos_token_id]
    expected = [i for d in docs for i in plain(d) + ends]
    seq_len = 64
    chunks = _pack(docs, make_encoder(tok, False, cfg.add_special_tokens), tok, seq_len, len(expected) // seq_len)
    flat = [i for c in chunks for i in c]
    assert flat == expected[: len(flat)]
    triples = [(c, j) for c in chunks for j in range(seq_len - 2) if c[j: j + 3] == ends]
    assert len(triples) >= 3, "packed chunks must hold <sep><cls></s> at document ends"
    assert tok.convert_ids_to_tokens(ends) == ["<sep>", "<cls>", "</s>"]
    # asarm's default (add_special_tokens false) puts only </s> between documents
    default = _pack(docs, make_encoder(tok, False, TrainConfig().add_special_tokens), tok, seq_len, 2)
    assert [i for c in default for i in c] == [i for d in docs for i in plain(d) + [tok.eos_token_id]][: 2 * seq_len]


def test_paper_code_documents_read_back_ending_in_tab_newline_eos(shared_data, local_tokenizer):
    """With the code mapping, the loader's <sep><cls> are the tab and newline specials: every StarCoder
    document the paper trained on ends in "\\t\\n</s>". Pinned on HumanEval-infilling programs."""
    tok = local_tokenizer
    with gzip.open(shared_data / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz", "rt") as f:
        tasks = [json.loads(line) for line in f]
    programs = list(dict.fromkeys(t["prompt"] + t["canonical_solution"] + t["suffix"] for t in tasks))  # whole programs
    docs = [p for p in programs if lossy_reason(p, tok, True) is None][:4]
    assert len(docs) == 4
    cfg = TrainConfig.load(str(ROOT / "configs" / "starcoder_python.yaml"))
    spec = resolve_dataset(cfg.dataset, None, None if cfg.code_whitespace == "auto" else cfg.code_whitespace == "true")
    encode = make_encoder(tok, spec.code, cfg.add_special_tokens)
    total = sum(len(encode(d)) + 1 for d in docs)
    chunks = _pack(docs, encode, tok, 32, total // 32)
    text = decode_text([i for c in chunks for i in c], tok, spec.code)
    assert spec.code and text == "".join(d + "\t\n</s>" for d in docs)[: len(text)]
    assert text.count("\t\n</s>") >= 3


# ---------------------------------------------------------------------------- one pass over the data
TINY = dict(eval_docs=1, seq_len=32, init="fresh", tokenizer="local", local_vocab_size=400,
            model_config=dict(d_model=32, n_layer=1, n_head=2, d_inner=64), rate_warmup_steps=2, batch_size=2,
            grad_accum=1, lr=1e-3, scale_lr=False, warmup_steps=1, cpu=True, save_steps=4, log_steps=1,
            eval_steps=0, eval_rates=[0.5], eval_batches=1, sample_rows=1, sample_rate=0.5, progress=False,
            add_special_tokens=True)


def _tiny_corpus(folder: Path, count: int = 9) -> str:
    """``count`` distinct small .txt documents; returns their glob."""
    folder.mkdir()
    for i in range(count):
        words = " ".join(f"word{(i * 7 + j) % 13}" for j in range(12 + 5 * i))
        (folder / f"doc{i:02d}.txt").write_text(f"Document {i} says: {words}.")
    return str(folder / "*.txt")


def _tokens_in_one_pass(run: Path, dataset: str, eval_docs: int) -> int:
    """Tokens the training stream holds in one pass: every non-held-out document, its specials and </s>."""
    from asarm.tokenizer import load_tokenizer

    tok = load_tokenizer(str(run / "tokenizer"))
    spec = resolve_dataset(dataset)
    held_out = held_out_digests(spec, eval_docs)
    encode = make_encoder(tok, spec.code, True)
    docs = [Path(p).read_text() for p in spec.files]
    return sum(len(encode(d)) + 1 for d in docs if text_digest(d) not in held_out)


@pytest.mark.slow
@pytest.mark.parametrize("max_steps", [1000, 3])
def test_max_epochs_stops_at_the_end_of_the_first_pass(tmp_path, max_steps):
    data = _tiny_corpus(tmp_path / "docs")
    run = train(TrainConfig.from_dict({**TINY, "dataset": data, "output_dir": str(tmp_path / "run"),
                                       "max_steps": max_steps, "max_epochs": 1}))
    status = json.loads((run / "status.json").read_text())
    full_steps = _tokens_in_one_pass(run, data, TINY["eval_docs"]) // (TINY["batch_size"] * TINY["seq_len"])
    assert full_steps >= 4  # the corpus is big enough that the test means something
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r["step"] for r in rows if r["kind"] == "train"]
    assert status["state"] == "done" and (run / "model").is_dir()
    if max_steps > full_steps:  # the pass ends first; its partial last step is dropped, like the paper's loader
        assert status["end_of_data"] is True and status["step"] == full_steps
        assert trained == list(range(1, full_steps + 1))
        assert (run / "checkpoints" / f"step_{full_steps:08d}" / "training_state.pt").is_file()
    else:  # a step cap below one pass still wins: the pass limit only ever stops a run earlier
        assert status["end_of_data"] is False and status["step"] == max_steps and trained == [1, 2, 3]


@pytest.mark.slow
def test_less_than_one_step_of_data_is_a_clear_error(tmp_path):
    data = _tiny_corpus(tmp_path / "docs", count=2)
    with pytest.raises(ValueError, match="less than one step of tokens"):
        train(TrainConfig.from_dict({**TINY, "dataset": data, "output_dir": str(tmp_path / "run"), "max_steps": 10,
                                     "max_epochs": 1, "batch_size": 16}))


def test_max_epochs_must_not_be_negative():
    with pytest.raises(ValueError, match="max_epochs must be >= 0"):
        check_config(TrainConfig(max_epochs=-1))


# ---------------------------------------------------------------------------- objective choices
def test_a_recipe_with_loss_scaling_on_the_parallel_objective_is_refused_before_writing(tmp_path):
    for scale in ("r", "snr"):
        with pytest.raises(ValueError, match="only to the joint objective"):
            train(TrainConfig.from_dict({**TINY, "dataset": "stdlib", "output_dir": str(tmp_path / scale),
                                         "objective": "parallel", "loss_scale": scale, "max_steps": 1}))
        assert not (tmp_path / scale).exists()  # refused before anything is written


def test_slot_shards_default_to_disjoint_and_replicate_like_the_paper():
    from asarm.train import slot_shard

    world, accum = 3, 2
    slots = range(world * accum)
    own = [slot_shard(s, accum, world) for s in slots]
    assert own == [(s, world * accum) for s in slots]  # asarm: every slot its own shard
    same = [slot_shard(s, accum, world, replicate=True) for s in slots]
    by_rank = [same[r * accum:(r + 1) * accum] for r in range(world)]
    assert all(shards == [(m, accum) for m in range(accum)] for shards in by_rank)  # paper: ranks read alike
    assert slot_shard(1, 2, 1, replicate=True) == slot_shard(1, 2, 1)  # one process: no difference
    with pytest.raises(ValueError, match="outside"):
        slot_shard(6, accum, world)
    check_config(TrainConfig.load(str(ROOT / "configs" / "openwebtext.yaml"), {"replicate_data": "true"}))
