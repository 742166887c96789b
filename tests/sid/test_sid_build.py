"""build_sids end to end on synthetic catalogues (no sentence encoder: it is faked or bypassed)."""

import numpy as np
import pytest
from omegaconf import OmegaConf

import vstar.sid.embed as embed
from vstar.core.errors import InputError
from vstar.sid import SidConfig, build_sids, save_index_json
from vstar.sid.types import SemanticIds


@pytest.fixture
def vectors(tmp_path):
    rng = np.random.default_rng(0)
    v = rng.standard_normal((60, 8)).astype(np.float32)
    np.save(tmp_path / "vec.npy", v)
    return tmp_path / "vec.npy", v


@pytest.mark.parametrize("method", ["rkmeans", "balanced_kmeans", "rqvae"])
@pytest.mark.parametrize("collisions", ["extra_level", "reassign"])
def test_every_tokenizer_gives_collision_free_sids(vectors, method, collisions):
    path, v = vectors
    cfg = SidConfig(method=method, codebook_sizes=[4, 4], vectors_path=str(path),
                    collisions=collisions, rqvae_epochs=3, rqvae_hidden=[16], rqvae_latent_dim=4)
    ids = [f"item{i}" for i in range(60)]
    if collisions == "reassign":  # 60 items, 16 two-level SIDs: reassign runs out of free codes
        with pytest.warns(UserWarning, match="falling back to an extra level"):
            sids, report, emb = build_sids(cfg, None, 60, ids, None, show_progress=False)
    else:
        sids, report, emb = build_sids(cfg, None, 60, ids, None, show_progress=False)
    assert sids.is_collision_free() and report["collision_rate_after"] == 0.0
    assert sids.n_levels == 3
    assert (sids.codes < np.array(sids.codebook_sizes)).all()
    np.testing.assert_array_equal(emb, v)
    assert report["method"] == method and report["vectors"].startswith("vectors_path:")
    assert report["collision_rate_before"] > 0


def test_reassign_keeps_levels_when_there_is_room(vectors):
    path, _ = vectors
    cfg = SidConfig(codebook_sizes=[4, 32], vectors_path=str(path), collisions="reassign")
    sids, report, _ = build_sids(cfg, None, 60, list(range(60)), None, show_progress=False)
    assert sids.n_levels == 2 and sids.codebook_sizes == [4, 32] and sids.is_collision_free()


def test_same_seed_same_sids(vectors):
    path, _ = vectors
    cfg = SidConfig(codebook_sizes=[4, 4], vectors_path=str(path))
    a = build_sids(cfg, None, 60, list(range(60)), None, show_progress=False)[0]
    b = build_sids(cfg, None, 60, list(range(60)), None, show_progress=False)[0]
    np.testing.assert_array_equal(a.codes, b.codes)


def test_user_vectors_win_over_text(vectors, monkeypatch):
    path, _ = vectors
    monkeypatch.setattr(embed, "embed_texts", lambda *a, **k: pytest.fail("text was embedded"))
    cfg = SidConfig(codebook_sizes=[4], vectors_path=str(path))
    build_sids(cfg, ["t"] * 60, 60, list(range(60)), None, show_progress=False)


def test_text_is_embedded_and_cached(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(embed, "embed_texts", lambda texts, *a, **k: rng.standard_normal(
        (len(texts), embed.EMBED_DIM)).astype(np.float32))
    texts = [f"item number {i}" for i in range(30)]
    cfg = SidConfig(codebook_sizes=[4, 4])
    _, report, emb = build_sids(cfg, texts, 30, list(range(30)), tmp_path, show_progress=False)
    assert emb.shape == (30, 384) and report["vectors"].startswith("text:")
    _, _, again = build_sids(cfg, texts, 30, list(range(30)), tmp_path, show_progress=False)
    np.testing.assert_array_equal(emb, again)  # second run read the cache, not new random vectors


def test_id_only_data_needs_vectors_or_an_index(tmp_path):
    with pytest.raises(InputError, match="sid.vectors_path"):
        build_sids(SidConfig(), None, 3, ["a", "b", "c"], None)
    sids = SemanticIds(codes=np.array([[0, 1], [0, 1], [2, 0]]), codebook_sizes=[3, 2])
    save_index_json(tmp_path / "index.json", sids, ["a", "b", "c"])
    cfg = SidConfig(method="index_json", index_path=str(tmp_path / "index.json"),
                    codebook_sizes=[8, 8])
    out, report, emb = build_sids(cfg, None, 3, ["a", "b", "c"], None)
    assert emb is None and out.is_collision_free()
    assert report["collision_rate_before"] == pytest.approx(2 / 3)
    assert out.codebook_sizes == [8, 8, 2]


def test_config_is_omegaconf_structured_and_validated():
    cfg = OmegaConf.structured(SidConfig)
    cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(["method=balanced_kmeans",
                                                        "codebook_sizes=[16,16]"]))
    obj = OmegaConf.to_object(cfg)
    assert obj.codebook_sizes == [16, 16] and obj.method == "balanced_kmeans"
    with pytest.raises(InputError, match="sid.method"):
        SidConfig(method="kmeans").validate()
    with pytest.raises(InputError, match="sid.index_path"):
        SidConfig(method="index_json").validate()
    with pytest.raises(InputError, match="sid.codebook_sizes"):
        SidConfig(codebook_sizes=[256, 0]).validate()
