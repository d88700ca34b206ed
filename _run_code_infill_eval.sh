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
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
source scripts/eval_launch.sh

MODEL=${MODEL:-therealgabeguo/ASARM}
REVISION=${REVISION:-code}
BENCHMARK=${BENCHMARK:-single-line}
DATA_DIR=${DATA_DIR:-${ASARM_EVAL_DATA:-eval_datasets}/human-eval-infilling}
METHOD=${METHOD:-assd}
NUM_SAMPLES=${NUM_SAMPLES:-1}
PROTOCOL=${PROTOCOL:-paper}
K=${K:-}  # empty: the protocol's (paper 10, asarm 5)
TEMPERATURE=${TEMPERATURE:-}  # empty: 1.0
HARNESS=${HARNESS:-auto}
TIMEOUT=${TIMEOUT:-3.0}
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
OUT=${OUT:-outputs/infill_code_${BENCHMARK}_${METHOD}_${PROTOCOL}}
K_ARGS=()
[[ -n "$K" ]] && K_ARGS=(--k "$K")  # only what differs from the defaults (asarm.sampling.SamplingConfig)
[[ -n "$TEMPERATURE" ]] && K_ARGS+=(--temperature "$TEMPERATURE")
declare -A FILES=([single-line]=HumanEval-SingleLineInfilling.jsonl.gz [multi-line]=HumanEval-MultiLineInfilling.jsonl.gz
                  [random-span]=HumanEval-RandomSpanInfilling.jsonl.gz [random-span-light]=HumanEval-RandomSpanInfillingLight.jsonl.gz)
DATA=${DATA:-$DATA_DIR/${FILES[$BENCHMARK]}}

run_eval "$OUT" infill-code --model "$MODEL" --revision "$REVISION" --benchmark "$BENCHMARK" --data "$DATA" \
  --method "$METHOD" --num-samples "$NUM_SAMPLES" --protocol "$PROTOCOL" "${K_ARGS[@]}" \
  --harness "$HARNESS" \
  --timeout "$TIMEOUT" --device "$DEVICE" --seed "$SEED"
