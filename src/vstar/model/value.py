"""The value head V_phi(s): a small MLP on the backbone's hidden state (docs/method.md sections 3-4).

State convention (the same everywhere: value training, VED, the RL trainer)::

    s_l = (x, c_<l),  l = 1..L          x = the user's history, c_<l = the first l-1 SID codes
    V(s_l) = value_head(hidden at the LAST token of s_l)

- s_1 = (x,) is read at the history's last token (the prefill's last position);
- s_l for l >= 2 is read at the token of code c_{l-1};
- s_{L+1} (the complete item) is terminal and has no value read (V := 0 in the TD targets).

This is exactly ``score_candidates(...).hidden[:, :, l-1]`` (``vstar.decode.scoring``) for the
candidates' states, and exactly the hidden state VED gets when it evaluates a node of depth l-1
(feeding its last code), so the value used while decoding is the value trained (**causal** by
construction; docs/method.md section 3, Decision). V(s_l) estimates the reward still to be earned from
choosing c_l onwards (the TD targets of ``vstar.train.advantages.td_targets``).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from vstar.model.config import ValueHeadConfig


class ValueHead(nn.Module):
    """V_phi: hidden state [..., D] -> scalar value [...] (Linear - Tanh - Linear).

    The last layer starts near zero, so an untrained head predicts V ~ 0 everywhere and VED's
    ranking starts out as the policy's likelihood ranking. Pass ``hidden.detach()`` to train the
    head without moving the backbone.
    """

    def __init__(self, d_model: int, cfg: ValueHeadConfig | None = None):
        super().__init__()
        cfg = cfg or ValueHeadConfig()
        if d_model <= 0 or cfg.hidden <= 0:
            raise ValueError(f"value head sizes must be positive, got d_model={d_model}, "
                             f"hidden={cfg.hidden}")
        self.cfg = cfg
        self.d_model = int(d_model)
        self.net = nn.Sequential(
            nn.Dropout(cfg.dropout),
            nn.Linear(d_model, cfg.hidden),
            nn.Tanh(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, 1),
        )
        nn.init.normal_(self.net[1].weight, mean=0.0, std=d_model ** -0.5)
        nn.init.zeros_(self.net[1].bias)
        nn.init.normal_(self.net[4].weight, mean=0.0, std=cfg.init_std)
        nn.init.zeros_(self.net[4].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., D] (a state's last-token hidden state) -> V [...] (float32, also inside an
        autocast region: the value of a bf16 backbone's state is computed in float32)."""
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"value head expects hidden size {self.d_model}, "
                             f"got {hidden.shape[-1]}")
        w = self.net[1].weight
        with torch.autocast(hidden.device.type, enabled=False):   # float32 under run.autocast
            return self.net(hidden.to(w.dtype)).squeeze(-1).float()
