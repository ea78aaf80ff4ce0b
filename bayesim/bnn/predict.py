"""Monte-Carlo prediction with the counter-based weight streams shared with the hardware simulator.

Sample s of Bayesian layer l draws eps from `derive_key(seed, "eps_w"|"eps_b", s, l)`; the weights are
mu + sigma * eps in float32 (numpy: product then sum), SPQ-quantized for spq / jq (see `bayesim.bnn.ops`).
The forward pass runs in torch float32; softmax in float32.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from bayesim import rng
from bayesim.bnn import quant as Q
from bayesim.bnn.ops import BayesConvOp, BayesLinearOp
from bayesim.errors import BayesimError


def draw_weights(op: BayesLinearOp | BayesConvOp, seed: int, sample: int, layer: int):
    """Weight and bias of MC sample `sample` of Bayesian layer `layer` (numpy float32)."""
    eps_w = rng.normals(rng.derive_key(seed, "eps_w", sample, layer), op.mu_w.shape)
    eps_b = rng.normals(rng.derive_key(seed, "eps_b", sample, layer), op.mu_b.shape)
    w = op.mu_w + op.sigma_w * eps_w
    b = op.mu_b + op.sigma_b * eps_b
    q = op.quant
    if q.strategy in ("spq", "jq"):
        w = Q.quantize_uniform(w, q.w_step, q.w_bits)
        b = Q.quantize_uniform(b, q.w_step, q.w_bits)
    return w, b


def check_batch(x, what: str) -> np.ndarray:
    """Inputs [N, ...] as C-contiguous float32, refused when empty or not finite (a NaN would silently turn
    the predictions, or after an ADC calibration every range, into NaN)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0 or x.shape[0] == 0:
        raise BayesimError(f"{what}: empty (N = 0): nothing to run")
    if not np.isfinite(x).all():
        raise BayesimError(f"{what}: contain NaN or Inf")
    return x


def check_samples(samples, what: str = "samples") -> int:
    """A Monte-Carlo sample count: a positive integer (not a bool, not a float)."""
    if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
        raise BayesimError(f"{what}: {samples!r} is not allowed; a positive integer")
    return int(samples)


def _check_input(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise BayesimError(f"images: expected shape [N, 1, 28, 28], got {x.shape}")
    return check_batch(x, "images")


@torch.no_grad()
def predict_probs(model, x, samples: int, seed: int, batch_size: int = 1000, workers: int | None = None) -> np.ndarray:
    """Predictive samples [S, N, C] float32 for images `x` [N, 1, 28, 28] (float32).

    Every torch op runs on one thread: a multi-threaded conv/matmul splits its sums by the thread count, so
    the predictions would depend on it (1e-8 differences that reach metrics.json). The cores are used by
    running `workers` (default: torch's thread count on entry) forward passes at once instead, one per
    (sample, batch) item, each single-threaded: the same numbers whatever the number of workers."""
    samples = check_samples(samples)
    x = _check_input(x)
    ops = [op for op in model.export_ops() if isinstance(op, (BayesLinearOp, BayesConvOp))]
    was_training = model.training
    threads = torch.get_num_threads()
    workers = threads if workers is None else check_samples(workers, "workers")
    model.eval()
    torch.set_num_threads(1)
    try:
        xt = torch.from_numpy(x)
        out = np.empty((samples, x.shape[0], model.cfg.num_classes), dtype=np.float32)
        starts = range(0, x.shape[0], batch_size)

        def forward(s, weights, i):
            with torch.no_grad():  # grad mode is per thread
                logits = model(xt[i:i + batch_size], weights)
                out[s, i:i + batch_size] = torch.softmax(logits, dim=1).numpy()

        def weights_of(s):
            return [tuple(torch.from_numpy(a) for a in draw_weights(op, seed, s, l)) for l, op in enumerate(ops)]

        workers = min(workers, samples * len(starts))
        if workers == 1:
            for s in range(samples):
                w = weights_of(s)
                for i in starts:
                    forward(s, w, i)
            return out
        with ThreadPoolExecutor(workers) as pool:  # torch ops release the GIL
            try:
                for s0 in range(0, samples, workers):  # the weights of `workers` samples in memory at a time
                    jobs = [pool.submit(forward, s, w, i)
                            for s, w in ((s, weights_of(s)) for s in range(s0, min(s0 + workers, samples)))
                            for i in starts]
                    for job in jobs:
                        job.result()
            except BaseException:  # an error or Ctrl-C: drop the passes not started yet
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return out
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
