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

``check_completion`` decides verdicts outside the program (``run_checked``: the program serves its entry
point, the test runs in a trusted process and gets plain data back), falling back to the in-process check
above only for tasks whose canonical solution needs more (``task_check_mode``; none of HumanEval-infilling's
8652); see docs/executor.md, which also lists what a program can still do under the guard alone.

When the official ``human_eval_infilling`` package is installed (and its
``exec`` line has been enabled, which ``official_harness_usable`` checks by
making sure a wrong completion fails), ``check_completion(..., official=True)``
runs its ``check_correctness`` inside the same kind of isolated process.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

MAX_OUTPUT_BYTES = 16 * 2**20
MIN_MEMORY_MB = 128  # below this the interpreter itself cannot start under RLIMIT_AS
ISOLATION_ENV = "ASARM_EXEC_ISOLATION"
# What a program can still do where bubblewrap does not work (the in-process guard alone); docs/executor.md.
GUARD_RESIDUAL_RISKS = (
    "without namespaces a program can still read files of your user outside its folder, write through "
    "os.open(..., dir_fd=) paths, fill the disk of its temporary folder (16 MiB per file, no total), use builtin "
    "modules the guard does not know (subinterpreters, named semaphores), ioctls and pidfd calls, and leave its "
    "asarm-exec-* folder if the evaluator is killed (docs/executor.md); verdicts stay decided outside it")
OUT_OF_PROCESS, IN_PROCESS = "out-of-process", "in-process"  # where a verdict is decided (ExecResult.check)
SCRATCH_TMP_MB = 64  # the sandbox's /tmp; its working directory gets the rest of --memory-mb

# The guard (shared by the program wrapper and the entry-point server): audit hook + removed functions.
_GUARD = r"""
def _install_guard():
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
"""

# Runs inside the child. Reads the nonce and the files from stdin, installs the guards,
# executes program.py, and writes the nonce only when the program finished normally.
_WRAPPER = r"""
import os, sys, json, gc, signal, _signal, _thread, _posixsubprocess
""" + _GUARD + r"""

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
    _install_guard()
    import builtins
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

# Plain data across the process boundary: the only values a check ever sees from the program. Exact types
# only (a subclass of int with its own __eq__ is refused); anything else raises _NotPlain.
_CODEC = r"""
class _NotPlain(Exception):
    pass

def _enc(x, depth=0):
    t = type(x)
    if depth > 100:
        raise _NotPlain("nested more than 100 levels")
    if x is None:
        return ["n"]
    if t is bool:
        return ["?", x]
    if t is int:
        return ["i", format(x, "x")]
    if t is float:
        return ["f", repr(x)]
    if t is complex:
        return ["c", repr(x.real), repr(x.imag)]
    if t is str:
        return ["s", x]
    if t is bytes:
        return ["b", x.hex()]
    tag = {list: "l", tuple: "t", set: "S", frozenset: "F"}.get(t)
    if tag:
        return [tag, [_enc(v, depth + 1) for v in x]]
    if t is dict:
        return ["d", [[_enc(k, depth + 1), _enc(v, depth + 1)] for k, v in x.items()]]
    raise _NotPlain(f"a {t.__name__} is not plain data")

def _dec(node, depth=0):
    if type(node) is not list or not node or type(node[0]) is not str or depth > 100:
        raise _NotPlain("malformed value")
    tag, rest = node[0], node[1:]
    def one(kind):
        if len(rest) != 1 or type(rest[0]) is not kind:
            raise _NotPlain("malformed value")
        return rest[0]
    if tag == "n" and not rest:
        return None
    if tag == "?":
        return one(bool)
    if tag == "i":
        return int(one(str), 16)
    if tag == "f":
        return float(one(str))
    if tag == "c" and len(rest) == 2 and all(type(r) is str for r in rest):
        return complex(float(rest[0]), float(rest[1]))
    if tag == "s":
        return one(str)
    if tag == "b":
        return bytes.fromhex(one(str))
    kind = {"l": list, "t": tuple, "S": set, "F": frozenset}.get(tag)
    if kind:
        return kind(_dec(v, depth + 1) for v in one(list))
    if tag == "d":
        out = {}
        for pair in one(list):
            if type(pair) is not list or len(pair) != 2:
                raise _NotPlain("malformed value")
            out[_dec(pair[0], depth + 1)] = _dec(pair[1], depth + 1)
        return out
    raise _NotPlain("malformed value")

