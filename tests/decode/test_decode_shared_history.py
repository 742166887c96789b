"""One copy of the history per user (``SharedKVCache``): every decoder returns what it returned
with a copy of the history per beam (``share_history=False``, the ``KVCache.index_select`` path
of backbones without a shared cache), on seeded random models with left-padded prompts of
different lengths, token-level and item-level history, and through the Hugging Face backbone
(Qwen2, Llama, GPT-2 with token-level history, Qwen2 with item-level history; its
shared-history attention function against its per-beam ``DynamicCache`` path)."""

import warnings

import pytest
import torch

from vstar.decode import (VEDConfig, beam_search, constrained_sample, score_candidates,
                          value_guided_decode)
from vstar.model import KVCache, ValueHead, ValueHeadConfig
from vstar.model.cache import SharedKVCache
from vstar.testing import HF_TYPES, CountingLM, tiny_setup

# (backbone, history): the native generator with both histories, every HF family tested
HISTORIES = ([("vstar", "codes"), ("vstar", "items")] + [(t, "codes") for t in HF_TYPES]
             + [("qwen2", "items")])
SIZES = (6, 6, 4)
ATOL = 1e-5


def _setup(history, seed=0, n_users=7):
    backbone, history = history if isinstance(history, tuple) else ("vstar", history)
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_items=100, sizes=SIZES, seed=seed,
                                                         n_users=n_users, history=history,
                                                         backbone=backbone)
    assert model.share_history
    assert len(set(mask.sum(1).tolist())) > 1, "prompts of different lengths (left padding)"
    return codes, vocab, trie, model, tokens, mask


def _per_row_and_shared(model, decode):
    """decode() with a copy of the history per row, then with one per user."""
    model.share_history = False
    per_row = decode()
    model.share_history = True
    return per_row, decode()


def _same(a, b):
    assert torch.equal(a.items, b.items)
    assert torch.equal(a.codes, b.codes)
    finite = torch.isfinite(a.scores)
    assert torch.equal(finite, torch.isfinite(b.scores))
    assert torch.allclose(a.scores[finite], b.scores[finite], atol=ATOL, rtol=0)
    assert a.forward_tokens == b.forward_tokens and a.n_invalid == b.n_invalid == 0
    assert torch.equal(a.tokens_per_user, b.tokens_per_user)


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: "-".join(h))
@pytest.mark.parametrize("width", [1, 10, 50])
def test_beam_search_identical_with_one_history_copy_per_user(history, width):
    codes, vocab, trie, model, tokens, mask = _setup(history)
    old, new = _per_row_and_shared(model, lambda: beam_search(model, vocab, trie, tokens, mask,
                                                              width))
    assert (new.items >= 0).all()                          # top-50 of a 100-item catalogue
    _same(old, new)


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: "-".join(h))
def test_seeded_sampling_identical_with_one_history_copy_per_user(history):
    codes, vocab, trie, model, tokens, mask = _setup(history)

    def sample():
        return constrained_sample(model, vocab, trie, tokens, mask, 32, temperature=1.3,
                                  generator=torch.Generator().manual_seed(5))

    _same(*_per_row_and_shared(model, sample))


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: "-".join(h))
@pytest.mark.parametrize("cfg", [VEDConfig(budget=40, init_beam=4),
                                 VEDConfig(budget=60, init_beam=8, expansions_per_round=3,
                                           leaf_score="logp")])
def test_ved_identical_with_one_history_copy_per_user(history, cfg):
    codes, vocab, trie, model, tokens, mask = _setup(history)
    torch.manual_seed(0)
    head = ValueHead(model.hidden_size, ValueHeadConfig(hidden=16, init_std=0.5)).eval()

    def ved():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return value_guided_decode(model, head, vocab, trie, tokens, mask, 16, cfg)

    old, new = _per_row_and_shared(model, ved)
    _same(old, new)
    assert torch.equal(old.tree.parent, new.tree.parent)          # the same search, node by node
    assert torch.allclose(old.tree.value, new.tree.value, atol=ATOL, equal_nan=True)
    assert torch.allclose(old.tree.entropy, new.tree.entropy, atol=ATOL, equal_nan=True)


@pytest.mark.parametrize("history", HISTORIES, ids=lambda h: "-".join(h))
def test_candidate_scores_and_gradients_identical_with_one_history_copy_per_user(history):
    codes, vocab, trie, model, tokens, mask = _setup(history)
    cand = torch.as_tensor(codes[:12]).reshape(1, 12, 3).repeat(tokens.shape[0], 1, 1)
    cand[:, 3] = -1                                                   # a padding row

    def score():
        model.zero_grad()
        sc = score_candidates(model, vocab, trie, tokens, mask, cand)
        (sc.log_probs.sum() + sc.hidden.square().mean()).backward()
        return sc, [p.grad.clone() for p in model.parameters()]

    (old, old_grads), (new, new_grads) = _per_row_and_shared(model, score)
    assert torch.allclose(old.log_probs, new.log_probs, atol=ATOL)
    assert torch.allclose(old.hidden, new.hidden, atol=ATOL)
    assert torch.allclose(old.entropy, new.entropy, atol=ATOL)
    for g_old, g_new in zip(old_grads, new_grads):
        assert torch.allclose(g_old, g_new, atol=1e-4, rtol=1e-4)


class _PerRowOnly(CountingLM):
    """A backbone that takes only a per-row ``KVCache`` (like a Hugging Face wrapper)."""

    def forward(self, tokens, cache=None, pad_mask=None):
        assert cache is None or isinstance(cache, KVCache), type(cache)
        return super().forward(tokens, cache=cache, pad_mask=pad_mask)


def test_a_backbone_without_a_shared_cache_gets_per_row_caches_and_the_same_results():
    codes, vocab, trie, model, tokens, mask = _setup("items")
    plain = _PerRowOnly(model)
    assert not hasattr(plain, "share_history")
    torch.manual_seed(0)
    head = ValueHead(model.hidden_size, ValueHeadConfig(hidden=16, init_std=0.5)).eval()
    cfg = VEDConfig(budget=40, init_beam=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for decode in (lambda m: beam_search(m, vocab, trie, tokens, mask, 10),
                       lambda m: constrained_sample(m, vocab, trie, tokens, mask, 8,
                                                    generator=torch.Generator().manual_seed(1)),
                       lambda m: value_guided_decode(m, head, vocab, trie, tokens, mask, 8, cfg)):
            _same(decode(plain), decode(model))
    assert plain.decode_tokens > 0


def test_shared_cache_rejects_rows_of_unknown_users():
    _, _, _, model, tokens, mask = _setup("codes")
    prefix = model(tokens, pad_mask=mask).cache
    with pytest.raises(ValueError, match="row_user must index"):
        SharedKVCache.repeat(prefix, torch.tensor([0, tokens.shape[0]]))
    with pytest.raises(ValueError, match="1-d int64"):
        SharedKVCache.repeat(prefix, torch.tensor([[0]]))
