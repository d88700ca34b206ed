"""Running generated code for functional correctness, isolated from the evaluator.

Every program runs in a NEW interpreter process (``python -I -S -B``), never a
fork of the evaluator, with ``resource`` limits (address space ``memory_mb``,
CPU time, 16 MiB per file, no core dumps) and its own session, killed as a
group at the wall-clock limit. Two layers of isolation:

* **Namespaces** (``bubblewrap``, used whenever it works on the machine): user,
  mount, PID, network, IPC and UTS namespaces. The program sees a read-only
  view of ``/usr`` and the Python installation only (not the evaluator's home,
  not ``/etc``, not the data), a private ``/sandbox`` and ``/tmp`` on tmpfs
  that vanish with it, its own ``/proc`` (no other process is visible, so no
  ``/proc/<ppid>/environ``), no network, an empty environment, and it dies with
  the evaluator (``--die-with-parent``; the PID namespace takes every process it
  started with it). Nothing is written on the host.
* **The in-process guard** (always on; the only layer where namespaces are
  unavailable, said once per run): an audit hook (``sys.addaudithook``, which
  Python code cannot remove) that refuses writes, deletions, renames and
  permission changes outside the working directory, process creation,
  signals, sockets, ``ctypes``, reading ``/proc``, and every way to reach the
  wrapper's frame (``sys._getframe``, ``tb_frame``, ``gi_frame``, ``gc``
  traversal, tracing); plus the reliability guard of OpenAI's harness. Without
  namespaces it cannot see ``dir_fd=`` paths, files of the same user outside
  are readable, and a parent-death signal (not a PID namespace) ends the
  program with the evaluator; its temporary folder is removed afterwards.

A program passes only if it exits with status 0 AND the wrapper, after the
program ran to its end, wrote a random nonce that only it holds (sent on stdin
and kept out of the program's reach by the guard). ``sys.exit``, ``os._exit``,
``SystemExit``, a crash, a timeout or a memory error all fail. Set
``ASARM_EXEC_ISOLATION=guard`` to force the guard alone, ``namespaces`` to
require namespaces (an error where they do not work).

Not covered (inherent to the benchmark): a completion that returns an object
whose ``__eq__`` is always true passes assert-style tests.

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
MIN_MEMORY_MB = 128  # below this the interpreter itself cannot start under RLIMIT_AS
ISOLATION_ENV = "ASARM_EXEC_ISOLATION"

# Runs inside the child. Reads the nonce and the files from stdin, installs the guards,
# executes program.py, and writes the nonce only when the program finished normally.
_WRAPPER = r"""
import os, sys, json, gc, signal, _signal, _thread, _posixsubprocess

def _notary(secret, wrapper_code, module_frame, write, exit_):
    # The only holder of the nonce: it writes it when the wrapper itself (called from the top-level
    # frame) says the program finished. It never raises, so no traceback shows its frame.
    def notary(event, args):
        try:
            if event == "asarm.finished":
                caller = sys._getframe(1)
                if caller.f_code is wrapper_code and caller.f_back is module_frame:
                    write(1, ("\n" + secret).encode())
                    exit_(0)
        except BaseException:
            pass
    return notary

