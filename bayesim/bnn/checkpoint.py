"""Model checkpoints: safetensors (tensors) + JSON metadata in the header; loading executes no code.

Metadata key "bayesim" holds JSON: {"format": "bayesim-bnn", "format_version": 1, "bayesim_version",
"model": ModelConfig as a mapping (arch, widths, activation, prior, quant strategy / bits / range rule,
normalization), "training": the training config or import source, "metrics": final metrics, ...}.
Tensors are the model's state dict: per Bayesian layer `layers.<i>.{mu_w, rho_w, mu_b, rho_b}`
(sigma = softplus(rho)), the frozen quantizer ranges `layers.<i>.{mu_step, w_step, sigma_max}` and the
activation clip levels `layers.<i>.upper`.

Integrity: "tensors_sha256" in the metadata is the SHA-256 of the tensor data (the file's bytes after the
safetensors header); loading recomputes it (1.4 ms for the shipped 0.5 MB LeNet-5) and refuses a file whose
tensors do not match, e.g. a flipped byte. Checkpoints written before it existed have no such field and load
without a check or a note.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from bayesim import __version__
from bayesim._io import write_bytes_atomic
from bayesim.config.schema import build, to_dict
from bayesim.errors import BayesimError, ConfigError

FORMAT = "bayesim-bnn"
FORMAT_VERSION = 1


def save_model(model, path: str | os.PathLike, **extra) -> Path:
    """Write `model` (a BayesNet) and metadata `extra` (JSON-serialisable) atomically to `path`, with the
    SHA-256 of the tensor data in the metadata ("tensors_sha256")."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().to(torch.float32) for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "bayesim_version": __version__,
            "model": to_dict(model.cfg), **extra}
    meta.pop("tensors_sha256", None)
    # the tensor data does not depend on the metadata: serialise once to hash it, then with the hash
    payload = _payload(save(tensors, metadata={"bayesim": json.dumps(meta, default=_json_default)}))
    meta["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    data = save(tensors, metadata={"bayesim": json.dumps(meta, default=_json_default)})
    assert _payload(data) == payload
    write_bytes_atomic(path, data)
    return Path(path)


def _payload(data: bytes) -> memoryview:
    """The tensor data of a safetensors file's bytes: after the 8-byte header length and the header."""
    return memoryview(data)[8 + int.from_bytes(data[:8], "little"):]


def verify_tensors(path: str | os.PathLike, meta: dict) -> None:
    """Recompute the SHA-256 of the checkpoint's tensor data and compare it with the metadata's
    "tensors_sha256"; a mismatch is a BayesimError naming the file. No field (a checkpoint from before it): no
    check."""
    want = meta.get("tensors_sha256")
    if want is None:
        return
    if not isinstance(want, str) or len(want) != 64:
        raise BayesimError(f"{path}: metadata tensors_sha256 must be a 64-digit hex SHA-256, got {want!r}")
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            f.seek(8 + n)
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as e:
        raise BayesimError(f"{path}: cannot be read ({e.strerror or e})") from None
    if h.hexdigest() != want.lower():
        raise BayesimError(f"{path}: corrupt checkpoint: the SHA-256 of its tensor data is {h.hexdigest()}, the "
                           f"metadata records {want} (a damaged or edited file); use an intact copy")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_metadata(path: str | os.PathLike) -> dict:
    """The JSON metadata of a checkpoint (validated header, no tensors read)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise BayesimError(f"{p}: is a folder, not a checkpoint file" if p.is_dir() else
                           f"{p}: checkpoint not found" if not p.exists() else
                           f"{p}: not a regular file (a bayesim .safetensors checkpoint)")
    try:
        with safe_open(str(p), framework="pt") as f:
            raw = (f.metadata() or {}).get("bayesim")
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise BayesimError(f"{p}: not a safetensors checkpoint ({type(e).__name__}: {e})") from None
    if raw is None:
        raise BayesimError(f"{p}: safetensors file without bayesim metadata (not a bayesim model)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise BayesimError(f"{p}: metadata is not valid JSON ({e})") from None
    except RecursionError:
        raise BayesimError(f"{p}: metadata JSON is nested too deeply (not a bayesim model)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BayesimError(f"{p}: metadata format is not {FORMAT!r}")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BayesimError(f"{p}: metadata format_version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise BayesimError(f"{p}: checkpoint format version {meta.get('format_version')} is newer than this "
                           f"bayesim supports ({FORMAT_VERSION})")
    return meta


def load_model(path: str | os.PathLike, expect_arch: str | None = None):
    """Read a checkpoint -> (BayesNet, metadata). Shapes, NaN/Inf and sigma > 0 are checked."""
    from safetensors.torch import load_file

    from bayesim.bnn.config import ModelConfig
    from bayesim.bnn.models import BayesNet

    p = Path(path)
    meta = read_metadata(p)
    cfg = build(ModelConfig, meta.get("model"), source=str(p), key="model")
    if expect_arch is not None and cfg.arch != expect_arch:
        raise ConfigError(f"checkpoint holds a {cfg.arch!r} model, expected {expect_arch!r}", source=str(p),
                          key="model.arch")
    with torch.device("meta"):  # shapes only, no memory: the metadata may ask for a huge model
        need = {k: tuple(v.shape) for k, v in BayesNet(cfg).state_dict().items()}
    check_shapes(need, read_shapes(p), cfg.arch, str(p))  # before any tensor data is read or allocated
    verify_tensors(p, meta)
    tensors = load_file(str(p), device="cpu")
    model = BayesNet(cfg)
    load_state(model, tensors, str(p))
    return model, meta


def read_shapes(path: str | os.PathLike) -> dict:
    """name -> shape of every tensor in the checkpoint, from the safetensors header (no data read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise BayesimError(f"{path}: not a safetensors checkpoint ({type(e).__name__}: {e})") from None


def check_shapes(need: dict, found: dict, arch: str, source: str) -> None:
    """Refuse tensors (name -> shape in `found`) whose names or shapes differ from those `need`ed."""
    missing = sorted(set(need) - set(found))
    unexpected = sorted(set(found) - set(need))
    if missing or unexpected:
        raise BayesimError(f"{source}: tensors do not fit a {arch!r} model"
                           + (f"; missing {missing[:4]}" if missing else "")
                           + (f"; unexpected {unexpected[:4]}" if unexpected else ""))
    for name, shape in need.items():
        if tuple(found[name]) != tuple(shape):
            raise BayesimError(f"{source}: tensor {name!r} has shape {tuple(found[name])}, the {arch} "
                               f"architecture needs {tuple(shape)}")


#: dtypes a parameter tensor may have (complex, integer, bool and float8 tensors are refused, not cast)
FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def dtype_problem(dtype) -> str | None:
    """Why a parameter tensor of `dtype` is refused ("has dtype ...; allowed: ..."), or None."""
    if dtype in FLOAT_DTYPES:
        return None
    name = lambda d: str(d).replace("torch.", "")  # noqa: E731
    return f"has dtype {name(dtype)}; allowed: " + ", ".join(map(name, FLOAT_DTYPES))


def check_values(name: str, t, source: str) -> None:
    """One parameter tensor of a Bayesian network: finite, sigma = softplus(rho) > 0 in float32, quantizer
    ranges >= 0, clip levels > 0; else a BayesimError naming `source` and the tensor."""
    leaf = name.rsplit(".", 1)[-1]
    why = dtype_problem(t.dtype)
    if why:
        raise BayesimError(f"{source}: tensor {name!r} {why}")
    if not torch.isfinite(t).all():
        raise BayesimError(f"{source}: tensor {name!r} contains NaN or Inf")
    if leaf.startswith("rho_"):
        sig = F.softplus(t.to(torch.float32))
        if not (sig > 0).all():
            raise BayesimError(f"{source}: tensor {name!r} gives sigma <= 0 (min rho {t.min().item():.4g}); "
                               "sigma must be positive")
    if leaf in ("mu_step", "w_step", "sigma_max") and (t < 0).any():
        raise BayesimError(f"{source}: quantizer range {name!r} is negative")
    if leaf == "upper" and not (t > 0).all():
        raise BayesimError(f"{source}: activation clip level {name!r} must be positive")


def check_used_ranges(tensors: dict, quant, source: str) -> None:
    """The frozen ranges the model's strategy quantizes with are positive (a zero step would quantize every
    weight to 0, and a zero sigma_max every sigma: near-chance results without a word). Unused ranges may be
    0 (an FP32 model stores zeros)."""
    used = (("mu_step", "sigma_max") if quant.quantize_stored else ()) + (("w_step",) if quant.quantize_sampled
                                                                          else ())
    for name, t in tensors.items():
        if name.rsplit(".", 1)[-1] in used and not (t > 0).all():
            raise BayesimError(f"{source}: quantizer range {name!r} is 0, but strategy {quant.strategy} quantizes "
                               f"with it; a stored range must be positive")


def load_state(model, tensors: dict, source: str) -> None:
    """Copy `tensors` into `model` after checking names, shapes, finiteness, sigma > 0 and that the ranges the
    model's strategy uses are positive."""
    state = model.state_dict()
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, {k: tuple(t.shape) for k, t in tensors.items()},
                 model.cfg.arch, source)
    for name in state:
        check_values(name, tensors[name], source)
    check_used_ranges({k: tensors[k] for k in state}, model.cfg.quant, source)
    with torch.no_grad():
        for name, ref in state.items():
            ref.copy_(tensors[name].to(ref.dtype))
