#!/usr/bin/env bash
#SBATCH --job-name=asarm-infill-nlp
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
# ROCStories infilling (paper, sec. 6): ROUGE-1/2/L of the generated middle, both settings,
# under the paper's protocol by default (k 10, only <mask> banned, evaluate's bootstrap mid ROUGE
# without stemmer; asarm's mean +- SE is reported beside it). PROTOCOL=asarm for asarm's defaults.
#   bash _run_nlp_infill_eval.sh
#   sbatch --array=0-7 _run_nlp_infill_eval.sh
#   METHOD=sequential TRIALS=5 bash _run_nlp_infill_eval.sh
#   METHOD=oracle bash _run_nlp_infill_eval.sh      # pipeline self-check: ROUGE 100
#   PROTOCOL=asarm K=5 bash _run_nlp_infill_eval.sh
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")}"
source scripts/eval_launch.sh

MODEL=${MODEL:-therealgabeguo/ASARM}
REVISION=${REVISION:-nlp}
DATA=${DATA:-${ASARM_EVAL_DATA:-eval_datasets}/rocstories/cloze_test_val__spring2016.csv}
SETTINGS=${SETTINGS:-middle long}
METHOD=${METHOD:-assd}
TRIALS=${TRIALS:-5}
PROTOCOL=${PROTOCOL:-paper}
K=${K:-}  # empty: the protocol's (paper 10, asarm 5)
TEMPERATURE=${TEMPERATURE:-}  # empty: 1.0
DEVICE=${DEVICE:-auto}
SEED=${SEED:-0}
OUT=${OUT:-outputs/infill_nlp_${REVISION}_${METHOD}_${PROTOCOL}}
K_ARGS=()
[[ -n "$K" ]] && K_ARGS=(--k "$K")  # only what differs from the defaults (asarm.sampling.SamplingConfig)
[[ -n "$TEMPERATURE" ]] && K_ARGS+=(--temperature "$TEMPERATURE")

# shellcheck disable=SC2086
run_eval "$OUT" infill-nlp --model "$MODEL" --revision "$REVISION" --data "$DATA" --settings $SETTINGS \
  --method "$METHOD" --trials "$TRIALS" --protocol "$PROTOCOL" "${K_ARGS[@]}" \
  --device "$DEVICE" --seed "$SEED"
