#!/usr/bin/env bash
#SBATCH --job-name=asarm-infill-code
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
# HumanEval-infilling (paper, sec. 6): generate the masked middle, run the unit tests in isolated processes,
# under the paper's protocol by default (k 10, only <mask> banned, whole prompt and suffix, each part encoded
# on its own; the paper's two decoding bugs are not reproduced). PROTOCOL=asarm for asarm's defaults.
#   bash _run_code_infill_eval.sh                                 # single-line, pass@1
#   BENCHMARK=multi-line NUM_SAMPLES=10 sbatch --array=0-15 _run_code_infill_eval.sh
#   METHOD=canonical bash _run_code_infill_eval.sh                # harness self-check: 100% expected
#   METHOD=oracle PROTOCOL=asarm bash _run_code_infill_eval.sh    # tokenizer round trip self-check: 100% expected
set -euo pipefail
REPO="${ASARM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
[ -f "$REPO/asarm/cli.py" ] || REPO="${ASARM_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"  # sbatch runs a copy of the script
[ -f "$REPO/asarm/cli.py" ] || { echo "$(basename "$0"): '$REPO' is not the asarm repository;" \
  "set ASARM_REPO=/path/to/asarm" >&2; exit 2; }
source "$REPO/scripts/launcher.sh"
launcher_eval_args "$0" "$@"  # --help: usage and variables, nothing started
cd "$REPO"
source scripts/eval_launch.sh

MODEL=${MODEL:-therealgabeguo/ASARM}  # local directory, hub id, or tiny (a small random model, offline)
REVISION=${REVISION:-code}  # hub revision of MODEL
TOKENIZER=${TOKENIZER:-}  # tokenizer directory or hub id (empty: the model's; self-checks: the offline one)
BENCHMARK=${BENCHMARK:-single-line}  # single-line, multi-line, random-span or random-span-light
DATA_DIR=${DATA_DIR:-${ASARM_EVAL_DATA:-eval_datasets}/human-eval-infilling}  # folder of the HumanEval-infilling files
METHOD=${METHOD:-assd}  # sequential, assd, ngram; oracle or canonical: self-checks (no model)
NUM_SAMPLES=${NUM_SAMPLES:-1}  # samples per task (n of pass@k)
PROTOCOL=${PROTOCOL:-paper}  # paper (the paper's released code) or asarm
K=${K:-}  # empty: the protocol's (paper 10, asarm 5)
TEMPERATURE=${TEMPERATURE:-}  # empty: 1.0
HARNESS=${HARNESS:-auto}  # auto, official or builtin executor
TIMEOUT=${TIMEOUT:-3.0}  # seconds per program
DEVICE=${DEVICE:-auto}  # auto, cpu, cuda, cuda:1, ...
SEED=${SEED:-0}  # base seed
OUT=${OUT:-outputs/infill_code_${BENCHMARK}_${METHOD}_${PROTOCOL}}  # output directory (a rerun resumes it)
K_ARGS=()
[[ -n "$K" ]] && K_ARGS=(--k "$K")  # only what differs from the defaults (asarm.sampling.SamplingConfig)
[[ -n "$TEMPERATURE" ]] && K_ARGS+=(--temperature "$TEMPERATURE")
[[ -n "$TOKENIZER" ]] && K_ARGS+=(--tokenizer "$TOKENIZER")
declare -A FILES=([single-line]=HumanEval-SingleLineInfilling.jsonl.gz [multi-line]=HumanEval-MultiLineInfilling.jsonl.gz
                  [random-span]=HumanEval-RandomSpanInfilling.jsonl.gz [random-span-light]=HumanEval-RandomSpanInfillingLight.jsonl.gz)
DATA=${DATA:-$DATA_DIR/${FILES[$BENCHMARK]}}  # problem file (default: BENCHMARK's file in DATA_DIR)

run_eval "$OUT" infill-code --model "$MODEL" --revision "$REVISION" --benchmark "$BENCHMARK" --data "$DATA" \
  --method "$METHOD" --num-samples "$NUM_SAMPLES" --protocol "$PROTOCOL" "${K_ARGS[@]}" \
  --harness "$HARNESS" \
  --timeout "$TIMEOUT" --device "$DEVICE" --seed "$SEED"
