"""Item-level history through the Hugging Face backbone (``model.history: items``,
``model.backbone: hf``): tiny random Qwen2 / Llama models built from configs.

A history item is one input position, embedded as the sum of its code tokens' HF input
embeddings plus an item-ID embedding. What must hold: the teacher-forced training forward
(``item_layout`` as a 4-d mask and explicit positions) computes what decoding computes from a
prompt of item tokens; beam search gives the same items through the shared-history attention
and the per-beam cache; the item table and the item-ID embedding survive save/load; SFT learns.
"""

import numpy as np
import pytest
import torch

from vstar.core.errors import InputError
from vstar.decode import beam_search
from vstar.model import ModelConfig, SidVocab
from vstar.model.backbone import load_model, new_model, save_model
from vstar.model.generator import item_layout
from vstar.model.hf import HFSidLM
from vstar.testing import random_catalogue, tiny_setup
from vstar.train.sft import encode_windows, sft_loss

SIZES = [4, 5, 3]
FAMILIES = ["qwen2", "llama"]


def _model(model_type, seed=0, n_items=40, item_id=True, dtype="float32"):
    codes = random_catalogue(n_items, SIZES, seed)
    vocab = SidVocab(SIZES, n_items=n_items)
    cfg = ModelConfig(history="items", item_id_embedding=item_id, n_layer=2, n_head=2,
                      n_embd=32, dropout=0.0, backbone="hf", dtype=dtype,
                      hf_config={"model_type": model_type})
    torch.manual_seed(seed)
    model = new_model(cfg, vocab, torch.as_tensor(codes), max_history=6).eval()
    if item_id:
        with torch.no_grad():
            model.item_emb.weight.normal_(0, 0.5)      # the item-ID term matters in the checks
    return codes, vocab, model


def test_item_tokens_are_the_sum_of_their_code_rows_plus_the_item_id_row():
    codes, vocab, model = _model("qwen2")
    table = model.lm.get_input_embeddings().weight
    tok = vocab.item_tokens(torch.tensor([[7]]))
    want = table[vocab.code_tokens(torch.as_tensor(codes[7]))].sum(0) + model.item_emb.weight[7]
    assert torch.allclose(model.embed(tok)[0, 0], want, atol=1e-6)
    assert torch.equal(model.embed(torch.tensor([[1, 5]]))[0], table[[1, 5]])
    # positions of a teacher-forced window BOS c c <i1> c c <i2>: anchors 0, 1, 2; codes follow
    L = vocab.n_levels
    win, *_ = encode_windows([np.array([3, 9])], [np.ones(2, bool)], torch.as_tensor(codes), vocab)
    pos, mask = item_layout(win, win != 0, vocab.size)
    assert pos[0].tolist() == [0, 1, 2, 1, 2, 3, 2][:1 + L * 2]
    assert mask[0, 4].tolist() == [True, False, False, True, True, False, False]


@pytest.mark.parametrize("model_type", FAMILIES + ["gpt2", "qwen2-eager"])
def test_prompt_logits_equal_the_teacher_forced_training_forward(model_type):
    """Two windows of different lengths in one right-padded batch: the logits at every
    supervised position equal those of decoding item k from the prompt BOS <i_1>..<i_{k-1}>
    and the codes of item k fed one by one through the cache. GPT-2 (learned positions) and
    the eager attention (which adds the float mask itself) too."""
    family, _, attention = model_type.partition("-")
    codes, vocab, model = _model(family)
    if attention:
        model.lm.config._attn_implementation = attention
    windows = [np.array([3, 17, 8, 25]), np.array([11, 2])]
    tokens, targets, _ = encode_windows(windows, [np.ones(len(w), bool) for w in windows],
                                        torch.as_tensor(codes), vocab)
    L = vocab.n_levels
    with torch.no_grad():
        teacher = model(tokens, pad_mask=tokens != 0, teacher_forced=True).logits   # [2, T, V]
        for n, window in enumerate(windows):
            for k in range(len(window)):
                prompt, _ = vocab.encode_histories([window[:k]], torch.as_tensor(codes))
                out = model(prompt)
                steps, cache = [out.logits[0, -1]], out.cache
                for level in range(L - 1):
                    feed = vocab.token_of(level, torch.tensor([[codes[window[k], level]]]))
                    out = model(feed, cache=cache)
                    steps.append(out.logits[0, -1])
                    cache = out.cache
                for level in range(L):
                    assert targets[n, k * L + level] >= 0
                    assert torch.allclose(teacher[n, k * L + level], steps[level], atol=1e-5,
                                          rtol=1e-5)
    # the layout matters: the plain causal forward of the same window differs
    with torch.no_grad():
        plain = model(tokens[:1, :2 * L + 1]).logits                  # BOS, item 1, item 2
    assert not torch.allclose(plain[0, L:], teacher[0, L:2 * L + 1], atol=1e-3)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_beam_search_is_the_same_through_the_shared_history_and_per_beam_caches(model_type):
    codes, vocab, trie, model, tokens, mask = tiny_setup(n_users=5, history="items",
                                                         backbone=model_type)
    assert isinstance(model, HFSidLM) and model.item_code_tokens is not None
    assert len(set(mask.sum(1).tolist())) > 1                      # left-padded prompts
    assert model.share_history
    shared = beam_search(model, vocab, trie, tokens, mask, width=10)
    model.share_history = False
    per_beam = beam_search(model, vocab, trie, tokens, mask, width=10)
    assert (shared.items >= 0).all() and shared.n_invalid == 0
    assert torch.equal(shared.items, per_beam.items)
    assert torch.allclose(shared.scores, per_beam.scores, atol=1e-5)
    # the history reaches the result: another user's prompt ranks other items
    assert not torch.equal(shared.items[0], shared.items[1])