def _builtin_exception_name(exc):
    # the first builtin exception class among its bases: what the checker raises in its place
    import builtins
    for cls in type(exc).__mro__:
        if getattr(builtins, cls.__name__, None) is cls and issubclass(cls, Exception):
            return cls.__name__
    return "Exception"

_MAX_FRAME = 64 * 2**20

def _send(fd, obj, write):
    data = json.dumps(obj).encode("utf-8", "surrogatepass")
    data = len(data).to_bytes(8, "big") + data
    while data:
        data = data[write(fd, data):]

def _recv(fd, read):
    def exactly(n):
        buf = b""
        while len(buf) < n:
            chunk = read(fd, min(n - len(buf), 1 << 20))
            if not chunk:
                return None
            buf += chunk
        return buf
    head = exactly(8)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if n > _MAX_FRAME:
        raise _NotPlain(f"a message of {n} bytes")
    data = exactly(n)
    if data is None:
        return None
    return json.loads(data.decode("utf-8", "surrogatepass"))
"""

# The untrusted side: runs prompt + completion + suffix (no test) under the guard, then answers calls of the entry
# point with plain data. It decides nothing: whatever it sends is only data that the checker decodes and judges.
_SERVER = r"""
import os, sys, json, gc, signal, _signal, _thread, _posixsubprocess
""" + _GUARD + _CODEC + r"""
def _serve(read=os.read, write=os.write, exit_=os._exit, dup=os.dup, dup2=os.dup2):
    pin, pout = dup(0), dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    dup2(null, 0)
    dup2(2, 1)  # what the program prints goes to stderr, not into the answers
    job = _recv(pin, read)
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(job["program"])
    entry = job["entry_point"]
    del job
    _install_guard()
    import builtins
    g = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(open("program.py", encoding="utf-8").read(), "program.py", "exec"), g)
        fn = g[entry]
    except BaseException as exc:
        _send(pout, ["error", type(exc).__name__, str(exc)[:300]], write)
        exit_(1)
    _send(pout, ["ready"], write)
    while True:
        request = _recv(pin, read)
        if request is None:
            exit_(0)
        args, kwargs = _dec(request[0]), _dec(request[1])
        try:
            value = fn(*args, **kwargs)
        except Exception as exc:
            _send(pout, ["raise", _builtin_exception_name(exc), str(exc)[:300]], write)
            continue
        except BaseException as exc:  # SystemExit, KeyboardInterrupt: the program ends, as it would in-process
            _send(pout, ["fatal", type(exc).__name__, str(exc)[:300]], write)
            exit_(1)
        try:
            answer = ["ok", _enc(value)]
        except (_NotPlain, RecursionError, ValueError) as exc:
            answer = ["notplain", str(exc)[:200] if isinstance(exc, _NotPlain) else type(exc).__name__]
        _send(pout, answer, write)
