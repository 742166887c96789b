"""The Hugging Face backbone behind ``SidLM``: tiny random Qwen2 / Llama / GPT-2 models built from
configs (nothing downloaded). The cache, padding and positions give what a full forward gives;
every decoder, the candidate scorer and the value head run through it unchanged."""

import json

import pytest
import torch

from vstar.core.errors import InputError
from vstar.decode import beam_search, constrained_sample
from vstar.decode.scoring import score_candidates
from vstar.decode.ved import VEDConfig, value_guided_decode
from vstar.model import ModelConfig, SidVocab
from vstar.model.backbone import load_model, new_model, save_model
from vstar.model.cache import KVCache, SharedKVCache
from vstar.model.hf import HFSidLM, new_hf_model
from vstar.model.value import ValueHead
from vstar.testing import HF_TYPES, tiny_hf_model, tiny_setup



@pytest.mark.parametrize("model_type", HF_TYPES)
def test_logits_with_cache_equal_the_full_forward_and_padding_changes_nothing(model_type):
    vocab = SidVocab([4, 5, 3])
    m = tiny_hf_model(vocab, model_type)
    assert isinstance(m, HFSidLM) and m.hidden_size == 32 and m.share_history
    torch.manual_seed(1)
    tok = torch.randint(2, vocab.size, (3, 10))
    full = m(tok)
    assert full.logits.shape == (3, 10, vocab.size) and full.hidden.shape == (3, 10, 32)
    first = m(tok[:, :6])
    step = m(tok[:, 6:8], cache=first.cache)
    last = m(tok[:, 8:], cache=step.cache)
    assert torch.allclose(last.logits, full.logits[:, 8:], atol=1e-5)
    assert torch.allclose(step.hidden, full.hidden[:, 6:8], atol=1e-5)
    # left padding: the real tokens see what they see unpadded, and so does the continuation
    padded = torch.cat([torch.zeros(3, 4, dtype=torch.long), tok[:, :6]], 1)
    mask = torch.cat([torch.zeros(3, 4, dtype=torch.bool), torch.ones(3, 6, dtype=torch.bool)], 1)
    mask[1, 2:4] = True                                  # rows padded by different amounts
    padded[1, 2:4] = tok[1, :2]
    p = m(padded, pad_mask=mask)
    assert torch.isfinite(p.logits).all() and torch.isfinite(p.hidden).all()
    assert torch.allclose(p.logits[[0, 2], 4:], first.logits[[0, 2]], atol=1e-5)
    assert torch.allclose(m(tok[:, 6:8], cache=p.cache).logits[[0, 2]], step.logits[[0, 2]],
                          atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen2", "gpt2"])
def test_masked_cache_entries_and_shared_caches_are_read_as_absent(model_type):
    """VED's caches: [history | ancestors], some ancestors masked out, explicit positions."""
    vocab = SidVocab([4, 5, 3])
    m = tiny_hf_model(vocab, model_type)
    torch.manual_seed(2)
    hist = m(torch.randint(2, vocab.size, (2, 5))).cache
    junk = m(torch.randint(2, vocab.size, (2, 1)), cache=hist).cache   # a token to mask out
    masked = SharedKVCache(hist, torch.tensor([0, 1]), [k[:, :, -1:] for k in junk.keys],
                           [v[:, :, -1:] for v in junk.values],
                           torch.zeros(2, 1, dtype=torch.bool), hist.next_pos.clone())
    feed = torch.randint(2, vocab.size, (2, 1))
    a = m(feed, cache=hist)
    b = m(feed, cache=masked)                            # the shared-history attention
    assert isinstance(b.cache, SharedKVCache) and b.cache.suffix_length == 2
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.hidden, b.hidden, atol=1e-5)
    m.share_history = False
    c = m(feed, cache=masked)                            # materialised by the wrapper
    assert isinstance(c.cache, KVCache) and torch.allclose(a.logits, c.logits, atol=1e-5)
    assert m.lm.config._attn_implementation == "sdpa"    # the model's own attention again


