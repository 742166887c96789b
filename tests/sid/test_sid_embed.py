"""Item vectors: user-supplied files, the text-embedding cache, and the real sentence encoder."""

import numpy as np
import pytest
from safetensors.numpy import save_file

import vstar.sid.embed as embed
from vstar.core.errors import InputError
from vstar.sid.embed import embed_texts, embed_texts_cached, load_vectors


def test_load_vectors_npy_and_safetensors(tmp_path):
    v = np.arange(12, dtype=np.float64).reshape(4, 3)
    np.save(tmp_path / "v.npy", v)
    save_file({"embeddings": v.astype(np.float32)}, str(tmp_path / "v.safetensors"))
    for name in ("v.npy", "v.safetensors"):
        out = load_vectors(tmp_path / name, n_items=4)
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, v)


def test_load_vectors_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.inf, 0.0]]))
    np.save(tmp_path / "flat.npy", np.zeros(3))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    save_file({"other": np.zeros((2, 2), dtype=np.float32)}, str(tmp_path / "k.safetensors"))
    (tmp_path / "v.txt").write_text("1 2")
    cases = [("nan.npy", "1 rows hold NaN or infinite values \\(first: row 1\\)"),
             ("flat.npy", "expected a 2-D array"),
             ("obj.npy", "could not read"),
             ("k.safetensors", "expected a tensor named 'embeddings', found \\['other'\\]"),
             ("v.txt", "expected a .npy or .safetensors file"),
             ("missing.npy", "not found")]
    for name, message in cases:
        with pytest.raises(InputError, match=message) as err:
            load_vectors(tmp_path / name)
        assert name in str(err.value)
    with pytest.raises(InputError, match="expected one row per item \\(5 rows\\), got 2"):
        load_vectors(tmp_path / "nan.npy", n_items=5)


def test_cache_reuses_file_and_keys_on_texts(tmp_path, monkeypatch):
    calls = []

    def fake_embed(texts, batch_size=64, show_progress=True):
        calls.append(list(texts))
        return np.full((len(texts), embed.EMBED_DIM), len(calls), dtype=np.float32)

    monkeypatch.setattr(embed, "embed_texts", fake_embed)
    a = embed_texts_cached(["x", "y"], tmp_path)
    b = embed_texts_cached(["x", "y"], tmp_path)               # cache hit: no new call
    c = embed_texts_cached(["x", "y "], tmp_path)              # other text: new entry
    assert len(calls) == 2
    np.testing.assert_array_equal(a, b)
    assert c[0, 0] == 2.0
    assert len(list(tmp_path.glob("embeddings/*.safetensors"))) == 2
    assert not list(tmp_path.rglob("*.tmp"))                   # atomic writes leave no temp files


@pytest.mark.slow
def test_real_encoder_similar_sentences_are_closer():
    emb = embed_texts(["a digital caliper for measuring small parts",
                       "electronic vernier caliper with LCD display",
                       "the orchestra played a symphony last night"], show_progress=False)
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    cos = emb @ emb.T
    assert cos[0, 1] > cos[0, 2] + 0.2 and cos[0, 1] > cos[1, 2] + 0.2
