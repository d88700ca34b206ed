#!/usr/bin/env bash
# GPU check (benchmarks/gpu_check.py): cached-vs-plain parity in fp32/bf16, decode speed at N = 512,
# bf16 training memory at batch 6/8, on random weights of xlnet-base-cased's shape. No network.
#   bash benchmarks/gpu_check.sh --out gpu_check.json                    # CUDA: a few minutes (none: the quick sizes)
#   bash benchmarks/gpu_check.sh --device cpu --quick --out /tmp/q.json   # tiny sizes, < 1 min
# Prints the device, torch version and one markdown table; writes it as JSON to --out.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${PYTHON:-python3}" "$root/benchmarks/gpu_check.py" "$@"
