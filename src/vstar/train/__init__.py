"""The training stage: SFT of the generator, and V-STAR's RL.

    config.py      SFTConfig, RLConfig (torch-free)
    sft.py         next-item SID cross-entropy, early stopping through a validation callback
    rewards.py     R(x, y): rule + rank-aware penalty, partial credit, semantic, item value, yours
    advantages.py  GRPO and Sibling-GRPO advantages (Eq. 15-18), dense value rewards, TD targets
    losses.py      clipped policy losses (Eq. 19), k3 KL
    rl.py          RLTrainer: propose -> reward -> advantages -> loss -> update, checkpoints
"""

from vstar.train.config import RLConfig, SFTConfig
from vstar.train.rl import RLTrainer
from vstar.train.sft import train_sft

__all__ = ["RLConfig", "RLTrainer", "SFTConfig", "train_sft"]
