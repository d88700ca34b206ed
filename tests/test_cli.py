"""The `asarm` command: help, infill on a local model directory, clear errors."""

import argparse
import os
import subprocess
import sys

import pytest

from asarm import ASARM
from asarm.cli import encode_masked_text, main


def run_cli(*args, timeout=240):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="2")
    return subprocess.run([sys.executable, "-m", "asarm", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.mark.slow
def test_help_lists_commands():
    res = run_cli("--help")
    assert res.returncode == 0
    for command in ("infill", "train", "speculative", "infill-nlp", "infill-code", "density"):
        assert command in res.stdout, command
    res = run_cli("infill", "--help")
    assert res.returncode == 0 and "[MASK:n]" in res.stdout


def test_infill_flags_defaults_and_refusals(capsys):
    """The documented defaults, written out here: ASSD with k = 5 at T = 1 on the cached decoder, sorted order."""
    from asarm.cli import build_parser

    from asarm.evaluation.protocol import config_from_args

    args = build_parser().parse_args(["infill", "--text", "a [MASK:2] b"])
    cfg = config_from_args(args)  # what run_infill samples with: the flags left out take SamplingConfig's defaults
    assert (args.method, cfg.k, cfg.temperature, cfg.temperature_mode, cfg.backend, args.order, args.samples,
            args.seed, cfg.bonus, cfg.ngram_draft, cfg.draft_only_temperature, cfg.lookahead, cfg.adaptive_k) == (
        ["assd"], 5, 1.0, "both", "cached", "sorted", 1, 0, False, "bigram", "verify0", "off", False)
    args = build_parser().parse_args(["infill", "--text", "x", "--method", "sequential", "ngram", "--k", "3",
                                      "--temperature", "0.5", "--backend", "plain", "--lookahead", "cheap"])
    cfg = config_from_args(args)
    assert (args.method, cfg.k, cfg.temperature, cfg.backend, cfg.lookahead) == (["sequential", "ngram"], 3, 0.5,
                                                                                  "plain", "cheap")
    for argv, flag in [(["--method", "beam"], "--method"), (["--k", "three"], "--k"),
                       (["--backend", "flash"], "--backend"), (["--temperature", "hot"], "--temperature")]:
        with pytest.raises(SystemExit) as exc:
            build_parser().parse_args(["infill", "--text", "x", *argv])
        assert exc.value.code == 2
        assert f"argument {flag}" in capsys.readouterr().err, argv
    with pytest.raises(SystemExit):  # --text and --text-file exclude each other, and one is required
        build_parser().parse_args(["infill"])
    assert "--text" in capsys.readouterr().err


def test_default_revision_only_for_the_released_asarm_repo():
    from asarm.cli import build_parser, resolve_revision

    def revision(*argv):
        args = build_parser().parse_args(list(argv))
        resolve_revision(args)
        return args.revision

    assert revision("infill", "--text", "x") == "nlp"
    assert revision("speculative") == "nlp_210k_plus_75k"
    assert revision("infill-code") == "code"
    assert revision("infill", "--model", "xlnet/xlnet-base-cased", "--text", "x") is None
    assert revision("infill", "--revision", "code", "--text", "x") == "code"
    args = build_parser().parse_args(["speculative", "--model", "some/local-dir"])
    resolve_revision(args)  # the released repository's default revision is no setting of another model's run
    assert args.revision is None and "asarm_revision" not in vars(args)


def test_version_and_one_threads_rule_on_every_command_that_runs_a_model(capsys):
    from asarm import __version__
    from asarm.cli import build_parser
    from asarm.utils import THREADS_HELP

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"asarm {__version__}"
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    rule = THREADS_HELP.split(";")[1].strip()  # "0: torch's default, one per core"
    for command, default in [("infill", 0), ("train", 0), ("speculative", 0), ("infill-nlp", 0),
                             ("infill-code", 0), ("density", 0), ("quickstart", 1)]:
        argv = [command] + {"infill": ["--text", "x"], "density": ["--task", "lambada"]}.get(command, [])
        assert parser.parse_args(argv).threads == default, command
        assert rule in " ".join(commands[command].format_help().split()), command
    assert "%%" not in commands["speculative"].format_help()


def test_encode_masked_text(local_tokenizer):
    ids = encode_masked_text("def f(x):[MASK:3] return x", local_tokenizer)
    assert ids.count(local_tokenizer.mask_token_id) == 3
    assert local_tokenizer.decode([i for i in ids if i != local_tokenizer.mask_token_id]) == "def f(x): return x"
    for text, msg in [("", "empty"), ("no spans here", "nothing to infill"), ("a [MASK:0] b", "no token"),
                      ("[MASK:4]", "no visible text")]:
        with pytest.raises(ValueError, match=msg):
            encode_masked_text(text, local_tokenizer)


def test_piece_after_a_span_inside_a_line_continues_it(both_tokenizers, local_tokenizer):
    from asarm.data import decode_text, make_encoder

    mask = local_tokenizer.mask_token_id
    for code in (False, True):
        ids = encode_masked_text("x = [MASK:2].append(1)", local_tokenizer, code)
        after = ids[ids.index(mask) + 2:]
        assert not local_tokenizer.convert_ids_to_tokens(after)[0].startswith("\u2581")  # no segment marker
        # filled with pieces of its own, the span and the text after it read as one line
        filled = ids[:ids.index(mask)] + make_encoder(local_tokenizer, code)("bar", continues=True) + after
        assert decode_text(filled, both_tokenizers, code) == "x = bar.append(1)"
    # a span that opens a line may end in whitespace specials: the next piece opens a segment
    ids = encode_masked_text("def f():\n[MASK:4]return 1", local_tokenizer, code=True)
    assert local_tokenizer.convert_ids_to_tokens(ids[ids.index(mask) + 4:])[0] == "\u2581return"
    # indentation before a span is text on its line: the piece after it continues
    ids = encode_masked_text("    [MASK:3]x = 1", local_tokenizer, code=True)
    assert local_tokenizer.convert_ids_to_tokens(ids[ids.index(mask) + 3:])[0] == "x"


def test_infill_from_a_local_directory(tmp_path, local_tokenizer, capsys):
    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    code = main(["infill", "--model", str(tmp_path / "m"), "--text", "import os[MASK:5]\nprint(os.getcwd())",
                 "--method", "sequential", "assd", "ngram", "--k", "3", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.count("NFE") == 3 and "[sequential] sample 0: NFE 5" in out
    assert out.count("print(os.getcwd())") == 3  # the visible text survives decoding


def test_a_tokenizer_with_another_pipeline_is_reported_before_sampling(tmp_path, local_tokenizer, capsys):
    """The model records its tokenizer's pipeline; a command given a tokenizer that splits text
    another way (transformers 5's own XLNet pipeline) says so before it samples."""
    from tokenizers import pre_tokenizers

    from asarm.tokenizer import save_tokenizer, spiece_backend, wrap_backend

    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    drifted = wrap_backend(spiece_backend(local_tokenizer.asarm_spiece_file))
    drifted.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace()])
    save_tokenizer(drifted, tmp_path / "drifted")
    args = ["infill", "--model", str(tmp_path / "m"), "--text", "import os[MASK:3]", "--method", "sequential",
            "--device", "cpu"]
    assert main(args) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(args + ["--tokenizer", str(tmp_path / "drifted")]) == 0
    captured = capsys.readouterr()
    assert "differs from the one this model was trained with" in captured.err and "NFE" in captured.out


def test_code_mode_maps_whitespace_and_samples_it(tmp_path, local_tokenizer, capsys):
    from asarm.data import code_whitespace_ids

    ids = encode_masked_text("def f():\n\treturn 1[MASK:2]", local_tokenizer, code=True)
    assert set(code_whitespace_ids(local_tokenizer)[:2]) <= set(ids)  # newline -> <cls>, tab -> <sep>
    model = ASARM.from_config(tokenizer=local_tokenizer, d_model=32, n_layer=2, n_head=2, d_inner=64, seed=0)
    model.save_pretrained(tmp_path / "m", tokenizer=local_tokenizer)
    code = main(["infill", "--model", str(tmp_path / "m"), "--code", "--text", "def f():\n\treturn 1[MASK:3]",
                 "--method", "sequential", "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0 and "def f():\n\treturn 1" in out and "<cls>" not in out


@pytest.mark.slow
def test_errors_are_messages_not_tracebacks(tmp_path):
    res = run_cli("infill", "--model", "tiny", "--text", "nothing to fill")
    assert res.returncode == 2 and "nothing to infill" in res.stderr and "Traceback" not in res.stderr
    res = run_cli("infill", "--model", "tiny", "--text", "a [MASK:2] b", "--k", "0")
    assert res.returncode == 2 and "k (draft length)" in res.stderr
    res = run_cli("infill", "--model", "tiny", "--text-file", str(tmp_path / "missing.txt"))
    assert res.returncode == 2 and "does not exist" in res.stderr
    res = run_cli("infill", "--model", "someone/missing-model", "--text", "a [MASK:2] b")
    assert res.returncode == 2 and "local directory" in res.stderr and "Traceback" not in res.stderr
