#!/usr/bin/env bash
# Train an AS-ARM: `bash _run_training.sh` on a workstation, `sbatch _run_training.sh` on a Slurm cluster.
#
#   bash _run_training.sh                                     # configs/openwebtext.yaml, every local GPU
#   CONFIG=configs/tiny_cpu.yaml OUTPUT_DIR=runs/tiny bash _run_training.sh --max_steps 50
#   sbatch --gpus-per-node=4 _run_training.sh                 # one node, 4 GPUs (from the repository, or set ASARM_REPO)
#   sbatch --nodes=2 --gpus-per-node=8 _run_training.sh       # two nodes
#   sbatch -n 2 --cpus-per-task=1 --export=ALL,CONFIG=configs/tiny_cpu.yaml _run_training.sh   # 2 CPU processes
#
# Every setting is an environment variable (`--help` lists them with their defaults); `--key value`
# arguments are passed to `asarm train` as config overrides. A failed start (offline, a bad option) ends with
# the trainer's one-line error and its exit status (2: a user error).
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

REPO="${ASARM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
[ -f "$REPO/asarm/cli.py" ] || REPO="${ASARM_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"  # sbatch runs a copy of the script
[ -f "$REPO/asarm/cli.py" ] || { echo "_run_training.sh: '$REPO' is not the asarm repository;" \
  "set ASARM_REPO=/path/to/asarm" >&2; exit 2; }
source "$REPO/scripts/launcher.sh"
launcher_train_args "$0" "$@"  # --help: usage and variables, nothing started; stray arguments refused
cd "$REPO"
CONFIG=${CONFIG:-configs/openwebtext.yaml}  # the recipe (YAML; relative to the repository)
OUTPUT_DIR=${OUTPUT_DIR:-}  # run directory (empty: the recipe's output_dir)
DATASET=${DATASET:-}  # overrides the recipe's dataset
INIT=${INIT:-}  # overrides the recipe's init
RESUME=${RESUME:-auto}  # auto: continue OUTPUT_DIR's latest checkpoint if any; true; false
NPROC_PER_NODE=${NPROC_PER_NODE:-}  # processes per node (empty: GPUs on the node, else Slurm tasks per node, else 1)
MASTER_PORT=${MASTER_PORT:-}  # rendezvous port (empty: 29517; under Slurm 20000 + job id % 20000)
REQUEUE=${REQUEUE:-1}  # under sbatch: requeue the job after the checkpoint of a SIGTERM
[ -f "$CONFIG" ] || { echo "_run_training.sh: config file '$CONFIG' not found" >&2; exit 2; }
[ -n "$OUTPUT_DIR" ] || OUTPUT_DIR="$("$PYTHON" -m asarm.train_config "$CONFIG" output_dir)" || exit 2
export CONFIG OUTPUT_DIR

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
  if [ "$state" = interrupted ] && [ "$REQUEUE" = 1 ]; then
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
ARGS=(--config "$CONFIG" --output_dir "$OUTPUT_DIR" --resume "$RESUME")
[ -n "$DATASET" ] && ARGS+=(--dataset "$DATASET")
[ -n "$INIT" ] && ARGS+=(--init "$INIT")
# torchrun, minus its ChildFailedError traceback: a failed process's own one-line error is the message
exec "$PYTHON" -m asarm.launch --nnodes="$NNODES" --node_rank="$NODE_RANK" --nproc_per_node="$NPROC_PER_NODE" \
  --master_addr="$MASTER_ADDR" --master_port="$MASTER_PORT" -m asarm train "${ARGS[@]}" "$@"
