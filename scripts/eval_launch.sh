# Shared by the _run_*_eval.sh launchers (sourced, not run). One function, three ways to run:
#   * inside a Slurm job array  -> this task is shard $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT;
#                                  the last shard to finish writes results.json (or: asarm eval-merge OUT)
#   * NUM_SHARDS=n (no Slurm)   -> n local processes, shard i on GPU i, then the merge
#   * otherwise                 -> one process
# Variables: PYTHON (default python3: scripts/launcher.sh), NUM_SHARDS (default 1), EXTRA_ARGS (appended to the command).

run_eval() {  # usage: run_eval OUTPUT_DIR SUBCOMMAND ARGS...
  local out="$1"; shift
  local python="${PYTHON:-python3}"
  # shellcheck disable=SC2206
  local extra=(${EXTRA_ARGS:-})
  echo "+ $python -m asarm $* --output-dir $out ${extra[*]}" >&2
  if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    "$python" -m asarm "$@" --output-dir "$out" --shard "$SLURM_ARRAY_TASK_ID" \
      --num-shards "${SLURM_ARRAY_TASK_COUNT:-1}" "${extra[@]}"
  elif [ "${NUM_SHARDS:-1}" -gt 1 ]; then
    local pids=() i status=0 dev
    # shellcheck disable=SC2206
    local visible="${CUDA_VISIBLE_DEVICES:-}" gpus=()
    [ -z "$visible" ] || gpus=(${visible//,/ })  # shard i gets the i-th visible GPU (or GPU i)
    for ((i = 0; i < NUM_SHARDS; i++)); do
      dev=$i
      if [ ${#gpus[@]} -gt 0 ]; then dev=${gpus[$((i % ${#gpus[@]}))]}; fi
      CUDA_VISIBLE_DEVICES="$dev" "$python" -m asarm "$@" --output-dir "$out" \
        --shard "$i" --num-shards "$NUM_SHARDS" --no-progress "${extra[@]}" &
      pids+=("$!")
    done
    for i in "${pids[@]}"; do wait "$i" || status=$?; done
    [ "$status" -eq 0 ] || { echo "a shard failed (exit $status); rerun to resume" >&2; return "$status"; }
    "$python" -m asarm eval-merge "$out"
  else
    "$python" -m asarm "$@" --output-dir "$out" "${extra[@]}"
  fi
}
