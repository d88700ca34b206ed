"""The isolated code executor: canonical solutions pass, wrong and hostile completions fail, nothing leaks."""

import gzip
import json
import os
import time

import pytest

from asarm.evaluation.execution import build_program, check_completion, check_many, run_program

# slow: the executor's hostile-program corpus and canonical solutions
pytestmark = pytest.mark.slow

PROBLEM = {"task_id": "toy/0", "entry_point": "add", "prompt": "def add(a, b):\n", "suffix": "",
           "canonical_solution": "    return a + b\n",
           "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


FILES = {"single-line": ("HumanEval-SingleLineInfilling.jsonl.gz", 1033),
         "multi-line": ("HumanEval-MultiLineInfilling.jsonl.gz", 5815),
         "random-span": ("HumanEval-RandomSpanInfilling.jsonl.gz", 1640),
         "random-span-light": ("HumanEval-RandomSpanInfillingLight.jsonl.gz", 164)}


def _problems(shared_data, name):
    with gzip.open(shared_data / "human-eval-infilling" / FILES[name][0], "rt") as f:
        return [json.loads(line) for line in f]


# The two large files are checked on every 3rd task of each of the 164 problems (at least one each) to
# keep CI near five minutes; ASARM_ALL_TASKS=1 runs every task, as `benchmarks/code_oracle.py` does through the
# whole text pipeline (100% of the 8652 tasks under the namespaces).
STRIDE = {"multi-line": 3, "random-span": 3}


def _every_nth_per_problem(tasks, n):
    """Every ``n``-th task of each HumanEval problem (task ids ``.../HumanEval/<i>/<span>``), first included."""
    seen = {}
    out = []
    for t in tasks:
        problem = t["task_id"].rsplit("/", 1)[0]
        if seen.get(problem, 0) % n == 0:
            out.append(t)
        seen[problem] = seen.get(problem, 0) + 1
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FILES))
def test_canonical_solutions_pass_every_task_under_the_isolation(shared_data, name):
    """Every task of the four files (every 3rd of the two large ones unless ASARM_ALL_TASKS=1), in
    parallel isolated processes (namespaces where bubblewrap works), passes with its canonical middle:
    the isolation refuses nothing a real solution needs."""
    problems = _problems(shared_data, name)
    assert len(problems) == FILES[name][1]
    if name in STRIDE and os.environ.get("ASARM_ALL_TASKS", "") != "1":
        problems = _every_nth_per_problem(problems, STRIDE[name])
        assert len({p["task_id"].rsplit("/", 1)[0] for p in problems}) == 164  # every problem still checked
    t0 = time.time()
    results = check_many([(p, p["canonical_solution"]) for p in problems], timeout=10.0,
                         workers=max(4, 2 * (os.cpu_count() or 1)))
    failed = [(p["task_id"], r.status) for p, r in zip(problems, results) if not r.passed]
    assert not failed, failed[:5]
    print(f"{len(problems)} canonical programs in {time.time() - t0:.1f} s")


def test_right_and_wrong_completion():
    assert check_completion(PROBLEM, PROBLEM["canonical_solution"]).passed
    wrong = check_completion(PROBLEM, "    return a - b\n")
    assert not wrong.passed and "AssertionError" in wrong.status
    assert not check_completion(PROBLEM, "    return (a +\n").passed  # syntax error


