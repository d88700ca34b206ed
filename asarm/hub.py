"""Loading from a local directory or the Hugging Face hub, with a clear message offline.

Failures are fast: offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``) a hub
id not in the cache fails at once, and online the hub is first checked to be
reachable with one short HTTP request through the environment's proxies
(``hub_reachable``) so that a machine with the network down does not spend a
minute in the hub client's retries.
"""

from __future__ import annotations

import http.client
import os
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

HUB_PREFIX = "hf:"
REACH_TIMEOUT_S = 3.0  # the whole check; the hub answers in well under a second when it is reachable
# hub client errors that mean "the hub answered: no such repository, revision or file" (any hub version;
# matched by class name along the class's bases, so subclasses count). LocalEntryNotFoundError (a file not
# in the cache while offline) derives from EntryNotFoundError on hub >= 1.0 and is excluded.
NOT_ON_HUB_ERRORS = frozenset({"RepositoryNotFoundError", "RevisionNotFoundError", "GatedRepoError",
                               "DisabledRepoError", "EntryNotFoundError", "RemoteEntryNotFoundError",
                               "HFValidationError"})


def hub_offline(datasets: bool = False) -> bool:
    """True when the user asked the Hugging Face libraries to stay offline (``datasets``: for the ``datasets`` package,
    which also obeys ``HF_DATASETS_OFFLINE``)."""
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + (("HF_DATASETS_OFFLINE",) if datasets else ())
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in names)


