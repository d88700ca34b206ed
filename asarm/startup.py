"""A SIGTERM that arrives while ``asarm train`` is still importing (seconds: torch, transformers) is recorded,
not fatal: ``train`` acts on it as soon as its state exists (checkpoint, status ``interrupted``), so a job
stopped right after it started is requeued rather than left at ``running``. Installed by ``asarm/__init__``
before any heavy import, only for the ``train`` command of this process's own command line."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

TERM_RECEIVED = False


def _record(signum, frame) -> None:
    global TERM_RECEIVED
    TERM_RECEIVED = True


def is_train_command(argv: list[str]) -> bool:
    """True for ``asarm [--debug] train ...`` and ``python -m asarm train ...`` (``argv[0]`` is ``-m``
    while ``python -m`` imports the package), never for another program that imports asarm."""
    head = argv[0] if argv else ""
    ours = head == "-m" or Path(head).name == "asarm" or Path(head).parts[-2:] == ("asarm", "__main__.py")
    return ours and "train" in argv[1:3]


def install_for_train(argv: list[str]) -> None:
    """Record SIGTERM from now on when ``argv`` is the train command (main thread, default handler)."""
    if not is_train_command(argv) or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _record)


install_for_train(sys.argv)
