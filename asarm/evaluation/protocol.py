"""Evaluation protocols: the paper's (``--protocol paper``) and asarm's own default.

A protocol is a named set of defaults for the choices that move the reported
numbers. Every choice is also an option of its own: a command's option left
unset (``None``) takes the protocol's value, an option given on the command
line wins, and the resolved value is recorded in ``config.json`` /
``results.json`` (with the protocol's name). docs/protocols.md's protocol table lists
each choice with the paper code's behaviour and its measured effect.

Fields (each names the option that overrides it):

* ``banned``: ``specials`` (never sample any special token) or ``mask``
  (only ``<mask>``, as the paper's sampler); code keeps its whitespace
  specials sampleable either way.
* ``infill_k``: ASSD draft length of the infilling evaluations and of the
  sampled LAMBADA word (the paper's scripts call ASSD with its default, 10).
* ``rouge``: ``mean`` (asarm: mean F1 over samples with its standard error)
  or ``bootstrap`` (``evaluate``'s rouge: bootstrap-aggregated mid F1 over all
  samples pooled); ``rouge_stemmer``: Porter stemmer on or off.
* ``wikitext_specials``: WikiText rows encoded with the tokenizer's specials
  (``<sep><cls>``) and followed by ``</s>`` (paper), or plain text joined by
  ``</s>``; ``wikitext_reuse``: trials wrap around the chunks when there are
  fewer chunks than trials (asarm) or stop when the chunks run out (paper);
  ``visible``: ``round`` (``round(frac N)``, at least 1) or ``int_plus_one``
  (``int(frac N) + 1``, the paper's); ``judge_specials``: the judged text keeps
  special tokens (paper) or drops them.
* ``code_context``: ``trim`` the HumanEval prompt and suffix to the model's
  length, or ``full`` (the paper: no trimming; longer inputs need more memory).
* ``code_encoding``: ``continuation`` (lossless: a middle or suffix that
  starts inside a line is encoded as the continuation it is, a segment that
  opens with a space gets an explicit ``▁``, and ``''`` stays two quotes;
  ``infill_code.lossless_encoder``) or ``separate`` (every part through the
  tokenizer on its own, as the paper; the mask count then follows it).
* ``lambada``: ``sampled`` (target word masked, sampled with ASSD at T = 1,
  stripped strings compared: the paper's number) or ``greedy``; both columns
  are reported, this picks the headline.
* ``ngram_draft``: ``bigram`` (asarm: sampled from the context's bigram counts)
  or ``paper`` (bigram, else unigram counts, else the model's own draft).
* ``draft_only_temperature``: with ``--temperature-mode draft``, ``verify0``
  (asarm: draft 0 is tempered and verified) or ``paper`` (draft 0 untempered,
  always accepted).
* ``density_logits``: ``banned`` (log-softmax with the banned ids removed) or
  ``raw`` (log-softmax with only ``<mask>`` removed, the paper's).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Protocol:
    """One protocol's defaults (module docstring)."""

    name: str
    banned: str
    infill_k: int
    rouge: str
    rouge_stemmer: bool
    wikitext_specials: bool
    wikitext_reuse: bool
    visible: str
    judge_specials: bool
    code_context: str
    code_encoding: str
    lambada: str
    ngram_draft: str
    draft_only_temperature: str
    density_logits: str


PROTOCOLS: dict[str, Protocol] = {
    "asarm": Protocol("asarm", banned="specials", infill_k=5, rouge="mean", rouge_stemmer=True,
                      wikitext_specials=False, wikitext_reuse=True, visible="round", judge_specials=False,
                      code_context="trim", code_encoding="continuation", lambada="greedy", ngram_draft="bigram",
                      draft_only_temperature="verify0", density_logits="banned"),
    "paper": Protocol("paper", banned="mask", infill_k=10, rouge="bootstrap", rouge_stemmer=False,
                      wikitext_specials=True, wikitext_reuse=False, visible="int_plus_one", judge_specials=True,
                      code_context="full", code_encoding="separate", lambada="sampled", ngram_draft="paper",
                      draft_only_temperature="paper", density_logits="raw"),
}
DEFAULT_PROTOCOL = "asarm"


