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
    # forgeries of the in-process notary (issue 20): decided outside the program, they are only wrong answers
    "patched sys._getframe": "    import sys\n    real = sys._getframe\n"
                             "    sys._getframe = lambda depth=0: real(depth + 1)\n    return a - b\n",
    "own audit hook": "    import sys\n    sys.addaudithook(lambda e, a: None)\n    sys.audit('asarm.finished')\n"
                      "    return a - b\n",
    "fresh _signal handler": "    import _signal\n    try:\n        _signal.signal(14, lambda s, f: None)\n"
                             "    except Exception:\n        pass\n    return a - b\n",
    "report written to every fd": "    import os, json\n    for fd in range(64):\n        try:\n"
                                  "            os.write(fd, json.dumps({{'passed': True}}).encode())\n"
                                  "        except Exception:\n            pass\n    return a - b\n",
    "always-equal object": "    class E:\n        def __eq__(self, other):\n            return True\n"
                           "    return E()\n",
    "always-equal int subclass": "    class I(int):\n        def __eq__(self, other):\n            return True\n"
                                 "    return I(0)\n",
    "answers forged on the protocol fd": "    import os, json\n    frame = json.dumps(['ok', ['i', '5']]).encode()\n"
                                         "    for fd in range(3, 16):\n        try:\n"
                                         "            os.write(fd, len(frame).to_bytes(8, 'big') + frame)\n"
                                         "        except Exception:\n            pass\n    return a - b\n",
}

# forgeries that only the out-of-process check stops (the in-process fallback is the notary's word)
IN_PROCESS_BLIND = {"always-equal object", "always-equal int subclass", "patched sys._getframe", "own audit hook",
                    "fresh _signal handler", "report written to every fd", "answers forged on the protocol fd"}


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


