#!/usr/bin/env bash
# System packages some tests use (a real one-node Slurm). Best effort outside CI: tests skip without them.
set -u
if command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null) \
    || echo "warning: could not install slurm-wlm/munge; Slurm launcher tests will skip" >&2
else
  echo "note: not root or no apt-get; Slurm launcher tests will skip" >&2
fi
exit 0