@pytest.mark.parametrize("model_type", FAMILIES)
def test_save_and_load_give_identical_logits_and_check_the_item_table(tmp_path, model_type):
    codes, vocab, model = _model(model_type)
    tokens, mask = vocab.encode_histories([np.array([3, 17]), np.array([5])],
                                          torch.as_tensor(codes))
    path = save_model(tmp_path / "generator_hf", model, vocab)
    assert {"config.json", "model.safetensors", "sid_vocab.json", "sid_items.safetensors"} <= {
        p.name for p in path.iterdir()}
    back = load_model(path, vocab, torch.as_tensor(codes))
    assert isinstance(back, HFSidLM) and not back.training and back.cfg.history == "items"
    assert torch.equal(back.item_code_tokens, model.item_code_tokens)
    assert torch.equal(back.item_emb.weight, model.item_emb.weight)
    with torch.no_grad():
        assert torch.equal(back(tokens, pad_mask=mask).logits, model(tokens, pad_mask=mask).logits)
    other = codes.copy()
    other[[0, 1]] = other[[1, 0]]                                  # two items' SIDs swapped
    with pytest.raises(InputError, match="item SIDs differ"):
        load_model(path, vocab, torch.as_tensor(other))
    with pytest.raises(InputError, match="model.history"):
        load_model(path, SidVocab(SIZES))                          # a token-level vocabulary
    # without an item-ID embedding only the code table is saved, and it round-trips too
    codes, vocab, plain = _model(model_type, item_id=False)
    save_model(tmp_path / "plain", plain, vocab)
    again = load_model(tmp_path / "plain", vocab, torch.as_tensor(codes))
    assert again.item_emb is None
    with torch.no_grad():
        assert torch.equal(again(tokens, pad_mask=mask).logits, plain(tokens, pad_mask=mask).logits)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_an_sft_step_lowers_the_loss_and_trains_the_item_embedding(model_type):
    codes, vocab, model = _model(model_type)
    windows = [np.array([3, 17, 8, 25]), np.array([11, 2, 30]), np.array([5, 6])]
    tokens, targets, levels = encode_windows(windows, [np.ones(len(w), bool) for w in windows],
                                             torch.as_tensor(codes), vocab)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = sft_loss(model, vocab, tokens, targets, levels)
    opt.zero_grad()
    before.backward()
    assert model.item_emb.weight.grad[[3, 17, 8, 11, 2, 5]].abs().sum() > 0
    assert model.item_emb.weight.grad[[25, 30, 6]].abs().sum() == 0   # last items: inputs never
    opt.step()
    after = sft_loss(model, vocab, tokens, targets, levels)
    assert after.item() < before.item()


def test_bfloat16_weights_and_config_errors():
    codes, vocab, model = _model("llama", dtype="bfloat16")
    assert model.item_emb.weight.dtype == torch.bfloat16
    tokens, *_ = encode_windows([np.array([3, 17])], [np.ones(2, bool)], torch.as_tensor(codes),
                                vocab)
    out = model(tokens, teacher_forced=True)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()
    ModelConfig(backbone="hf", hf_config={"model_type": "qwen2"}).validate()   # items: allowed
    cfg = ModelConfig(history="items", backbone="hf", hf_config={"model_type": "qwen2"})
    with pytest.raises(ValueError, match="item tokens"):
        new_model(cfg, SidVocab(SIZES), torch.as_tensor(codes), 5)