HOSTILE = {
    "infinite loop": "    while True:\n        pass\n",
    "huge allocation": "    x = bytearray(1 << 40)\n    return a + b\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "multiprocessing": "    import multiprocessing as mp\n    mp.Process(target=print).start()\n    return a + b\n",
    "sys.exit(0)": "    import sys\n    sys.exit(0)\n",
    "os._exit(0)": "    import os\n    os._exit(0)\n",
    "raise SystemExit": "    raise SystemExit(0)\n",
    "raise KeyboardInterrupt": "    raise KeyboardInterrupt\n",
    "exit at import": "    return a + b\nimport sys; sys.exit(0)\n",
    "kill the parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b\n",
    "shell": "    import os\n    os.system('rm -rf {victim}')\n    return a + b\n",
    "subprocess": "    import subprocess\n    subprocess.run(['rm', '-rf', '{victim}'])\n    return a + b\n",
    "shutil.rmtree": "    import shutil\n    shutil.rmtree('{victim}')\n    return a + b\n",
    "os.remove": "    import os\n    os.remove('{victim_file}')\n    return a + b\n",
    "pathlib unlink": "    import pathlib\n    pathlib.Path('{victim_file}').unlink()\n    return a + b\n",
    "overwrite": "    open('{victim_file}', 'w').write('pwned')\n    return a + b\n",
    "rename": "    import os\n    os.rename('{victim_file}', 'stolen')\n    return a + b\n",
    "ctypes": "    import ctypes\n    ctypes.CDLL(None).system(b'rm -rf {victim}')\n    return a + b\n",
    # a shell the audit hook does not see, outliving the run (it would write 2 s later)
    "fork_exec under setsid": "    import _posixsubprocess, os\n    r, w = os.pipe()\n"
                              "    _posixsubprocess.fork_exec(['/bin/sh', '-c', 'sleep 2; echo pwned > {victim}/late'],"
                              " [b'/bin/sh'], True, (w,), None, None, -1, -1, -1, -1, -1, -1, r, w, False, True, -1,"
                              " None, None, None, -1, None, False)\n    return a + b\n",
    "dir_fd open": "    import os\n    d = os.open('{victim}', os.O_RDONLY)\n"
                   "    os.close(os.open('new', os.O_CREAT | os.O_WRONLY, dir_fd=d))\n    return a + b\n",
    "dir_fd unlink": "    import os, posix\n    d = os.open('{victim}', os.O_RDONLY)\n    posix.unlink('data.txt', dir_fd=d)\n"
                     "    return a + b\n",
    "dir_fd rename": "    import os, posix\n    d = os.open('{victim}', os.O_RDONLY)\n"
                     "    posix.rename('data.txt', 'moved', src_dir_fd=d, dst_dir_fd=d)\n    return a + b\n",
    "dir_fd mkdir": "    import os\n    d = os.open('{victim}', os.O_RDONLY)\n    os.mkdir('sub', dir_fd=d)\n"
                    "    return a + b\n",
    "sqlite3 outside": "    import sqlite3\n    sqlite3.connect('{victim}/db.sqlite').execute('create table t(x)')\n"
                       "    return a + b\n",
    "mkfifo outside": "    import os\n    os.mkfifo('{victim}/fifo')\n    return a + b\n",
    "chmod via a read-only fd": "    import os, posix\n    posix.chmod(os.open('{victim_file}', os.O_RDONLY), 0)\n"
                                "    return a + b\n",
    # forging success: read the nonce from the wrapper's frames (or memory), print it, exit 0 early
    "nonce from frames": "    import sys, re\n    f, seen = sys._getframe(), []\n    while f is not None:\n"
                         "        seen += [repr(v) for v in f.f_locals.values()]\n"
                         "        seen += [repr(c.cell_contents) for v in f.f_locals.values()"
                         " for c in (getattr(v, '__closure__', None) or ()) ]\n        f = f.f_back\n"
                         "    for t in re.findall(r'[0-9a-f]{{32}}', ' '.join(seen)):\n"
                         "        sys.stdout.write('\\n' + t)\n    sys.stdout.flush()\n"
                         "    sys.modules['__main__']._guarded_main.__defaults__[1](0)\n",
    "nonce from /proc/self/mem": "    import re, sys\n    mem, found = open('/proc/self/mem', 'rb'), set()\n"
                                 "    for line in open('/proc/self/maps'):\n        lo, hi = (int(x, 16) for x in line.split()[0].split('-'))\n"
                                 "        if 'rw' in line.split()[1] and hi - lo < 1 << 26:\n            try:\n"
                                 "                mem.seek(lo); found |= set(re.findall(rb'[0-9a-f]{{32}}', mem.read(hi - lo)))\n"
                                 "            except OSError:\n                pass\n"
                                 "    sys.stdout.write(''.join('\\n' + t.decode() for t in found)); sys.stdout.flush()\n"
                                 "    sys.modules['__main__']._guarded_main.__defaults__[1](0)\n",
    "nonce via gc": "    import gc, re, sys\n    for o in gc.get_objects():\n        pass\n    return a - b\n",
    "nonce via a signal frame": "    import signal\n    signal.signal(signal.SIGALRM, lambda s, f: None)\n    return a - b\n",
    "reimport posix for _exit": "    import sys, importlib\n    del sys.modules['posix']\n    import posix\n"
                                "    print(); posix._exit(0)\n",
}


# what the in-process guard alone cannot see (docs/evaluations.md, code execution): namespaces stop these
GUARD_BLIND = {"dir_fd open"}


@pytest.fixture(params=["auto", "guard"])
def isolation(request, monkeypatch):
    """Each hostile program runs with namespaces (where bubblewrap works) and under the guard alone."""
    from asarm.evaluation import execution

    monkeypatch.setenv(execution.ISOLATION_ENV, request.param)
    execution.isolation_mode.cache_clear()
    yield execution.isolation_mode()[0]
    execution.isolation_mode.cache_clear()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_fail_and_leave_files_alone(name, tmp_path, isolation):
    if isolation == "guard" and name in GUARD_BLIND:
        pytest.skip(f"{name}: the in-process guard cannot resolve dir_fd paths of os.open (namespaces do)")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    code = HOSTILE[name].format(victim=victim, victim_file=victim / "data.txt")
    t0 = time.time()
    result = check_completion(PROBLEM, code, timeout=2.0, memory_mb=512)
    assert not result.passed, result
    assert time.time() - t0 < 15
    if name == "fork_exec under setsid":
        time.sleep(3)  # a survivor would write victim/late now
    assert (victim / "data.txt").read_text() == "precious"
    assert sorted(os.listdir(victim)) == ["data.txt"]
    assert os.stat(victim / "data.txt").st_mode & 0o777 != 0
    # the evaluator survives and still works
    assert check_completion(PROBLEM, PROBLEM["canonical_solution"]).passed


