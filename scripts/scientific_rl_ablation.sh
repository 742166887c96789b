#!/usr/bin/env bash
# The RL ablation of issue 3 on Scientific (leave-one-out), 3 seeds, all from the same seed's SFT
# checkpoint written by `vstar run configs/scientific.yaml` (runs/scientific/sft/seed<k>/).
# Each seed starts as soon as its SFT checkpoint exists, so it can run beside the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-configs/scientific.yaml}
THREADS=${THREADS:-1}
for seed in ${SEEDS:-0 1 2}; do
  ckpt=runs/scientific/sft/seed${seed}/generator.safetensors
  until [ -f "$ckpt" ]; do sleep 20; done
  for method in grpo_beam grpo_beam_sibling grpo_ved vstar; do
    .venv/bin/vstar rl "$CONFIG" --method "$method" "run.seeds=[$seed]" \
      "run.num_threads=$THREADS" run.progress=false run.overwrite=true "$@"
  done
done
.venv/bin/vstar compare runs/scientific --markdown runs/scientific/results.md
.venv/bin/vstar paired runs/scientific vstar grpo_beam --metric NDCG@10