def add_protocol_argument(p: argparse.ArgumentParser, default: str = DEFAULT_PROTOCOL) -> None:
    """``--protocol {asarm,paper}``; options left unset take the protocol's values (``apply_protocol``)."""
    p.add_argument("--protocol", default=default, choices=sorted(PROTOCOLS),
                   help="defaults for every choice that moves the numbers: 'paper' follows the paper's released "
                        "code, 'asarm' is this project's default (default: %(default)s); any option given "
                        "explicitly wins")


def apply_protocol(args: argparse.Namespace, mapping: dict[str, str] | None = None) -> Protocol:
    """Fill every option of ``args`` that is ``None`` from ``args.protocol``'s values.

    ``mapping`` renames: ``{option: protocol_field}`` for options whose name is
    not the field's (e.g. ``{"k": "infill_k"}``). Returns the protocol.
    """
    protocol = PROTOCOLS[getattr(args, "protocol", DEFAULT_PROTOCOL)]
    values = asdict(protocol)
    fields = {name: name for name in values if name != "name"} | (mapping or {})
    for option, field_name in fields.items():
        if hasattr(args, option) and getattr(args, option) is None:
            setattr(args, option, values[field_name])
    return protocol


def sampling_defaults(protocol: Protocol, infill: bool) -> dict:
    """The ``SamplingConfig`` defaults a protocol sets (``SamplingConfig.from_args(args, **these)``):
    ``ngram_draft`` and ``draft_only_temperature``, and ``k = infill_k`` for the infilling evaluations
    and the sampled LAMBADA word (``infill``); speculative decoding keeps ``SamplingConfig``'s ``k``."""
    values = {"ngram_draft": protocol.ngram_draft, "draft_only_temperature": protocol.draft_only_temperature}
    return values | ({"k": protocol.infill_k} if infill else {})


def config_from_args(args: argparse.Namespace, **defaults):
    """``SamplingConfig.from_args`` for a command whose ``--method`` is its own (a list of methods, or
    self-checks such as ``oracle``): ``args.method`` is not read; ``defaults`` may set the method."""
    from ..sampling import SamplingConfig

    return SamplingConfig.from_args(argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "method"}),
                                    **defaults)


def sampling_config(args: argparse.Namespace, infill: bool, method: str | None = None):
    """The ``SamplingConfig`` of ``add_sampling_arguments``'s options in ``args`` (given values win, then
    ``args.protocol``'s, then the config's defaults), built before anything is loaded or written: a bad
    value is a ``ValueError`` naming it. The options are then removed from ``args`` and the config's
    ``to_dict()`` stored as ``args.sampling`` (config.json's ``"sampling"``); ``method``, when given, is
    the config's method (commands that compare several methods set it per method with ``.replace``)."""
    protocol = PROTOCOLS[getattr(args, "protocol", DEFAULT_PROTOCOL)]
    defaults = sampling_defaults(protocol, infill) | ({"method": method} if method else {})
    config = config_from_args(args, **defaults)
    for name in config.to_dict():
        if hasattr(args, name) and name not in ("method",):
            delattr(args, name)
    args.sampling = config.to_dict() if method else {k: v for k, v in config.to_dict().items() if k != "method"}
    return config


def sampling_value(config: dict, name: str, default=None):
    """A sampler setting of a config.json / results.json ``config``: ``config["sampling"][name]``, or the
    top-level key of files written before the ``"sampling"`` key (``config["k"]``)."""
    sampling = config.get("sampling") or {}
    return sampling.get(name, config.get(name, default))


def banned_ids_for(banned: str, tokenizer, code: bool) -> list[int]:
    """The ids never sampled under ``banned`` (``specials`` | ``mask``); code keeps its whitespace specials."""
    from ..tokenizer import special_ids, unban_code_whitespace

    mask_id, specials = special_ids(tokenizer)
    if banned not in ("specials", "mask"):
        raise ValueError(f"--banned must be 'specials' or 'mask', not {banned!r}")
    ids = specials if banned == "specials" else [mask_id]
    return unban_code_whitespace(ids, tokenizer) if code else sorted(ids)
