"""Evaluation protocols: every command resolves each protocol-driven option, explicit options win."""

import pytest

from asarm.cli import build_parser
from asarm.evaluation.protocol import PROTOCOLS, apply_protocol, banned_ids_for, sampling_config, sampling_value
from asarm.tokenizer import XLNET_SPECIAL_TOKENS, code_whitespace_ids

# command -> {option: (asarm value, paper value)} for the options each command takes from the protocol
EXPECTED = {
    "speculative": {"banned": ("specials", "mask"), "wikitext_specials": (False, True), "reuse_chunks": (True, False),
                    "visible_rule": ("round", "int_plus_one"), "judge_specials": (False, True),
                    "ngram_draft": ("bigram", "paper"), "draft_only_temperature": ("verify0", "paper")},
    "infill-nlp": {"k": (5, 10), "banned": ("specials", "mask"), "rouge": ("mean", "bootstrap"),
                   "rouge_stemmer": (True, False), "ngram_draft": ("bigram", "paper"),
                   "draft_only_temperature": ("verify0", "paper")},
    "infill-code": {"k": (5, 10), "banned": ("specials", "mask"), "context": ("trim", "full"),
                    "code_encoding": ("continuation", "separate"), "ngram_draft": ("bigram", "paper"),
                    "draft_only_temperature": ("verify0", "paper")},
    "density": {"lambada": ("greedy", "sampled"), "density_logits": ("banned", "raw"), "k": (5, 10)},
}
MAPPINGS = {"speculative": {"visible_rule": "visible", "reuse_chunks": "wikitext_reuse"},
            "infill-nlp": {}, "infill-code": {"context": "code_context"}, "density": {}}
SAMPLING = {"k", "ngram_draft", "draft_only_temperature"}  # SamplingConfig fields: resolved by sampling_config


def resolve(command, args):
    """What the command does first: the SamplingConfig (protocol defaults), then the protocol's other options."""
    sampling_config(args, infill=command != "speculative")
    apply_protocol(args, MAPPINGS[command])
    return lambda option: args.sampling[option] if option in SAMPLING else getattr(args, option)


@pytest.mark.parametrize("command", sorted(EXPECTED))
@pytest.mark.parametrize("protocol", ["asarm", "paper"])
def test_every_command_resolves_its_protocol_options(command, protocol):
    extra = ["--task", "lambada"] if command == "density" else []
    args = build_parser().parse_args([command, "--protocol", protocol, *extra])
    for option in EXPECTED[command]:
        assert getattr(args, option) is None, f"{command} --{option} must default to None (from --protocol)"
    value = resolve(command, args)
    for option, values in EXPECTED[command].items():
        assert value(option) == values[protocol == "paper"], (command, option)
    assert not SAMPLING & set(vars(args)), "the sampler options travel in args.sampling only"


def test_an_explicit_option_wins_over_the_protocol():
    args = build_parser().parse_args(["infill-code", "--protocol", "paper", "--k", "3", "--ngram-draft", "bigram"])
    value = resolve("infill-code", args)
    assert (value("k"), value("ngram_draft"), value("context")) == (3, "bigram", "full")
    assert {k: args.sampling[k] for k in ("temperature_mode", "ngram_draft", "draft_only_temperature")} == \
        {"temperature_mode": "both", "ngram_draft": "bigram", "draft_only_temperature": "paper"}


def test_sampling_value_reads_new_and_old_config_files():
    assert sampling_value({"sampling": {"k": 7}, "k": 5}, "k") == 7
    assert sampling_value({"k": 5}, "k") == 5  # a config.json written before the "sampling" key
    assert sampling_value({}, "k", 5) == 5


def test_protocols_differ_in_every_field():
    asarm, paper = (vars(PROTOCOLS[name]) for name in ("asarm", "paper"))
    assert all(asarm[f] != paper[f] for f in asarm if f != "name")


def test_banned_ids(local_tokenizer):
    specials = sorted(XLNET_SPECIAL_TOKENS.values())
    assert banned_ids_for("specials", local_tokenizer, code=False) == specials
    assert banned_ids_for("mask", local_tokenizer, code=False) == [XLNET_SPECIAL_TOKENS["<mask>"]]
    code = banned_ids_for("specials", local_tokenizer, code=True)
    assert not set(code) & set(code_whitespace_ids(local_tokenizer)) and XLNET_SPECIAL_TOKENS["<mask>"] in code
    with pytest.raises(ValueError, match="specials' or 'mask"):
        banned_ids_for("none", local_tokenizer, code=False)
