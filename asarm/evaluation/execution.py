"""Running generated code for functional correctness, isolated from the evaluator.

Every program runs in a NEW interpreter process (``python -I -S -B``: no site,
no user environment, no bytecode writes), never a fork of the evaluator, so it
sees none of the evaluator's state. The process gets:

* a fresh temporary working directory (removed afterwards) and a minimal environment;
* ``resource.setrlimit`` limits: address space (``memory_mb``), CPU time, file
  size (16 MiB), no core dumps;
* its own session: on the wall-clock limit the whole process group is killed;
* inside, before the program runs: an audit hook (``sys.addaudithook``, which
  Python code cannot remove) that refuses writes, deletions, renames and
  permission changes outside the working directory, process creation
  (``fork``/``exec``/``subprocess``/``os.system``), signals to other processes,
  sockets and ``ctypes``; plus the reliability guard of OpenAI's harness
  (dangerous ``os``/``shutil``/``subprocess`` functions set to ``None``).

A program passes only if it runs to the end: the wrapper then writes a random
nonce (read from stdin before the program starts, so the program cannot know
it) to stdout. ``sys.exit``, ``SystemExit``, ``KeyboardInterrupt``, ``os._exit``,
a crash, a timeout or a memory error all count as failures.

This is defence in depth for model-written code, NOT a security sandbox for
hostile code: run large evaluations in a container or VM as well.

When the official ``human_eval_infilling`` package is installed (and its
``exec`` line has been enabled, which ``official_harness_usable`` checks by
making sure a wrong completion fails), ``check_completion(..., official=True)``
runs its ``check_correctness`` inside the same kind of isolated process.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

MAX_OUTPUT_BYTES = 16 * 2**20

# Runs inside the child, before the program. Reads the nonce, installs the guards,
# executes program.py, and writes the nonce only when the program finished normally.
_WRAPPER = r'''
import os, sys
def _guarded_main():
    nonce = sys.stdin.readline().strip()
    sys.stdin.close()
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    write, exit_, root = os.write, os._exit, os.path.realpath(os.getcwd())
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
               "os.killpg", "subprocess.Popen", "socket.", "ctypes.", "pty.spawn", "os.putenv", "os.unsetenv",
               "os.setuid", "os.chroot", "resource.setrlimit", "os.add_dll_directory")
    path_events = ("os.remove", "os.rmdir", "os.rename", "os.truncate", "os.mkdir", "shutil.rmtree", "os.chmod",
                   "os.chown", "os.link", "os.symlink", "os.utime", "os.chflags", "os.lchflags", "os.setxattr",
                   "os.removexattr", "shutil.move", "shutil.copyfile", "shutil.copytree")

    def inside(path):
        if isinstance(path, int):
            return True  # an fd this process opened (opening was checked)
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return p == root or p.startswith(root + sep)

    def hook(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
        elif event in path_events:
            for a in args[:2] if event in ("os.rename", "os.link", "os.symlink", "shutil.move", "shutil.copyfile", "shutil.copytree") else args[:1]:
                if isinstance(a, (str, bytes, os.PathLike)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {a!r}")
        elif event.startswith(blocked):
            raise PermissionError(f"sandbox: {event} is not allowed")

    sys.addaudithook(hook)
    import builtins, shutil, subprocess
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "_exit", "abort", "execv", "execve", "spawnv", "posix_spawn"):
        if hasattr(os, name):
            setattr(os, name, None)
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    builtins.exit = builtins.quit = builtins.help = None
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, assertion errors: all failures
        try:
            write(2, f"\n{type(exc).__name__}: {str(exc)[:300]}\n".encode("utf-8", "replace"))
        except BaseException:
            pass
        exit_(1)
    write(1, ("\n" + nonce).encode())
    exit_(0)
_guarded_main()
'''

# Official harness mode: its check_correctness (which forks and guards itself) in our isolated process.
_OFFICIAL = r'''
import json, os, sys
nonce = sys.stdin.readline().strip(); sys.stdin.close()
from human_eval_infilling.execution import check_correctness
with open("job.json", encoding="utf-8") as f:
    job = json.load(f)
res = check_correctness(job["problem"], job["completion"], job["timeout"])
os.write(1, ("\n" + nonce + json.dumps({"passed": bool(res["passed"]), "result": str(res["result"])})).encode())
os._exit(0)
'''


@dataclass
class ExecResult:
    """Outcome of one program: ``passed``; ``status`` is "passed", "timed out" or "failed: <why>"."""

    passed: bool
    status: str
    seconds: float


def build_program(prompt: str, completion: str, suffix: str, test: str, entry_point: str) -> str:
    """The program HumanEval-infilling runs: ``prompt + completion + suffix + test + check(entry_point)``."""
    return prompt + completion + suffix + "\n" + test + "\n" + f"check({entry_point})"


def limits_prologue(memory_mb: int, cpu_s: int) -> str:
    """Code the child runs first: its own resource limits (no ``preexec_fn``, which is not thread-safe)."""
    mem = memory_mb * 2**20
    return ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({mem}, {mem}))\n"
            f"resource.setrlimit(resource.RLIMIT_CPU, ({cpu_s}, {cpu_s + 1}))\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({MAX_OUTPUT_BYTES}, {MAX_OUTPUT_BYTES}))\n"
            "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))\n")


def _run_isolated(files: dict[str, str], script: str, timeout: float, memory_mb: int,
                  flags: tuple[str, ...]) -> tuple[str, str, float, bool, str]:
    """Run ``python {flags} -c script`` in a fresh temp dir holding ``files``.

    Returns ``(stdout, stderr_tail, seconds, timed_out, nonce)``.
    """
    workdir = tempfile.mkdtemp(prefix="asarm-exec-")
    nonce = secrets.token_hex(16)
    try:
        for name, text in files.items():
            with open(os.path.join(workdir, name), "w", encoding="utf-8") as f:
                f.write(text)
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            t0 = time.perf_counter()
            script = limits_prologue(memory_mb, int(timeout) + 1) + script
            proc = subprocess.Popen([sys.executable, *flags, "-c", script], cwd=workdir, env=env,
                                    stdin=subprocess.PIPE, stdout=out, stderr=err, close_fds=True,
                                    start_new_session=True)
            timed_out = False
            try:
                proc.stdin.write((nonce + "\n").encode())
                proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole session, stragglers included
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            seconds = time.perf_counter() - t0
        with open(out_path, "rb") as f:
            stdout = f.read().decode("utf-8", "replace")
        with open(err_path, "rb") as f:
            stderr = f.read()[-2000:].decode("utf-8", "replace")
        return stdout, stderr, seconds, timed_out, nonce
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_program(program: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """Run a complete Python program in an isolated process; passed = it ran to the end."""
    stdout, stderr, seconds, timed_out, nonce = _run_isolated({"program.py": program}, _WRAPPER, timeout,
                                                              memory_mb, ("-I", "-S", "-B"))
    if timed_out:
        return ExecResult(False, "timed out", seconds)
    if stdout.endswith("\n" + nonce):
        return ExecResult(True, "passed", seconds)
    last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return ExecResult(False, "failed: " + (last[-1][:200] if last else "process died without finishing"), seconds)


def run_official(problem: dict, completion: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """``human_eval_infilling.execution.check_correctness`` inside an isolated process."""
    job = {"problem": problem, "completion": completion, "timeout": timeout}
    stdout, stderr, seconds, timed_out, nonce = _run_isolated({"job.json": json.dumps(job)}, _OFFICIAL,
                                                              timeout + 5, memory_mb, ("-I", "-B"))
    if timed_out or ("\n" + nonce) not in stdout:
        return ExecResult(False, "timed out" if timed_out else f"failed: official harness died: {stderr[-200:]}", seconds)
    res = json.loads(stdout.rsplit("\n" + nonce, 1)[1])
    return ExecResult(bool(res["passed"]), "passed" if res["passed"] else res["result"], seconds)


@lru_cache(maxsize=1)
def official_harness_usable() -> tuple[bool, str]:
    """``(usable, reason)``: installed, importable, and it fails a wrong completion (its ``exec`` is enabled)."""
    import importlib.util

    if importlib.util.find_spec("human_eval_infilling") is None:
        return False, "human_eval_infilling is not installed"
    try:
        from human_eval_infilling import execution  # noqa: F401
    except Exception as exc:  # the PyPI placeholder has no modules
        return False, f"human_eval_infilling has no usable execution module ({type(exc).__name__})"
    probe = {"task_id": "probe/0", "prompt": "def f():\n", "suffix": "", "entry_point": "f",
             "test": "def check(c):\n    assert c() == 1\n"}
    wrong = run_official(probe, "    return 2\n")
    right = run_official(probe, "    return 1\n")
    if wrong.passed or not right.passed:
        return False, ("the official harness passes a wrong completion: its `exec(check_program, exec_globals)` "
                       "line is still commented out (see its README)") if wrong.passed else \
            f"the official harness fails a correct completion ({right.status})"
    return True, "official human_eval_infilling harness"


def check_completion(problem: dict, completion: str, timeout: float = 3.0, memory_mb: int = 1024,
                     official: bool = False) -> ExecResult:
    """Run one HumanEval(-infilling) problem with ``completion`` in the middle."""
    if official:
        return run_official(problem, completion, timeout, memory_mb)
    program = build_program(problem["prompt"], completion, problem["suffix"], problem["test"], problem["entry_point"])
    return run_program(program, timeout, memory_mb)


def check_many(jobs: list[tuple[dict, str]], timeout: float = 3.0, memory_mb: int = 1024, workers: int | None = None,
               official: bool = False) -> list[ExecResult]:
    """``check_completion`` for many ``(problem, completion)`` pairs, ``workers`` processes at a time, in order."""
    workers = workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: check_completion(job[0], job[1], timeout, memory_mb, official), jobs))
