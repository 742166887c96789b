import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from vstar.decode import SidTrie
from vstar.decode.scoring import score_candidates
from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.model.value import ValueHead, ValueHeadConfig




def _model(vocab_size=14, d=16):
    torch.manual_seed(0)
    return SidGenerator(ModelConfig(history="codes", n_layer=1, n_head=2, n_embd=d, dropout=0.0), vocab_size=vocab_size, block_size=32)


def test_value_head_maps_any_leading_shape_to_scalars_and_starts_near_zero():
    head = ValueHead(16, ValueHeadConfig(hidden=8))
    h = torch.randn(3, 4, 5, 16)
    v = head(h)
    assert v.shape == (3, 4, 5) and v.dtype == torch.float32
    assert v.abs().max() < 0.05                      # last layer initialised near zero
    assert head(torch.randn(16)).shape == ()
    with pytest.raises(ValueError, match="hidden size 16"):
        head(torch.randn(2, 15))


def test_value_head_trains_alone_on_detached_hidden_states():
    model = _model()
    head = ValueHead(16, ValueHeadConfig(hidden=8))
    tokens = torch.randint(2, 14, (2, 7))
    hidden = model(tokens).hidden                    # [B, T, D]
    head(hidden.detach()).pow(2).sum().backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    # without detach the backbone receives gradients too (so the check above can fail)
    head(model(tokens).hidden).pow(2).sum().backward()
    assert model.wte.weight.grad is not None and model.wte.weight.grad.abs().sum() > 0


def test_value_reads_the_causal_state_s_l_at_its_last_token():
    """V(s_l) from score_candidates' hidden[:, :, l-1] equals the head applied to a plain forward
    of (history, c_<l) at its last token: the value never looks at c_l or later codes."""
    sizes = [3, 4]
    vocab = SidVocab(sizes)
    codes = np.array([[0, 1], [0, 3], [2, 0]])
    trie = SidTrie(codes, sizes)
    model = _model(vocab.size).eval()
    head = ValueHead(16, ValueHeadConfig(hidden=8, init_std=1.0))
    tokens, mask = vocab.encode_histories([np.array([2, 0])], torch.as_tensor(codes))
    cand = torch.as_tensor(codes)[None]              # [1, 3, 2]
    with torch.no_grad():
        v = head(score_candidates(model, vocab, trie, tokens, mask, cand).hidden)   # [1, 3, 2]
        for g in range(3):
            # s_1 = history only; s_2 = history + c_1
            assert torch.allclose(v[0, g, 0], head(model(tokens).hidden[0, -1]), atol=1e-5)
            seq = torch.cat([tokens, vocab.code_tokens(cand[:, g, :1])], 1)
            assert torch.allclose(v[0, g, 1], head(model(seq).hidden[0, -1]), atol=1e-5)
    # items 0 and 1 share c_1 = 0, so they share V(s_1) and V(s_2); item 2 differs at s_2
    assert torch.allclose(v[0, 0], v[0, 1], atol=1e-6)
    assert not torch.allclose(v[0, 0, 1], v[0, 2, 1], atol=1e-6)


def test_value_head_config_is_omegaconf_structured():
    cfg = OmegaConf.merge(OmegaConf.structured(ValueHeadConfig),
                          OmegaConf.from_dotlist(["hidden=32", "dropout=0.1"]))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, ValueHeadConfig) and obj.hidden == 32 and obj.dropout == 0.1
    assert ValueHead(8, obj).net[1].out_features == 32
