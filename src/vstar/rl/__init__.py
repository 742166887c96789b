"""V-STAR's reinforcement learning: rewards, value head, VED, GRPO / Sibling-GRPO, the trainer.

    rewards.py     R(x, y): rule + rank-aware penalty, partial credit, semantic, item value, yours
    advantages.py  GRPO and Sibling-GRPO advantages (Eq. 15-18), dense value rewards, TD targets
    losses.py      clipped policy losses (Eq. 19), k3 KL
    value.py       the value head V_phi on the generator's hidden states
    ved.py         Value-Guided Efficient Decoding (Eq. 10-14)
    trainer.py     one RL step: propose -> reward -> advantages -> loss -> update
"""

from vstar.rl.trainer import RL_PRESETS, RLConfig, RLTrainer
from vstar.rl.value import ValueHead, ValueHeadConfig
from vstar.rl.ved import VEDConfig, VEDResult, make_ved_decoder, value_guided_decode

__all__ = ["RL_PRESETS", "RLConfig", "RLTrainer", "VEDConfig", "VEDResult", "ValueHead",
           "ValueHeadConfig", "make_ved_decoder", "value_guided_decode"]
