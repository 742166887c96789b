#!/usr/bin/env bash
# The validation sweep of the V-STAR issue (8): one setting at a time around the defaults, one
# seed, evaluated on the validation split only, each point a run folder of its own
# (`vstar rl --method M --as LABEL`), from the same SFT generator as the ablation. Then the table.
#
#   EXPERIMENT=sci_kd SEED=0 JOBS=2 scripts/rl_sweep.sh
#   POINTS_FILE=my_points.txt ...    # "LABEL METHOD override..." per line instead of the default
#   # issue 13: one knob per other RL recipe, on validation (its own table: TABLE=...)
#   EXPERIMENT=sci_kd SEED=0 JOBS=2 OVERRIDES="sasrec.hidden=64 sid.sasrec_hidden=0 sft.item_loss=0 sft.item_distill=0 eval.item_head=0" \
#     POINTS_FILE=scripts/points/rl_methods_validation.txt \
#     TABLE=docs/results/sci_kd_rl_methods_sweep_seed0.md \
#     BASES="sft grpo_beam grpo_beam_tree gspo dapo hepo hepo_vbeam sdpo a2po" scripts/rl_sweep.sh
#   # ... and the points that won there, each seed on valid and test (the README's tuned rows):
#   for s in 0 1 2; do EXPERIMENT=sci_kd SEED=$s JOBS=2 SPLITS="[valid,test]" OVERRIDES="..." \
#     POINTS_FILE=scripts/points/rl_methods_tuned.txt TABLE=/dev/null scripts/rl_sweep.sh; done
# Points already finished are kept (run.resume=true), so the script can be re-run to extend it.
set -euo pipefail
cd "$(dirname "$0")/.."
VSTAR=${VSTAR:-.venv/bin/vstar}
EXPERIMENT=${EXPERIMENT:?set EXPERIMENT to the run.name whose sft/seed<k> generator to start from}
SEED=${SEED:-0}
JOBS=${JOBS:-1}
CONFIG=${CONFIG:-configs/scientific.yaml}
THREADS=$([ "$JOBS" -gt 1 ] && echo 1 || echo 2)
# the ablation's scale (scripts/rl_ablation.sh): 2 epochs over the training users, 64 per step
# OVERRIDES: more key=value words for every run (e.g. the settings an older experiment was
# built with: OVERRIDES="sasrec.hidden=64 sid.sasrec_hidden=0 sft.item_loss=0 sft.item_distill=0 eval.item_head=0" for sci_kd)
read -r -a EXTRA <<< "${OVERRIDES:-}"
# SPLITS: what each point is evaluated on ([valid]: a sweep; [valid,test]: the tuned rows)
RL=(rl.users_per_step=64 rl.steps=260 "eval.splits=${SPLITS:-[valid]}")
DEFAULT_POINTS="
sw_grpo_beam_lr1e-5 grpo_beam rl.lr=1e-5
sw_grpo_beam_lr1e-4 grpo_beam rl.lr=1e-4
sw_vstar_lr1e-5 vstar rl.lr=1e-5
sw_vstar_lr1e-4 vstar rl.lr=1e-4
sw_vstar_lam0.3 vstar rl.ved.lam=0.3
sw_vstar_beta3 vstar rl.ved.beta=3.0
sw_vstar_budget2 vstar rl.ved.budget_multiplier=2.0
sw_vstar_wsib2 vstar rl.w_sib=2.0
sw_vstar_prior vstar rl.value_head.prior=policy
sw_vstar_prior_fixed vstar rl.value_head.prior=policy rl.value_head.init_std=0 rl.value_lr=1e-12
sw_vstar_prior_lam0_beta0.3 vstar rl.value_head.prior=policy rl.ved.lam=0 rl.ved.beta=0.3
sw_vstar_prior_fixed_lam0_beta0.3 vstar rl.value_head.prior=policy rl.value_head.init_std=0 rl.value_lr=1e-12 rl.ved.lam=0 rl.ved.beta=0.3
"
POINTS=$([ -n "${POINTS_FILE:-}" ] && cat "$POINTS_FILE" || echo "$DEFAULT_POINTS")

while read -r label method overrides; do
    [ -z "$label" ] && continue
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 5; done
    # shellcheck disable=SC2086  # overrides are whitespace-separated key=value words
    "$VSTAR" rl "$CONFIG" --method "$method" --as "$label" run.name="$EXPERIMENT" \
        "run.seeds=[$SEED]" run.num_threads="$THREADS" run.resume=true "${RL[@]}" "${EXTRA[@]}" $overrides \
        > "runs/$EXPERIMENT.$label.seed$SEED.log" 2>&1 &
done <<< "$POINTS"
wait

R=runs/$EXPERIMENT
mkdir -p docs/results
labels=$(echo "$POINTS" | awk 'NF {print $1}')
dirs=$(for l in $labels ${BASES:-grpo_beam vstar sft}; do echo "$R/$l/seed$SEED"; done)
# shellcheck disable=SC2086
"$VSTAR" compare $dirs --markdown "${TABLE:-docs/results/${EXPERIMENT}_rl_sweep_seed$SEED.md}" \
    --metrics HR@1 HR@10 NDCG@10
