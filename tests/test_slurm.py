"""The real launcher under a real one-node Slurm (see ../shared/design/slurm-local.md).

Needs root and the Debian packages slurm-wlm and munge (CI installs them with
.ci/system-deps.sh); skips with the reason otherwise.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

# slow: a real one-node Slurm
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "srun", "scontrol", "munged")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to start munged/slurmctld/slurmd"
    missing = [t for t in TOOLS if not shutil.which(t) and not os.path.exists(f"/usr/sbin/{t}")]
    if missing:
        return f"Slurm/munge not installed (missing {', '.join(missing)}); run .ci/system-deps.sh"
    return None


def _tool(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _wait(predicate, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_munge() -> bool:
    """Start munged unless one is already answering (one key, shared by every Slurm user on the machine).

    Returns True when this call started it."""
    if subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0:
        return False
    for d in ("/etc/munge", "/run/munge", "/var/lib/munge", "/var/log/munge"):
        os.makedirs(d, exist_ok=True)
        shutil.chown(d, "munge", "munge")
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    shutil.chown(key, "munge", "munge")
    key.chmod(0o400)
    subprocess.run([_tool("munged"), "--force"], check=True, capture_output=True)
    _wait(lambda: subprocess.run(["sh", "-c", "munge -n | unmunge"], capture_output=True).returncode == 0, 20, "munge")
    return True


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node cluster in a temporary directory; yields the environment for sbatch/squeue."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    started_munge = _start_munge()
    d = tmp_path_factory.mktemp("slurm")
    host = socket.gethostname()
    mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.8)
    port = 6817 + os.getpid() % 1000 * 2
    (d / "state").mkdir()
    (d / "spool").mkdir()
    conf = d / "slurm.conf"
    conf.write_text(f"""ClusterName=asarmtest
SlurmctldHost={host}
SlurmctldPort={port}
SlurmdPort={port + 1}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AuthType=auth/munge
AuthInfo=cred_expire=10
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    subprocess.run([_tool("slurmctld"), "-f", str(conf)], env=env, check=True)
    subprocess.run([_tool("slurmd"), "-f", str(conf)], env=env, check=True)
    try:
        _wait(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True,
                                               text=True).stdout, 60, "the Slurm node to become idle")
        yield env
    finally:
        pid_files = [d / "slurmd.pid", d / "slurmctld.pid"] + ([Path("/run/munge/munged.pid")] if started_munge else [])
        for pid_file in pid_files:
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (OSError, ValueError):
                pass


def test_sbatch_launcher_trains_with_two_tasks(slurm, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        dataset="stdlib", eval_docs=10, seq_len=32, init="fresh", tokenizer="local", local_vocab_size=600,
        model_config=dict(d_model=32, n_layer=2, n_head=2, d_inner=64), rate_warmup_steps=4, batch_size=4,
        grad_accum=1, lr=1e-3, scale_lr=False, warmup_steps=2, max_steps=4, cpu=True, save_steps=2, log_steps=1,
        eval_steps=0, eval_rates=[0.5], eval_batches=1, sample_rows=1, sample_rate=0.5, progress=False)))
    run = tmp_path / "run"
    log = tmp_path / "job.out"
    env = {**slurm, "CONFIG": str(config), "OUTPUT_DIR": str(run), "PYTHON": shutil.which("python3") or "python3",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["sbatch", "--parsable", "-n", "2", "--cpus-per-task=1", "--time=10", f"--output={log}",
                          "_run_training.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]

    def finished():
        q = subprocess.run(["squeue", "-h", "-j", job], env=slurm, capture_output=True, text=True)
        return job not in q.stdout

    try:
        _wait(finished, 240, f"job {job}")
    finally:
        subprocess.run(["scancel", job], env=slurm, capture_output=True)
    text = log.read_text() if log.exists() else "(no job output)"
    assert "2 process(es)" in text or "1 node(s) x 2" in text, text[-3000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 4, text[-3000:]
    assert status["world_size"] == 2 and status["ranks_identical"], status
    assert (run / "checkpoints" / "step_00000004" / "model.safetensors").is_file()
    assert (run / "model" / "config.json").is_file()
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(r)["kind"] == "train"]
    assert steps == [1, 2, 3, 4]


def test_sigterm_under_slurm_saves_requeues_and_resumes(slurm, tmp_path):
    """Preemption / time limit: SIGTERM to the job steps -> checkpoint, clean exit, requeue, resume, finish."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(dict(
        dataset="stdlib", eval_docs=10, seq_len=32, init="fresh", tokenizer="local", local_vocab_size=600,
        model_config=dict(d_model=32, n_layer=2, n_head=2, d_inner=64), batch_size=8, grad_accum=1, lr=1e-3,
        scale_lr=False, warmup_steps=2, max_steps=200, cpu=True, save_steps=1000, log_steps=1, eval_steps=0,
        eval_rates=[0.5], eval_batches=1, sample_rows=1, sample_rate=0.5, progress=False)))
    run = tmp_path / "run"
    log = tmp_path / "job.out"
    env = {**slurm, "CONFIG": str(config), "OUTPUT_DIR": str(run), "PYTHON": shutil.which("python3") or "python3",
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(["sbatch", "--parsable", "-n", "2", "--cpus-per-task=1", "--time=10", f"--output={log}",
                          "--open-mode=append", "_run_training.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    job = out.stdout.strip().split(";")[0]
    metrics = run / "metrics.jsonl"
    try:
        _wait(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, 120, "the first steps")
        subprocess.run(["scancel", "--signal=TERM", job], env=slurm, check=True)
        _wait(lambda: (run / "checkpoints" / "latest").exists(), 60, "the SIGTERM checkpoint")
        interrupted_at = int((run / "checkpoints" / "latest").read_text().split("_")[1])
        assert 3 <= interrupted_at < 200
        _wait(lambda: job not in subprocess.run(["squeue", "-h", "-j", job], env=slurm, capture_output=True,
                                                text=True).stdout, 240, f"job {job} to be requeued, resume and finish")
    finally:
        subprocess.run(["scancel", job], env=slurm, capture_output=True)
    text = log.read_text() if log.exists() else "(no job output)"
    assert "requeueing job" in text and f"resuming at step {interrupted_at}" in text, text[-4000:]
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "done" and status["step"] == 200 and status["ranks_identical"], text[-4000:]
    steps = sorted(json.loads(r)["step"] for r in metrics.read_text().splitlines() if json.loads(r)["kind"] == "train")
    assert steps == list(range(1, 201))
