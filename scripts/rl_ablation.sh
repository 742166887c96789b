#!/usr/bin/env bash
# The V-STAR ablation of the README (issues 3, 7, 8) at the paper's RL scale: from each seed's SFT
# generator of an experiment, beam + GRPO, beam + GRPO + Sibling, VED + GRPO and full V-STAR,
# 2 epochs over the training users at 64 users per optimiser step, evaluated on valid and test;
# then the table, the logged mechanism figures and the paired tests.
#
#   EXPERIMENT=sci_gen_lr1 SEEDS="0 1 2" scripts/rl_ablation.sh
#   JOBS=2 ...     # seeds two at a time, one torch thread each (the 2-core reference machine)
#   METHODS="gspo dapo" ...   # other registry entries from the same SFT generators (issue 13)
set -euo pipefail
cd "$(dirname "$0")/.."
VSTAR=${VSTAR:-.venv/bin/vstar}
EXPERIMENT=${EXPERIMENT:?set EXPERIMENT to the run.name whose sft/seed<k> generators to start from}
SEEDS=${SEEDS:-"0 1 2"}
JOBS=${JOBS:-1}
CONFIG=${CONFIG:-configs/scientific.yaml}
METHODS=${METHODS:-"grpo_beam grpo_beam_sibling grpo_ved vstar"}
# 2 epochs over the 8,317 training users at 64 users per step: 8317 * 2 / 64 = 260 steps
# OVERRIDES: more key=value words for every run (e.g. the settings an older experiment was
# built with: OVERRIDES="sasrec.hidden=64 sid.sasrec_hidden=0 sft.item_loss=0 sft.item_distill=0 eval.item_head=0" for sci_kd)
read -r -a EXTRA <<< "${OVERRIDES:-}"
RL=(rl.users_per_step=64 rl.steps=260)
THREADS=$([ "$JOBS" -gt 1 ] && echo 1 || echo 2)

for seed in $SEEDS; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
    "$VSTAR" rl "$CONFIG" --method $METHODS run.name="$EXPERIMENT" "run.seeds=[$seed]" \
        run.num_threads="$THREADS" "${RL[@]}" "${EXTRA[@]}" > "runs/$EXPERIMENT.rl_seed$seed.${METHODS// /_}.log" 2>&1 &
done
wait

R=runs/$EXPERIMENT
mkdir -p docs/results
"$VSTAR" compare "$R" --markdown "docs/results/${EXPERIMENT}_rl_ablation.md" \
    --metrics HR@1 HR@10 NDCG@10 coverage@10
"$VSTAR" rl-summary "$R" $METHODS
for m in grpo_beam sft; do "$VSTAR" paired "$R" vstar "$m" --metric NDCG@10; done
