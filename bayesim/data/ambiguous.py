"""Ambiguous-MNIST (the ambiguous third of Dirty-MNIST, Mukhoti et al., "Deep Deterministic Uncertainty").

Images that look like real digits but could be several of them; each carries 10 labels drawn from
what a classifier ensemble believes, so a model evaluated on them faces aleatoric uncertainty.

Two sources, in this order (`load_ambiguous`):

1. The official arrays, when `size` is None: `amnist_samples.pt` (float [12000, 28, 28] or
   [12000, 1, 28, 28] in [0, 1]) and `amnist_labels.pt` (int [12000, 10] in 0..9), looked up in
   `<data_dir>/ambiguous-mnist/` then `<data_dir>/`. The first half of the images is the train split,
   the second half the test split. Read with `torch.load(weights_only=True)` (no code executed).
2. A generated set (`generate_ambiguous`), cached as
   `ambiguous-mnist-generated-s{seed}-n{size}.npz` (+ `.json` manifest with SHA-256 checksums and
   the recipe, + `.ensemble.safetensors`, the scoring ensemble) in `<data_dir>/ambiguous-mnist/`
   when that folder is writable, else in `cache_dir()/data/ambiguous-mnist/`.

The recipe (published one, scaled to run in a few CPU minutes; see docs/ambiguous_mnist.md):
a VAE (784-512-256, 32-d latent) and an ensemble of 5 LeNets trained on MNIST train; candidates are
decoded convex mixtures (uniform Dirichlet weights) of the latent means of 2-4 MNIST digits of
distinct classes; a candidate is kept when the ensemble's mutual information is <= 0.05 nats (it looks
like a real digit) and its predictive entropy lies in [0.05, 3) nats (it is ambiguous); the kept pool
is subsampled with weights inversely proportional to the density of its entropy-histogram bin
(capped), which flattens the entropy distribution toward high entropy; each image gets 10 labels
drawn from the ensemble's mean predictive distribution.

Determinism: the same (MNIST, seed, size) gives the same bytes on the same machine and library build:
every random draw is seeded explicitly, torch runs with deterministic algorithms and a fixed thread
count (`GEN_THREADS`) during generation, and the cache file is written with fixed zip timestamps.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bayesim.errors import DataError, DataMissing

N_CLASSES = 10
N_LABELS = 10
FULL_SIZE = 6000
SUBDIR = "ambiguous-mnist"
OFFICIAL_SAMPLES = "amnist_samples.pt"
OFFICIAL_LABELS = "amnist_labels.pt"
GEN_THREADS = 1  # fixed during generation: bytes do not depend on the machine's core count
CACHE_FORMAT = 1
# Bumped whenever the recipe or its code changes what a (seed, size) generates: caches written by
# another generator version are stale and ignored (regenerated), never mixed with current ones.
# Version 3 trains longer below the full size (epochs scaled in `recipe_for`); a version-2 set whose
# recorded recipe equals today's (the full 6000-per-split set) has the same bytes and stays current.
GENERATOR_VERSION = 3
_SAME_WHEN_RECIPE_EQUAL = (2,)


@dataclass(frozen=True)
class Recipe:
    """Generation parameters (recorded in the manifest); see `recipe_for` for how they scale."""

    n_per_split: int
    n_train_images: int  # MNIST train images the VAE and the ensemble see
    vae_epochs: int = 5
    vae_batch: int = 256
    vae_lr: float = 1e-3
    n_members: int = 5
    lenet_epochs: int = 2
    lenet_batch: int = 256
    lenet_lr: float = 2e-3
    min_digits: int = 2
    max_digits: int = 4
    dirichlet_alpha: float = 1.0
    mi_max: float = 0.05  # nats; keep MI <= mi_max
    entropy_min: float = 0.05  # nats; keep entropy_min <= H < entropy_max
    entropy_max: float = 3.0
    pool_factor: float = 3.0  # kept candidates gathered per image delivered
    chunk: int = 8192  # candidates decoded and scored per round
    max_candidates: int = 0  # give up (DataError) after this many candidates
    entropy_bins: int = 20
    weight_cap: float = 20.0  # max ratio between the subsampling weights of two bins


def recipe_for(n_per_split: int, n_mnist: int) -> Recipe:
    """The recipe for `n_per_split` images per split given `n_mnist` MNIST train images.

    Scaling: the networks see n_train = min(n_mnist, max(6000, 10 * n_per_split)) MNIST images (all
    60,000 for the full 6000-per-split set; 6000 for small test sets). On subsets the networks train
    for more epochs: the VAE max(5, ceil(150000 / n_train)) epochs (25 on 6000 images: about half the full
    set's steps), the LeNets max(2, ceil(36000 / n_train)) (6 on 6000: about as many steps), with batch
    64 instead of 256 under 30,000 images. Trained for the full set's 5 and 2 epochs, a 6000-image
    subset gave an ensemble that kept 0.7-31% of the candidates depending on the seed (so some seeds
    failed at size 200) and put 66-91% of the labels on one class. Candidates are drawn in chunks of
    min(8192, max(1024, 4 * n_per_split)) until pool_factor x (2 x n_per_split) pass the filters, giving
    up (DataError) after max(20 chunks, 60 x 2 x n_per_split) candidates.
    """
    if n_per_split < 1:
        raise DataError(f"Ambiguous-MNIST size must be >= 1 image per split, got {n_per_split}")
    n_train = int(min(n_mnist, max(6000, 10 * n_per_split)))
    batch = 256 if n_train >= 30000 else 64  # small subsets: more, smaller LeNet steps
    chunk = int(min(8192, max(1024, 4 * n_per_split)))
    return Recipe(n_per_split=n_per_split, n_train_images=n_train, chunk=chunk, lenet_batch=batch,
                  vae_epochs=max(5, math.ceil(150000 / n_train)),
                  lenet_epochs=max(2, math.ceil(36000 / n_train)),
                  max_candidates=int(max(20 * chunk, 60 * 2 * n_per_split)))


# ---------------------------------------------------------------------------------------- torch state
@contextlib.contextmanager
def _torch_deterministic(threads: int = GEN_THREADS):
    """Deterministic algorithms, a fixed thread count and a private global RNG for the block."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
            torch.set_num_threads(old_threads)


def _seed(seed: int, *ids) -> int:
    """A 63-bit seed for one component (torch / numpy seeds must be non-negative)."""
    from bayesim.rng import derive_key

    return int(derive_key(int(seed), "ambiguous-mnist", *ids)) & ((1 << 63) - 1)


def _bar(total: int, desc: str, progress: bool, lines: "_PlainLines | None" = None):
    """A progress bar on stderr when it is a terminal (and `progress`); its steps also reach `lines`."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, disable=None if progress else True, leave=False, unit="step")
    return bar if lines is None else _CountedBar(bar, lines, desc.rsplit(": ", 1)[-1], total)


class _PlainLines:
    """Plain progress lines on stderr where no bar is drawn (stderr is not a terminal: a CI log, a redirected
    run), so a generation of several minutes is not silent: the start, each quarter of the work, and the end
    with its time. A stage's share of the work is its share of the full set's time on 2 cores (VAE ~25%,
    ensemble ~45%, candidates ~30%); within a stage, its steps (or kept candidates) count."""

    SHARES = {"VAE": (0.0, 0.25), "ensemble": (0.25, 0.45), "candidates kept": (0.70, 0.30)}

    def __init__(self, progress: bool, seed: int, n_per_split: int):
        import sys

        self.stream = sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.on = bool(progress) and self.stream is not None and not (isatty is not None and isatty())
        self.t0 = time.perf_counter()
        self.next_quarter = 1
        if self.on:
            self._print(f"generating {n_per_split} images per split (seed {seed}); the full set takes 3-5 minutes "
                        "on 2 cores")

    def _print(self, text: str) -> None:
        print(f"Ambiguous-MNIST: {text}", file=self.stream, flush=True)

    def stage(self, name: str, fraction: float) -> None:
        """`fraction` of stage `name` is done: print each quarter of the whole work passed."""
        if not self.on:
            return
        start, share = self.SHARES[name]
        done = start + share * min(max(fraction, 0.0), 1.0)
        while self.next_quarter < 4 and done >= self.next_quarter / 4:
            self._print(f"{25 * self.next_quarter}% ({name}, {time.perf_counter() - self.t0:.0f} s)")
            self.next_quarter += 1

    def done(self, what: str) -> None:
        if self.on:
            self._print(f"done in {time.perf_counter() - self.t0:.0f} s ({what})")


class _CountedBar:
    """A tqdm bar that also reports its stage's progress to `_PlainLines` (and counts steps when disabled)."""

    def __init__(self, bar, lines: _PlainLines, stage: str, total: int):
        self.bar, self.lines, self.stage, self.total, self.n = bar, lines, stage, max(int(total), 1), 0

    def update(self, k: int = 1) -> None:
        self.bar.update(k)
        self.n += k
        self.lines.stage(self.stage, self.n / self.total)

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)