def hub_endpoint() -> str:
    """The hub's address: ``$HF_ENDPOINT``, default https://huggingface.co (what the hub client uses)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """True if the hub (``hub_endpoint()``) answers an HTTP HEAD request within ``timeout`` seconds in all.

    The request goes the way the hub client's would: through the proxy that ``HTTPS_PROXY`` / ``HTTP_PROXY``
    (or their lower-case forms) name, unless ``NO_PROXY`` exempts the host. Any HTTP answer counts, even an
    error status or a redirect; a DNS, connection or proxy failure, or no answer in time, does not.
    """
    url = hub_endpoint().rstrip("/") + "/"  # a path, even for a bare host: some proxies insist
    answers = []
    # a thread bounds the whole check: urllib's timeout is per socket operation and does not cover DNS
    probe = threading.Thread(target=lambda: answers.append(_answers(url, timeout)), daemon=True)
    probe.start()
    probe.join(timeout)
    return bool(answers) and answers[0]


class _FirstAnswer(urllib.request.HTTPRedirectHandler):
    """Follow no redirect: a redirect is already an answer from the hub."""

    def redirect_request(self, *args, **kwargs):
        return None


def _answers(url: str, timeout: float) -> bool:
    """Whether a HEAD request to ``url`` gets an HTTP answer (see ``hub_reachable``)."""
    opener = urllib.request.build_opener(_FirstAnswer)  # reads the proxy variables now, as the client will
    try:
        with opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except urllib.error.HTTPError:  # an error status (or a redirect) is an answer
        return True
    except urllib.error.URLError as exc:
        # a certificate this process does not trust was still presented by a server that answered (the hub
        # client may trust it through its own CA bundle); every other reason is a failure to connect
        return isinstance(exc.reason, ssl.SSLCertVerificationError)
    except (OSError, ValueError, http.client.HTTPException):  # timeout, bad endpoint, broken answer
        return False


def unreachable_reason() -> str | None:
    """Why the hub cannot be used now (offline mode, or no connection), or None when it can."""
    if hub_offline():
        return "offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)"
    if not hub_reachable():
        host = urlsplit(hub_endpoint()).hostname
        return f"{host} cannot be reached (network down? behind a proxy, set HTTPS_PROXY)"
    return None


def _explain(what: str, name: str, revision: str | None, why: str) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"could not load the {what} '{name}'{f' (revision {revision})' if revision else ''}: it is not a local "
        f"directory, not in the local hub cache, and the Hugging Face hub cannot be used: {why}. If '{name}' is a "
        f"typo, fix it; else on a machine with network run `hf download {name}{rev} --local-dir DIR`, "
        "copy DIR here and pass its path instead of the hub id."
    )


def _not_on_hub(exc: BaseException) -> bool:
    """True when the hub answered that the repository, revision or file does not exist (or is gated, private
    or disabled): ``exc`` or an exception in its chain is one of ``NOT_ON_HUB_ERRORS``."""
    seen = exc
    while seen is not None:
        names = {cls.__name__ for cls in type(seen).__mro__}
        if names & NOT_ON_HUB_ERRORS and "LocalEntryNotFoundError" not in names:
            return True
        seen = seen.__cause__ or seen.__context__
    return "is not a valid model identifier" in str(exc) or "not a valid git identifier" in str(exc)


def load_or_explain(loader, name_or_path: str, revision: str | None, what: str, **kwargs):
    """Call ``loader(name_or_path, revision=..., **kwargs)`` for a local directory or a hub id.

    A local directory is used as is. A hub id is looked up in the local cache
    first, then (unless offline mode is set or the hub is unreachable)
    downloaded. Every failure is one ``OSError`` (``FileNotFoundError`` for a
    missing local directory) that names ``name_or_path`` as the user typed it
    and says what to do; none waits on network retries.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} path '{name}' is a file; pass the directory that holds config.json")
        try:
            return loader(str(path), **kwargs)
        except (OSError, ValueError) as exc:
            raise OSError(f"{what} directory '{name}' cannot be loaded: {exc}") from exc
    # a path whose parent folder exists here (e.g. runs/mymodel) is a local directory, not a hub id
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (path.parent != Path(".") and path.parent.is_dir()):
        raise FileNotFoundError(f"{what} directory '{name}' does not exist")
    try:
        return loader(name, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    why = unreachable_reason()
    if why:
        raise OSError(_explain(what, name, revision, why))
    try:
        return loader(name, revision=revision, **kwargs)
    except Exception as exc:  # requests/httpx/hub errors all mean the same thing to the user
        if _not_on_hub(exc):
            raise OSError(f"the {what} '{name}'{f' (revision {revision})' if revision else ''} is not on the "
                          "Hugging Face hub (a typo? a private or gated repository needs `hf auth login`), "
                          "and it is not a local directory either") from exc
        raise OSError(_explain(what, name, revision, f"{type(exc).__name__}: {exc}")) from exc


@dataclass(frozen=True)
class HubSource:
    """A hub data set named ``hf:NAME[:CONFIG][@SPLIT][#REVISION]`` (the one grammar of every ``--data`` /
    ``dataset`` option): ``datasets.load_dataset(name, config, split=split, revision=revision)``."""

    name: str
    config: str | None = None
    split: str | None = None
    revision: str | None = None

    def load_kwargs(self, default_split: str) -> dict:
        """Keyword arguments of ``datasets.load_dataset`` (``split`` defaults to ``default_split``)."""
        out = dict(path=self.name, name=self.config, split=self.split or default_split)
        return out | ({"revision": self.revision} if self.revision else {})


def parse_hub_source(text: str) -> HubSource:
    """``hf:NAME[:CONFIG][@SPLIT][#REVISION]`` -> ``HubSource``; ``ValueError`` without a name.

    E.g. ``hf:wikitext:wikitext-2-raw-v1@test``, ``hf:org/corpus#v2`` (revision v2, default split),
    ``hf:bigcode/the-stack@train#refs/convert/parquet``.
    """
    if not text.startswith(HUB_PREFIX):
        raise ValueError(f"'{text}' is not a hub source: write hf:NAME[:CONFIG][@SPLIT][#REVISION]")
    body, _, revision = text[len(HUB_PREFIX):].partition("#")
    body, _, split = body.partition("@")
    name, _, config = body.partition(":")
    if not name:
        raise ValueError(f"'{text}' names no data set: write hf:NAME[:CONFIG][@SPLIT][#REVISION]")
    return HubSource(name, config or None, split or None, revision or None)