def test_shared_history_attention_with_grouped_query_heads_equals_per_row_caches():
    """Qwen2 with 4 query heads on 1 key/value head: each query head reads the one history copy.
    Rows of users in any order (VED's layout), a suffix of 2 tokens, then one more."""
    vocab = SidVocab([4, 5, 3])
    torch.manual_seed(0)
    cfg = ModelConfig(history="codes", n_layer=2, n_head=4, n_embd=32, dropout=0.0,
                      backbone="hf", hf_config={"model_type": "qwen2", "num_key_value_heads": 1})
    m = new_hf_model(cfg, vocab, 10).eval()
    assert m.lm.config.num_key_value_heads == 1 and m.share_history
    tok = torch.randint(2, vocab.size, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, :3] = False                                   # a left-padded prompt
    hist = m(tok, pad_mask=mask).cache
    assert hist.keys[0].shape == (3, 1, 7, 8)
    row_user = torch.tensor([2, 0, 2, 1, 0])
    feed = torch.randint(2, vocab.size, (5, 2))
    more = torch.randint(2, vocab.size, (5, 1))
    shared = m(feed, cache=SharedKVCache.repeat(hist, row_user))
    shared2 = m(more, cache=shared.cache)
    per_row = m(feed, cache=hist.index_select(row_user))
    per_row2 = m(more, cache=per_row.cache)
    assert torch.allclose(shared.logits, per_row.logits, atol=1e-5)
    assert torch.allclose(shared2.logits, per_row2.logits, atol=1e-5)
    assert torch.allclose(shared2.cache.materialize().keys[1], per_row2.cache.keys[1], atol=1e-6)
    # and the whole sequence read at once gives the same last logits (row 3: user 1 unpadded)
    whole = m(torch.cat([tok[1:2], feed[3:4], more[3:4]], 1))
    assert torch.allclose(whole.logits[0, -1], shared2.logits[3, -1], atol=1e-5)


def test_a_family_without_the_shared_history_path_falls_back_with_a_log_line(caplog):
    vocab = SidVocab([4, 5, 3])
    cfg = ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                      backbone="hf", hf_config={"model_type": "mistral"})
    with caplog.at_level("INFO", logger="vstar.model.hf"):
        m = new_hf_model(cfg, vocab, 5).eval()
    assert not m.share_history
    assert "no shared-history cache" in caplog.text and "mistral" in caplog.text
    torch.manual_seed(0)
    hist = m(torch.randint(2, vocab.size, (2, 4))).cache
    feed = torch.randint(2, vocab.size, (3, 1))
    row_user = torch.tensor([1, 0, 1])
    out = m(feed, cache=SharedKVCache.repeat(hist, row_user))   # materialised
    assert isinstance(out.cache, KVCache)
    assert torch.allclose(out.logits, m(feed, cache=hist.index_select(row_user)).logits)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_constrained_beam_search_through_the_wrapper_equals_brute_force(model_type):
    codes, vocab, trie, model, tokens, mask = tiny_setup(backbone=model_type)
    N, B = len(codes), tokens.shape[0]
    res = beam_search(model, vocab, trie, tokens, mask, width=N)
    with torch.no_grad():
        brute = score_candidates(model, vocab, trie, tokens, mask,
                                 torch.as_tensor(codes)[None].expand(B, N, -1)).log_probs.sum(-1)
    assert res.n_invalid == 0 and (res.items >= 0).all()
    for b in range(B):
        assert sorted(res.items[b].tolist()) == list(range(N))        # catalogue items only
        assert torch.allclose(res.scores[b], brute[b, res.items[b]], atol=1e-4)
        assert res.items[b].tolist() == brute[b].argsort(descending=True).tolist()
    narrow = beam_search(model, vocab, trie, tokens, mask, width=7)
    assert (trie.item_of(narrow.codes) == narrow.items).all()
    assert torch.equal(narrow.items, res.items[:, :7])


def test_sampling_ved_and_the_value_head_run_through_the_wrapper():
    codes, vocab, trie, model, tokens, mask = tiny_setup(backbone="qwen2")
    res = constrained_sample(model, vocab, trie, tokens, mask, 8,
                             generator=torch.Generator().manual_seed(0))
    assert res.n_invalid == 0 and (trie.item_of(res.codes) == res.items).all()
    head = ValueHead(model.hidden_size)
    torch.nn.init.normal_(head.net[4].weight, std=1.0)
    ved = value_guided_decode(model, head, vocab, trie, tokens, mask, 6,
                              VEDConfig(init_beam=2))
    assert (ved.items >= 0).all() and (trie.item_of(ved.codes) == ved.items).all()
    tree = ved.tree                    # node values equal teacher-forced states (cache holes)
    cat = torch.as_tensor(codes)
    for b in range(tokens.shape[0]):
        ms = [m for m in range(int(tree.n_nodes[b])) if int(tree.depth[b, m]) == 2][:4]
        cand = torch.stack([cat[(cat[:, :2] == tree.codes[b, m, :2]).all(1).nonzero()[0, 0]]
                            for m in ms])[None]
        with torch.no_grad():
            sc = score_candidates(model, vocab, trie, tokens[b:b + 1], mask[b:b + 1], cand)
        for i, m in enumerate(ms):
            assert torch.allclose(tree.value[b, m], head(sc.hidden[0, i, 2]), atol=1e-4)
            assert torch.allclose(tree.log_prob[b, m], sc.log_probs[0, i, :2].sum(), atol=1e-4)
    # scoring with gradients reaches the backbone (RL) and the value head
    sc = score_candidates(model, vocab, trie, tokens, mask, res.codes)
    (sc.log_probs.sum() + head(sc.hidden).sum()).backward()
    assert model.lm.get_input_embeddings().weight.grad.abs().sum() > 0


