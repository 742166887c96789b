"""RQ-VAE semantic IDs (TIGER, Rajput et al. 2023), small and CPU-friendly.

    x --encoder MLP--> z --L residual codebooks--> z_q = e_1 + ... + e_L --decoder MLP--> x_hat

Level l picks the code c_l nearest to the residual r_l (r_1 = z) and passes on
r_{l+1} = r_l - e_{c_l}. The SID of an item is (c_1, ..., c_L). The decoder's gradient reaches the
encoder through the straight-through estimator z_q = z + sg[e_1 + ... + e_L - z] (sg = stop-gradient).

    loss = ||x - x_hat||^2 + mean_l ( ||sg[r_l] - e_l||^2 + beta ||r_l - sg[e_l]||^2 )

i.e. reconstruction + codebook + commitment terms (mean squared errors). Codebooks are initialised
by residual k-means on the latents of the first batch.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from vstar.core.errors import InputError
from vstar.sid.config import SidConfig
from vstar.sid.kmeans import fit_residual_kmeans
from vstar.sid.types import SemanticIds


def mlp(dims: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers of widths ``dims`` with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(d_in, d_out))
        if i < len(dims) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout > 0 else [nn.ReLU()]
    return nn.Sequential(*layers)


class ResidualQuantizer(nn.Module):
    """L codebooks applied to successive residuals."""

    def __init__(self, codebook_sizes: list[int], dim: int, beta: float):
        super().__init__()
        self.codebooks = nn.ModuleList(nn.Embedding(k, dim) for k in codebook_sizes)
        self.beta = beta

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z [B, D] -> (z_q [B, D] with straight-through gradients, codes [B, L], rq_loss scalar)."""
        residual = z                                                        # r_1 = z
        quantized = torch.zeros_like(z)                                     # e_1 + ... + e_l
        codes, losses = [], []
        for cb in self.codebooks:
            e_all = cb.weight                                               # [K, D]
            dist = (residual.pow(2).sum(1, keepdim=True) - 2 * residual @ e_all.T
                    + e_all.pow(2).sum(1)[None])                            # [B, K]
            idx = dist.argmin(1)                                            # [B]
            e = cb(idx)                                                     # [B, D]
            losses.append(F.mse_loss(e, residual.detach())                  # codebook term
                          + self.beta * F.mse_loss(residual, e.detach()))   # commitment term
            quantized = quantized + e.detach()
            residual = residual - e.detach()                                # r_{l+1} = r_l - e_l
            codes.append(idx)
        z_q = z + (quantized - z).detach()      # straight-through: forward z_q, backward d/dz = 1
        return z_q, torch.stack(codes, 1), torch.stack(losses).mean()


class RQVAE(nn.Module):
    """Encoder MLP -> residual quantiser -> decoder MLP."""

    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int, codebook_sizes: list[int],
                 beta: float = 0.25, dropout: float = 0.0):
        super().__init__()
        self.encoder = mlp([in_dim, *hidden, latent_dim], dropout)
        self.quantizer = ResidualQuantizer(codebook_sizes, latent_dim, beta)
        self.decoder = mlp([latent_dim, *reversed(hidden), in_dim], dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, in_dim] -> (x_hat [B, in_dim], codes [B, L], rq_loss)."""
        z_q, codes, rq_loss = self.quantizer(self.encoder(x))
        return self.decoder(z_q), codes, rq_loss

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        """Residual k-means on the latents of ``x`` [B, in_dim] sets every codebook."""
        z = self.encoder(x).numpy()                                         # [B, D]
        sizes = [cb.num_embeddings for cb in self.quantizer.codebooks]
        _, centroids = fit_residual_kmeans(z, sizes, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        for cb, c in zip(self.quantizer.codebooks, centroids):
            cb.weight[:len(c)] = torch.from_numpy(c)
            if len(c) < cb.num_embeddings:  # batch smaller than K: the other codes start near 0
                cb.weight[len(c):] = 1e-3 * torch.randn(cb.num_embeddings - len(c), c.shape[1],
                                                        generator=gen)

    @torch.no_grad()
    def encode_codes(self, x: torch.Tensor, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        """(latents z float32 [N, D], codes int64 [N, L]) in eval mode."""
        was_training = self.training
        self.eval()
        zs, codes = [], []
        for i in range(0, len(x), batch_size):
            z = self.encoder(x[i:i + batch_size])
            zs.append(z)
            codes.append(self.quantizer(z)[1])
        self.train(was_training)
        return torch.cat(zs).numpy(), torch.cat(codes).numpy().astype(np.int64)

    def codebook_vectors(self) -> list[np.ndarray]:
        """Per-level codebooks: list of float32 [K_l, D]."""
        return [cb.weight.detach().numpy().copy() for cb in self.quantizer.codebooks]


def fit_rqvae(emb: np.ndarray, cfg: SidConfig, show_progress: bool = True) -> tuple[RQVAE, dict]:
    """Train an RQ-VAE on item vectors ``emb`` [N, D]; returns (model, JSON-able training stats)."""
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0 or not np.isfinite(emb).all():
        raise InputError(f"expected finite item vectors [n_items, dim], got shape {emb.shape}",
                         field="embeddings")
    sizes = [int(k) for k in cfg.codebook_sizes]
    x = torch.from_numpy(np.ascontiguousarray(emb))                         # [N, in_dim]
    n = len(x)
    t0 = time.time()
    history: list[float] = []
    with torch.random.fork_rng(devices=[]):  # seeded; the caller's global RNG is untouched
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        model = RQVAE(x.shape[1], list(cfg.rqvae_hidden), cfg.rqvae_latent_dim, sizes,
                      cfg.rqvae_beta, cfg.rqvae_dropout)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.rqvae_lr,
                                weight_decay=cfg.rqvae_weight_decay)
        bs = min(cfg.rqvae_batch_size, n)
        first = torch.randperm(n, generator=gen)[:bs]
        model.init_codebooks(x[first], cfg.seed)
        recon = rq = torch.tensor(0.0)
        for _ in tqdm(range(cfg.rqvae_epochs), desc="RQ-VAE", disable=not show_progress):
            perm = torch.randperm(n, generator=gen)
            epoch_loss = 0.0
            for i in range(0, n, bs):
                xb = x[perm[i:i + bs]]                                  # [B, in_dim]
                x_hat, _, rq = model(xb)
                recon = F.mse_loss(x_hat, xb)
                loss = recon + rq
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                epoch_loss += loss.item() * len(xb)
            history.append(epoch_loss / n)
    stats = {
        "epochs": cfg.rqvae_epochs,
        "steps": cfg.rqvae_epochs * ((n + bs - 1) // bs),
        "final_recon_loss": recon.item(),
        "final_rq_loss": rq.item(),
        "loss_per_epoch": [round(v, 6) for v in history],
        "train_seconds": round(time.time() - t0, 3),
    }
    return model, stats


def train_rqvae(emb: np.ndarray, cfg: SidConfig,
                show_progress: bool = True) -> tuple[SemanticIds, dict]:
    """RQ-VAE SIDs (before collision handling) for item vectors ``emb`` [N, D], and training stats."""
    model, stats = fit_rqvae(emb, cfg, show_progress)
    _, codes = model.encode_codes(torch.from_numpy(np.asarray(emb, dtype=np.float32)))
    return SemanticIds(codes=codes, codebook_sizes=[int(k) for k in cfg.codebook_sizes]), stats
