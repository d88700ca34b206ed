"""The ``asarm`` command line (also ``python -m asarm``).

Each subcommand lives in its own module and registers itself through a
``register(subparsers)`` function; ``build_parser`` calls the ones in
``COMMANDS`` (plain imports: follow them with grep or an IDE).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from . import __version__
from .loading import add_model_arguments, load_model_and_tokenizer, resolve_revision
from .utils import add_threads_argument, set_threads


MASK_SPAN = re.compile(r"\[MASK:([0-9]+)\]")  # ASCII digits only: int() would also take other scripts' digits
MASK_LIKE = re.compile(r"\[\s*mask", re.IGNORECASE)  # where a marker was meant; each must be a valid MASK_SPAN
MAX_NEW_TOKENS = 100_000  # default cap on the [MASK:n] total, checked before anything is allocated
DEBUG_ENV = "ASARM_DEBUG"
def parse_mask_spans(text: str, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str | int]:
    """``text`` split into visible pieces (``str``, even positions) and span lengths (``int``, odd positions).

    Checked before anything is tokenised or allocated, so a huge request fails
    at once. Raises ``ValueError`` naming the marker for: a malformed marker
    (``[MASK:abc]``, ``[MASK:-1]``, ``[MASK: 3]``, ``[MASK3]``, ``[mask:3]``: any
    ``[MASK`` that does not open a valid ``[MASK:n]``), ``n = 0``, or spans
    totalling more than ``max_new_tokens``; also empty text and text without a span.
    """
    if max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    if not text.strip():
        raise ValueError("the text is empty: give a prompt with at least one [MASK:n] span, e.g. 'The cat [MASK:4] mat.'")
    for m in MASK_LIKE.finditer(text):
        if not MASK_SPAN.match(text, m.start()):
            end = text.find("]", m.start(), m.start() + 40)
            marker = text[m.start():end + 1] if end >= 0 else text[m.start():m.start() + 20] + "..."
            raise ValueError(f"malformed span marker '{marker}' at character {m.start()}: write spans as "
                             "[MASK:n] with n a positive whole number of tokens, e.g. [MASK:5] (no spaces)")
    pieces: list[str | int] = MASK_SPAN.split(text)
    if len(pieces) == 1:
        raise ValueError("nothing to infill: mark the spans to generate as [MASK:n], n = number of tokens")
    total = 0
    for i in range(1, len(pieces), 2):
        digits = pieces[i]
        # int() of thousands of digits is slow (and refused past 4300): such a span is over any limit anyway
        n = int(digits) if len(digits.lstrip("0")) <= 30 else None
        if n == 0:
            raise ValueError(f"[MASK:{digits}] asks for no token; use n >= 1")
        total = None if n is None else total + n
        if total is None or total > max_new_tokens:
            asked = f"[MASK:{digits[:30]}...]" if n is None else f"{total} new tokens" + (" in all" if i > 1 else "")
            raise ValueError(f"the [MASK:n] spans ask for {asked}, over the limit of {max_new_tokens}: shorten "
                             "the spans, or raise the limit with --max-new-tokens if the machine has the memory "
                             "and time")
        pieces[i] = n
    return pieces


def encode_masked_text(text: str, tokenizer, code: bool = False, max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Token ids of ``text`` with every ``[MASK:n]`` replaced by ``n`` mask tokens
    (``code``: whitespace mapped to XLNet specials first, as the ``code`` checkpoint
    expects, with ``infill_code.lossless_encoder``).

    A piece that follows a span sitting inside a line (text before it on its
    line) is encoded as continuing the span's text (``continues=True``: no
    segment-opening ``▁``), as the span is filled with ordinary pieces; after
    a span that opens a line (at the start of the text or after a newline) it
    opens a segment, as the span may end in whitespace specials.

    Raises ``ValueError`` for empty text, no span, and every bad marker
    ``parse_mask_spans`` refuses (malformed, ``n = 0``, over ``max_new_tokens``).
    """
    from .data import make_encoder
    from .evaluation.infill_code import lossless_encoder

    encode = lossless_encoder(tokenizer, code) if code else make_encoder(tokenizer, code)
    pieces = parse_mask_spans(text, max_new_tokens)
    ids: list[int] = []
    before = ""  # the visible text so far, spans left out
    for i, piece in enumerate(pieces):
        if i % 2 == 1:
            ids += [tokenizer.mask_token_id] * piece
        elif piece:
            span_inside_line = i > 0 and bool(before) and not before.endswith("\n")
            ids += encode(piece, continues=span_inside_line)
            before += piece
    if all(i == tokenizer.mask_token_id for i in ids):
        raise ValueError("no visible text: add some words around the [MASK:n] spans to condition on")
    return ids


def register_infill(sub) -> None:
    from .sampling import add_sampling_arguments

    p = sub.add_parser("infill", help="fill [MASK:n] spans of a text by sequential decoding, ASSD or n-gram drafts",
                       description="Infill the [MASK:n] spans of a text (n = number of tokens) with an AS-ARM and "
                                   "print the completed text, the number of network calls (NFE) and the time.")
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text with spans marked [MASK:n], e.g. 'The cat [MASK:3] the mat.'")
    src.add_argument("--text-file", help="read the text from this file")
    p.add_argument("--method", nargs="+", default=["assd"], choices=["sequential", "assd", "ngram"],
                   help="one or more sampling methods (default: %(default)s)")
    add_sampling_arguments(p, skip=("method",))  # --k, --temperature, --backend, ...: one SamplingConfig
    p.add_argument("--order", default="sorted", choices=["sorted", "random"],
                   help="masked positions left to right (sorted) or in a random order")
    p.add_argument("--code", action="store_true",
                   help="code model: map whitespace to XLNet specials and let the model sample them "
                        "(on by default with --revision code)")
    p.add_argument("--samples", type=int, default=1, help="completions per method (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=MAX_NEW_TOKENS,
                   help="refuse [MASK:n] spans totalling more tokens than this (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    add_threads_argument(p)
    p.set_defaults(func=run_infill)


def read_infill_text(args) -> str:
    """The text of ``--text`` or ``--text-file``, its spans checked (before the model loads: a bad marker fails
    in milliseconds)."""
    from .utils import check_input_file

    if args.text is not None:
        text = args.text
    else:
        try:
            text = check_input_file(args.text_file, "--text-file").read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"--text-file '{args.text_file}' is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    parse_mask_spans(text, args.max_new_tokens)
    return text


def run_infill(args) -> int:
    import torch

    from . import orders
    from .data import decode_text
    from .evaluation.batching import synchronize
    from .evaluation.protocol import config_from_args
    from .sampling import sample

    config = config_from_args(args)  # first: a bad --k or --temperature fails before anything loads
    configs = {m: config.for_method(m) for m in args.method}
    if args.samples < 1:
        raise ValueError("--samples must be >= 1")
    text = read_infill_text(args)
    set_threads(args.threads)
    args.code = args.code or args.revision == "code"  # the loader then lets the model sample whitespace specials
    model, tokenizer = load_model_and_tokenizer(args)
    ids = torch.tensor([encode_masked_text(text, tokenizer, args.code, args.max_new_tokens)] * args.samples,
                       device=model.device)
    gen = torch.Generator(device=model.device).manual_seed(args.seed)
    sigma, m = orders.infill_order(ids, model.mask_token_id, shuffle=args.order == "random", generator=gen)
    print(f"{ids.shape[1]} tokens, {int((ids[0] == model.mask_token_id).sum())} to generate")
    for method in args.method:
        gen.manual_seed(args.seed)
        synchronize(model.device)
        t0 = time.perf_counter()
        out = sample(model, ids, sigma, m, configs[method], generator=gen)
        synchronize(model.device)
        dt = time.perf_counter() - t0
        for row in range(args.samples):
            print(f"\n[{method}] sample {row}: NFE {int(out.nfe[row])}, {dt / args.samples:.3f} s")
            print(decode_text(out.sequences[row].tolist(), tokenizer, args.code))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asarm",
        description="Any-Subset Autoregressive Models: exact parallel sampling (ASSD), training and the paper's evaluations.")
    parser.add_argument("--version", action="version", version=f"asarm {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the full traceback of any error (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in commands():
        register(sub)
    return parser


def commands():
    """The ``register(subparsers)`` function of every command, in ``--help`` order."""
    from . import train
    from .evaluation import density, infill_code, infill_nlp, quickstart, runner, speculative

    return (register_infill, train.register_train, speculative.register, infill_nlp.register, infill_code.register,
            density.register, runner.register_merge, quickstart.register)


def user_error_message(exc: BaseException) -> str | None:
    """The message to print for an error the user can fix, or None for one that is a bug in asarm.

    User errors: bad values and files (``ValueError`` and its kin ``CheckpointError``,
    ``TrainingDiverged``, JSON/Unicode errors; ``OSError``: missing, unreadable,
    a directory, the hub unreachable), a missing optional package, malformed
    YAML, isolation the user demanded but the machine lacks, and running out of
    memory. Anything else (``TypeError``, ``KeyError``, a torch ``RuntimeError``...)
    is a bug and keeps its traceback behind ``--debug``.
    """
    from .evaluation.execution import ISOLATION_ENV

    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return (f"out of memory ({type(exc).__name__}: {exc}); use smaller inputs (shorter prompts, fewer "
                "--samples, a smaller --limit or batch) or a machine with more memory")
    if isinstance(exc, ImportError) and (exc.name or "").startswith("asarm"):
        return None  # asarm's own modules always exist: a failing import of one is a bug
    if isinstance(exc, (ValueError, OSError, EOFError, ImportError)):  # ImportError: a missing optional package
        return str(exc) or type(exc).__name__
    if type(exc).__module__.startswith("yaml"):  # yaml.YAMLError, without importing yaml here
        return f"malformed YAML: {exc}"
    if isinstance(exc, RuntimeError) and str(exc).startswith(f"{ISOLATION_ENV}="):
        return str(exc)
    return None


def debug_requested(args=None) -> bool:
    """``--debug`` on the command line or ``ASARM_DEBUG`` set to a true value."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "").lower() in {"1", "true", "yes", "on"}


def main(argv=None) -> int:
    """Run one command; returns the exit status: 0 done, 1 failed (bug, out of memory, unfinished), 2 user error.

    A user error prints one line ``asarm CMD: error: ...`` on stderr, no
    traceback; an unexpected error prints one line asking for a report with
    ``--debug``. With ``--debug`` (or ``ASARM_DEBUG=1``) every error is raised
    with its full traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    resolve_revision(args)  # before a command records its config
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"asarm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # MemoryError included: it derives from Exception
        if debug_requested(args):
            raise
        message = user_error_message(exc)
        if message is not None:
            print(f"asarm {args.command}: error: {message}", file=sys.stderr)
            return 1 if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" else 2
        print(f"asarm {args.command}: internal error: {type(exc).__name__}: {exc}\n"
              f"This is a bug in asarm, not in what you typed: please report it with the traceback that "
              f"`asarm --debug {args.command} ...` (or {DEBUG_ENV}=1) prints.", file=sys.stderr)
        return 1