def test_save_pretrained_layout_round_trips_and_from_pretrained_reads_it(tmp_path):
    from transformers import AutoModelForCausalLM

    codes, vocab, trie, model, tokens, mask = tiny_setup(backbone="llama")
    path = save_model(tmp_path / "generator_hf", model, vocab)
    names = sorted(p.name for p in path.iterdir())
    assert {"config.json", "model.safetensors", "sid_vocab.json"} <= set(names)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]       # no temp folder
    meta = json.loads((path / "sid_vocab.json").read_text())
    assert meta["codebook_sizes"] == [4, 5, 3] and meta["token_offset"] == 0
    back = load_model(path, vocab)
    assert isinstance(back, HFSidLM) and not back.training
    assert torch.allclose(back(tokens, pad_mask=mask).logits, model(tokens, pad_mask=mask).logits,
                          atol=1e-6)
    plain = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert plain.get_input_embeddings().num_embeddings == vocab.size
    save_model(path, model, vocab)                         # overwriting a folder works
    with pytest.raises(InputError, match="codebooks"):
        load_model(path, SidVocab([4, 5, 4]))


def test_a_local_pretrained_folder_gets_the_sid_tokens_appended(tmp_path):
    """model.hf_name_or_path: a (tiny) pretrained text model; SID tokens after its vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    text = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "qwen2", vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64))
    text.save_pretrained(tmp_path / "text_lm")
    vocab = SidVocab([4, 5, 3])
    cfg = ModelConfig(history="codes", backbone="hf", hf_name_or_path=str(tmp_path / "text_lm"))
    model = new_model(cfg, vocab, torch.zeros(1, 3, dtype=torch.long), max_history=5)
    assert model.token_offset == 50
    assert model.lm.get_input_embeddings().num_embeddings == 50 + vocab.size
    out = model(torch.tensor([[1, 2, 8]]))
    assert out.logits.shape == (1, 3, vocab.size)
    save_model(tmp_path / "g", model, vocab)
    assert torch.allclose(load_model(tmp_path / "g", vocab)(torch.tensor([[1, 2, 8]])).logits,
                          out.logits, atol=1e-6)
    with pytest.raises(InputError, match="local Hugging Face model folder"):
        new_model(ModelConfig(history="codes", backbone="hf", hf_name_or_path=str(tmp_path)),
                  vocab, torch.zeros(1, 3), 5)


def test_config_errors_name_the_field():
    vocab = SidVocab([4, 5, 3])
    with pytest.raises(InputError, match="model.hf_config.model_type"):
        new_hf_model(ModelConfig(history="codes", backbone="hf",
                                 hf_config={"model_type": "no-such-model"}), vocab, 5)
    with pytest.raises(InputError, match="model.hf_config.vocab_size"):
        new_hf_model(ModelConfig(history="codes", backbone="hf",
                                 hf_config={"model_type": "qwen2", "vocab_size": 9}), vocab, 5)
    with pytest.raises(InputError, match="model.hf_config"):
        ModelConfig(history="codes", backbone="hf").validate()          # no model_type
    with pytest.raises(InputError, match="model.backbone"):
        ModelConfig(hf_config={"model_type": "qwen2"}).validate()
    bf16 = new_hf_model(ModelConfig(history="codes", backbone="hf", dtype="bfloat16", n_embd=16,
                                    hf_config={"model_type": "llama"}), vocab, 5)
    assert bf16.lm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert bf16(torch.tensor([[1, 2]])).logits.dtype == torch.float32
