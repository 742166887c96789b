"""RQ-VAE tokenizer on tiny synthetic data (CPU, a few seconds)."""

import numpy as np

from vstar.sid.config import SidConfig
from vstar.sid.rqvae import RQVAE, train_rqvae


def tiny_cfg(**kw) -> SidConfig:
    base = dict(method="rqvae", codebook_sizes=[4, 4], rqvae_epochs=30, rqvae_batch_size=64,
                rqvae_hidden=[32], rqvae_latent_dim=8, rqvae_lr=3e-3, seed=0)
    base.update(kw)
    return SidConfig(**base)


def clustered(n_per: int = 40, dim: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = 3.0 * rng.standard_normal((4, dim))
    label = np.repeat(np.arange(4), n_per)
    return (centers[label] + 0.05 * rng.standard_normal((4 * n_per, dim))).astype(np.float32), label


def test_codes_in_range_and_loss_goes_down():
    x, _ = clustered()
    sids, stats = train_rqvae(x, tiny_cfg(), show_progress=False)
    assert sids.codes.shape == (160, 2) and sids.codebook_sizes == [4, 4]
    assert (sids.codes >= 0).all() and (sids.codes < 4).all()
    losses = stats["loss_per_epoch"]
    assert len(losses) == 30 and losses[-1] < 0.5 * losses[0]


def test_first_level_separates_planted_clusters():
    x, label = clustered()
    sids, _ = train_rqvae(x, tiny_cfg(), show_progress=False)
    first = sids.codes[:, 0]
    # each planted cluster is (almost) one first-level code
    purity = sum(np.bincount(first[label == b]).max() for b in range(4)) / len(x)
    assert purity >= 0.9


def test_same_seed_same_codes():
    x, _ = clustered(seed=1)
    a, _ = train_rqvae(x, tiny_cfg(rqvae_epochs=5), show_progress=False)
    b, _ = train_rqvae(x, tiny_cfg(rqvae_epochs=5), show_progress=False)
    np.testing.assert_array_equal(a.codes, b.codes)


def test_straight_through_reaches_the_encoder():
    import torch

    model = RQVAE(6, [8], 3, [2, 2])
    x = torch.randn(10, 6)
    x_hat, codes, rq_loss = model(x)
    torch.nn.functional.mse_loss(x_hat, x).backward()  # reconstruction term only
    assert codes.shape == (10, 2)
    assert model.encoder[0].weight.grad.abs().sum() > 0