# ---------------------------------------------------------------------------------------- ensemble
class Ensemble:
    """The scoring ensemble: `n_members` LeNets taking pixels in [0, 1]."""

    def __init__(self, models):
        self.models = list(models)

    def probs(self, images) -> np.ndarray:
        """Softmax outputs float32 [M, N, 10] of images [N, 28, 28] (uint8 or float in [0, 1])."""
        from bayesim.data._ambiguous_nets import ensemble_probs

        return ensemble_probs(self.models, _as_unit_tensor(images)).numpy()

    def state(self) -> dict:
        """Flat tensor dict (member index prefix) for safetensors."""
        return {f"m{i}.{k}": v.detach().contiguous() for i, m in enumerate(self.models)
                for k, v in m.state_dict().items()}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> "Ensemble":
        from bayesim.data._ambiguous_nets import LeNet

        members = sorted({int(k.split(".", 1)[0][1:]) for k in state})
        if not members or members != list(range(len(members))):
            raise DataError(f"{source}: not an Ambiguous-MNIST ensemble (member keys m0.., m1.., ...)")
        models = []
        for i in members:
            m = LeNet()
            sub = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"m{i}.")}
            try:
                m.load_state_dict(sub)
            except RuntimeError as e:
                raise DataError(f"{source}: member {i} does not fit the LeNet: {e}") from None
            m.eval()
            models.append(m)
        return cls(models)


