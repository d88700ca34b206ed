"""``python -m asarm.launch ARGS``: torchrun (``torch.distributed.run``) for ``_run_training.sh``.

The same options and behaviour as ``torchrun``, except when a training process
fails: it has already printed its own one-line error (``asarm train: error: ...``),
so instead of torchrun's ``ChildFailedError`` traceback this prints at most one
line (for a process that died without one: a signal, an internal error) and
exits with the failed process's exit status (2: a user error, 1: anything else).
"""

from __future__ import annotations

import logging
import signal
import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run

USER_ERROR = 2  # asarm's exit status for an error it explained (asarm.cli.main)


def main(argv: list[str] | None = None) -> int:
    # torchrun logs each failure at ERROR level ("failed (exitcode: 2) ..."): said once below
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            print(f"asarm.launch: training process {rank} was killed by {name}", file=sys.stderr)
            return 1
        if code != USER_ERROR:
            print(f"asarm.launch: training process {rank} exited with status {code}",
                  file=sys.stderr)
        return code or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
