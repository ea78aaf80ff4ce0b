"""Import a Pyro parameter-store checkpoint of a mean-field (AutoNormal-style) guide, executing no code.

The file (torch.save of {"params": {name: tensor}, "constraints": {...}}) is read with torch's
weights_only unpickler: tensors, storages and containers; the constraint classes of Pyro /
torch.distributions that the pickle names become inert stand-ins; any other global is refused with a
BayesimError. Only torch's zip format is read: the legacy (pre-1.6) format's loader acts on pickle content
outside the unpickler, and a TorchScript archive is code.

Names: `<Guide>.locs.<layer>.<weight|bias>` (means) and `<Guide>.scales.<layer>.<weight|bias>`
(unconstrained; sigma = softplus(value), so they are stored as rho directly). Layers map to the
architecture's Bayesian layers in forward order:
  mlp:    input_layer, hidden_layers.0, hidden_layers.1, ..., out_layer   (widths read from the shapes)
  lenet5: conv1, conv2, fc1, fc2, fc3 (or any names, taken in file order, when these are absent)
"""
from __future__ import annotations

import collections
import os
import re
from dataclasses import replace
from pathlib import Path

from bayesim.errors import BayesimError, ConfigError

_CONSTRAINT_MODULES = ("pyro.distributions.constraints", "torch.distributions.constraints")
_CONSTRAINT_NAME = re.compile(r"_?[A-Za-z][A-Za-z0-9_]*")


