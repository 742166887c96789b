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


def state_log_probs(level_log_probs: torch.Tensor) -> torch.Tensor:
    """log pi of each state's prefix [..., L] from the per-level log-probs of a path [..., L]:
    s_1 (no code yet) 0, s_l the sum of the first l-1 levels (the states of
    ``score_candidates(...).hidden``)."""
    lp = level_log_probs.float()
    return torch.cat([torch.zeros_like(lp[..., :1]), lp.cumsum(-1)[..., :-1]], dim=-1)


class ValueHead(nn.Module):
    """V_phi: hidden state [..., D] -> scalar value [...] (Linear - Tanh - Linear).

    The last layer starts near zero, so an untrained head predicts V ~ 0 everywhere and VED's
    ranking starts out as the policy's likelihood ranking. Pass ``hidden.detach()`` to train the
    head without moving the backbone.

    With ``cfg.prior == "policy"`` the head also reads the policy's log-probability of the
    state's prefix (``log_prob``, the sum of its codes' log pi; 0 for s_1) and returns
    ``w * exp(log_prob) + MLP(hidden)``, w a learned scale starting at ``cfg.prior_scale``:
    before any training V is the policy's probability that the target lies under the state,
    i.e. the expected hit reward if the policy is calibrated, and the MLP learns the
    correction (docs/method.md section 9, "Value prior"). Callers that hold the prefix's
    log-probability pass it whenever ``reads_log_prob`` is True (VED, the RL trainer).
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
        self.reads_log_prob = cfg.prior == "policy"
        self.prior_scale = (nn.Parameter(torch.tensor(float(cfg.prior_scale)))
                            if self.reads_log_prob else None)

    def forward(self, hidden: torch.Tensor, log_prob: torch.Tensor | None = None) -> torch.Tensor:
        """hidden [..., D] (a state's last-token hidden state) -> V [...] (float32, also inside an
        autocast region: the value of a bf16 backbone's state is computed in float32).
        ``log_prob`` [...]: log pi of the state's prefix, required with the policy prior (and
        ignored without it); it is read detached (the value loss never moves the policy)."""
        if hidden.shape[-1] != self.d_model:
            raise ValueError(f"value head expects hidden size {self.d_model}, "
                             f"got {hidden.shape[-1]}")
        w = self.net[1].weight
        with torch.autocast(hidden.device.type, enabled=False):   # float32 under run.autocast
            v = self.net(hidden.to(w.dtype)).squeeze(-1).float()
            if self.reads_log_prob:
                if log_prob is None:
                    raise ValueError("a value head with prior 'policy' needs the states' "
                                     "log_prob (rl.value_head.prior)")
                if log_prob.shape != v.shape:
                    raise ValueError(f"log_prob has shape {tuple(log_prob.shape)}, the states "
                                     f"{tuple(v.shape)}")
                v = v + self.prior_scale * log_prob.detach().float().exp()
            return v
