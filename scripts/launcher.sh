# Shared by every _run_*.sh launcher (sourced, not run): the interpreter rule, --help and argument checks.
#
# Interpreter: $PYTHON if set, else python3 (every launcher, every process it starts).
# --help prints the launcher's header comment and every `NAME=${NAME:-default}  # what` line of it (plus the
# variables of this file and of eval_launch.sh), and starts nothing.

PYTHON="${PYTHON:-python3}"
export PYTHON

# launcher_help SCRIPT: the header comment of SCRIPT, then its variables with their defaults.
launcher_help() {
  local script="$1" name
  name="$(basename "$script")"
  echo "usage: bash $name [--help]   (settings are environment variables: NAME=value bash $name)"
  [ "$name" != _run_training.sh ] || echo "       bash $name [--key value ...]   (--key value: asarm train overrides)"
  echo
  # header: comment lines after the shebang, #SBATCH lines left out, up to the first command
  awk 'NR == 1 {next} /^#SBATCH/ {next} /^#/ {sub(/^# ?/, ""); print; next} {exit}' "$script"
  echo
  echo "Environment variables (default in brackets; empty means the command's own default):"
  # NAME=${NAME:-default}  # comment   ->   NAME [default]  comment
  sed -nE 's/^([A-Z_]+)=\$\{\1:-(.*)\}[[:space:]]*(#[[:space:]]*(.*))?$/\1|\2|\4/p' "$script" |
    while IFS='|' read -r var default what; do
      printf '  %-15s [%s]  %s\n' "$var" "$default" "$what"
    done
  printf '  %-15s [%s]  %s\n' PYTHON python3 "the Python interpreter (every launcher)"
  printf '  %-15s [%s]  %s\n' ASARM_REPO "this script's directory" \
    "the asarm repository (set it when submitting a copy of the script, e.g. from outside the repository)"
  if [ "$name" != _run_training.sh ]; then
    printf '  %-15s [%s]  %s\n' ASARM_EVAL_DATA eval_datasets "folder holding the evaluation data sets"
    printf '  %-15s [%s]  %s\n' NUM_SHARDS 1 "local processes (shard i on GPU i), merged at the end"
    printf '  %-15s [%s]  %s\n' EXTRA_ARGS "" "appended to the asarm command, e.g. \"--limit 10 --threads 4\""
  fi
  echo
  echo "Relative paths are relative to the repository. Under sbatch --array, each task runs one shard."
}

# launcher_help_requested SCRIPT ARGS...: -h or --help anywhere prints the help and exits 0.
launcher_help_requested() {
  local script="$1"; shift
  local arg
  for arg in "$@"; do
    case "$arg" in
      -h|--help) launcher_help "$script"; exit 0 ;;
    esac
  done
}

# launcher_eval_args SCRIPT ARGS...: --help prints the help and exits 0; any other argument is refused.
launcher_eval_args() {
  local script="$1"; shift
  launcher_help_requested "$script" "$@"
  if [ $# -gt 0 ]; then
    echo "$(basename "$script"): unknown argument '$1': settings are environment variables" \
         "(NAME=value bash $(basename "$script")), extra command options go in EXTRA_ARGS; see --help" >&2
    exit 2
  fi
}

# launcher_train_args SCRIPT ARGS...: --help prints the help and exits 0; the others must be `--key value` or
# `--key=value` (asarm train's config overrides, checked by asarm train itself).
launcher_train_args() {
  local script="$1"; shift
  launcher_help_requested "$script" "$@"
  while [ $# -gt 0 ]; do
    case "$1" in
      --*=*) shift ;;
      --*) [ $# -ge 2 ] || { echo "$(basename "$script"): $1 needs a value (--key value); see --help" >&2; exit 2; }
           shift 2 ;;
      *) echo "$(basename "$script"): unexpected argument '$1': pass config overrides as --key value," \
              "settings as environment variables; see --help" >&2; exit 2 ;;
    esac
  done
}