class InertConstraint:
    """Stand-in for a Pyro / torch constraint object: keeps its name and simple state, does nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update({k: v for k, v in state.items() if isinstance(v, (int, float, str, bool))})

    def __repr__(self):
        return f"<inert {type(self).__name__}>"


_STANDINS: dict[str, type] = {}


def _standin(name: str) -> type:
    if name not in _STANDINS:
        _STANDINS[name] = type(name, (InertConstraint,), {})
    return _STANDINS[name]


#: Bounds of what a Pyro parameter store may hold: distinct constraint classes; pickle opcodes (a base plus
#: a share per tensor record: the reference store has 566 for 12 records; deep nesting needs one per
#: level); bytes of the pickle.
MAX_CONSTRAINT_CLASSES = 64
MAX_PICKLE_OPS_BASE, MAX_PICKLE_OPS_PER_RECORD = 1000, 200
MAX_PICKLE_BYTES = 16 << 20
_ZIP_HEAD = b"PK\x03\x04"


def _open_archive(p: Path):
    """The records of a torch.save zip archive: (zip file, name of its data.pkl). Refused: the legacy
    (pre-1.6) format, whose loader acts on pickle content outside any unpickler, also when a zip is appended
    to it or anything precedes the zip (torch picks its loader from the first bytes); TorchScript archives,
    which torch runs as code; compressed records (torch.save stores; a compressed record can be a bomb)."""
    import zipfile

    with open(p, "rb") as f:
        head = f.read(4)
    if head != _ZIP_HEAD:
        if head[:1] == b"\x80":
            raise BayesimError(f"{p}: a legacy (pre-1.6) torch serialization; only the zip format that torch.save "
                               "writes since torch 1.6 is read (re-save it with a current torch, in a trusted "
                               "environment)")
        raise BayesimError(f"{p}: not a torch checkpoint (torch.save zip archive)")
    try:
        z = zipfile.ZipFile(p)
        infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BayesimError(f"{p}: not a readable zip archive ({e})") from None
    try:
        names = [i.filename for i in infos]
        if not infos or min(i.header_offset for i in infos) != 0:
            raise BayesimError(f"{p}: data before the zip archive; not a torch.save file")
        if any(n.lower().endswith(("constants.pkl", ".debug_pkl")) or "/code/" in n.lower() for n in names):
            raise BayesimError(f"{p}: a TorchScript archive (code), not a parameter store; refused")
        packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
        if packed:
            raise BayesimError(f"{p}: compressed record {packed[0]!r}; torch.save stores its records uncompressed")
        pkl = [i for i in infos if i.filename == "data.pkl" or i.filename.endswith("/data.pkl")]
        if len(pkl) != 1:
            raise BayesimError(f"{p}: not a torch.save archive (no single data.pkl record)")
        if pkl[0].file_size > MAX_PICKLE_BYTES:
            raise BayesimError(f"{p}: data.pkl of {pkl[0].file_size:,} bytes; a parameter store's is far smaller "
                               f"(at most {MAX_PICKLE_BYTES:,})")
    except BayesimError:
        z.close()
        raise
    return z, pkl[0].filename


def _constraint_globals(p: Path) -> list:
    """(stand-in class, "module.Name") for every constraint class the archive's pickle names, read from its
    GLOBAL opcodes (pickletools parses, nothing runs), for torch's weights_only unpickler. Refuses a pickle
    with more opcodes than its tensors explain (deep nesting), or too many constraint classes."""
    import pickletools

    z, pkl = _open_archive(p)
    with z:
        data = z.read(pkl)
        records = sum(1 for n in z.namelist() if "/data/" in n)
    limit = MAX_PICKLE_OPS_BASE + MAX_PICKLE_OPS_PER_RECORD * records
    found: dict[str, tuple] = {}
    try:
        for k, (op, arg, _) in enumerate(pickletools.genops(data)):
            if k >= limit:
                raise BayesimError(f"{p}: data.pkl has more than {limit:,} pickle opcodes for {records} tensor "
                                   "records (deep nesting?); not a parameter store")
            if op.name == "GLOBAL":
                module, _, name = str(arg).partition(" ")
                if module in _CONSTRAINT_MODULES and _CONSTRAINT_NAME.fullmatch(name):
                    found.setdefault(f"{module}.{name}", (_standin(name), f"{module}.{name}"))
                    if len(found) > MAX_CONSTRAINT_CLASSES:
                        raise BayesimError(f"{p}: more than {MAX_CONSTRAINT_CLASSES} constraint classes; not a "
                                           "parameter store")
    except BayesimError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged pickle: torch.load reports it below
        del e
    return list(found.values())


def _refusal(p: Path, e: Exception) -> BayesimError:
    """One line for a failed weights_only load: the global the pickle asked for, else torch's reason."""
    text = str(e)
    m = re.search(r"GLOBAL (\S+) (?:was not an allowed global|whose module)", text)
    if m:
        return BayesimError(f"{p}: refused to load: the pickle references {m.group(1)}, which is not a tensor or "
                            "a constraint (only tensor data is read from Pyro checkpoints)")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = lines[0] if lines else type(e).__name__
    for i, ln in enumerate(lines):  # torch's weights_only failure: a paragraph on its defaults, then the reason
        if "WeightsUnpickler error:" in ln:
            after = ln.split("WeightsUnpickler error:", 1)[1].strip()
            reason = after or (lines[i + 1] if i + 1 < len(lines) else ln)
            break
    else:
        if lines and lines[0].startswith("Weights only load failed") and len(lines) > 1:
            reason = lines[1]
    return BayesimError(f"{p}: cannot read as a torch checkpoint ({type(e).__name__}: {reason[:300]})")


