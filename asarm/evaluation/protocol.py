"""Evaluation protocols: the paper's (``--protocol paper``) and asarm's own default.

A protocol is a named set of defaults for the choices that move the reported
numbers. Every choice is also an option of its own: a command's option left
unset (``None``) takes the protocol's value, an option given on the command
line wins, and the resolved value is recorded in ``config.json`` /
``results.json`` (with the protocol's name). The README's protocol table lists
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


SAMPLER_OPTIONS = ("temperature_mode", "ngram_draft", "draft_only_temperature")


def add_sampler_arguments(p: argparse.ArgumentParser) -> None:
    """The sampler variants every evaluation shares; the protocol fills ``--ngram-draft`` and
    ``--draft-only-temperature`` when left unset (``sampler_options`` turns them into ``sample`` kwargs)."""
    p.add_argument("--temperature-mode", default="both", choices=["both", "draft"],
                   help="apply --temperature to draft and oracle (the tempered joint) or to the draft only "
                        "(the T = 1 joint) (default: %(default)s)")
    p.add_argument("--ngram-draft", default=None, choices=["bigram", "paper"],
                   help="n-gram drafter: the context's bigram counts (asarm) or bigram, else unigram, else the "
                        "model's own draft (the paper's) (default: from --protocol)")
    p.add_argument("--draft-only-temperature", default=None, choices=["verify0", "paper"],
                   help="with --temperature-mode draft: draft 0 tempered and verified (asarm) or untempered and "
                        "always accepted (the paper's, keeps NFE <= N - m) (default: from --protocol)")


def sampler_options(args: argparse.Namespace) -> dict:
    """``asarm.sample`` keyword arguments of ``add_sampler_arguments``'s options (after ``apply_protocol``)."""
    return {name: getattr(args, name) for name in SAMPLER_OPTIONS}


def banned_ids_for(banned: str, tokenizer, code: bool) -> list[int]:
    """The ids never sampled under ``banned`` (``specials`` | ``mask``); code keeps its whitespace specials."""
    from ..tokenizer import code_whitespace_ids, special_ids

    mask_id, specials = special_ids(tokenizer)
    if banned not in ("specials", "mask"):
        raise ValueError(f"--banned must be 'specials' or 'mask', not {banned!r}")
    ids = specials if banned == "specials" else [mask_id]
    allowed = set(code_whitespace_ids(tokenizer)) if code else set()
    return sorted(i for i in ids if i not in allowed)