_serve()
"""

# The trusted side: the task's test and check(candidate), run in its own process (never the program's). The
# namespace is that of the canonical program (the dataset's, trusted) so that helpers the test uses exist;
# candidate is a proxy that sends the arguments to the server and returns the decoded answer.
_CHECKER = r"""
import os, sys, json, builtins
""" + _CODEC + r"""
def _main():
    to_server, from_server = int(sys.argv[1]), int(sys.argv[2])
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    report = {"passed": False, "status": "", "not_plain": False}
    state = {"dead": None}
    def finish(passed, status):
        report["passed"], report["status"] = passed, status
        os.write(1, json.dumps(report).encode())
        os._exit(0)
    try:
        _send(to_server, {"program": job["program"], "entry_point": job["entry_point"]}, os.write)
        hello = _recv(from_server, os.read)
    except Exception as exc:
        finish(False, f"failed: the program's process did not answer ({type(exc).__name__})")
    if hello is None or hello[:1] != ["ready"]:
        if isinstance(hello, list) and hello[:1] == ["error"] and len(hello) == 3:
            finish(False, f"failed: {str(hello[1])[:80]}: {str(hello[2])[:200]}")
        finish(False, "failed: the program ended before it could be called")

    def call(args, kwargs):
        if state["dead"]:
            raise RuntimeError(state["dead"])
        try:
            request = [_enc(args), _enc(kwargs)]
        except (_NotPlain, RecursionError) as exc:
            report["not_plain"] = True
            state["dead"] = f"the check passes what is not plain data to the candidate: {exc}"
            raise RuntimeError(state["dead"])
        try:
            _send(to_server, request, os.write)
            answer = _recv(from_server, os.read)
        except (OSError, ValueError, _NotPlain) as exc:
            answer = None
        if type(answer) is not list or not answer or type(answer[0]) is not str:
            state["dead"] = "the program ended during a call"
            raise RuntimeError(state["dead"])
        kind = answer[0]
        if kind == "ok" and len(answer) == 2:
            try:
                return _dec(answer[1])
            except (_NotPlain, RecursionError, ValueError, TypeError, OverflowError) as exc:
                state["dead"] = f"the program answered with something that is not plain data ({exc})"
                raise RuntimeError(state["dead"])
        if kind == "raise" and len(answer) == 3 and type(answer[1]) is str and type(answer[2]) is str:
            cls = getattr(builtins, answer[1], None)
            if not (isinstance(cls, type) and issubclass(cls, Exception)):
                cls = Exception
            raise cls(answer[2])
        if kind == "notplain":
            report["not_plain"] = True
            state["dead"] = f"the candidate's result is refused: {str(answer[1:2])[2:-2][:200]}"
        elif kind == "fatal" and len(answer) == 3:
            state["dead"] = f"{str(answer[1])[:80]}: {str(answer[2])[:200]}"
        else:
            state["dead"] = "the program answered out of protocol"
        raise RuntimeError(state["dead"])

    entry = job["entry_point"]
    def candidate(*args, **kwargs):
        return call(args, kwargs)
    candidate.__name__ = candidate.__qualname__ = entry
    ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if job["trusted_program"]:
            exec(compile(job["trusted_program"], "canonical.py", "exec"), ns)
        exec(compile(job["test"], "test.py", "exec"), ns)
        ns[entry] = candidate
        ns["check"](candidate)
    except BaseException as exc:
        if state["dead"]:
            finish(False, f"failed: {state['dead']}")
        finish(False, f"failed: {type(exc).__name__}: {str(exc)[:300]}")
    if state["dead"]:  # a broken call the check swallowed still fails, as a dead program would in-process
        finish(False, f"failed: {state['dead']}")
    finish(True, "passed")
_main()
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


def namespace_command(argv: list[str], extra_paths: tuple[str, ...] = (), memory_mb: int = 1024) -> list[str]:
    """``argv`` wrapped in bubblewrap: read-only ``/usr`` + Python, tmpfs ``/sandbox`` as cwd, all namespaces new.

    The two tmpfs hold ``memory_mb`` MiB together (``/tmp`` ``SCRATCH_TMP_MB``, ``/sandbox`` the rest): tmpfs
    pages are not counted by ``RLIMIT_AS``, so without a size a program could fill the host's memory."""
    work_bytes = str((memory_mb - SCRATCH_TMP_MB) * 2**20)
    python_dirs = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, os.path.dirname(sys.executable))})
    # tmpfs first: a later mount shadows an earlier one, and a Python (venv) under /tmp must stay visible
    return ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv", "--cap-drop", "ALL",
            "--proc", "/proc", "--dev", "/dev", "--size", str(SCRATCH_TMP_MB * 2**20), "--tmpfs", "/tmp",
            "--size", work_bytes, "--tmpfs", "/sandbox",
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


