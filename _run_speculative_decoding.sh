#!/usr/bin/env bash
#SBATCH --job-name=asarm-speculative
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=%x-%A_%a.out
# Speculative decoding on WikiText-2 (paper, sec. 6): sequential vs ASSD vs n-gram draft.
#   bash _run_speculative_decoding.sh                        # paper settings, one process
#   sbatch --array=0-7 _run_speculative_decoding.sh          # 8 shards; the last one writes results.json
#   NUM_SHARDS=4 bash _run_speculative_decoding.sh           # 4 local processes (GPU i each), then merge
#   TRIALS=20 DATA=../shared/data/wikitext-2-raw/wiki.test.raw bash _run_speculative_decoding.sh
#   PROTOCOL=asarm BACKENDS=cached bash _run_speculative_decoding.sh   # asarm's defaults, cached decoder only
# Every setting below is a variable; EXTRA_ARGS is appended (e.g. "--baseline-model xlnet/xlnet-base-cased").
# The paper's ablations are sampler options (asarm.sampling.SamplingConfig), e.g.
#   EXTRA_ARGS="--r-atol 0.1" bash _run_speculative_decoding.sh                       # lossy acceptance slack
#   TEMPERATURE=0.7 EXTRA_ARGS="--temperature-mode draft --draft-only-temperature paper" bash _run_speculative_decoding.sh
#   for K in 1 2 3 5 8; do K=$K bash _run_speculative_decoding.sh; done                 # k sweep: one run per k
# PROTOCOL=paper (default) follows the paper's released code: rows encoded with <sep><cls> then </s>, no chunk
# reuse (fewer trials than TRIALS when the chunks run out), int(0.05 N) + 1 visible, judged text with specials,
# only <mask> banned. BACKENDS="plain cached" times every sample with the paper's decoder and the K/V cache.
set -euo pipefail
REPO="${ASARM_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}"
[ -f "$REPO/asarm/cli.py" ] || REPO="${ASARM_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}"  # sbatch runs a copy of the script
[ -f "$REPO/asarm/cli.py" ] || { echo "$(basename "$0"): '$REPO' is not the asarm repository;" \
  "set ASARM_REPO=/path/to/asarm" >&2; exit 2; }
source "$REPO/scripts/launcher.sh"
launcher_eval_args "$0" "$@"  # --help: usage and variables, nothing started
cd "$REPO"
source scripts/eval_launch.sh

PROTOCOL=${PROTOCOL:-paper}  # paper (the paper's released code) or asarm
BACKENDS=${BACKENDS:-plain cached}  # plain and/or cached decoder, each timed
MODEL=${MODEL:-therealgabeguo/ASARM}  # local directory, hub id, or tiny (a small random model, offline)
REVISION=${REVISION:-nlp_210k_plus_75k}  # hub revision of MODEL
TOKENIZER=${TOKENIZER:-}  # tokenizer directory or hub id (empty: the model's; self-checks: the offline one)
DATA=${DATA:-${ASARM_EVAL_DATA:-eval_datasets}/wikitext-2-raw/wiki.test.raw}  # WikiText-2 raw test file
SEQ_LEN=${SEQ_LEN:-512}  # tokens per trial
VISIBLE_FRAC=${VISIBLE_FRAC:-0.05}  # fraction of each trial's tokens given
TRIALS=${TRIALS:-700}  # sequences of SEQ_LEN tokens
METHODS=${METHODS:-sequential assd ngram}  # sequential, assd, ngram
K=${K:-}                      # empty: SamplingConfig's default (5)
TEMPERATURE=${TEMPERATURE:-}  # empty: 1.0
JUDGE=${JUDGE:-gpt2-large}  # gen-PPL judge (hub id, directory, or none)
DEVICE=${DEVICE:-auto}  # auto, cpu, cuda, cuda:1, ...
SEED=${SEED:-0}  # base seed
OUT=${OUT:-outputs/speculative_${PROTOCOL}_${REVISION}_k${K:-5}}  # output directory (a rerun resumes it)
SAMPLING_ARGS=()  # only what differs from the defaults (asarm.sampling.SamplingConfig)
[[ -n "$K" ]] && SAMPLING_ARGS+=(--k "$K")
[[ -n "$TEMPERATURE" ]] && SAMPLING_ARGS+=(--temperature "$TEMPERATURE")
[[ -n "$TOKENIZER" ]] && SAMPLING_ARGS+=(--tokenizer "$TOKENIZER")

# shellcheck disable=SC2086
run_eval "$OUT" speculative --protocol "$PROTOCOL" --backends $BACKENDS --model "$MODEL" --revision "$REVISION" \
  --data "$DATA" --seq-len "$SEQ_LEN" \
  --visible-frac "$VISIBLE_FRAC" --trials "$TRIALS" --methods $METHODS "${SAMPLING_ARGS[@]}" \
  --judge "$JUDGE" --device "$DEVICE" --seed "$SEED"
