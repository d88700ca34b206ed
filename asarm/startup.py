"""A SIGTERM that arrives while ``asarm train`` is still importing (seconds: torch, transformers) is recorded,
not fatal: ``train`` acts on it as soon as its state exists (checkpoint, status ``interrupted``), so a job
stopped right after it started is requeued rather than left at ``running``. Installed by ``asarm/__init__``
before any heavy import, only for the ``train`` command of this process's own command line."""

from __future__ import annotations

import signal
import sys
import threading

TERM_RECEIVED = False


def _record(signum, frame) -> None:
    global TERM_RECEIVED
    TERM_RECEIVED = True


def install_for_train(argv: list[str]) -> None:
    """Record SIGTERM from now on when ``argv`` is ``asarm [--debug] train ...`` (main thread, default handler)."""
    if "train" not in argv[1:3] or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _record)


install_for_train(sys.argv)
