#!/usr/bin/env bash
# The generator ablation of the README (issue 7): every option of the SID generator switched off
# (or on) against the defaults of configs/scientific.yaml, 3 seeds, leave-one-out, valid + test.
# Each variant is its own experiment folder runs/<prefix>_<variant> (prefix g15: the 15-epoch
# schedule of the current config); the last lines print the table (mean +- std over seeds, and
# each variant paired against <prefix>_default over users) and write it to
# docs/results/generator_ablation.md (scripts/generator_ablation_table.py). Variants that keep the
# SIDs and teachers get the default's artifacts/ copied in first, so only the option differs.
#
#   scripts/generator_ablation.sh                # all variants, seeds 0 1 2 (about 15-20 min per
#                                                # variant and seed on the 2-core reference machine)
#   SEEDS="[0]" scripts/generator_ablation.sh    # one seed
#   THREADS=1 scripts/generator_ablation.sh      # when two jobs share the machine
#   PREFIX=gen scripts/generator_ablation.sh     # another family of experiment folders
set -euo pipefail
cd "$(dirname "$0")/.."
VSTAR=${VSTAR:-.venv/bin/vstar}
SEEDS=${SEEDS:-"[0,1,2]"}
THREADS=${THREADS:-2}
PREFIX=${PREFIX:-g15}
CONFIG=configs/scientific.yaml
RUNS=runs

run() {  # run <variant> <overrides...>: artifacts copied from the default unless SIDs change
    local name=$1; shift
    case " $* " in
        *" sid."*) ;;                                  # new SIDs (and SID teacher): built afresh
        *) mkdir -p "$RUNS/${PREFIX}_$name"
           cp -rn "$RUNS/${PREFIX}_default/artifacts" "$RUNS/${PREFIX}_$name/" ;;
    esac
    "$VSTAR" run "$CONFIG" run.name="${PREFIX}_$name" "run.seeds=$SEEDS" "run.methods=[sft]" \
        run.num_threads="$THREADS" "$@"
}

# SASRec first: its seed-0 run is the item head's teacher, reused instead of trained twice
"$VSTAR" run "$CONFIG" run.name="${PREFIX}_default" "run.seeds=$SEEDS" "run.methods=[sasrec,sft]" \
    run.num_threads="$THREADS"
"$VSTAR" run "$CONFIG" run.name="${PREFIX}_sasrec_64" "run.seeds=$SEEDS" "run.methods=[sasrec]" \
    run.num_threads="$THREADS" sasrec.hidden=64        # the baseline at the old width
run no_item_head sft.item_loss=0 sft.item_distill=0 eval.item_head=0   # no item head at all
run no_item_distill sft.item_distill=0             # the head trained on the labels alone
run item_teacher_own sft.item_teacher_hidden=0     # distilled from the 128-wide SID teacher
run item_loss_unfused eval.item_head=0             # the item loss, ranked by the codes alone
run no_distill sft.distill=0                       # no distillation from the SASRec teacher
run subset_valid sft.val_max_users=2000            # early stopping on a 2,000-row subset
run token_history model.history=codes sft.item_loss=0 sft.item_distill=0 eval.item_head=0
                                                   # history as L code tokens per item (the
                                                   # item head needs item-level history)
run no_item_id model.item_id_embedding=false       # item-level history without an ID embedding
run sasrec_sids sid.vectors=sasrec                 # SIDs from a 128-wide SASRec's item embeddings
run trie_loss sft.loss=trie                        # softmax over trie-valid codes in training
run label_smoothing sft.label_smoothing=0.1
run dropout_0.3 model.dropout=0.3 sft.weight_decay=0.1
run lr_3e-3 sft.lr=3e-3
run teacher_64 sid.sasrec_hidden=64                # a 64-wide SASRec as SID vectors and teacher
run by_length sft.group_by_length=true             # length-grouped batches (3x faster epochs)
run layers_4 model.n_layer=4
run const_lr sft.schedule=constant             # no cosine decay after the warm-up

mkdir -p docs/results
.venv/bin/python scripts/generator_ablation_table.py "$RUNS/${PREFIX}_default" "$RUNS/${PREFIX}"_* \
    --seeds $(echo "$SEEDS" | tr -d '[]' | tr ',' ' ') --markdown docs/results/generator_ablation.md