@pytest.mark.parametrize("checks", ["auto", "in-process"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_fail_and_leave_files_alone(name, checks, tmp_path, isolation):
    if isolation == "guard" and name in GUARD_BLIND:
        pytest.skip(f"{name}: the in-process guard cannot resolve dir_fd paths of os.open (namespaces do)")
    if checks == "in-process" and name in IN_PROCESS_BLIND:
        pytest.skip(f"{name}: only the check outside the program stops it")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    code = HOSTILE[name].format(victim=victim, victim_file=victim / "data.txt")
    t0 = time.time()
    result = check_completion(PROBLEM, code, timeout=2.0, memory_mb=512, checks=checks)
    assert not result.passed, result
    assert result.check == checks if checks != "auto" else result.check == "out-of-process"
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


# ---------------------------------------------------------------- checks outside the program (issue 20)
def _toy(test: str, canonical: str, prompt: str = "def f(g, x):\n") -> dict:
    return {"task_id": "toy/callable", "entry_point": "f", "prompt": prompt, "suffix": "",
            "canonical_solution": canonical, "test": test}


def test_plain_data_round_trips_and_builtin_exceptions_reach_the_check():
    """Every plain type comes back equal (big ints, nan-free floats, bytes, nested containers); an exception
    of the candidate is raised in the checker as the builtin type (a subclass as its builtin base)."""
    value = ("[None, True, 2**200, -7, 1.5, 1e308, 2j, 'é\\\\ud800', b'\\\\x00\\\\xff', (1, [2]), {'k': {3, 4}}, "
             "frozenset({5}), {}, set(), ()]")
    problem = _toy(f"def check(candidate):\n    assert candidate(None, 0) == {value}\n"
                   "    try:\n        candidate(None, 1)\n"
                   "    except KeyError as e:\n        assert 'missing' in str(e)\n"
                   "    else:\n        raise AssertionError('no KeyError')\n",
                   f"    if x:\n        class Missing(KeyError):\n            pass\n        raise Missing('missing')\n"
                   f"    return {value}\n")
    result = check_completion(problem, problem["canonical_solution"], checks="out-of-process")
    assert result.passed and result.check == "out-of-process", result


@pytest.mark.parametrize("kind", ["callable argument", "object result", "mutated argument"])
def test_checks_that_need_more_than_plain_data_fall_back_in_process(kind):
    """The task's canonical solution fails outside the program, so the in-process check decides (marked)."""
    cases = {
        "callable argument": ("def check(candidate):\n    assert candidate(lambda v: v + 1, 2) == 3\n",
                              "    return g(x)\n", "    return x\n"),
        "object result": ("def check(candidate):\n    assert list(candidate(None, 3)) == [0, 1, 2]\n",
                          "    return iter(range(x))\n", "    return iter(range(x + 1))\n"),
        "mutated argument": ("def check(candidate):\n    v = [3, 1]\n    candidate(v, 0)\n    assert v == [1, 3]\n",
                             "    g.sort()\n", "    g.append(0)\n"),
    }
    test, right, wrong = cases[kind]
    problem = _toy(test, right)
    assert not check_completion(problem, right, checks="out-of-process").passed
    good, bad = check_completion(problem, right), check_completion(problem, wrong)
    assert good.passed and good.check == "in-process", good
    assert not bad.passed and bad.check == "in-process", bad


def test_helpers_of_the_prompt_are_available_to_the_check():
    """HumanEval/38-style: the test calls a helper the prompt defines (taken from the canonical program)."""
    prompt = "def enc(s):\n    return s[::-1]\n\ndef f(s):\n"
    problem = _toy("def check(candidate):\n    assert candidate(enc('abc')) == 'abc'\n", "    return s[::-1]\n",
                   prompt)
    right = check_completion(problem, "    return s[::-1]\n", checks="out-of-process")
    assert right.passed, right
    assert not check_completion(problem, "    return s\n", checks="out-of-process").passed


def test_out_of_process_verdicts_agree_with_the_in_process_check(shared_data):
    """An agreement corpus on real tasks (the in-process check is the official harness's semantics): the
    canonical middle, an empty-ish one, a wrong constant, another task's middle, the middle less its last line."""
    problems = _problems(shared_data, "random-span-light")[::14]
    jobs = []
    for i, p in enumerate(problems):
        other = problems[(i + 1) % len(problems)]["canonical_solution"]
        lines = p["canonical_solution"].splitlines(keepends=True)
        for c in (p["canonical_solution"], "pass\n", "0", other, "".join(lines[:-1]) if len(lines) > 1 else ""):
            jobs.append((p, c))
    out = check_many(jobs, timeout=10.0, checks="out-of-process")
    ins = check_many(jobs, timeout=10.0, checks="in-process")
    differ = [(p["task_id"], c, o.status, n.status) for (p, c), o, n in zip(jobs, out, ins) if o.passed != n.passed]
    assert not differ, differ[:3]
    assert 0 < sum(o.passed for o in out) < len(jobs)  # a mix, so agreement means something
    assert all(o.check == "out-of-process" for o in out) and all(n.check == "in-process" for n in ins)


def test_the_always_equal_class_fails_every_light_task(shared_data):
    """Every ``return`` of the canonical middle made to return an object equal to anything: all fail (the
    light file's tasks whose middle has a ``return`` line)."""
    problems = _problems(shared_data, "random-span-light")
    eq = "type('E', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False})()"
    jobs = [(p, "".join(ln[:len(ln) - len(ln.lstrip())] + f"return {eq}\n" if ln.strip().startswith("return")
                        else ln for ln in p["canonical_solution"].splitlines(keepends=True))) for p in problems]
    jobs = [(p, c) for p, c in jobs if "return type(" in c]
    assert len(jobs) >= 30
    passed = [p["task_id"] for (p, c), r in zip(jobs, check_many(jobs, timeout=10.0)) if r.passed]
    assert not passed, passed


def test_the_sandbox_disk_is_limited_by_the_memory_limit():
    """tmpfs pages are not in RLIMIT_AS: the working directory and /tmp hold --memory-mb together."""
    if not _namespaces():
        pytest.skip("without namespaces the guard writes into a host folder: no total (docs/executor.md)")
    probe = ("import os\nwritten = 0\nchunk = b'x' * (8 << 20)\ntry:\n    for d in ('.', '/tmp'):\n"
             "        for i in range(40):\n            with open(f'{d}/f{i}', 'wb') as f:\n"
             "                f.write(chunk)\n            written += len(chunk)\nexcept OSError as e:\n"
             "    assert e.errno == 28, e\nassert written <= 256 << 20, written\nassert written >= 128 << 20\n")
    assert run_program(probe, timeout=20, memory_mb=256).passed


def test_attack_samples_score_zero_through_score_samples(shared_data, tmp_path, monkeypatch, capsys):
    """End to end (``asarm infill-code --score-samples``): three forgeries of a wrong answer score pass@1 = 0,
    every verdict decided outside the program; under the guard alone the command refuses untrusted samples
    unless ``--allow-guard``."""
    from asarm.cli import main
    from asarm.evaluation import execution

    data = shared_data / "human-eval-infilling" / FILES["single-line"][0]
    task = next(p for p in _problems(shared_data, "single-line")
                if p["canonical_solution"].strip().startswith("return"))
    indent = task["canonical_solution"][:len(task["canonical_solution"]) - len(task["canonical_solution"].lstrip())]
    attacks = [indent + "return type('E', (), {'__eq__': lambda s, o: True, '__ne__': lambda s, o: False})()\n",
               indent + "__import__('sys').addaudithook(lambda e, a: None); __import__('sys').audit('asarm.finished');"
                        " return None\n",
               indent + "[__import__('os').write(fd, b'{\"passed\": true, \"status\": \"passed\"}') "
                        "for fd in (1, 3, 4, 5)]; return None\n"]
    samples = tmp_path / "attack.jsonl"
    samples.write_text("".join(json.dumps({"task_id": task["task_id"], "completion": c}) + "\n" for c in attacks))
    out = tmp_path / "scored"
    argv = ["infill-code", "--score-samples", str(samples), "--data", str(data), "--no-progress"]
    assert main([*argv, "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert results["pass@1"] == 0
    records = [r for f in out.glob("samples.*.jsonl") for line in f.read_text().splitlines()
               for r in json.loads(line)["records"]]
    assert len(records) == 3 and {r["check"] for r in records} == {"out-of-process"}
    monkeypatch.setenv(execution.ISOLATION_ENV, "guard")
    execution.isolation_mode.cache_clear()
    try:
        capsys.readouterr()
        assert main([*argv, "--output-dir", str(tmp_path / "guard")]) == 2
        err = capsys.readouterr().err
        assert "--allow-guard" in err and "untrusted" in err
        assert main([*argv, "--output-dir", str(tmp_path / "guard"), "--allow-guard"]) == 0
        assert "can still" in capsys.readouterr().err  # the residual risks, said at the start
        assert json.loads((tmp_path / "guard" / "results.json").read_text())["results"]["pass@1"] == 0
    finally:
        execution.isolation_mode.cache_clear()
