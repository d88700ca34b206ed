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
REPO="${ASARM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
[ -f "$REPO/asarm/cli.py" ] || REPO="${ASARM_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"  # sbatch runs a copy of the script
[ -f "$REPO/asarm/cli.py" ] || { echo "$(basename "$0"): '$REPO' is not the asarm repository;" \
  "set ASARM_REPO=/path/to/asarm" >&2; exit 2; }
source "$REPO/scripts/launcher.sh"
launcher_eval_args "$0" "$@"  # --help: usage and variables, nothing started
cd "$REPO"
source scripts/eval_launch.sh

MODEL=${MODEL:-therealgabeguo/ASARM}  # local directory, hub id, or tiny (a small random model, offline)
REVISION=${REVISION:-nlp}  # hub revision of MODEL
TOKENIZER=${TOKENIZER:-}  # tokenizer directory or hub id (empty: the model's; self-checks: the offline one)
DATA=${DATA:-${ASARM_EVAL_DATA:-eval_datasets}/rocstories/cloze_test_val__spring2016.csv}  # ROCStories cloze CSV
SETTINGS=${SETTINGS:-middle long}  # middle and/or long
METHOD=${METHOD:-assd}  # sequential, assd, ngram; oracle: self-check (no model)
TRIALS=${TRIALS:-5}  # samples per story
PROTOCOL=${PROTOCOL:-paper}  # paper (the paper's released code) or asarm
K=${K:-}  # empty: the protocol's (paper 10, asarm 5)
TEMPERATURE=${TEMPERATURE:-}  # empty: 1.0
DEVICE=${DEVICE:-auto}  # auto, cpu, cuda, cuda:1, ...
SEED=${SEED:-0}  # base seed
OUT=${OUT:-outputs/infill_nlp_${REVISION}_${METHOD}_${PROTOCOL}}  # output directory (a rerun resumes it)
K_ARGS=()
[[ -n "$K" ]] && K_ARGS=(--k "$K")  # only what differs from the defaults (asarm.sampling.SamplingConfig)
[[ -n "$TEMPERATURE" ]] && K_ARGS+=(--temperature "$TEMPERATURE")
[[ -n "$TOKENIZER" ]] && K_ARGS+=(--tokenizer "$TOKENIZER")

# shellcheck disable=SC2086
run_eval "$OUT" infill-nlp --model "$MODEL" --revision "$REVISION" --data "$DATA" --settings $SETTINGS \
  --method "$METHOD" --trials "$TRIALS" --protocol "$PROTOCOL" "${K_ARGS[@]}" \
  --device "$DEVICE" --seed "$SEED"
