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


def test_shared_history_cache_computes_what_the_per_row_cache_computes():
    """Rows in any order, users with 0-3 rows, masked suffix tokens, several new tokens."""
    from vstar.model.cache import RowGroups, SharedKVCache

    m = _model()
    torch.manual_seed(1)
    tok = torch.randint(2, 40, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, :2] = False                                       # a left-padded history
    prefix = m(tok, pad_mask=mask).cache
    row_user = torch.tensor([2, 0, 2, 2, 0])                  # user 1 has no row; unsorted
    groups = RowGroups.of(row_user, 3)
    assert groups.per_user == 3 and groups.slot is not None
    x = torch.randn(5, 2, 4, 7)
    assert torch.equal(groups.to_rows(groups.to_grid(x)), x)
    suffix = m(torch.randint(2, 40, (5, 2)), cache=prefix.index_select(row_user)).cache
    own_k = [k[:, :, -2:] for k in suffix.keys]
    own_v = [v[:, :, -2:] for v in suffix.values]
    own_mask = torch.tensor([[True, True], [False, True], [True, False], [True, True],
                             [False, False]])
    shared = SharedKVCache(prefix, row_user, own_k, own_v, own_mask, suffix.next_pos)
    feed = torch.randint(2, 40, (5, 3))
    a = m(feed, cache=shared.materialize())
    b = m(feed, cache=shared)
    assert isinstance(b.cache, SharedKVCache) and b.cache.prefix is prefix
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.hidden, b.hidden, atol=1e-5)
    for ka, kb in zip(a.cache.keys, b.cache.keys):              # the suffix grew by the feed
        assert torch.allclose(ka[:, :, -5:], kb, atol=1e-5)
    assert torch.equal(a.cache.next_pos, b.cache.next_pos)
    # reordering beams reorders only the suffix
    idx = torch.tensor([4, 4, 1])
    re = b.cache.index_select(idx)
    assert re.prefix is prefix and torch.equal(re.row_user, row_user[idx])
    assert torch.allclose(m(feed[idx, :1], cache=re).logits,
                          m(feed[idx, :1], cache=a.cache.index_select(idx)).logits, atol=1e-5)
