"""Typed settings of the training stage (torch-free, OmegaConf-compatible: plain fields, defaults).

The seed of a run is not a field here: the pipeline passes ``run.seeds`` entries to the trainers.
Named RL recipes (the paper's ablation rows) are entries of the method registry
(``vstar.experiments.methods``), each a set of overrides of ``RLConfig``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vstar.core.validate import (at_least, boolean, check_fields, count, fraction, list_of,
                                 non_negative, non_negative_int, one_of, optional, positive,
                                 probability, registered, require)
from vstar.core.validate import between, number, text      # rules of the A2PO / DRPO fields
from vstar.data.windows import WINDOW_MODES
from vstar.decode.config import VEDConfig
from vstar.model.config import ValueHeadConfig
from vstar.train.schedule import SCHEDULES

RL_DECODERS = ("beam", "sample", "ved", "value_beam")
SFT_LOSSES = ("level", "trie")
SFT_VAL_METRICS = ("NDCG@10", "HR@10")    # what the pipeline's validation callback returns
PREFIX_EMBEDDINGS = ("bucket_mean", "single_item")
RL_SIBLING_SAME = "same"               # sibling_reward: the step's own reward (the paper)
RL_VALUE_TARGETS = ("tree", "candidates")
RL_VALUE_GATES = ("chance", "logp", "always")
RL_ADVANTAGES = ("grpo", "treerl", "hepo")   # docs/method.md "Other RL methods"
RL_RATIO_LEVELS = ("token", "sequence")
RL_POLICY_LOSSES = ("clipped", "sdpo")
RL_A2PO = ("off", "fusion", "reward_sum", "adv_sum")
RL_DRPO_MODES = ("topk", "naive", "positive", "awr", "soft_nll")


def _reward_names() -> list[str]:
    from vstar.train.rewards import REWARDS   # torch: imported only when a config is checked
    return list(REWARDS)


@dataclass
class SFTConfig:
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    max_epochs: int = 40
    patience: int = 4              # evaluations without a better validation score before stopping
    warmup_steps: int = 100
    schedule: str = "cosine"       # after the warm-up: "cosine" down to 0 at max_epochs, or
                                   # "constant" (vstar.train.schedule)
    grad_clip: float = 1.0
    val_metric: str = "NDCG@10"    # early-stopping criterion on the validation split
    val_beam: int = 20
    val_max_users: int = 2000      # validation rows scored per evaluation (a fixed seeded
                                   # subset; 0 = the whole validation split)
    eval_every: int = 1            # epochs between validation evaluations
    windows: str = "chunks"        # "chunks" (one pass per user sequence) or "rows" (exact)
    group_by_length: bool = False  # batches of windows of similar length: about 3x fewer
                                   # padded tokens to compute, but on Scientific it ended 0.0017
                                   # lower in valid NDCG@10 (docs/method.md, "SFT batches")
    micro_batches: int = 1         # each batch sorted by length and run as this many parts,
                                   # each trimmed of its own padding, their losses weighted by
                                   # their share of the batch's supervised tokens: the same
                                   # gradient with fewer padding tokens (docs/method.md,
                                   # "SFT micro-batches")
    label_smoothing: float = 0.0   # eps of the level-wise label smoothing (train.sft.sft_loss)
    loss: str = "level"            # softmax over the level's codes, or "trie": over the codes
                                   # the SID trie allows after the prefix (what decoding ranks)
    distill: float = 0.0           # weight a of knowledge distillation from the experiment's
                                   # SASRec: (1 - a) * CE + a * KL(teacher's code marginals ||
                                   # generator), per SID level given the true prefix
    item_loss: float = 0.0         # weight b of an item-level cross-entropy: at each target's
                                   # first code, a softmax over every catalogue item, scored
                                   # h . e(item) with e the item's input embedding (its codes'
                                   # sum + item-ID row); needs model.history=items
                                   # (docs/method.md 1, "Item-level loss")
    item_distill: float = 0.0      # weight c of distillation into the item head: its loss is
                                   # (1 - c) * CE + c * KL(a SASRec's item softmax || head)
    item_teacher_hidden: int = 0   # width of that SASRec: 0 = the experiment's teacher (the
                                   # one of sft.distill); W > 0 = a W-wide SASRec trained once
                                   # per experiment with sid.seed (artifacts/teacher_sasrec_wW)
    rl_holdout: int = 0            # the last k training targets of each user (with more than
                                   # k) are left out of SFT and are the rows RL draws its users
                                   # from (0: RL draws from every training row, the paper)



    RULES = {"lr": positive, "weight_decay": non_negative, "batch_size": count,
             "max_epochs": count, "patience": count, "warmup_steps": count,
             "schedule": one_of(*SCHEDULES),
             "grad_clip": positive, "val_metric": one_of(*SFT_VAL_METRICS), "val_beam": count,
             "val_max_users": non_negative_int, "eval_every": count,
             "windows": one_of(*WINDOW_MODES), "group_by_length": boolean(),
             "micro_batches": count,
             "label_smoothing": fraction, "loss": one_of(*SFT_LOSSES), "distill": fraction,
             "item_loss": non_negative, "item_distill": fraction,
             "item_teacher_hidden": non_negative_int, "rl_holdout": non_negative_int}

    def validate(self, prefix: str = "sft") -> None:
        check_fields(self, prefix, self.RULES)


@dataclass
class RLConfig:
    # --- ablation switches (docs/method.md section 8) ---
    decoder: str = "ved"              # candidate decoder: one of RL_DECODERS
    sibling: bool = True              # add Sibling-GRPO's loss
    value_loss: bool = True           # train the value head with the TD loss
    n_candidates: int = 16            # G
    # --- optimisation ---
    steps: int = 100                  # RL steps (after the value warm-up steps)
    users_per_step: int = 64
    updates_per_batch: int = 1        # > 1 reuses a batch with PPO clipping
    lr: float = 1e-4
    value_lr: float = 1e-3            # the (freshly initialised) value head learns faster
    weight_decay: float = 0.0
    warmup_steps: int = 5
    schedule: str = "cosine"          # "cosine" | "constant" (after warmup)
    grad_clip: float = 1.0            # max gradient norm of the policy loss (GRPO + sibling)
    value_grad_clip: float = 1.0      # max gradient norm of the value loss, clipped on its own
                                      # (docs/method.md section 9, "Separate gradient clipping")
    clip_eps: float = 0.2
    kl_beta: float = 1e-3
    w_sib: float = 1.0
    w_value: float = 1.0
    adv_eps: float = 1e-4
    # --- rewards and value targets ---
    reward: str = "rule_plus_rank_penalty"
    # Sibling advantages are computed on this reward (a name of vstar.train.rewards.REWARDS), or
    # on the step's reward with "same" (the paper; the ablation). docs/method.md section 5.
    sibling_reward: str = "prefix_partial_credit"
    sibling_std_floor: float = 0.0    # Eq. 18 divides by max(std, floor) + eps (0: the paper)
    gamma: float = 0.99
    level_weights: list[float] | None = None   # None: (0.3, 0.5, 1.0) for L=3 (see advantages.py)
    prefix_emb: str = "bucket_mean"            # "bucket_mean" | "single_item"
    # --- the value head (docs/method.md sections 4 and 9) ---
    value_warmup_steps: int = 20      # value-only steps on the SFT policy's groups, before RL
                                      # (run only with value_loss; not counted in ``steps``)
    value_updates_per_step: int = 8   # value-head updates per step: the joint one, then head-only
                                      # refits on the step's detached states (no backbone pass)
    value_targets: str = "tree"       # "tree": TD targets on every node VED evaluated too;
                                      # "candidates": on the returned candidates only
    # Decision: the TD loss trains the value head on the backbone's hidden states without moving
    # the backbone (hidden.detach()). With gradients into the backbone, a tiny generator's policy
    # got worse on our toy check (tests/train/test_train_trainer.py); set True to let them flow.
    value_grad_to_backbone: bool = False
    value_diag_every: int = 10        # steps between value diagnostics (0: none; needs gate always)
    value_gate: str = "chance"        # when VED starts using V: one of RL_VALUE_GATES
    value_gate_margin: float = 0.1    # V's mean rank percentile of the target's prefix must beat
                                      # the reference (0.5 or log pi's) by this much
    # --- decoders ---
    value_beam_weight: float = 1.0    # decoder "value_beam": eta of log pi + eta * V(parent)
                                      # (vstar.decode.beam.beam_search; HEPO's decoder)
    temperature: float = 1.0          # decoder "sample"
    top_k: int = 0
    ved: VEDConfig = field(default_factory=VEDConfig)
    value_head: ValueHeadConfig = field(default_factory=ValueHeadConfig)
    # --- bookkeeping ---
    checkpoint_every: int = 50        # steps between rl_state checkpoints (0: only at the end)
    log_every: int = 10
    # --- A2PO (S-GRec): business + semantic reward (docs/method.md "A2PO and DRPO") ---
    a2po: str = "off"                 # one of RL_A2PO: how the two rewards' advantages combine
    semantic_fraction: float = 1.0    # share of a step's groups the semantic judge scores
    semantic_train_steps: int = 300   # Adam steps of the judge's aggregator (pairwise loss)
    item_value_column: str = ""       # item feature multiplying the business reward ("": none)
    # --- DRPO: offline training on a logged (history, item, return) set (same section) ---
    drpo_mode: str = "topk"           # one of RL_DRPO_MODES: the per-sample weight
    drpo_alpha: float = 0.3           # topk: the kept top fraction of the log's returns, (0, 1]
    drpo_tau: float = 1.0             # awr: temperature of exp(A / tau)
    drpo_max_weight: float = 20.0     # awr: weights clipped at this value
    drpo_nll_lambda: float = 1.0      # soft_nll: negatives weighted by exp(-lambda * NLL / L)
    drpo_rating_center: float = 3.0   # return of a logged item = its rating - this
    drpo_negatives: float = 0.5       # injected random items per logged sample (expected)
    drpo_negative_return: float = -2.0   # the return of an injected random item

    # one rule per field (vstar.core.validate); a new field needs an entry here
    RULES = {
        "decoder": one_of(*RL_DECODERS), "sibling": boolean(), "value_loss": boolean(),
        "n_candidates": at_least(2), "steps": count, "users_per_step": count,
        "updates_per_batch": count, "lr": positive, "value_lr": positive,
        "weight_decay": non_negative, "warmup_steps": non_negative_int,
        "schedule": one_of(*SCHEDULES), "grad_clip": positive, "clip_eps": positive,
        "kl_beta": non_negative, "w_sib": non_negative, "w_value": non_negative,
        "adv_eps": positive, "reward": registered(_reward_names), "gamma": probability,
        "level_weights": optional(list_of(non_negative, nonempty=True)),
        "prefix_emb": one_of(*PREFIX_EMBEDDINGS), "value_warmup_steps": non_negative_int,
        "value_grad_to_backbone": boolean(), "temperature": positive, "value_beam_weight": non_negative, "top_k": non_negative_int,
        "checkpoint_every": non_negative_int, "log_every": count,
        "value_grad_clip": positive,
        "sibling_reward": registered(lambda: [RL_SIBLING_SAME] + _reward_names()),
        "sibling_std_floor": non_negative, "value_updates_per_step": count,
        "value_targets": one_of(*RL_VALUE_TARGETS), "value_diag_every": non_negative_int,
        "value_gate": one_of(*RL_VALUE_GATES), "value_gate_margin": non_negative,
        # A2PO and DRPO
        "a2po": one_of(*RL_A2PO), "semantic_fraction": probability,
        "semantic_train_steps": count, "item_value_column": text(nonempty=False),
        "drpo_mode": one_of(*RL_DRPO_MODES), "drpo_alpha": between(0.0, 1.0),
        "drpo_tau": positive, "drpo_max_weight": positive, "drpo_nll_lambda": non_negative,
        "drpo_rating_center": number, "drpo_negatives": non_negative,
        "drpo_negative_return": number,
    }

    # --- other RL methods (docs/method.md "Other RL methods"; registry: gspo, dapo,
    # grpo_beam_tree, hepo, hepo_vbeam, sdpo) ---
    advantage: str = "grpo"           # the clipped loss's advantage: one of RL_ADVANTAGES
    ratio_level: str = "token"        # "sequence": GSPO's ratio exp(mean_l log rho_l) per item
    clip_eps_high: float | None = None  # DAPO: clip the ratio to [1-clip_eps, 1+clip_eps_high]
                                        # (None: clip_eps; acts only with updates_per_batch > 1)
    filter_zero_variance: bool = False  # DAPO: leave users whose rewards all tie out of the
                                        # policy loss
    hepo_alpha: float = 0.1           # HEPO: process reward r_l = alpha * max(0, Delta_l)
    gae_lambda: float = 0.95          # HEPO: GAE lambda over SID levels (gamma: ``gamma``)
    hepo_level_weights: list[float] | None = None  # HEPO: c_l per level (None: l / L)
    policy_loss: str = "clipped"      # "clipped" (GRPO's, with the fields above) or "sdpo"
    sdpo_beta: float = 1.0            # S-DPO: beta of the softmax-DPO loss

    RULES.update({
        "advantage": one_of(*RL_ADVANTAGES), "ratio_level": one_of(*RL_RATIO_LEVELS),
        "clip_eps_high": optional(positive), "filter_zero_variance": boolean(),
        "hepo_alpha": non_negative, "gae_lambda": probability,
        "hepo_level_weights": optional(list_of(non_negative, nonempty=True)),
        "policy_loss": one_of(*RL_POLICY_LOSSES), "sdpo_beta": positive,
    })

    def validate(self, prefix: str = "rl") -> None:
        check_fields(self, prefix, self.RULES)
        require(self.value_gate == "always" or not self.value_loss or self.value_diag_every >= 1,
                f"{prefix}.value_diag_every", self.value_diag_every,
                f">= 1: value_gate {self.value_gate!r} opens on the value diagnostic (or set "
                f"value_gate 'always')")
        require(self.drpo_alpha > 0, f"{prefix}.drpo_alpha", self.drpo_alpha,
                "a fraction in (0, 1]: the share of the log DRPO keeps")
        self.ved.validate(f"{prefix}.ved")
        self.value_head.validate(f"{prefix}.value_head")
        # other RL methods
        require(self.decoder != "value_beam" or self.value_loss, f"{prefix}.value_loss",
                self.value_loss, "true with decoder 'value_beam' (it reads the value head)")
        require(self.advantage != "hepo" or self.value_loss, f"{prefix}.value_loss",
                self.value_loss, "true with advantage 'hepo' (its GAE reads the value head)")
        require(self.advantage != "hepo" or self.decoder != "ved" or self.value_targets != "tree",
                f"{prefix}.value_targets", self.value_targets, "'candidates' with advantage "
                "'hepo' and decoder 'ved' (HEPO's terminal reward needs a candidate item)")
        require(self.policy_loss != "sdpo" or self.advantage == "grpo", f"{prefix}.advantage",
                self.advantage, "'grpo' with policy_loss 'sdpo' (S-DPO reads no advantage)")