def _feed_and_wait(proc: subprocess.Popen, data: bytes, timeout: float) -> bool:
    """Write ``data`` to ``proc``'s stdin, close it, wait up to ``timeout`` s; True if it timed out.
    A process that exits before reading its input is no error (its exit says what happened)."""
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return True
    return False


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
        cmd, cwd = namespace_command(argv, extra_paths, memory_mb), None
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
            try:
                timed_out = _feed_and_wait(proc, (nonce + "\n" + json.dumps(files)).encode(), timeout)
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

def _spawn_env(workdir: str | None) -> dict:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    if workdir:
        env.update(HOME=workdir, TMPDIR=workdir)
    return env


def run_checked(problem: dict, completion: str, timeout: float = 3.0, memory_mb: int = 1024) -> ExecResult:
    """The task's check in a trusted process of its own, calling the completed program's entry point in the sandbox.

    The program (``prompt + completion + suffix``, no test) runs as a server of its entry point under the same
    isolation and limits as ``run_program``; ``check(candidate)`` runs in a separate process (not the evaluator,
    not the program's) where ``candidate`` sends the arguments over a pipe and gets back plain data only (numbers,
    strings, bytes, None, bools, lists, tuples, dicts, sets; exact types). The verdict is the checker's: nothing
    the program does to its own interpreter can make a wrong answer pass, and an object with its own ``__eq__``
    never reaches the check. Where a task's check needs more than plain data, ``check_completion`` falls back to
    the in-process check for that task (``task_check_mode``).
    """
    validate_limits(timeout, memory_mb)
    mode, _ = isolation_mode()
    cpu = int(timeout) + 1
    death = "" if mode == "namespaces" else _PARENT_DEATH
    server_argv = [sys.executable, "-I", "-S", "-B", "-c", limits_prologue(memory_mb, cpu) + death + _SERVER]
    checker_argv = [sys.executable, "-I", "-S", "-B", "-c", limits_prologue(memory_mb, cpu) + _PARENT_DEATH + _CHECKER]
    canonical = problem.get("canonical_solution")
    trusted = problem["prompt"] + canonical + problem["suffix"] if isinstance(canonical, str) else ""
    job = {"program": problem["prompt"] + completion + problem["suffix"], "entry_point": problem["entry_point"],
           "test": problem["test"], "trusted_program": trusted}
    server_dir = tempfile.mkdtemp(prefix="asarm-exec-") if mode != "namespaces" else None
    checker_dir = tempfile.mkdtemp(prefix="asarm-exec-")
    to_server_r, to_server_w = os.pipe()
    from_server_r, from_server_w = os.pipe()
    procs = []
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
                tempfile.TemporaryFile() as server_err:
            t0 = time.perf_counter()
            cmd = namespace_command(server_argv, memory_mb=memory_mb) if mode == "namespaces" else server_argv
            procs.append(subprocess.Popen(cmd, cwd=server_dir, env=_spawn_env(server_dir), stdin=to_server_r,
                                          stdout=from_server_w, stderr=server_err, close_fds=True,
                                          start_new_session=True))
            checker = subprocess.Popen(checker_argv + [str(to_server_w), str(from_server_r)], cwd=checker_dir,
                                       env=_spawn_env(checker_dir), stdin=subprocess.PIPE, stdout=out, stderr=err,
                                       pass_fds=(to_server_w, from_server_r), start_new_session=True)
            procs.append(checker)
            for fd in (to_server_r, to_server_w, from_server_r, from_server_w):
                os.close(fd)
            to_server_r = to_server_w = from_server_r = from_server_w = -1
            timed_out = _feed_and_wait(checker, json.dumps(job).encode(), timeout)
            seconds = time.perf_counter() - t0
            for proc in procs:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
            procs = []
            if timed_out:
                return ExecResult(False, "timed out", seconds, OUT_OF_PROCESS)
            out.seek(0)
            try:
                report = json.loads(out.read(1 << 20).decode("utf-8", "replace"))
            except ValueError:
                err.seek(0)
                tail = [ln for ln in err.read()[-2000:].decode("utf-8", "replace").splitlines() if ln.strip()]
                why = tail[-1][:200] if tail else f"the checker died (exit status {checker.returncode})"
                return ExecResult(False, f"failed: {why}", seconds, OUT_OF_PROCESS)
            return ExecResult(bool(report["passed"]), str(report["status"]), seconds, OUT_OF_PROCESS)
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        for fd in (to_server_r, to_server_w, from_server_r, from_server_w):
            if fd >= 0:
                os.close(fd)
        for d in (server_dir, checker_dir):
            if d:
                shutil.rmtree(d, ignore_errors=True)


