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
from vstar.testing import random_catalogue, stepwise_code_logits, tiny_setup
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
                steps = stepwise_code_logits(model, vocab, codes, window[:k], window[k])
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


# ---------------------------------------------------------------------------------------------
# text prompts: each history item preceded by its title's first tokens (model.hf_prompt=titles)
# ---------------------------------------------------------------------------------------------

WORDS = ["[UNK]", "[PAD]", "the", "toy", "story", "heat", "fargo", "star", "wars", "1995"]
TEXTS = ["the", "toy story 1995", "heat", "fargo star wars the toy", "star wars", "the heat"]


def _tokenizer(folder):
    """A word-level tokenizer over WORDS, saved as a PreTrainedTokenizerFast (offline)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                            pad_token="[PAD]").save_pretrained(folder)
    return str(folder)


def _titled(tmp_path, model_type="qwen2", n_items=12, title_tokens=3):
    from vstar.model.backbone import make_model_vocab

    codes = random_catalogue(n_items, SIZES, 0)
    text = [TEXTS[i % len(TEXTS)] for i in range(n_items)]
    cfg = ModelConfig(history="items", n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                      backbone="hf", hf_config={"model_type": model_type}, hf_prompt="titles",
                      hf_title_tokens=title_tokens, hf_tokenizer=_tokenizer(tmp_path / "tok"))
    cfg.validate()
    vocab = make_model_vocab(cfg, SIZES, n_items, text)
    torch.manual_seed(0)
    model = new_model(cfg, vocab, torch.as_tensor(codes), max_history=6).eval()
    with torch.no_grad():
        model.lm.get_input_embeddings().weight.normal_(0, 1.0)        # text rows matter
    return codes, vocab, model, cfg, text


def test_titles_precede_item_tokens_in_prompts_cut_to_hf_title_tokens(tmp_path):
    codes, vocab, model, _, text = _titled(tmp_path)
    assert vocab.n_text == len(WORDS) and model.text_offset == vocab.size     # rows after SIDs
    assert model.lm.get_input_embeddings().num_embeddings == vocab.size + len(WORDS)
    # item 3's text "fargo star wars the toy" -> its first 3 words; item 0's "the" -> 1 word
    assert text[3] == "fargo star wars the toy"
    assert vocab.item_prefix[3].tolist() == [6, 7, 8] and vocab.item_prefix[0].tolist() == [2]
    tokens, mask = vocab.encode_histories([np.array([0, 3])], torch.as_tensor(codes))
    t0 = vocab.text_start
    assert tokens[0].tolist() == [1, t0 + 2, vocab.size + 0, t0 + 6, t0 + 7, t0 + 8,
                                  vocab.size + 3]
    table = model.lm.get_input_embeddings().weight
    assert torch.equal(model.embed(tokens)[0, 3], table[vocab.size + 6])      # "fargo"


def test_titled_training_forward_equals_decoding_and_sft_and_beam_search_run(tmp_path):
    codes, vocab, model, *_ = _titled(tmp_path)
    windows = [np.array([3, 7, 0, 5]), np.array([11, 2])]
    tokens, targets, levels = encode_windows(windows, [np.ones(len(w), bool) for w in windows],
                                             torch.as_tensor(codes), vocab)
    L = vocab.n_levels
    with torch.no_grad():
        teacher = model(tokens, pad_mask=tokens != 0, teacher_forced=True).logits
    for n, window in enumerate(windows):
        sup = (targets[n] >= 0).nonzero().flatten()
        assert len(sup) == L * len(window)
        for k in range(len(window)):
            at = sup[k * L:(k + 1) * L]                     # consecutive: anchor, then L-1 codes
            assert at.tolist() == list(range(int(at[0]), int(at[0]) + L))
            assert targets[n, at].tolist() == vocab.code_tokens(
                torch.as_tensor(codes[window[k]])).tolist()
            prompt, _ = vocab.encode_histories([window[:k]], torch.as_tensor(codes))
            with torch.no_grad():
                out = model(prompt)
                steps, cache = [out.logits[0, -1]], out.cache
                for level in range(L - 1):
                    out = model(vocab.token_of(level, torch.tensor([[codes[window[k], level]]])),
                                cache=cache)
                    steps.append(out.logits[0, -1])
                    cache = out.cache
            for level in range(L):
                assert torch.allclose(teacher[n, at[level]], steps[level], atol=1e-4, rtol=1e-5)
    # SFT reaches the text rows; beam search is the same with and without the shared history
    model.train()
    sft_loss(model, vocab, tokens, targets, levels).backward()
    grad = model.lm.get_input_embeddings().weight.grad
    assert grad[vocab.size + 6].abs().sum() > 0                      # "fargo" of item 3
    model.eval()
    from vstar.decode import SidTrie
    trie = SidTrie(codes, SIZES)
    prompts, mask = vocab.encode_histories([np.array([3, 7]), np.array([5])],
                                           torch.as_tensor(codes))
    shared = beam_search(model, vocab, trie, prompts, mask, width=5)
    model.share_history = False
    assert torch.equal(shared.items, beam_search(model, vocab, trie, prompts, mask, 5).items)


def test_titled_model_round_trips_and_errors_name_the_field(tmp_path):
    from vstar.model.backbone import make_model_vocab

    codes, vocab, model, cfg, text = _titled(tmp_path)
    tokens, mask = vocab.encode_histories([np.array([3, 7]), np.array([5])],
                                          torch.as_tensor(codes))
    save_model(tmp_path / "g", model, vocab)
    back = load_model(tmp_path / "g", vocab, torch.as_tensor(codes))
    assert back.n_text == len(WORDS) and back.text_offset == vocab.size
    with torch.no_grad():
        assert torch.equal(back(tokens, pad_mask=mask).logits, model(tokens, pad_mask=mask).logits)
    with pytest.raises(InputError, match="model.hf_prompt"):
        load_model(tmp_path / "g", SidVocab(SIZES, n_items=len(codes)), torch.as_tensor(codes))
    shorter = make_model_vocab(ModelConfig(**{**cfg.__dict__, "hf_title_tokens": 2}), SIZES,
                               len(codes), text)                    # other prompts than trained
    with pytest.raises(InputError, match="titles differ"):
        load_model(tmp_path / "g", shorter, torch.as_tensor(codes))
    with pytest.raises(InputError, match="model.hf_prompt.*item text"):
        make_model_vocab(cfg, SIZES, len(codes), None)              # the dataset has no text
    missing = ModelConfig(**{**cfg.__dict__, "hf_tokenizer": str(tmp_path / "nothing")})
    with pytest.raises(InputError, match="model.hf_tokenizer"):
        make_model_vocab(missing, SIZES, len(codes), text)
    with pytest.raises(InputError, match="model.hf_tokenizer"):
        ModelConfig(backbone="hf", hf_config={"model_type": "qwen2"},
                    hf_prompt="titles").validate()                  # no tokenizer configured
    with pytest.raises(InputError, match="model.hf_prompt"):
        ModelConfig(hf_prompt="titles").validate()                  # the native backbone
