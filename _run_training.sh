#!/usr/bin/env bash
# Train an AS-ARM: `bash _run_training.sh` on a workstation, `sbatch _run_training.sh` on a Slurm cluster.
#
#   bash _run_training.sh                                     # configs/openwebtext.yaml, every local GPU
#   CONFIG=configs/tiny_cpu.yaml OUTPUT_DIR=runs/tiny bash _run_training.sh --max_steps 50
#   sbatch --gpus-per-node=4 _run_training.sh                 # one node, 4 GPUs (submit from the repo root)
#   sbatch --nodes=2 --gpus-per-node=8 _run_training.sh       # two nodes
#   sbatch -n 2 --cpus-per-task=1 --export=ALL,CONFIG=configs/tiny_cpu.yaml _run_training.sh   # 2 CPU processes
#
# Variables: CONFIG (YAML, default configs/openwebtext.yaml), OUTPUT_DIR (default: the config's output_dir),
# DATASET, INIT, RESUME (default auto: continue OUTPUT_DIR's latest checkpoint), NPROC_PER_NODE (default: GPUs on
# the node, else Slurm tasks per node, else 1), MASTER_PORT, PYTHON, REQUEUE (default 1). Any `--key value`
# arguments are passed to `asarm train` as config overrides.
#
# Under sbatch the script runs twice: as the batch script, where it starts one copy of itself per node with
# srun, and as that per-node launcher, where torchrun starts NPROC_PER_NODE training processes; rank, world size
# and the main address come from SLURM_*. Slurm sends SIGTERM 120 s before the time limit (and on preemption):
# the trainer saves a checkpoint and exits cleanly, and the batch script requeues the job, which resumes.
#
#SBATCH --job-name=asarm-train
#SBATCH --nodes=1
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%x-%j.out
# GPUs: pass --gpus-per-node=N to sbatch (not set here so that the same file runs on CPU-only partitions).
set -euo pipefail

REPO="${ASARM_REPO:-${SLURM_SUBMIT_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}}"
cd "$REPO"
[ -f asarm/train.py ] || { echo "_run_training.sh: $REPO is not the asarm repository (set ASARM_REPO)" >&2; exit 2; }
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/openwebtext.yaml}"
[ -f "$CONFIG" ] || { echo "_run_training.sh: config file '$CONFIG' not found" >&2; exit 2; }
OUTPUT_DIR="${OUTPUT_DIR:-$("$PYTHON" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("output_dir", "runs/asarm"))' "$CONFIG")}"
export CONFIG OUTPUT_DIR PYTHON

gpus_on_node() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then nvidia-smi -L | wc -l
  else echo 0; fi
}

if [ -n "${SLURM_JOB_ID:-}" ] && [ -z "${ASARM_NODE_LAUNCHER:-}" ]; then
  # ---- batch script (first node): one launcher per node
  NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE="$(gpus_on_node)"
    [ "$NPROC_PER_NODE" -gt 0 ] || NPROC_PER_NODE="${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-$NNODES} / NNODES ))}"
  fi
  MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
  MASTER_PORT="${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}"
  export ASARM_NODE_LAUNCHER=1 NNODES NPROC_PER_NODE MASTER_ADDR MASTER_PORT
  echo "_run_training.sh: job $SLURM_JOB_ID, $NNODES node(s) x $NPROC_PER_NODE process(es), main $MASTER_ADDR:$MASTER_PORT, run $OUTPUT_DIR"
  rc=0
  srun --nodes="$NNODES" --ntasks="$NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 \
    bash "$REPO/_run_training.sh" "$@" || rc=$?
  state="$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$OUTPUT_DIR/status.json" 2>/dev/null || echo unknown)"
  if [ "$state" = interrupted ] && [ "${REQUEUE:-1}" = 1 ]; then
    echo "_run_training.sh: interrupted after a checkpoint; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
  fi
  exit "$rc"
fi

# ---- per-node launcher (srun task, or a workstation)
if [ -n "${SLURM_JOB_ID:-}" ]; then
  NODE_RANK="${SLURM_NODEID:-0}"
else
  NNODES=1 NODE_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT="${MASTER_PORT:-29517}"
  if [ -z "${NPROC_PER_NODE:-}" ]; then NPROC_PER_NODE="$(gpus_on_node)"; [ "$NPROC_PER_NODE" -gt 0 ] || NPROC_PER_NODE=1; fi
fi
if [ "$NPROC_PER_NODE" -gt 1 ] && [ "$(gpus_on_node)" = 0 ]; then
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # several CPU processes: do not oversubscribe the cores
fi
ARGS=(--config "$CONFIG" --output_dir "$OUTPUT_DIR" --resume "${RESUME:-auto}")
[ -n "${DATASET:-}" ] && ARGS+=(--dataset "$DATASET")
[ -n "${INIT:-}" ] && ARGS+=(--init "$INIT")
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m asarm train "${ARGS[@]}" "$@"
