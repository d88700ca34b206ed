"""Loading a model and its tokenizer from command-line options (every command that samples or scores).

``--model`` is a local directory, a hub id (the released AS-ARM by default, at
the revision each command names), or ``tiny`` (a small RANDOM model over the
offline tokenizer, for trying the commands without a checkpoint).
"""

from __future__ import annotations

import argparse
import os
import sys

TINY = "tiny"
ASARM_HUB_ID = "therealgabeguo/ASARM"
TINY_CONFIG = dict(d_model=64, n_layer=2, n_head=4, d_inner=128)
FALLBACK_TOKENIZER = "xlnet/xlnet-base-cased"  # for a hub id, or a local model directory saved without its tokenizer


def add_model_arguments(p: argparse.ArgumentParser, asarm_revision: str = "nlp") -> None:
    """Options shared by every command that loads a model. ``asarm_revision``: the revision
    used when ``--model`` is the released AS-ARM repository and no ``--revision`` is given."""
    p.add_argument("--model", default=ASARM_HUB_ID,
                   help=f"local directory or hub id (default: %(default)s); '{TINY}' builds a tiny RANDOM model "
                        "with the offline tokenizer, for trying the commands without a checkpoint")
    p.add_argument("--revision", default=None,
                   help=f"hub revision; for {ASARM_HUB_ID} (nlp, nlp_210k_plus_75k or code) the default is "
                        f"{asarm_revision}")
    p.set_defaults(asarm_revision=asarm_revision)
    p.add_argument("--tokenizer", default=None, help="tokenizer directory or hub id (default: the model's, else xlnet-base-cased)")
    p.add_argument("--device", default="auto", type=device_argument,
                   help="auto, cpu, cuda, cuda:1, ... or mps (default: %(default)s)")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto (default: %(default)s)")


def device_argument(name: str) -> str:
    """argparse ``type=`` for ``--device``: a misspelled device is a usage error listing the valid ones."""
    from .utils import check_device_name

    try:
        return check_device_name(name)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def resolve_revision(args) -> None:
    """Fill in ``args.revision`` for the released AS-ARM repository (other models: their default
    branch).

    ``args.asarm_revision`` (the command's default for that repository) is removed: it is not a
    setting of the run, and a run of another model must not record it."""
    default = vars(args).pop("asarm_revision", None)
    released = getattr(args, "model", None) == ASARM_HUB_ID
    if getattr(args, "revision", "") is None and released and default:
        args.revision = default


def tokenizer_for(model: str, revision: str | None = None, tokenizer: str | None = None):
    """The tokenizer that goes with ``model`` (a local directory or hub id): ``tokenizer`` if given, else the
    model's own (a directory holding tokenizer files, or the hub repository's), else ``FALLBACK_TOKENIZER``.

    The one rule of every command and of training's ``init``. Raises ``OSError`` naming ``--tokenizer``
    when the fallback is needed and not available (offline, not cached).
    """
    from .tokenizer import load_tokenizer

    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if os.path.isdir(model):
        if any(os.path.exists(os.path.join(model, f)) for f in ("tokenizer.json", "spiece.model", "tokenizer_config.json")):
            return load_tokenizer(model)
    else:
        try:
            return load_tokenizer(model, revision=revision)
        except (OSError, ValueError):
            pass  # a hub model without its own tokenizer (or not reachable): the fallback below
    try:
        return load_tokenizer(FALLBACK_TOKENIZER)
    except OSError as exc:
        raise OSError(f"'{model}' comes without a tokenizer, and the fallback {FALLBACK_TOKENIZER} is not "
                      f"available: {exc}. Pass --tokenizer DIR (a tokenizer directory or hub id).") from exc


OFFLINE_TOKENIZER = "offline"  # what a self-check records when it used the offline tokenizer
NO_MODEL = "none (self-check)"  # what a self-check records as its model


