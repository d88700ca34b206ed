#!/usr/bin/env bash
# System packages some tests use: a real one-node Slurm (slurm-wlm, munge) and the namespaces the code
# executor runs generated programs in (bubblewrap). Best effort outside CI: those tests skip or fall back.
set -u
need=()
command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1 || need+=(slurm-wlm munge)
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "warning: could not install ${need[*]}; Slurm tests will skip, the executor falls back to its guard" >&2
else
  echo "note: not root or no apt-get; install ${need[*]} for the Slurm tests and the namespace executor" >&2
fi
exit 0
