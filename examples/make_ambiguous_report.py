"""Generate (or load) the full Ambiguous-MNIST set and write docs/ambiguous_mnist.md with its figures.

    BAYESIM_CACHE=/tmp/bayesim_cache python examples/make_ambiguous_report.py --data-dir ../shared/data

Numbers: generation time, candidates drawn and kept, and the mean predictive entropy / mutual
information (nats) of MNIST test, Ambiguous-MNIST test and Fashion-MNIST test under the scoring
ensemble saved with the generated set. Figures: 64 test samples with their label distributions, and
entropy / MI histograms of the three splits.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bayesim.data import ambiguous as amb
from bayesim.data.sources import load_fashion, load_mnist

DOC_TEMPLATE = """# Ambiguous-MNIST

Ambiguous-MNIST is the ambiguous third of Dirty-MNIST (Mukhoti et al., *Deep Deterministic
Uncertainty*): images that look like real handwritten digits but could be several of them. Every image
carries 10 labels drawn from a classifier ensemble's belief, so a model evaluated on it faces
*aleatoric* uncertainty (high predictive entropy, low mutual information), while Fashion-MNIST gives
*epistemic* uncertainty (out of distribution).

```python
from bayesim.data.ambiguous import load_ambiguous
x, y = load_ambiguous(data_dir, "test")   # float32 [6000, 28, 28] in [0, 1], int64 [6000, 10]
```

## Where the data comes from
1. **Official arrays** (used when `size` is None and they exist): `amnist_samples.pt`
   (float [12000, 28, 28] or [12000, 1, 28, 28] in [0, 1]) and `amnist_labels.pt` (int [12000, 10]) in
   `<data_dir>/ambiguous-mnist/` or `<data_dir>/`. First half train, second half test. They are read
   with `torch.load(weights_only=True)`: no code from the file runs; wrong shapes, dtypes, NaN or
   values out of range raise a `DataError` naming the file.
2. **Generated** otherwise, by the published recipe below, and cached as
   `ambiguous-mnist-generated-s{{seed}}-n{{size}}.npz` (uint8 images, uint8 labels, written with fixed zip
   timestamps, read with `allow_pickle=False`), `.ensemble.safetensors` (the scoring ensemble) and a
   `.json` manifest (seed, sizes, versions, SHA-256 of both files, timings, kept fraction, mean
   entropy / MI, recipe). The cache goes to `<data_dir>/ambiguous-mnist/` when writable, else to
   `$BAYESIM_CACHE/data/ambiguous-mnist/`. Files are written atomically, the manifest last; on load
   the checksum is verified and a corrupt cache is regenerated (with a warning) or, with
   `generate=False`, reported as a `DataError`.