def read_pyro_params(path: str | os.PathLike) -> dict:
    """name -> float32 CPU tensor of the parameter store at `path`, read with torch's weights_only unpickler
    (tensors, containers and inert stand-ins for constraint classes; nothing else is constructed)."""
    import torch

    from bayesim.bnn.checkpoint import dtype_problem

    p = Path(path)
    if not p.is_file():
        raise BayesimError(f"{p}: is a folder, not a Pyro checkpoint file" if p.is_dir() else
                           f"{p}: Pyro checkpoint not found" if not p.exists() else
                           f"{p}: not a regular file (a Pyro checkpoint saved with torch.save)")
    try:
        standins = _constraint_globals(p)
        with torch.serialization.safe_globals(standins):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except BayesimError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's own error types for a refused or damaged file
        raise _refusal(p, e) from None
    params = obj.get("params") if isinstance(obj, dict) else None
    if params is None and isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        params = obj
    if not isinstance(params, dict) or not params:
        raise BayesimError(f"{p}: no 'params' mapping of tensors (not a Pyro parameter-store state)")
    out = {}
    for k, v in params.items():
        if type(k) is not str:
            raise BayesimError(f"{p}: a parameter name is a {type(k).__name__}, not a string")
        if type(v) not in (torch.Tensor, torch.nn.Parameter):
            raise BayesimError(f"{p}: parameter {k[:100]!r} is a {type(v).__name__}, not a tensor")
        if v.is_nested or v.layout != torch.strided or v.device.type != "cpu":
            raise BayesimError(f"{p}: parameter {k[:100]!r} is not a dense CPU tensor (layout {v.layout}, device "
                               f"{v.device}{', nested' if v.is_nested else ''})")
        why = dtype_problem(v.dtype)
        if why:
            raise BayesimError(f"{p}: parameter {k[:100]!r} {why}")
        t = torch.Tensor.detach(v)  # through the class: a Parameter's saved state may shadow its methods
        if t.numel() * t.element_size() > t.untyped_storage().nbytes():
            raise BayesimError(f"{p}: parameter {k[:100]!r} views {t.numel():,} values of a storage of "
                               f"{t.untyped_storage().nbytes():,} bytes (an expanded view); not a parameter")
        out[k] = t.to(torch.float32).contiguous()
    return out


_NAME = re.compile(r"^(?:(?P<guide>[^.]+)\.)?(?P<kind>locs|scales)\.(?P<layer>.+)\.(?P<param>weight|bias)$")


def _group(params: dict, source: str) -> "collections.OrderedDict[str, dict]":
    layers: collections.OrderedDict[str, dict] = collections.OrderedDict()
    for name, t in params.items():
        m = _NAME.match(name)
        if not m:
            raise BayesimError(f"{source}: parameter {name!r} is not of the form "
                               "<Guide>.<locs|scales>.<layer>.<weight|bias>")
        layers.setdefault(m["layer"], {})[f"{m['kind']}.{m['param']}"] = (name, t)
    for layer, d in layers.items():
        missing = {"locs.weight", "scales.weight", "locs.bias", "scales.bias"} - set(d)
        if missing:
            raise BayesimError(f"{source}: layer {layer!r} lacks {', '.join(sorted(missing))}")
    return layers


def _order(layers, arch: str, source: str) -> list[str]:
    names = list(layers)
    if arch == "mlp":
        hidden = sorted((n for n in names if re.fullmatch(r"hidden_layers\.\d+", n)), key=lambda n: int(n.split(".")[1]))
        if "input_layer" in names and "out_layer" in names:
            order = ["input_layer", *hidden, "out_layer"]
            extra = set(names) - set(order)
            if extra:
                raise BayesimError(f"{source}: layer(s) {sorted(extra)} do not fit the mlp architecture "
                                   "(input_layer, hidden_layers.<i>, out_layer)")
            return order
    elif arch == "lenet5":
        std = ["conv1", "conv2", "fc1", "fc2", "fc3"]
        if set(std) <= set(names) and len(names) == 5:
            return std
    return names


def _validated(cfg, source: str, origin: dict):
    """`cfg` checked by the schema that loads checkpoints (num_classes >= 2, width bounds, ...)."""
    from bayesim.bnn.config import ModelConfig
    from bayesim.config.schema import build, to_dict

    try:
        return build(ModelConfig, to_dict(cfg), source=source, key="model")
    except ConfigError as e:
        if e.key in origin:
            pname, t = origin[e.key]
            raise ConfigError(f"{e.message} (read from {pname!r} of shape {tuple(t.shape)})", source,
                              e.key) from None
        if e.key == "model.widths" and origin:
            raise ConfigError(f"{e.message} (one per hidden layer of the checkpoint)", source, e.key) from None
        raise


