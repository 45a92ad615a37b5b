#!/usr/bin/env bash
# Reproduce the shipped demo bundle from scratch on 2 CPU cores (about 75 minutes):
# VQ on shapes -> pretokenize 50k images -> text-to-image -> BPE GPT and BERT on Tiny Shakespeare
# -> sampling defaults measured on validation prompts -> fp16 bundle with model_index.json.
#
#   scripts/train_demo.sh                        # writes runs/demo/bundle
#   scripts/train_demo.sh --ship                 # and copies it to mmgen/assets/demo
#   SHAKESPEARE=/path/tinyshakespeare.txt scripts/train_demo.sh   # corpus file for the text tabs
#   scripts/train_demo.sh --threads 1            # on a machine other jobs are loading (much faster there)
#
# Every stage's budget is an option (--vq-minutes, --t2i-minutes, --gpt-minutes, ...): see
# `mmgen train-demo --help`. --reuse keeps the stages an earlier run in --out finished.
set -euo pipefail
cd "$(dirname "$0")/.."
args=(--out "${OUT:-runs/demo}")
if [[ -n "${SHAKESPEARE:-}" ]]; then
  args+=(--shakespeare "$SHAKESPEARE")
fi
exec python -m mmgen.cli train-demo "${args[@]}" "$@"
