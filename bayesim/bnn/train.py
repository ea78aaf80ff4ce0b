"""SVI training of a mean-field BNN: ELBO with the KL scaled per mini-batch, Adam, optional KL warm-up.

loss per mini-batch = mean cross-entropy (one weight draw per batch) + beta * KL / N_train, where beta
rises linearly from 0 to 1 over `kl_warmup_epochs` (1 throughout when 0). With a strategy other than
`fp` the quantizers sit in the forward pass with straight-through gradients (quantization-aware
training); `init_from` starts from a checkpoint's mu / rho (e.g. an FP32 model, for 1-2 epochs of QAT).
Runs on CUDA when present (`device: auto`), else on the CPU.

Threads: the CPU steps run on `num_threads` torch threads (default 2, whatever the machine's core count), set
after the data is loaded (loading may change torch's setting: the Ambiguous-MNIST generator runs on one
thread) and checked at every epoch; each epoch's record holds the count it ran on (`torch_threads`), and the
caller's setting is restored afterwards. The same seed and `num_threads` give the same weights; another
`num_threads` changes them in the last bits, because torch splits its matrix products and sums by thread
count (a few 1e-8 to 1e-7 after a few steps).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np

from bayesim.bnn.config import ModelConfig
from bayesim.config.schema import spec, to_dict
from bayesim.errors import BayesimError, ConfigError


@dataclass(frozen=True)
class TrainData:
    data_dir: Optional[str] = None
    limit: Optional[int] = spec(None, lo=1, doc="train on a seeded random subset of `limit` rows of the whole "
                                                "training set, MNIST and Ambiguous-MNIST alike (quick runs)")


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = spec(5, lo=1)
    batch_size: int = spec(128, lo=1)
    lr: float = spec(1e-3, lo=0.0, lo_open=True)
    seed: int = spec(0, lo=0)
    kl_warmup_epochs: float = spec(0.0, lo=0.0)
    init_from: Optional[str] = None
    data: TrainData = field(default_factory=TrainData)
    out: str = "models/model.safetensors"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = spec(2, lo=1, hi=1024)
    progress: bool = True

    def validate(self):
        if self.init_from is not None and not self.init_from:
            raise ConfigError("init_from must name a checkpoint file or be null", key="init_from")


def _device(name: str):
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise BayesimError("device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def init_from_checkpoint(model, path: str) -> None:
    """Copy mu / rho (and bounded-activation clip levels) of a checkpoint into `model` (same
    architecture); quantizer ranges are recalibrated."""
    from safetensors.torch import load_file

    from bayesim.bnn.checkpoint import check_values, read_metadata, verify_tensors

    meta = read_metadata(path)
    verify_tensors(path, meta)
    arch = (meta.get("model") or {}).get("arch")
    if arch != model.cfg.arch:
        raise ConfigError(f"checkpoint {path} holds a {arch!r} model, the config asks for {model.cfg.arch!r}",
                          key="init_from")
    # a ReLU model's `upper` tensors are placeholders: its clip levels are not a starting point
    bounded = ((meta.get("model") or {}).get("activation") or {}).get("kind") == "bounded"
    tensors = load_file(str(path), device="cpu")
    state = model.state_dict()
    import torch

    with torch.no_grad():
        for name, ref in state.items():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "upper" and bounded and name in tensors and tuple(tensors[name].shape) == tuple(ref.shape):
                check_values(name, tensors[name], str(path))
                ref.copy_(tensors[name])  # start from the checkpoint's clip levels
                continue
            if leaf not in ("mu_w", "rho_w", "mu_b", "rho_b"):
                continue
            t = tensors.get(name)
            if t is None or tuple(t.shape) != tuple(ref.shape):
                raise BayesimError(f"{path}: tensor {name!r} is missing or has shape "
                                   f"{None if t is None else tuple(t.shape)}; the model needs {tuple(ref.shape)}")
            check_values(name, t, str(path))
            ref.copy_(t)
    model.calibrate()


def limit_rows(x: np.ndarray, y: np.ndarray, limit: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of `limit` rows, in their original order (all rows when limit >= len(x)): the
    training set is MNIST followed by Ambiguous-MNIST, so its first rows would be MNIST only."""
    if limit >= len(x):
        return x, y
    from bayesim.rng import derive_key, generator

    idx = np.sort(generator(derive_key(seed, "train-limit")).permutation(len(x))[:limit])
    return x[idx], y[idx]


def train(cfg: TrainConfig, x=None, y=None, log=print):
    """Train a BNN for `cfg`; `x` [N,1,28,28] float32 / `y` [N] int64 default to `bayesim.data.load_train`.

    Returns (model on CPU with frozen ranges, history list of per-epoch dicts).
    """
    import torch

    threads = torch.get_num_threads()
    try:
        return _train(cfg, x, y, log)
    finally:
        torch.set_num_threads(threads)  # the caller's setting, whatever loading and training did to it