_TASK_MODES: dict[str, str] = {}
_TASK_MODES_LOCK = threading.Lock()


def _task_key(problem: dict) -> str:
    fields = [problem.get(k) for k in ("prompt", "suffix", "test", "entry_point", "canonical_solution")]
    return hashlib.sha256(json.dumps(fields).encode("utf-8", "surrogatepass")).hexdigest()


def task_check_mode(problem: dict, timeout: float = 3.0, memory_mb: int = 1024,
                    canonical_result: ExecResult | None = None) -> str:
    """``"out-of-process"`` when the task's canonical solution passes ``run_checked`` (its check works on plain
    data), else ``"in-process"`` (cached per task). Without a canonical solution: ``"out-of-process"``."""
    if not isinstance(problem.get("canonical_solution"), str):
        return OUT_OF_PROCESS
    key = _task_key(problem)
    with _TASK_MODES_LOCK:
        if key in _TASK_MODES:
            return _TASK_MODES[key]
    result = canonical_result or run_checked(problem, problem["canonical_solution"], timeout, memory_mb)
    mode = OUT_OF_PROCESS if result.passed else IN_PROCESS
    with _TASK_MODES_LOCK:
        _TASK_MODES.setdefault(key, mode)
        return _TASK_MODES[key]


@dataclass
class ExecResult:
    """Outcome of one program: ``passed``; ``status`` is "passed", "timed out" or "failed: <why>"."""

    passed: bool
    status: str
    seconds: float
    check: str = "in-process"  # where the verdict was decided: OUT_OF_PROCESS or IN_PROCESS (the program's own)


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
                     official: bool = False, checks: str = "auto") -> ExecResult:
    """Run one HumanEval(-infilling) problem with ``completion`` in the middle.

    ``checks="auto"``: ``run_checked`` (the check outside the program); where it fails and the task's
    canonical solution does not pass that way either (its check needs more than plain data:
    ``task_check_mode``), the in-process check of ``run_program`` decides, marked ``check="in-process"``.
    ``"out-of-process"`` / ``"in-process"`` force one way.
    """
    if official:
        return run_official(problem, completion, timeout, memory_mb)
    if checks not in ("auto", OUT_OF_PROCESS, IN_PROCESS):
        raise ValueError(f"checks must be auto, {OUT_OF_PROCESS} or {IN_PROCESS}, not {checks!r}")
    if checks != IN_PROCESS:
        result = run_checked(problem, completion, timeout, memory_mb)
        if result.passed or checks == OUT_OF_PROCESS:
            return result
        same = completion == problem.get("canonical_solution")
        if task_check_mode(problem, timeout, memory_mb, result if same else None) == OUT_OF_PROCESS:
            return result
    program = build_program(problem["prompt"], completion, problem["suffix"], problem["test"], problem["entry_point"])
    result = run_program(program, timeout, memory_mb)
    result.check = IN_PROCESS
    return result


def check_many(jobs: list[tuple[dict, str]], timeout: float = 3.0, memory_mb: int = 1024, workers: int | None = None,
               official: bool = False, checks: str = "auto") -> list[ExecResult]:
    """``check_completion`` for many ``(problem, completion)`` pairs, ``workers`` processes at a time, in order."""
    workers = workers or max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: check_completion(job[0], job[1], timeout, memory_mb, official,
                                                                    checks), jobs))
