"""Loading from a local directory or the Hugging Face hub, with a clear message offline."""

from __future__ import annotations

import os
from pathlib import Path


def hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries to stay offline."""
    return any(os.environ.get(v, "").lower() in {"1", "true", "yes", "on"} for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _explain(what: str, name: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"could not load the {what} '{name}'{f' (revision {revision})' if revision else ''}: it is not a local "
        f"directory and the Hugging Face hub cannot be reached (offline?). On a machine with network run "
        f"`huggingface-cli download {name}{rev} --local-dir DIR`, copy DIR here and pass its path instead of the hub id."
    )


def load_or_explain(loader, name_or_path: str, revision: str | None, what: str, **kwargs):
    """Call ``loader(name_or_path, revision=..., **kwargs)`` for a local directory or a hub id.

    A local directory is used as is. A hub id is looked up in the local cache
    first, then (unless ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` is set)
    downloaded. Any failure to reach the hub becomes one ``OSError`` that says
    how to pass a local directory.
    """
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{what} path '{name}' is a file; pass the directory that holds config.json")
        return loader(str(path), **kwargs)
    # a path whose parent folder exists here (e.g. runs/mymodel) is a local directory, not a hub id
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or (path.parent != Path(".") and path.parent.is_dir()):
        raise FileNotFoundError(f"{what} directory '{name}' does not exist")
    try:
        return loader(name, revision=revision, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if hub_offline():
        raise OSError(_explain(what, name, revision))
    try:
        return loader(name, revision=revision, **kwargs)
    except Exception as exc:  # requests/httpx/hub errors all mean the same thing to the user
        raise OSError(_explain(what, name, revision) + f" ({type(exc).__name__}: {exc})") from exc