def _guarded_main(write=os.write, exit_=os._exit, audit=sys.audit, exec_=exec, compile_=compile):
    sys.addaudithook(_notary(sys.stdin.readline().strip(), _guarded_main.__code__, sys._getframe(1), write, exit_))
    files = json.loads(sys.stdin.read())
    sys.stdin.close()
    for name, text in files.items():
        with open(name, "w", encoding="utf-8") as f:
            f.write(text)
    with open("program.py", encoding="utf-8") as f:
        source = f.read()
    del files
    root = os.path.realpath(os.getcwd())
    realpath, fsdecode, sep = os.path.realpath, os.fsdecode, os.sep
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    blocked = ("os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill",
               "os.killpg", "subprocess.Popen", "socket.", "ctypes.", "pty.spawn", "os.putenv", "os.unsetenv",
               "os.setuid", "os.chroot", "resource.setrlimit", "os.add_dll_directory", "os.mkfifo", "os.mknod",
               "sqlite3.", "sys._current_frames", "sys.settrace", "sys.setprofile", "sys.monitoring",
               "gc.get_objects", "gc.get_referrers", "gc.get_referents", "asarm.")
    # builtin modules whose functions the guard removes: a fresh copy must not be imported again
    no_reimport = {"os", "posix", "gc", "signal", "_signal", "_thread", "_posixsubprocess", "subprocess", "shutil",
                   "ctypes", "_ctypes", "_imp"}
    path_events = ("os.remove", "os.rmdir", "os.rename", "os.truncate", "os.mkdir", "shutil.rmtree", "os.chmod",
                   "os.chown", "os.link", "os.symlink", "os.utime", "os.chflags", "os.lchflags", "os.setxattr",
                   "os.removexattr", "shutil.move", "shutil.copyfile", "shutil.copytree")
    two_paths = ("os.rename", "os.link", "os.symlink", "shutil.move", "shutil.copyfile", "shutil.copytree")
    # where each audit event carries its dir_fd arguments (paths relative to them cannot be checked here)
    dir_fd_at = {"os.remove": (1,), "os.rmdir": (1,), "os.mkdir": (2,), "os.chmod": (2,), "os.chown": (3,),
                 "os.rename": (2, 3), "os.link": (2, 3), "os.symlink": (2,), "os.utime": (3,)}

    def inside(path):
        if isinstance(path, int):
            return False  # an fd: which file it is cannot be told here
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return p == root or p.startswith(root + sep)

    def guard(event, args):
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, 0))[:3]
            if isinstance(path, (str, bytes)) and realpath(fsdecode(path)).startswith("/proc"):
                raise PermissionError("sandbox: /proc is not readable")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")
        elif event in path_events:
            if any(isinstance(a, int) and a not in (-1, None) for a in (args[i] for i in dir_fd_at.get(event, ())
                                                                       if i < len(args))):
                raise PermissionError(f"sandbox: {event} with dir_fd is not allowed")
            for a in args[:2] if event in two_paths else args[:1]:
                if not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the working directory is not allowed: {a!r}")
        elif event == "import" and args and args[0] in no_reimport:
            raise PermissionError(f"sandbox: importing {args[0]} again is not allowed")
        elif event.startswith(blocked) and event != "asarm.finished":
            raise PermissionError(f"sandbox: {event} is not allowed")

    import builtins, shutil, subprocess
    sys.addaudithook(guard)
    for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
                 "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
                 "chroot", "lchflags", "lchmod", "lchown", "_exit", "abort", "execv", "execve", "spawnv", "posix_spawn",
                 "mkfifo", "mknod"):
        for module in (os, sys.modules.get("posix")):
            if hasattr(module, name):
                setattr(module, name, None)
    for module in (signal, _signal):  # a signal handler would be handed the frame it interrupts
        module.signal = module.setitimer = None
    _thread.interrupt_main = None
    shutil.rmtree = shutil.move = shutil.chown = None
    subprocess.Popen = None
    sys.modules["_posixsubprocess"].fork_exec = None  # process creation the audit hook does not see
    builtins.exit = builtins.quit = builtins.help = None
    try:
        exec_(compile_(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
    except BaseException as exc:  # SystemExit, KeyboardInterrupt, assertion errors: all failures
        try:
            write(2, f"\n{type(exc).__name__}: {str(exc)[:300]}\n".encode("utf-8", "replace"))
        except BaseException:
            pass
        exit_(1)
    audit("asarm.finished")
    exit_(1)  # not reached unless the notary refused
_guarded_main()
"""

# Official harness mode: its check_correctness (which forks and guards itself) in our isolated process.
_OFFICIAL = r"""
import json, os, sys
nonce = sys.stdin.readline().strip(); job = json.loads(json.loads(sys.stdin.read())["job.json"]); sys.stdin.close()
from human_eval_infilling.execution import check_correctness
res = check_correctness(job["problem"], job["completion"], job["timeout"])
os.write(1, ("\n" + nonce + json.dumps({"passed": bool(res["passed"]), "result": str(res["result"])})).encode())
os._exit(0)
"""

# In the guard-only mode the child asks the kernel to kill it when the evaluator dies.
_PARENT_DEATH = ("try:\n    import ctypes\n    ctypes.CDLL(None).prctl(1, 9)\nexcept Exception:\n    pass\n")


def validate_limits(timeout: float, memory_mb: int) -> None:
    """``ValueError`` unless ``timeout > 0`` seconds and ``memory_mb >= MIN_MEMORY_MB``."""
    if not (isinstance(timeout, (int, float)) and timeout > 0 and timeout == timeout):
        raise ValueError(f"--timeout must be > 0 seconds, got {timeout}")
    if not (isinstance(memory_mb, int) and memory_mb >= MIN_MEMORY_MB):
        raise ValueError(f"--memory-mb must be >= {MIN_MEMORY_MB} (the interpreter alone needs that much), "
                         f"got {memory_mb}")


def _bind_args(paths) -> list[str]:
    """bubblewrap arguments that show each of ``paths`` read-only at the same place (symlinks as symlinks)."""
    args: list[str] = []
    for p in paths:
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.exists(p):
            args += ["--ro-bind", p, p]
    return args


def namespace_command(argv: list[str], extra_paths: tuple[str, ...] = ()) -> list[str]:
    """``argv`` wrapped in bubblewrap: read-only ``/usr`` + Python, tmpfs ``/sandbox`` as cwd, all namespaces new."""
    python_dirs = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))})
    # tmpfs first: a later mount shadows an earlier one, and a Python (venv) under /tmp must stay visible
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/sandbox",
            *_bind_args(["/usr", "/bin", "/lib", "/lib32", "/lib64", "/sbin"]), *_bind_args(python_dirs),
            *_bind_args(extra_paths), "--chdir", "/sandbox", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/sandbox",
            "--setenv", "TMPDIR", "/sandbox", "--setenv", "LANG", "C.UTF-8", "--setenv", "OMP_NUM_THREADS", "1",
            "--setenv", "PYTHONHASHSEED", "0", "--", *argv]


@lru_cache(maxsize=1)
def isolation_mode() -> tuple[str, str]:
    """``("namespaces" | "guard", description)``: namespaces when bubblewrap runs here (``ASARM_EXEC_ISOLATION``)."""
    choice = os.environ.get(ISOLATION_ENV, "auto")
    if choice not in ("auto", "namespaces", "guard"):
        raise ValueError(f"{ISOLATION_ENV} must be auto, namespaces or guard, not {choice!r}")
    if choice == "guard":
        return "guard", f"in-process guard only ({ISOLATION_ENV}=guard)"
    why = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
    if shutil.which("bwrap"):
        try:
            probe = subprocess.run(namespace_command([sys.executable, "-I", "-S", "-c", "print(7 * 6)"]),
                                   capture_output=True, text=True, timeout=30)
            if probe.returncode == 0 and probe.stdout.strip() == "42":
                return "namespaces", "bubblewrap namespaces (user, mount, PID, network) + in-process guard"
            why = f"bubblewrap cannot create namespaces here: {probe.stderr.strip()[-200:]}"
        except (OSError, subprocess.SubprocessError) as exc:
            why = f"bubblewrap failed to start: {exc}"
    if choice == "namespaces":
        raise RuntimeError(f"{ISOLATION_ENV}=namespaces but {why}")
    print(f"note: generated code runs under the in-process guard only: {why}", file=sys.stderr)
    return "guard", f"in-process guard only ({why})"


def _run_isolated(files: dict[str, str], script: str, timeout: float, memory_mb: int,
                  flags: tuple[str, ...], extra_paths: tuple[str, ...] = ()) -> tuple[str, str, float, bool, int, str]:
    """Run ``python {flags} -c script`` with ``files`` (sent on stdin after the nonce) in an isolated cwd.

    Returns ``(stdout, stderr_tail, seconds, timed_out, returncode, nonce)``.
    """
    nonce = secrets.token_hex(16)
    mode, _ = isolation_mode()
    script = limits_prologue(memory_mb, int(timeout) + 1) + ("" if mode == "namespaces" else _PARENT_DEATH) + script
    argv = [sys.executable, *flags, "-c", script]
    workdir = None
    if mode == "namespaces":
        cmd, cwd = namespace_command(argv, extra_paths), None
        env = {"PATH": "/usr/bin:/bin"}
    else:
        workdir = cwd = tempfile.mkdtemp(prefix="asarm-exec-")
        cmd = argv
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir,
               "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    try:
        # anonymous files: nothing is left on disk if the evaluator is killed
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                    close_fds=True, start_new_session=True)
            timed_out = False
            try:
                proc.stdin.write((nonce + "\n" + json.dumps(files)).encode())
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
            out.seek(0)
            stdout = out.read(MAX_OUTPUT_BYTES).decode("utf-8", "replace")
            err.seek(0, os.SEEK_END)
            err.seek(max(0, err.tell() - 2000))
            stderr = err.read().decode("utf-8", "replace")
        return stdout, stderr, seconds, timed_out, proc.returncode, nonce
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def run_program(program: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """Run a complete Python program in an isolated process; passed = exit status 0 and it ran to the end."""
    validate_limits(timeout, memory_mb)
    stdout, stderr, seconds, timed_out, code, nonce = _run_isolated({"program.py": program}, _WRAPPER, timeout,
                                                                    memory_mb, ("-I", "-S", "-B"))
    if timed_out:
        return ExecResult(False, "timed out", seconds)
    if code == 0 and stdout.endswith("\n" + nonce):
        return ExecResult(True, "passed", seconds)
    last = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    why = last[-1][:200] if last else ("process died without finishing" if code else "finished without the nonce")
    return ExecResult(False, f"failed: {why}", seconds)


def run_official(problem: dict, completion: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """``human_eval_infilling.execution.check_correctness`` inside an isolated process."""
    import importlib.util

    validate_limits(timeout, memory_mb)
    job = {"problem": problem, "completion": completion, "timeout": timeout}
    spec = importlib.util.find_spec("human_eval_infilling")
    site = tuple(os.path.dirname(os.path.dirname(spec.origin)) for _ in [0]) if spec and spec.origin else ()
    stdout, stderr, seconds, timed_out, code, nonce = _run_isolated({"job.json": json.dumps(job)}, _OFFICIAL,
                                                                    timeout + 5, memory_mb, ("-I", "-B"), site)
    if timed_out or code != 0 or ("\n" + nonce) not in stdout:
        return ExecResult(False, "timed out" if timed_out else f"failed: official harness died: {stderr[-200:]}", seconds)
    res = json.loads(stdout.rsplit("\n" + nonce, 1)[1])
    return ExecResult(bool(res["passed"]), "passed" if res["passed"] else res["result"], seconds)

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
