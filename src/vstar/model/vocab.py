"""SID tokens: how items become token sequences for the generator.

Layout of the vocabulary (one id range per SID level, so a token says its own level)::

    0               PAD
    1               BOS (start of a user's history)
    2 + off_l + c   code c of level l, off_l = sum of the codebook sizes of the levels before l
    size + i        item i of the catalogue (input only; only when ``n_items > 0``)
    size + n_items + w   text token w of a tokenizer (input only; only with ``item_prefix``)

``size`` is the output vocabulary (what the generator scores). A user's history [i1, i2, ...]
becomes ``BOS c(i1,1) .. c(i1,L) c(i2,1) ..`` (token-level history, ``n_items == 0``) or
``BOS <i1> <i2> ..`` with one item token per history item (item-level history, ``n_items > 0``;
the generator embeds an item token from its codes, ``vstar.model.generator``). With
``item_prefix`` (text prompts of the HF backbone, ``model.hf_prompt: titles``) each item token
is preceded by its text tokens: ``BOS w(i1) <i1> w(i2) <i2> ..``. Either way the generator then
emits the next item's L codes, one per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

PAD, BOS = 0, 1
N_SPECIAL = 2


@dataclass
class SidVocab:
    codebook_sizes: list[int]  # [L]
    n_items: int = 0           # > 0: histories enter as item tokens (item-level history)
    # text before each item token: [n_items] arrays of tokenizer ids in [0, n_text)
    item_prefix: list | None = None
    n_text: int = 0            # the tokenizer's vocabulary (text token ids are below it)

    def __post_init__(self) -> None:
        self.codebook_sizes = [int(k) for k in self.codebook_sizes]
        self.n_items = int(self.n_items)
        self.n_text = int(self.n_text)
        if self.item_prefix is not None:
            if not self.item_history or len(self.item_prefix) != self.n_items:
                raise ValueError("item_prefix needs item tokens and one entry per item "
                                 f"({len(self.item_prefix)} for {self.n_items} items)")
            self.item_prefix = [np.asarray(w, dtype=np.int64) for w in self.item_prefix]
            bad = [i for i, w in enumerate(self.item_prefix)
                   if len(w) and (w.min() < 0 or w.max() >= self.n_text)]
            if bad:
                raise ValueError(f"text token ids of item {bad[0]} are outside [0, {self.n_text})")
        self.offsets = [N_SPECIAL + int(sum(self.codebook_sizes[:l])) for l in range(self.n_levels)]

    @property
    def item_history(self) -> bool:
        return self.n_items > 0

    @property
    def n_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def size(self) -> int:
        """The output vocabulary: PAD, BOS and every code token (item tokens come after it)."""
        return N_SPECIAL + int(sum(self.codebook_sizes))

    def item_tokens(self, items: torch.Tensor) -> torch.Tensor:
        """Item indices [...] -> item token ids [...] (item-level history only)."""
        if not self.item_history:
            raise ValueError("this vocabulary has no item tokens (n_items == 0)")
        return items.long() + self.size

    @property
    def text_start(self) -> int:
        """The vstar id of text token 0 (after the item tokens)."""
        return self.size + self.n_items

    def item_sequence(self, item: int) -> torch.Tensor:
        """The prompt tokens of one history item: its text tokens (if any), then its item
        token (item-level history only)."""
        tok = self.item_tokens(torch.tensor([int(item)]))
        if self.item_prefix is None:
            return tok
        return torch.cat([torch.as_tensor(self.item_prefix[int(item)]) + self.text_start, tok])

    def level_slice(self, level: int) -> slice:
        """Vocabulary ids of the codes of ``level`` (0-based)."""
        return slice(self.offsets[level], self.offsets[level] + self.codebook_sizes[level])

    def code_tokens(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., L] -> token ids [..., L]."""
        offsets = torch.as_tensor(self.offsets, dtype=torch.long, device=codes.device)
        return codes.long() + offsets[: codes.shape[-1]]

    def token_of(self, level: int, codes: torch.Tensor) -> torch.Tensor:
        """Codes of one level [...] -> token ids [...]."""
        return codes.long() + self.offsets[level]

    def encode_histories(self, histories: list[np.ndarray], item_codes: torch.Tensor,
                         max_items: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompts for a batch of histories.

        histories: B arrays of item indices (oldest first). item_codes: [N, L] codes of every item.
        Returns tokens [B, T] and pad_mask [B, T] (True = real token), T = 1 + L * longest history
        (T = 1 + longest history with item-level history).
        """
        L = 1 if self.item_history else self.n_levels
        if max_items is not None:
            histories = [h[-max_items:] for h in histories]
        if self.item_prefix is not None:
            return self._encode_with_text(histories)
        lengths = [len(h) for h in histories]
        T = 1 + L * max(lengths, default=0)
        B = len(histories)
        tokens = torch.full((B, T), PAD, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.bool)
        for b, h in enumerate(histories):
            n = 1 + L * len(h)
            row = torch.empty(n, dtype=torch.long)
            row[0] = BOS
            if len(h) and self.item_history:
                row[1:] = self.item_tokens(torch.as_tensor(h, dtype=torch.long))
            elif len(h):
                row[1:] = self.code_tokens(item_codes[torch.as_tensor(h, dtype=torch.long)]).reshape(-1)
            tokens[b, T - n:] = row
            mask[b, T - n:] = True
        return tokens, mask

    def _encode_with_text(self, histories: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode_histories`` with text before each item token: ``BOS w(i1) <i1> ..``."""
        rows = [torch.cat([torch.tensor([BOS])] + [self.item_sequence(i) for i in h])
                for h in histories]
        T = max((len(r) for r in rows), default=1)
        tokens = torch.full((len(rows), T), PAD, dtype=torch.long)
        mask = torch.zeros((len(rows), T), dtype=torch.bool)
        for b, row in enumerate(rows):
            tokens[b, T - len(row):] = row
            mask[b, T - len(row):] = True
        return tokens, mask