def import_pyro(path: str | os.PathLike, arch: str, normalization: str = "own", activation=None):
    """A BayesNet (strategy fp) from the Pyro checkpoint at `path` for architecture `arch`.

    Layer names or shapes that do not fit `arch` give a BayesimError naming both.
    """
    import torch

    from bayesim.bnn.checkpoint import load_state
    from bayesim.bnn.config import ActivationConfig, ModelConfig
    from bayesim.bnn.models import BayesNet

    if arch not in ("mlp", "lenet5"):
        raise BayesimError(f"--arch {arch!r} is not allowed; choose 'mlp' or 'lenet5'")
    src = str(path)
    layers = _group(read_pyro_params(path), src)
    order = _order(layers, arch, src)
    for d in layers.values():
        for pname, t in d.values():
            if t.numel() == 0:
                raise BayesimError(f"{src}: {pname!r} has shape {tuple(t.shape)}; a zero-size layer is not "
                                   "allowed (every dimension must be at least 1)")
    cfg = ModelConfig(arch=arch, normalization=normalization, activation=activation or ActivationConfig())
    origin = {}  # config key -> the Pyro parameter whose shape gives it (for the error message)
    if arch == "mlp":
        for n in order:
            pname, w = layers[n]["locs.weight"]
            if w.ndim != 2:
                raise BayesimError(f"{src}: layer {n!r} has weight shape {tuple(w.shape)} ({pname!r}); an mlp "
                                   "needs 2-d linear weights [out, in]")
        widths = [int(layers[n]["locs.weight"][1].shape[0]) for n in order[:-1]]
        n_cls = int(layers[order[-1]]["locs.weight"][1].shape[0])
        cfg = replace(cfg, widths=widths, num_classes=n_cls)
        origin = {f"model.widths[{i}]": layers[n]["locs.weight"] for i, n in enumerate(order[:-1])}
        origin["model.num_classes"] = layers[order[-1]]["locs.weight"]
    cfg = _validated(cfg, src, origin)
    model = BayesNet(cfg)
    bl = model.bayes_layers
    if len(order) != len(bl):
        found = ", ".join(f"{n} {list(layers[n]['locs.weight'][1].shape)}" for n in order)
        need = ", ".join(str(list(m.mu_w.shape)) for m in bl)
        raise BayesimError(f"{src}: the checkpoint has {len(order)} Bayesian layers ({found}); "
                           f"the {arch} architecture has {len(bl)} ({need})")
    state = dict(model.state_dict())
    idx = {id(m): i for i, m in enumerate(model.layers)}
    tensors = {k: v.clone() for k, v in state.items()}
    for name, mod in zip(order, bl):
        i = idx[id(mod)]
        d = layers[name]
        for ours, theirs in (("mu_w", "locs.weight"), ("rho_w", "scales.weight"),
                             ("mu_b", "locs.bias"), ("rho_b", "scales.bias")):
            pname, t = d[theirs]
            want = tuple(state[f"layers.{i}.{ours}"].shape)
            if tuple(t.shape) != want:
                raise BayesimError(f"{src}: {pname!r} has shape {tuple(t.shape)}, but layer {name!r} maps to the "
                                   f"{arch} layer {len([m for m in bl[:bl.index(mod)]])} ({type(mod).__name__}) "
                                   f"which needs {want}")
            if not torch.isfinite(t).all():  # named as in the user's file, not by our layer index
                raise BayesimError(f"{src}: {pname!r} contains NaN or Inf")
            tensors[f"layers.{i}.{ours}"] = t
    load_state(model, tensors, src)
    with torch.no_grad():
        model.calibrate()
    return model