def _namespaces() -> bool:
    from asarm.evaluation.execution import isolation_mode

    return isolation_mode()[0] == "namespaces"


def test_isolation_uses_namespaces_where_bubblewrap_works():
    """CI installs bubblewrap (.ci/system-deps.sh): there the namespaces must be in use, not the fallback."""
    import shutil

    if os.environ.get("CI") and shutil.which("bwrap"):
        assert _namespaces()


# Probe programs pass only if the attack FAILED (the assertion at their end is the check).
SECRET_PROBES = {
    "parent environ": "import os\ntry:\n    data = open(f'/proc/{{os.getppid()}}/environ', 'rb').read()\n"
                      "except Exception:\n    data = b''\nassert b'ASARM_SECRET_FOR_TEST' not in data\n",
    "any process environ": "import os\nfound = b''\ntry:\n    for p in os.listdir('/proc'):\n"
                           "        try:\n            found += open(f'/proc/{{p}}/environ', 'rb').read()\n"
                           "        except Exception:\n            pass\nexcept Exception:\n    pass\n"
                           "assert b'ASARM_SECRET_FOR_TEST' not in found\n",
    "network": "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=1)\n    ok = True\n"
               "except Exception:\n    ok = False\nassert not ok\n",
}


@pytest.mark.parametrize("name", sorted(SECRET_PROBES))
def test_no_secret_or_network_reaches_the_program(name):
    os.environ["ASARM_SECRET_FOR_TEST"] = "hunter2"
    try:
        assert run_program(SECRET_PROBES[name].format()).passed
    finally:
        del os.environ["ASARM_SECRET_FOR_TEST"]


def test_private_files_of_the_same_user_are_unreadable(tmp_path):
    if not _namespaces():
        pytest.skip("the in-process guard alone cannot hide files of the same user (docs/evaluations.md: code execution)")
    secret = tmp_path / "token"
    secret.write_text("hunter2")
    secret.chmod(0o600)
    probe = f"try:\n    data = open({str(secret)!r}).read()\nexcept Exception:\n    data = ''\nassert data == ''\n"
    assert run_program(probe).passed
    home = os.path.expanduser("~")
    assert run_program(f"import os\nassert not os.path.exists({home!r}) or os.listdir({home!r}) == [] "
                       f"or {home!r} in ('/', '/root') and 'secret.txt' not in os.listdir({home!r})\n").passed


def test_programs_die_with_the_evaluator_and_leave_no_folder(tmp_path):
    """SIGKILL the evaluator mid-run: its program must not outlive it, and no asarm-exec-* folder stays."""
    import signal
    import subprocess
    import sys

    tmp = tmp_path / "evaluator-tmp"
    tmp.mkdir()
    code = ("from asarm.evaluation.execution import run_program\n"
            "run_program('import time\\nwhile True:\\n    time.sleep(0.05)\\n', timeout=60)\n")
    evaluator = subprocess.Popen([sys.executable, "-c", code], cwd=os.getcwd(), env={**os.environ, "TMPDIR": str(tmp)})

    def descendants(root: int) -> set[int]:
        children: dict[int, list[int]] = {}
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(pid))
        out, todo = set(), [root]
        while todo:
            for c in children.get(todo.pop(), []):
                out.add(c)
                todo.append(c)
        return out

    def alive(pids):
        live = set()
        for pid in pids:
            try:
                if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
                    live.add(pid)
            except OSError:
                pass
        return live

    deadline = time.time() + 20
    while len(descendants(evaluator.pid)) < 2 and time.time() < deadline:  # bwrap (or python) and the program
        time.sleep(0.1)
    time.sleep(0.5)
    programs = descendants(evaluator.pid)
    assert programs, "the program never started"
    evaluator.send_signal(signal.SIGKILL)
    evaluator.wait()
    deadline = time.time() + 10
    while alive(programs) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(programs)
    if _namespaces():  # nothing was written on the host (the guard-only fallback leaves its folder: README)
        assert os.listdir(tmp) == []


@pytest.mark.parametrize("timeout,memory_mb", [(0, 512), (-1, 512), (float("nan"), 512), (3, 1), (3, 64)])
def test_nonsense_limits_are_refused(timeout, memory_mb):
    with pytest.raises(ValueError, match="timeout|memory"):
        check_completion(PROBLEM, PROBLEM["canonical_solution"], timeout=timeout, memory_mb=memory_mb)


def test_program_sees_none_of_the_evaluator():
    os.environ["ASARM_SECRET_FOR_TEST"] = "x"
    try:
        probe = "import os, sys\nassert 'ASARM_SECRET_FOR_TEST' not in os.environ\nassert 'asarm' not in sys.modules\n" \
                "assert os.listdir('.') == [] or set(os.listdir('.')) <= {'program.py', '.stdout', '.stderr'}\n"
        assert run_program(probe).passed
    finally:
        del os.environ["ASARM_SECRET_FOR_TEST"]


def test_build_program_matches_official_layout():
    assert build_program("P", "C", "S", "T", "f") == "PCS\nT\ncheck(f)"