## The recipe (`bayesim.data.ambiguous.generate_ambiguous`)
| step | setting |
|---|---|
| VAE | 784-512-256 encoder, 32-d Gaussian latent, mirrored sigmoid decoder; Bernoulli ELBO, Adam {vae_lr}, batch {vae_batch}, {vae_epochs} epochs |
| ensemble | {n_members} LeNet-5 (conv 6@5x5, pool, conv 16@5x5, pool, 120, 84, 10); Adam {lenet_lr}, batch {lenet_batch}, {lenet_epochs} epochs each, own seed and batch order |
| candidate | decoded convex mixture of the latent means of {min_digits}-{max_digits} MNIST train digits of distinct classes, weights ~ Dirichlet({dirichlet_alpha}); pixels rounded to 8 bits before scoring |
| filter | ensemble mutual information <= {mi_max} nats (looks like a digit), predictive entropy in [{entropy_min}, {entropy_max}) nats (ambiguous; the maximum is ln 10 = 2.30, so the upper bound never binds) |
| subsample | from a pool of {pool_factor} x the images needed: weights 1 / (count of the candidate's entropy bin), {entropy_bins} bins over [{entropy_min}, ln 10], ratio between bins capped at {weight_cap}; this flattens the entropy histogram toward high entropy |
| labels | 10 per image, drawn from the ensemble's mean predictive distribution |

**Scaling with `size`** (images per split): the networks see min(60000, max(6000, 10 x size)) MNIST
train images (all of them for the full 6000-per-split set); on fewer images the networks train for
more epochs (VAE max(5, ceil(150000 / n)) epochs, LeNets max(2, ceil(36000 / n)), batch 64 below 30,000
images: 25 and 6 epochs on 6000, i.e. about half the full set's VAE steps and as many LeNet steps). With the full
set's epochs a 6000-image subset gave ensembles that kept 0.7-31% of the candidates and put 66-91% of
the labels on one class; now 25-33% and at most 21% (sizes 40-200, seeds 0-3). Candidates are drawn in chunks of
min(8192, max(1024, 4 x size)) until {pool_factor} x 2 x size pass the filter (at most
max(20 x chunk, 120 x size) candidates, then a `DataError`). `size=100` generates in ~25-45 s on 2 shared cores.

**Determinism**: same MNIST, seed and size give the same bytes on the same machine and library
build: every draw comes from a seed derived with `bayesim.rng.derive_key(seed, "ambiguous-mnist", ...)`,
torch runs with deterministic algorithms on one thread during generation (so the bytes do not depend on
the core count) and the global torch RNG is left untouched. Checked at full size: two independent
generations of seed 0 (6000 + 6000) on the reference machine gave the same SHA-256 for the npz and
the ensemble file; the tests check it at size 40. A cache written by another generator version
(`GENERATOR_VERSION` in the manifest) is ignored and regenerated, except a version-2 set whose recipe
is today's (the full set: version 3 changed only the epochs below the full size).

## The full set (seed {seed}, 6000 + 6000)
Generated on {machine} in **{generation_s:.0f} s** (VAE {vae_s:.0f} s, ensemble {ensemble_s:.0f} s,
candidates {candidates_s:.0f} s). Candidates drawn: **{drawn}**, kept by the filter: {kept}
(**{kept_pct:.1f} %**); mean entropy of the kept pool {pool_h:.3f} nats, of the delivered images
{set_h:.3f} nats after flattening. Ensemble accuracy on MNIST test: {acc:.2f} %.
Images whose 10 labels are not all equal: {mixed_pct:.1f} % (test split).

Cache: `{cache}` (SHA-256 of the npz `{sha}`).

Uncertainty under the scoring ensemble (nats; entropy = total, MI = epistemic):

| split | n | mean entropy | mean MI | median entropy | median MI |
|---|---|---|---|---|---|
{table}

Ambiguous-MNIST has several times MNIST's entropy with MI held at MNIST's level (<= {mi_max} nats by
construction: aleatoric), Fashion-MNIST has both high (epistemic): the three splits separate as
Dirty-MNIST intends. The delivered entropies are moderate (most below ~1.2 nats): above that the five
LeNets start to disagree, so the MI filter removes most such candidates, and the flattening can only
up-weight the few that remain (the capped inverse-density weights raise the mean entropy from
{pool_h:.2f} to {set_h:.2f} nats).

![64 test samples with their label distributions](img/ambiguous_grid.png)

![entropy and MI histograms](img/ambiguous_hist.png)

Reproduce: `BAYESIM_CACHE=/tmp/bayesim_cache python examples/make_ambiguous_report.py --data-dir ../shared/data`
"""


def label_text(row: np.ndarray) -> str:
    counts = np.bincount(row, minlength=10)
    order = np.argsort(-counts, kind="stable")
    return " ".join(f"{c}:{counts[c]}" for c in order if counts[c] > 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    ap.add_argument("--machine", default="2 shared CPU cores (torch 1 thread)")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = time.perf_counter()
    xa_tr, _ = amb.load_ambiguous(args.data_dir, "train", seed=args.seed)
    xa, ya = amb.load_ambiguous(args.data_dir, "test", seed=args.seed)
    print(f"Ambiguous-MNIST ready in {time.perf_counter() - t0:.1f} s: {xa_tr.shape[0]} train + {xa.shape[0]} test")
    man_path = amb.find_cache(args.data_dir, args.seed, amb.FULL_SIZE)
    man = json.loads(man_path.read_text())
    ens = amb.load_ensemble(args.data_dir, args.seed)
    xm, ym = load_mnist("test", args.data_dir)
    xf, _ = load_fashion("test", args.data_dir)

    stats = {}
    for name, x in (("MNIST test", xm), ("Ambiguous-MNIST test", xa), ("Fashion-MNIST test", xf)):
        stats[name] = amb.ensemble_uncertainty(x, ens)
    acc = 100 * float((ens.probs(xm).mean(0).argmax(1) == ym).mean())
    rows = [f"| {k} | {h.size} | {h.mean():.3f} | {mi.mean():.4f} | {np.median(h):.3f} | {np.median(mi):.4f} |"
            for k, (h, mi) in stats.items()]

    img_dir = args.docs / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(8, 8, figsize=(12, 14))
    for i, ax in enumerate(axes.flat):
        ax.imshow(xa[i], cmap="gray", vmin=0, vmax=1)
        ax.set_title(label_text(ya[i]), fontsize=7)
        ax.axis("off")
    fig.suptitle(f"Ambiguous-MNIST test (seed {args.seed}), first 64 images; title = label:count of the 10 labels")
    fig.tight_layout()
    fig.savefig(img_dir / "ambiguous_grid.png", dpi=80)
    plt.close(fig)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (h, mi) in stats.items():
        a1.hist(h, bins=50, range=(0, np.log(10)), histtype="step", density=True, label=k)
        a2.hist(mi, bins=50, range=(0, 0.6), histtype="step", density=True, label=k)
    a1.set_xlabel("predictive entropy (nats)")
    a2.set_xlabel("mutual information (nats)")
    a2.set_yscale("log")
    for a in (a1, a2):
        a.set_ylabel("density")
        a.legend(fontsize=8)
    fig.suptitle("Uncertainty under the 5-LeNet scoring ensemble")
    fig.tight_layout()
    fig.savefig(img_dir / "ambiguous_hist.png", dpi=90)
    plt.close(fig)

    r = man["recipe"]
    t = man["timings_s"]
    npz_name = f"{amb.cache_stem(args.seed, amb.FULL_SIZE)}.npz"
    text = DOC_TEMPLATE.format(
        **r, seed=args.seed, machine=args.machine, generation_s=man["generation_s"], vae_s=t["vae_s"],
        ensemble_s=t["ensemble_s"], candidates_s=t["candidates_s"], drawn=man["candidates_drawn"],
        kept=man["candidates_kept"], kept_pct=100 * man["kept_fraction"], pool_h=man["mean_entropy_pool"],
        set_h=man["mean_entropy"], acc=acc,
        mixed_pct=100 * float((ya.min(1) != ya.max(1)).mean()),
        cache=man_path.parent, sha=man["sha256"][npz_name], table="\n".join(rows))
    (args.docs / "ambiguous_mnist.md").write_text(text)
    print("\n".join(rows))
    print(f"wrote {args.docs / 'ambiguous_mnist.md'} and {img_dir}/ambiguous_*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
