"""The isolated code executor: canonical solutions pass, wrong and hostile completions fail, nothing leaks."""

import gzip
import json
import os
import time

import pytest

from asarm.evaluation.execution import build_program, check_completion, check_many, run_program

PROBLEM = {"task_id": "toy/0", "entry_point": "add", "prompt": "def add(a, b):\n", "suffix": "",
           "canonical_solution": "    return a + b\n",
           "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"}


def _single_line(shared_data):
    path = shared_data / "human-eval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_canonical_solutions_pass_all_single_line(shared_data):
    """All 1033 single-line problems, run in parallel isolated processes, pass with their canonical middle."""
    problems = _single_line(shared_data)
    assert len(problems) == 1033
    t0 = time.time()
    results = check_many([(p, p["canonical_solution"]) for p in problems], timeout=10.0,
                         workers=max(4, 2 * (os.cpu_count() or 1)))
    failed = [(p["task_id"], r.status) for p, r in zip(problems, results) if not r.passed]
    assert not failed, failed[:5]
    print(f"1033 canonical programs in {time.time() - t0:.1f} s")


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
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_completions_fail_and_leave_files_alone(name, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("precious")
    code = HOSTILE[name].format(victim=victim, victim_file=victim / "data.txt")
    t0 = time.time()
    result = check_completion(PROBLEM, code, timeout=2.0, memory_mb=512)
    assert not result.passed, result
    assert time.time() - t0 < 15
    assert (victim / "data.txt").read_text() == "precious"
    assert sorted(os.listdir(victim)) == ["data.txt"]
    # the evaluator survives and still works
    assert check_completion(PROBLEM, PROBLEM["canonical_solution"]).passed


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
