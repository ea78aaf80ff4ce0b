"""The two small networks of the Ambiguous-MNIST recipe and their (deterministic) training loops.

- `VAE`: fully connected 784-512-256 encoder to a 32-d Gaussian latent, mirrored decoder with a
  sigmoid output (pixel intensities in [0, 1]); trained with the Bernoulli ELBO.
- `LeNet`: LeNet-5 style classifier (conv 6@5x5 pad 2, pool, conv 16@5x5, pool, 120, 84, 10); an
  ensemble of them scores how ambiguous (predictive entropy) and how digit-like (mutual information)
  a decoded image is.

Every random draw (initialisation, batch order, reparameterisation noise) comes from an explicit
seed, so training is a pure function of (data, seed) for a fixed thread count and library build.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LATENT_DIM = 32
HIDDEN = (512, 256)


class VAE(nn.Module):
    """784-512-256-(32 mu, 32 log-variance) encoder, 32-256-512-784 sigmoid decoder."""

    def __init__(self):
        super().__init__()
        h1, h2 = HIDDEN
        self.enc = nn.Sequential(nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
        self.mu = nn.Linear(h2, LATENT_DIM)
        self.logvar = nn.Linear(h2, LATENT_DIM)
        self.dec = nn.Sequential(nn.Linear(LATENT_DIM, h2), nn.ReLU(), nn.Linear(h2, h1), nn.ReLU(),
                                 nn.Linear(h1, 784))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.enc(x.reshape(x.shape[0], 784))
        return self.mu(h), self.logvar(h)

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent codes [B, 32] -> images [B, 28, 28] in [0, 1]."""
        return torch.sigmoid(self.dec(z)).reshape(z.shape[0], 28, 28)


class LeNet(nn.Module):
    """LeNet-5 style classifier on [B, 1, 28, 28] pixels in [0, 1]; returns logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def _batches(n: int, batch: int, rng: np.random.Generator):
    order = torch.from_numpy(rng.permutation(n))
    for i in range(0, n, batch):
        yield order[i:i + batch]


def train_vae(x: torch.Tensor, epochs: int, batch: int, lr: float, seed: int, bar=None) -> VAE:
    """A VAE fitted to images x float32 [N, 28, 28] in [0, 1] (Bernoulli likelihood, Adam)."""
    torch.manual_seed(seed)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    flat = x.reshape(x.shape[0], 784)
    model.train()
    for _ in range(epochs):
        for idx in _batches(flat.shape[0], batch, rng):
            xb = flat[idx]
            mu, logvar = model.encode(xb)
            z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
            rec = F.binary_cross_entropy_with_logits(model.decode_logits(z), xb, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            _step(opt, (rec + kl) / xb.shape[0], bar)
    model.eval()
    return model


def train_lenet(x: torch.Tensor, y: torch.Tensor, epochs: int, batch: int, lr: float, seed: int,
                bar=None) -> LeNet:
    """A LeNet fitted to images x [N, 28, 28] in [0, 1] with labels y int64 [N] (cross-entropy, Adam)."""
    torch.manual_seed(seed)
    model = LeNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in range(epochs):
        for idx in _batches(x.shape[0], batch, rng):
            _step(opt, F.cross_entropy(model(x[idx]), y[idx]), bar)
    model.eval()
    return model


def _step(opt, loss: torch.Tensor, bar) -> None:
    """One optimizer step on `loss`, counted on the progress bar when there is one."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if bar is not None:
        bar.update(1)


@torch.no_grad()
def ensemble_probs(models, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """Softmax outputs of every member: float32 [M, N, 10]."""
    out = torch.empty((len(models), x.shape[0], 10), dtype=torch.float32)
    for i in range(0, x.shape[0], batch):
        xb = x[i:i + batch]
        for m, model in enumerate(models):
            out[m, i:i + batch] = torch.softmax(model(xb), dim=1)
    return out


def entropy_mi(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictive entropy [N], mutual information [N], mean probabilities [N, 10]) in nats.

    entropy = H[mean_m p_m]; MI = entropy - mean_m H[p_m] (clipped at 0 against rounding).
    """
    p = probs.double()
    mean = p.mean(0)
    h_mean = -(mean * torch.log(mean.clamp_min(1e-300))).sum(-1)
    h_each = -(p * torch.log(p.clamp_min(1e-300))).sum(-1).mean(0)
    return h_mean, (h_mean - h_each).clamp_min(0.0), mean