def _as_unit_tensor(images):
    import torch

    a = np.asarray(images)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or a.shape[1:] != (28, 28):
        raise DataError(f"images must have shape [N, 28, 28], got {a.shape}")
    if a.dtype == np.uint8:
        a = a.astype(np.float32) * np.float32(1 / 255)
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def ensemble_uncertainty(images, ensemble: Ensemble) -> tuple[np.ndarray, np.ndarray]:
    """(predictive entropy, mutual information) in nats, float64 [N], of images under `ensemble`."""
    import torch

    from bayesim.data._ambiguous_nets import entropy_mi

    h, mi, _ = entropy_mi(torch.from_numpy(ensemble.probs(images)))
    return h.numpy(), mi.numpy()


# ---------------------------------------------------------------------------------------- generation
def _flatten_weights(entropy: np.ndarray, lo: float, hi: float, bins: int, cap: float) -> np.ndarray:
    """Per-candidate weight 1 / (count of its entropy bin), the ratio between bins capped at `cap`."""
    edges = np.linspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, entropy, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    w_bin = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
    floor = w_bin[counts > 0].min() if np.any(counts > 0) else 1.0
    w_bin = np.minimum(w_bin, cap * floor)
    return w_bin[which]


def _weighted_sample(weights: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices drawn with probability proportional to weight (Efraimidis-Spirakis keys)."""
    keys = np.log(rng.random(weights.shape[0])) / weights
    return np.sort(np.argsort(-keys, kind="stable")[:k])


def generate_ambiguous(mnist_images, mnist_labels, n_per_split: int, seed: int, progress: bool = True,
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Generate 2 x n_per_split Ambiguous-MNIST images (train split first, then test).

    mnist_images uint8 [N, 28, 28], mnist_labels int64 [N] (MNIST train). Returns images float32
    [2n, 28, 28] in [0, 1], labels int64 [2n, 10] and a report dict (recipe, counts, timings, mean
    entropy / MI of the kept images in nats).
    """
    images, labels, report, _ = _generate(mnist_images, mnist_labels, n_per_split, seed, progress)
    return images, labels, report


def _check_mnist(x, y) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
        raise DataError(f"MNIST images must be uint8 [N, 28, 28], got {x.dtype} {x.shape}")
    if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"MNIST labels must be integers [{x.shape[0]}], got {y.dtype} {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= N_CLASSES):
        raise DataError("MNIST labels must lie in 0..9")
    present = np.unique(y)
    if present.size < N_CLASSES:
        raise DataError(f"MNIST images must cover all 10 classes, got {present.tolist()}")
    return x, y.astype(np.int64)


def _generate(mnist_images, mnist_labels, n_per_split: int, seed: int, progress: bool):
    import torch

    from bayesim.data._ambiguous_nets import entropy_mi, ensemble_probs, train_lenet, train_vae

    x_all, y_all = _check_mnist(mnist_images, mnist_labels)
    recipe = recipe_for(int(n_per_split), x_all.shape[0])
    r = recipe
    t0 = time.perf_counter()
    timings = {}
    lines = _PlainLines(progress, seed, r.n_per_split)
    with _torch_deterministic():
        # -- the MNIST subset the networks see (all of it at full size)
        rng = np.random.default_rng(_seed(seed, "subset"))
        sub = np.sort(rng.permutation(x_all.shape[0])[:r.n_train_images])
        x_np, y_np = x_all[sub], y_all[sub]
        x = torch.from_numpy(x_np.astype(np.float32) * np.float32(1 / 255))
        y = torch.from_numpy(y_np)
        n_steps = math.ceil(x.shape[0] / r.vae_batch) * r.vae_epochs
        with _bar(n_steps, "Ambiguous-MNIST: VAE", progress, lines) as bar:
            vae = train_vae(x, r.vae_epochs, r.vae_batch, r.vae_lr, _seed(seed, "vae"), bar)
        timings["vae_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        n_steps = math.ceil(x.shape[0] / r.lenet_batch) * r.lenet_epochs * r.n_members
        with _bar(n_steps, "Ambiguous-MNIST: ensemble", progress, lines) as bar:
            models = [train_lenet(x, y, r.lenet_epochs, r.lenet_batch, r.lenet_lr, _seed(seed, "lenet", m), bar)
                      for m in range(r.n_members)]
        timings["ensemble_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        with torch.no_grad():
            mu = torch.cat([vae.encode(x[i:i + 4096])[0] for i in range(0, x.shape[0], 4096)])
        by_class = [np.flatnonzero(y_np == c) for c in range(N_CLASSES)]

        # -- candidates in chunks until the pool is large enough
        need = 2 * r.n_per_split
        target = int(math.ceil(r.pool_factor * need))
        pool_img, pool_probs, pool_h, pool_mi = [], [], [], []
        drawn = kept = 0
        crng = np.random.default_rng(_seed(seed, "candidates"))
        with _bar(target, "Ambiguous-MNIST: candidates kept", progress, lines) as bar:
            while kept < target and drawn < r.max_candidates:
                c = r.chunk
                k = crng.integers(r.min_digits, r.max_digits + 1, size=c)
                classes = np.argsort(crng.random((c, N_CLASSES)), axis=1)[:, :r.max_digits]
                pick = np.empty((c, r.max_digits), dtype=np.int64)
                for cls in range(N_CLASSES):  # one random image of each chosen class (vectorised per class)
                    mask = classes == cls
                    pick[mask] = by_class[cls][crng.integers(0, by_class[cls].size, size=int(mask.sum()))]
                w = crng.dirichlet(np.full(r.max_digits, r.dirichlet_alpha), size=c)
                w[np.arange(r.max_digits)[None, :] >= k[:, None]] = 0.0  # only the first k digits
                # Dirichlet(alpha) restricted to k components and renormalised is Dirichlet(alpha) in k dims
                w /= w.sum(1, keepdims=True)
                z = torch.einsum("cd,cdl->cl", torch.from_numpy(w.astype(np.float32)), mu[torch.from_numpy(pick)])
                with torch.no_grad():
                    img = vae.decode(z)
                # round to the 8-bit pixels that will be stored, so the filter judges the stored images
                img = torch.round(img * 255) * np.float32(1 / 255)
                probs = ensemble_probs(models, img)
                h, mi, mean = entropy_mi(probs)
                ok = (mi <= r.mi_max) & (h >= r.entropy_min) & (h < r.entropy_max)
                ok_np = ok.numpy()
                pool_img.append(img.numpy()[ok_np])
                pool_probs.append(mean.numpy()[ok_np])
                pool_h.append(h.numpy()[ok_np])
                pool_mi.append(mi.numpy()[ok_np])
                drawn += c
                kept += int(ok_np.sum())
                bar.update(min(int(ok_np.sum()), max(0, target - bar.n)))
        timings["candidates_s"] = time.perf_counter() - t2
        if kept < need:
            raise DataError(f"Ambiguous-MNIST generation kept only {kept} of {drawn} candidates, "
                            f"{need} needed; seed {seed}, size {r.n_per_split}")
        img = np.concatenate(pool_img)
        pmean = np.concatenate(pool_probs)
        h = np.concatenate(pool_h)
        mi = np.concatenate(pool_mi)

        # -- flatten the entropy histogram, shuffle, split, draw labels
        srng = np.random.default_rng(_seed(seed, "subsample"))
        weights = _flatten_weights(h, r.entropy_min, min(r.entropy_max, math.log(N_CLASSES)),
                                   r.entropy_bins, r.weight_cap)
        chosen = _weighted_sample(weights, need, srng)
        chosen = chosen[srng.permutation(need)]
        images = img[chosen]
        cdf = np.cumsum(pmean[chosen].astype(np.float64), axis=1)
        cdf /= cdf[:, -1:]
        u = np.random.default_rng(_seed(seed, "labels")).random((need, N_LABELS))
        labels = np.minimum((u[:, :, None] >= cdf[:, None, :]).sum(-1), N_CLASSES - 1).astype(np.int64)
    lines.done(f"kept {kept} of {drawn} candidates")
    report = {
        "seed": int(seed),
        "n_per_split": r.n_per_split,
        "candidates_drawn": drawn,
        "candidates_kept": kept,
        "kept_fraction": kept / drawn,
        "mean_entropy_pool": float(h.mean()),
        "mean_entropy": float(h[chosen].mean()),
        "mean_mi": float(mi[chosen].mean()),
        "max_mi": float(mi[chosen].max()),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
        "generation_s": round(time.perf_counter() - t0, 2),
        "threads": GEN_THREADS,
        "recipe": asdict(r),
    }
    return images.astype(np.float32), labels, report, Ensemble(models)


# ---------------------------------------------------------------------------------------- official files
def _official_paths(data_dir: Path) -> tuple[Path, Path] | None:
    from bayesim._io import not_regular

    for d in (data_dir / SUBDIR, data_dir):
        s, l = d / OFFICIAL_SAMPLES, d / OFFICIAL_LABELS
        for f in (s, l):
            if (why := not_regular(f)):  # a named pipe is neither the file nor its absence
                raise DataError(f"{f}: {why}; expected the official Ambiguous-MNIST tensor file")
        if s.is_file() or l.is_file():
            if not (s.is_file() and l.is_file()):
                missing = l if s.is_file() else s
                raise DataError(f"{missing} is missing: official Ambiguous-MNIST needs both "
                                f"{OFFICIAL_SAMPLES} and {OFFICIAL_LABELS} in {d}")
            return s, l
    return None


def _torch_load_tensor(path: Path):
    import pickle

    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        # torch's own message would advise weights_only=False, i.e. running the file's code: not repeated here
        raise DataError(f"{path}: cannot be read as a plain torch tensor file: corrupt, truncated, or not a tensor "
                        f"saved by torch.save (read with weights_only=True, so no code in it runs; "
                        f"{type(e).__name__})") from None
    if not isinstance(obj, torch.Tensor):
        raise DataError(f"{path}: expected a tensor, found {type(obj).__name__}")
    return obj


def _prepare_cmd(seed: int, size: int, data_dir: Path | None = None) -> str:
    """The `bayesim data prepare` command that generates the set of this seed and size for `data_dir` (named
    with --data-dir unless a bare command finds the same folder)."""
    from bayesim.data.sources import prepare_command

    return prepare_command(data_dir, seed, None if size == FULL_SIZE else size)


def load_official(samples_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The official arrays, validated: images float32 [N, 28, 28] in [0, 1], labels int64 [N, 10]."""
    import torch

    s = _torch_load_tensor(samples_path)
    l = _torch_load_tensor(labels_path)
    if s.ndim == 4 and s.shape[1] == 1:
        s = s[:, 0]
    if s.ndim != 3 or tuple(s.shape[1:]) != (28, 28) or s.shape[0] < 2 or s.shape[0] % 2:
        raise DataError(f"{samples_path}: shape {tuple(s.shape)}, expected [N, 28, 28] (or [N, 1, 28, 28]) "
                        f"with N even (first half train, second half test), e.g. [12000, 28, 28]")
    if not s.is_floating_point():
        raise DataError(f"{samples_path}: dtype {s.dtype}, expected floating pixels in [0, 1]")
    s = s.float()
    if not bool(torch.isfinite(s).all()) or float(s.min()) < 0 or float(s.max()) > 1:
        raise DataError(f"{samples_path}: pixels must be finite and lie in [0, 1] "
                        f"(found min {float(s.nan_to_num().min()):.3g}, max {float(s.nan_to_num().max()):.3g})")
    if l.ndim != 2 or l.shape[0] != s.shape[0] or l.shape[1] < 1:
        raise DataError(f"{labels_path}: shape {tuple(l.shape)}, expected [{s.shape[0]}, 10] "
                        f"(one row of labels per image of {samples_path.name})")
    if l.is_floating_point() or l.is_complex() or l.dtype == torch.bool:
        raise DataError(f"{labels_path}: dtype {l.dtype}, expected integer class labels 0..9")
    l = l.long()
    if int(l.min()) < 0 or int(l.max()) >= N_CLASSES:
        raise DataError(f"{labels_path}: labels must lie in 0..9 (found {int(l.min())}..{int(l.max())})")
    return s.numpy().astype(np.float32, copy=False), l.numpy()


# ---------------------------------------------------------------------------------------- cache
def cache_stem(seed: int, size: int) -> str:
    return f"ambiguous-mnist-generated-s{seed}-n{size}"


def _cache_dirs(data_dir: Path) -> list[Path]:
    from bayesim.paths import cache_dir

    dirs = [data_dir / SUBDIR]
    fallback = cache_dir() / "data" / SUBDIR
    if fallback.resolve() != dirs[0].resolve():
        dirs.append(fallback)
    return dirs


def _declared_read_only(folder: Path) -> bool:
    """True when `folder` exists without any write permission bit (read-only even for root)."""
    try:
        return (folder.stat().st_mode & 0o222) == 0
    except OSError:
        return False


def _write_dir(data_dir: Path) -> Path:
    """`<data_dir>/ambiguous-mnist` when writable, else `cache_dir()/data/ambiguous-mnist`.

    A data folder whose permission bits deny writing counts as read-only even when the process
    could write anyway (root): a shared read-only data set must not be modified.
    A user cache that cannot be written either (no write permission bit, or permission denied) is a DataError
    naming it and $BAYESIM_CACHE, raised before any generation. Nothing is created here (the atomic writes
    create the folders).
    """
    from bayesim.paths import cache_dir, is_writable

    preferred = data_dir / SUBDIR
    if not _declared_read_only(data_dir) and is_writable(data_dir) and is_writable(preferred) \
            and not _declared_read_only(preferred):
        return preferred
    fallback = cache_dir() / "data" / SUBDIR
    if not is_writable(fallback):
        raise _not_writable(data_dir, fallback)
    return fallback


def _not_writable(data_dir: Path, fallback: Path, e: OSError | None = None) -> DataError:
    """The error for a generated set with nowhere to go: neither the data folder nor the user cache is writable."""
    why = f"{e.strerror or e}" if e is not None else "permission denied"
    anc = fallback
    while not anc.exists() and anc != anc.parent:
        anc = anc.parent
    where = f"{fallback} is not writable" if anc == fallback else f"{fallback} cannot be created: {anc} is not writable"
    return DataError(f"the user cache folder {where} ({why}), and neither is the data folder {data_dir}: the "
                     "generated Ambiguous-MNIST cannot be saved; choose a writable cache folder with $BAYESIM_CACHE "
                     "(or a writable data folder with --data-dir, data.dir or $BAYESIM_DATA)")


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive with fixed timestamps, so equal arrays give equal bytes (np.load reads it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            b = io.BytesIO()
            np.lib.format.write_array(b, np.ascontiguousarray(arr), allow_pickle=False)
            zf.writestr(info, b.getvalue())
    return buf.getvalue()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float pixels in [0, 1] -> uint8 (round half to even of x * 255)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def save_cache(folder: Path, seed: int, size: int, images: np.ndarray, labels: np.ndarray, report: dict,
               ensemble: Ensemble | None = None) -> Path:
    """Write the npz (+ ensemble) then the manifest (last, so it only names complete files); returns the npz."""
    import numpy
    import torch

    import bayesim
    from bayesim._io import write_bytes_atomic, write_json_atomic

    stem = cache_stem(seed, size)
    npz = folder / f"{stem}.npz"
    write_bytes_atomic(npz, _npz_bytes({"images": to_uint8(images),
                                        "labels": np.asarray(labels).astype(np.uint8)}))
    files = {npz.name: _sha256(npz)}
    if ensemble is not None:
        from safetensors.torch import save

        ens = folder / f"{stem}.ensemble.safetensors"
        write_bytes_atomic(ens, save(ensemble.state()))
        files[ens.name] = _sha256(ens)
    manifest = {
        "format": CACHE_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "dataset": "Ambiguous-MNIST (generated)",
        "seed": int(seed),
        "n_per_split": int(size),
        "splits": {"train": [0, int(size)], "test": [int(size), 2 * int(size)]},
        "bayesim_version": bayesim.__version__,
        "torch_version": torch.__version__,
        "numpy_version": numpy.__version__,
        "sha256": files,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **{k: v for k, v in report.items() if k not in ("seed", "n_per_split")},
    }
    write_json_atomic(folder / f"{stem}.json", manifest)
    return npz


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable Ambiguous-MNIST manifest ({e})") from None
    except RecursionError:
        raise DataError(f"{path}: unreadable Ambiguous-MNIST manifest (JSON nested too deeply)") from None
    if not isinstance(m, dict) or not isinstance(m.get("sha256"), dict):
        raise DataError(f"{path}: Ambiguous-MNIST manifest lacks its 'sha256' table")
    return m


def load_cache(manifest_path: Path, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [2n, 28, 28] in [0, 1] and labels int64 [2n, 10] of a cached set, verified."""
    m = _read_manifest(manifest_path)
    npz = manifest_path.with_name(f"{cache_stem(seed, size)}.npz")
    want = m["sha256"].get(npz.name)
    if not npz.is_file():
        raise DataError(f"{npz} is missing (named by {manifest_path})")
    got = _sha256(npz)
    if want != got:
        raise DataError(f"{npz}: SHA-256 {got} does not match {want} in {manifest_path.name}: the cache is corrupt")
    for name, digest in m["sha256"].items():  # the other files of the set (the scoring ensemble)
        other = manifest_path.with_name(str(name))
        if other == npz:
            continue
        if not other.is_file():
            raise DataError(f"{other} is missing or not a file (named by {manifest_path}): the cache is corrupt")
        if _sha256(other) != digest:
            raise DataError(f"{other}: SHA-256 does not match {manifest_path.name}: the cache is corrupt")
    try:
        with np.load(npz, allow_pickle=False) as z:
            images_u8, labels = z["images"], z["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f"{npz}: unreadable ({e})") from None
    if images_u8.dtype != np.uint8 or images_u8.shape != (2 * size, 28, 28) or labels.shape != (2 * size, N_LABELS) \
            or labels.max(initial=0) >= N_CLASSES:
        raise DataError(f"{npz}: unexpected content images {images_u8.dtype}{images_u8.shape}, "
                        f"labels {labels.dtype}{labels.shape}; expected uint8 [{2 * size}, 28, 28] and [{2 * size}, 10]")
    return images_u8.astype(np.float32) * np.float32(1 / 255), labels.astype(np.int64)


def _is_current(path: Path, size: int) -> bool:
    """Whether a manifest was written by this generator (or by an older one whose recipe for this size is
    today's: the same bytes). An unreadable manifest counts as current, so load_cache reports it as corrupt."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
        version = m.get("generator_version")
        if version == GENERATOR_VERSION:
            return True
        if version not in _SAME_WHEN_RECIPE_EQUAL:
            return False
        recorded = m.get("recipe")
        return recorded == asdict(recipe_for(size, recorded["n_train_images"]))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return True
    except (AttributeError, KeyError, TypeError, ValueError, DataError):
        return False  # an old manifest without a usable recipe: stale


def find_cache(data_dir: Path, seed: int, size: int) -> Path | None:
    """The manifest of a cached generated set (data folder first, then the per-user cache), or None.

    Manifests of another generator version (stale caches) are skipped.
    """
    for d in _cache_dirs(Path(data_dir)):
        p = d / f"{cache_stem(seed, size)}.json"
        if p.is_file() and _is_current(p, size):
            return p
    return None


def location(data_dir: Path, seed: int = 0, size: int | None = None) -> Path | None:
    """Where `load_ambiguous` reads this set from: the official samples file (size None, when present), else
    the manifest of the cached generated set, or None when neither exists yet."""
    if size is None:
        official = _official_paths(Path(data_dir))
        if official is not None:
            return official[0]
        size = FULL_SIZE
    return find_cache(Path(data_dir), seed, int(size))


def load_ensemble(data_dir: Path, seed: int = 0, size: int | None = None) -> Ensemble:
    """The scoring ensemble saved with a cached generated set (checksum verified, no code executed)."""
    from safetensors.torch import load

    size = FULL_SIZE if size is None else int(size)
    man = find_cache(Path(data_dir), seed, size)
    if man is None:
        raise DataError(f"no generated Ambiguous-MNIST (seed {seed}, size {size}) in {_cache_dirs(Path(data_dir))}")
    path = man.with_name(f"{cache_stem(seed, size)}.ensemble.safetensors")
    want = _read_manifest(man)["sha256"].get(path.name)
    if not path.is_file() or want is None:
        raise DataError(f"{path}: ensemble file missing")
    if _sha256(path) != want:
        raise DataError(f"{path}: SHA-256 does not match {man.name}: the cache is corrupt")
    return Ensemble.from_state(load(path.read_bytes()), str(path))


# ---------------------------------------------------------------------------------------- public loader
def load_ambiguous(data_dir: Path, split: str, seed: int = 0, size: int | None = None, generate: bool = True,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Ambiguous-MNIST `split` ('train' | 'test'): images float32 [N, 28, 28] in [0, 1], labels int64 [N, 10].

    size None: the official files when present, else the full generated set (6000 per split);
    size n: a generated set of n images per split. A missing generated set is generated (MNIST train
    from `data_dir`) and cached when `generate`, else a DataError says how to make it. A corrupt
    cache is regenerated (with a warning) when `generate`, else reported.
    """
    if split not in ("train", "test"):
        raise DataError(f"unknown Ambiguous-MNIST split {split!r}; allowed: 'train', 'test'")
    data_dir = Path(data_dir)
    official_too = size is None  # the official files stand in for the full set only
    if size is None:
        official = _official_paths(data_dir)
        if official is not None:
            images, labels = load_official(*official)
            return _split(images, labels, split)
        size = FULL_SIZE
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"Ambiguous-MNIST size must be a positive integer (images per split), got {size!r}")
    size = int(size)
    man = find_cache(data_dir, seed, size)
    if man is not None:
        try:
            images, labels = load_cache(man, seed, size)
            return _split(images, labels, split)
        except DataError as e:
            if not generate:
                raise DataError(f"{e}; delete {man.parent / cache_stem(seed, size)}.* and run "
                                f"`{_prepare_cmd(seed, size, data_dir)}` to generate it again") from None
            warnings.warn(f"{e}; regenerating", stacklevel=2)
    elif not generate:
        official = (f" and neither {OFFICIAL_SAMPLES} nor {OFFICIAL_LABELS} (the official files) is in "
                    f"{data_dir / SUBDIR} or {data_dir}") if official_too else ""
        raise DataMissing(f"Ambiguous-MNIST (seed {seed}, {size} per split) is not generated yet{official}; run "
                          f"`{_prepare_cmd(seed, size, data_dir)}` to generate it")
    from bayesim.data.sources import load_mnist

    target = _write_dir(data_dir)  # before minutes of generation: a folder that cannot be written is said now
    x, y = load_mnist("train", data_dir)
    images, labels, report, ensemble = _generate(x, y, size, seed, progress)
    try:
        save_cache(target, seed, size, images, labels, report, ensemble)
    except PermissionError as e:
        raise _not_writable(data_dir, target, e) from None
    images = to_uint8(images).astype(np.float32) * np.float32(1 / 255)  # exactly what the cache holds
    return _split(images, labels, split)


def _split(images: np.ndarray, labels: np.ndarray, split: str) -> tuple[np.ndarray, np.ndarray]:
    half = images.shape[0] // 2
    sl = slice(0, half) if split == "train" else slice(half, None)
    return np.ascontiguousarray(images[sl]), np.ascontiguousarray(labels[sl])