def _train(cfg: TrainConfig, x, y, log):
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from bayesim.bnn.models import build_model

    torch.manual_seed(cfg.seed)
    if x is None:
        from bayesim.data import load_train

        x, y = load_train(cfg.data.data_dir, seed=cfg.seed)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    if cfg.data.limit is not None:
        if cfg.data.limit >= len(x) and log:
            log(f"data.limit {cfg.data.limit} >= the {len(x)} training rows: all of them are used")
        x, y = limit_rows(x, y, cfg.data.limit, cfg.seed)
    if len(x) == 0:
        raise BayesimError("training data: empty split (0 rows)")
    if len(x) != len(y):
        raise BayesimError(f"training data: {len(x)} images but {len(y)} labels")
    if int(y.max()) >= cfg.model.num_classes or int(y.min()) < 0:
        raise ConfigError(f"{cfg.model.num_classes} is too small: the training labels go from {int(y.min())} to "
                          f"{int(y.max())} (need >= {int(y.max()) + 1})", key="model.num_classes")
    dev = _device(cfg.device)
    model = build_model(cfg.model)
    if cfg.init_from:
        init_from_checkpoint(model, cfg.init_from)
    model.to(dev).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    learned = [p for n, p in model.named_parameters()
               if p.requires_grad and n.rsplit(".", 1)[-1] in ("mu_step", "w_step", "upper")]
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n = len(x)
    gen = torch.Generator().manual_seed(cfg.seed)
    n_batches = math.ceil(n / cfg.batch_size)
    history = []
    for epoch in range(cfg.epochs):
        torch.set_num_threads(cfg.num_threads)  # after loading, and again should anything have changed it
        perm = torch.randperm(n, generator=gen)
        tot_loss = tot_nll = tot_correct = seen = 0.0
        t0 = time.perf_counter()
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if cfg.progress else True)  # None: no bar unless stderr is a terminal
        for bi in bar:
            idx = perm[bi * cfg.batch_size:(bi + 1) * cfg.batch_size]
            xb, yb = xt[idx].to(dev, non_blocking=True), yt[idx].to(dev, non_blocking=True)
            beta = 1.0 if cfg.kl_warmup_epochs <= 0 else min(1.0, (epoch + bi / n_batches) / cfg.kl_warmup_epochs)
            logits = model(xb)
            nll = F.cross_entropy(logits, yb)
            loss = nll + beta * model.kl() / n
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if learned:
                with torch.no_grad():
                    for t in learned:
                        t.clamp_(min=1e-6)
            if not torch.isfinite(loss):
                where = f"training diverged at epoch {epoch + 1}, batch {bi} (step {epoch * n_batches + bi + 1}, " \
                        f"loss {loss.item()})"
                if epoch == 0 and bi == 0:
                    raise BayesimError(f"{where}: the initial parameters (model.init_rho, model.prior_sigma or "
                                       "init_from) give a non-finite loss before any step")
                raise ConfigError(f"{cfg.lr:g} is too large: {where}; lower it (e.g. to {cfg.lr / 10:g}), or check "
                                  "the data", key="lr")
            b = len(idx)
            tot_loss += loss.item() * b
            tot_nll += nll.item() * b
            tot_correct += (logits.argmax(1) == yb).sum().item()
            seen += b
            bar.set_postfix(loss=f"{tot_loss / seen:.4f}", acc=f"{tot_correct / seen:.4f}")
        kl = float(model.kl().item())
        rec = {"epoch": epoch + 1, "loss": tot_loss / seen, "nll": tot_nll / seen, "accuracy": tot_correct / seen,
               "kl": kl, "beta": beta, "neg_elbo": tot_nll / seen + kl / n, "rows": n,
               "seconds": time.perf_counter() - t0, "torch_threads": torch.get_num_threads()}
        if rec["torch_threads"] != cfg.num_threads:  # changed during the epoch (another thread of the caller's)
            import warnings

            warnings.warn(f"torch's thread count changed to {rec['torch_threads']} during epoch {epoch + 1} "
                          f"(num_threads is {cfg.num_threads}): its weights may differ in the last bits from "
                          "another run of this config", RuntimeWarning, stacklevel=2)
        history.append(rec)
        if log:
            log(f"epoch {epoch + 1}/{cfg.epochs}: loss {rec['loss']:.4f} (nll + beta KL/N, beta up to {beta:.2f}) "
                f"nll {rec['nll']:.4f} -ELBO {rec['neg_elbo']:.4f} train acc {rec['accuracy']:.4f} "
                f"({rec['seconds']:.1f} s)")
    model.cpu().eval()
    model.calibrate(keep_learned=True)
    return model, history


def train_and_save(cfg: TrainConfig, out: str | None = None, source: str = "<dict>", log=print):
    """Train, then write the checkpoint (metadata: training config, history, final metrics)."""
    from bayesim._io import check_out_file
    from bayesim.bnn.checkpoint import check_values, save_model

    path = cfg.out if out is None else out  # an empty --out is refused, not replaced by the config's
    check_out_file(path, f"{source}: out" if out is None else "--out")  # before the training, not after it
    try:
        model, history = train(cfg, log=log)
    except ConfigError as e:  # a key that does not fit the data (model.num_classes): name the config
        if e.source is None:
            raise ConfigError(e.message, source, e.key) from None
        raise
    for name, t in model.state_dict().items():  # e.g. a huge lr can drive rho to where sigma is 0
        check_values(name, t, f"training result (not written to {path}; lower lr)")
    save_model(model, path, training={**to_dict(cfg), "out": str(path)}, config_source=source, history=history,
               metrics={"train": history[-1]})
    return model, history, path