def offline_tokenizer():
    """The offline XLNet-pipeline tokenizer that ``--model tiny`` uses (vocabulary 1000, trained on
    the stdlib)."""
    from .data import stdlib_texts
    from .tokenizer import build_local_tokenizer

    return build_local_tokenizer(stdlib_texts(300_000), vocab_size=1000)


def load_tokenizer_alone(args):
    """The tokenizer of a self-check that runs no model (``--method oracle``): ``--tokenizer`` if
    given, else the offline one. Sets ``args.model`` / ``args.revision`` to say that no model was
    used, and ``args.tokenizer`` to what was used, so that config.json and the header say so."""
    from .tokenizer import load_tokenizer

    args.model, args.revision = NO_MODEL, None
    if not args.tokenizer or args.tokenizer == OFFLINE_TOKENIZER:
        args.tokenizer = OFFLINE_TOKENIZER
        return offline_tokenizer()
    try:
        return load_tokenizer(args.tokenizer)
    except (OSError, ValueError) as exc:
        raise OSError(f"--tokenizer '{args.tokenizer}' could not be loaded ({exc}); pass a tokenizer "
                      "directory or hub id, or leave --tokenizer out for the offline tokenizer") from exc


def mark_no_model(args) -> None:
    """For a self-check that needs neither model nor tokenizer (``--method canonical``)."""
    args.model, args.revision, args.tokenizer = NO_MODEL, None, None


def describe_model(config: dict) -> str:
    """A results header's words for the model of a recorded config: ``model NAME (REVISION)``, or
    for a self-check ``no model (self-check), tokenizer ...``."""
    if config.get("model") == NO_MODEL:
        tokenizer = config.get("tokenizer")
        offline = tokenizer == OFFLINE_TOKENIZER
        used = "the offline tokenizer" if offline else f"tokenizer {tokenizer}"
        return f"no model (self-check), {used}" if tokenizer else "no model (self-check)"
    return f"model {config.get('model')} ({config.get('revision')})"


def load_model_and_tokenizer(args):
    """``(model, tokenizer)`` from the ``add_model_arguments`` options, on the chosen device."""
    from .model import ASARM, tokenizer_mismatch
    from .utils import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    resolve_revision(args)
    if args.model == TINY:
        print("note: --model tiny is a RANDOMLY INITIALISED model: its text is gibberish; "
              "it only shows the commands working offline.", file=sys.stderr)
        tokenizer = offline_tokenizer()
        model = ASARM.from_config(tokenizer=tokenizer, seed=0, **TINY_CONFIG)
    else:
        from transformers import AutoConfig

        from .hub import load_or_explain

        # The model first (its small config): a mistyped --model must fail naming what the user typed,
        # not after the hub was tried for a fallback tokenizer the model would never have used.
        load_or_explain(AutoConfig.from_pretrained, args.model, args.revision, "model")
        tokenizer = tokenizer_for(args.model, args.revision, args.tokenizer)
        model = ASARM.from_pretrained(args.model, revision=args.revision, tokenizer=tokenizer)
        mismatch = tokenizer_mismatch(model.config, tokenizer)
        if mismatch:
            print(f"warning: {mismatch}", file=sys.stderr)
    return _sampled_vocabulary(model, tokenizer, args).to(device=device, dtype=dtype).eval(), tokenizer


def _sampled_vocabulary(model, tokenizer, args):
    """``model`` with the banned ids of ``--banned`` (the protocol's sampled vocabulary,
    ``evaluation.protocol.banned_ids_for``), and a code model's whitespace specials sampleable
    (``--code`` / code whitespace on: ``tokenizer.unban_code_whitespace``)."""
    from .model import ASARM
    from .tokenizer import unban_code_whitespace

    code = bool(getattr(args, "code_whitespace", False) or getattr(args, "code", False))
    if getattr(args, "banned", None) is not None:
        from .evaluation.protocol import banned_ids_for

        return ASARM(model.xlnet, model.mask_token_id, banned_ids_for(args.banned, tokenizer, code))
    if code:
        return ASARM(model.xlnet, model.mask_token_id, unban_code_whitespace(model.banned_token_ids, tokenizer))
    return model
