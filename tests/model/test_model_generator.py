import torch

from vstar.model import ModelConfig, SidGenerator, SidVocab
from vstar.model.vocab import BOS, PAD


def _model():
    torch.manual_seed(0)
    return SidGenerator(ModelConfig(history="codes", n_layer=2, n_head=2, n_embd=32, dropout=0.0), vocab_size=40, block_size=32).eval()


def test_kv_cache_decoding_equals_full_forward():
    m = _model()
    tok = torch.randint(2, 40, (3, 10))
    full = m(tok)
    first = m(tok[:, :6])
    step = m(tok[:, 6:8], cache=first.cache)
    last = m(tok[:, 8:], cache=step.cache)
    assert torch.allclose(last.logits, full.logits[:, 8:], atol=1e-5)
    assert torch.allclose(step.hidden, full.hidden[:, 6:8], atol=1e-5)


def test_left_padding_does_not_change_real_tokens():
    m = _model()
    tok = torch.randint(2, 40, (1, 7))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), tok], 1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 7, dtype=torch.bool)], 1)
    a = m(tok)
    b = m(padded, pad_mask=mask)
    assert torch.allclose(a.logits, b.logits[:, 3:], atol=1e-5)
    # and continuing from the padded cache matches continuing from the unpadded one
    nxt = torch.randint(2, 40, (1, 1))
    assert torch.allclose(m(nxt, cache=a.cache).logits, m(nxt, cache=b.cache).logits, atol=1e-5)


def test_vocab_layout_and_history_encoding():
    vocab = SidVocab([3, 4])
    assert vocab.size == 2 + 7
    assert vocab.level_slice(1) == slice(5, 9)
    codes = torch.tensor([[0, 1], [2, 3]])
    tokens, mask = vocab.encode_histories([[1], [0, 1]], codes)
    assert tokens.tolist() == [[PAD, PAD, BOS, 4, 8], [BOS, 2, 6, 4, 8]]
    assert mask.tolist() == [[False, False, True, True, True], [True] * 5]
