"""Exported model files: self-describing, hash-verified, loaded without unpickling code.

An exported model is ``models/<name>-<hash8>.pt``, a ``torch.save`` of a plain dict::

    format         "latentwire-model"
    version        1
    name           model name, e.g. "lw-vr-hyperprior" (what bitstreams carry)
    weights        16 hex digits: SHA-256 prefix over the state dict (``weights_hash``)
    network        architecture arguments (``NetworkConfig``)
    train_config   how it was trained (dataset, steps, schedule) for the model card
    metrics        optional RD summary measured at export
    clean_first    a denoising model's clean-first parameters (``CleanFirst``, shared/clean_first.py),
                   None for other models; absent from files exported before it travelled here
    rate_curve     the model's typical size per quality (``RateCurve``, shared/rate_control.py), which
                   places a quick budget search's codings; absent: the search starts from both ends
    state_dict     tensors, entropy-coder tables (CDFs) included

It is read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers, and the weights are re-hashed and compared with both the stored hash and the file
name's prefix before the model is used. The hash covers the state dict alone, so the metadata
beside it (training config, metrics, clean-first parameters) can be edited without renaming the file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import torch

from shared.clean_first import for_export
from shared.errors import CheckpointError, CheckpointHashMismatch, CheckpointNotFound
from shared.network import NetworkConfig, VariableRateHyperprior

FORMAT = "latentwire-model"
FORMAT_VERSION = 1
DEFAULT_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
# Training-only buffers that do not affect coding are still hashed: the hash names the file.


def weights_hash(state_dict: dict) -> str:
    """16 hex digits of SHA-256 over (name, dtype, shape, bytes) of every tensor, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def export_model(source: Path, name: str, models_dir: Path = DEFAULT_MODELS_DIR,
                 metrics: dict | None = None, half_synthesis: bool = False,
                 scale_levels: int | None = None, synthesis_from: Path | None = None,
                 half_analysis: bool = False) -> Path:
    """Training checkpoint (or exported model) -> ``models_dir/<name>-<hash8>.pt``, tables updated.

    ``source`` may also be the folder a lent GPU's run returns (shared/tools/device/train_on_device.py):
    ``meta.pt`` plus the weights split across ``weights_part*.pt``, joined here.

    ``scale_levels`` sets the Gaussian coder's scale table size (``NetworkConfig.scale_levels``;
    None keeps the source's): every stream of the file changes, its pixels do not.

    ``half_synthesis`` stores g_s's weights in float16 (loading widens them again): half the
    size of the decoder for a file that must stay small. Only the receiver's pixels can move, and
    by little (g_s runs in bfloat16 on most CPUs anyway); every bitstream is the same, since
    nothing the sender computes or the entropy coder uses is touched.

    ``half_analysis`` does the same for g_a: the sender's latents move by float16's rounding of
    its weights (less than the bfloat16 arithmetic that ``precision=auto`` already uses), so
    streams change by a few bytes; sender and receiver still agree bit for bit, since the
    receiver never runs g_a.

    ``synthesis_from``: a checkpoint whose g_s replaces the source's, e.g. a ``--decoder-only`` run
    beside a ``train-entropy`` run of the same model. Its analysis transform must be the source's
    (that g_s was trained on those latents), or ``CheckpointError``; the streams are the source's.

    A denoising run's clean-first parameters are written beside the weights (``for_export``).
    """
    ckpt = join_parts(source) if Path(source).is_dir() else safe_load(source)
    if synthesis_from is not None:
        ckpt = {**ckpt, "state_dict": _with_synthesis_of(ckpt, synthesis_from)}
    config = NetworkConfig(**ckpt["network"])
    if scale_levels is not None:
        config = replace(config, scale_levels=scale_levels)
    model = VariableRateHyperprior(config)
    model.load_state_dict(ckpt["state_dict"])
    model.update(force=True)  # entropy-coder CDF tables from the trained densities (and scale table)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    halved = tuple(prefix for prefix, wanted in (("g_s.", half_synthesis), ("g_a.", half_analysis)) if wanted)
    if halved:
        state = {k: v.half() if k.startswith(halved) and v.is_floating_point() else v for k, v in state.items()}
    digest = weights_hash(state)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": name,
        "weights": digest,
        "network": model.config.to_dict(),
        "train_config": ckpt.get("train_config", {}),
        "step": int(ckpt.get("step", 0)),
        "metrics": metrics or {},
        "clean_first": for_export(ckpt),
        "state_dict": state,
    }
    models_dir.mkdir(parents=True, exist_ok=True)
    path = models_dir / f"{name}-{digest[:8]}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def _with_synthesis_of(ckpt: dict, other_path: Path) -> dict:
    """``ckpt``'s weights with the g_s of the checkpoint at ``other_path`` (see ``export_model``)."""
    other = join_parts(other_path) if Path(other_path).is_dir() else safe_load(other_path)
    mine, theirs = ckpt["state_dict"], other["state_dict"]
    if int(ckpt["network"].get("synthesis_blocks", 0)) != int(other["network"].get("synthesis_blocks", 0)):
        raise CheckpointError(f"{other_path}'s g_s has another shape (synthesis_blocks "
                              f"{other['network'].get('synthesis_blocks', 0)} against "
                              f"{ckpt['network'].get('synthesis_blocks', 0)})")
    for key in (k for k in mine if k.startswith("g_a.")):
        if key not in theirs or not torch.equal(mine[key].float(), theirs[key].float()):
            raise CheckpointError(f"{other_path} has another analysis transform ({key} differs): its g_s was "
                                  "trained on other latents; take g_s only from a run of the same encoder")
    return {k: (theirs[k].to(v.dtype) if k.startswith("g_s.") else v) for k, v in mine.items()}


def write_metadata(path: Path, **fields) -> None:
    """Set metadata ``fields`` of the exported model at ``path``, beside the same weights (so its
    hash and name stay): e.g. the ``rate_curve`` measured once the file exists."""
    ckpt = safe_load(path)
    if ckpt.get("format") != FORMAT or "state_dict" in fields:
        raise CheckpointError(f"{path} is not an exported latentwire model, or the change touches its weights")
    ckpt.update(fields)
    tmp = Path(path).with_suffix(".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def find_model(name_or_path: str | Path, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """A path as is, or the one ``models_dir/<name>-<hash8>.pt`` for a model name."""
    p = Path(name_or_path)
    if p.suffix == ".pt":
        if not p.is_file():
            raise CheckpointNotFound(f"model file {p} does not exist")
        return p
    matches = sorted(models_dir.glob(f"{name_or_path}-*.pt"))
    matches = [m for m in matches if len(m.stem) == len(str(name_or_path)) + 9]
    if not matches:
        available = sorted({m.stem[:-9] for m in models_dir.glob("*.pt")})
        raise CheckpointNotFound(
            f"no model named {name_or_path!r} in {models_dir}; available: {', '.join(available) or 'none'}"
        )
    if len(matches) > 1:
        raise CheckpointError(f"several files for model {name_or_path!r}: {[m.name for m in matches]}; keep one")
    return matches[0]


def find_model_by_weights(weights: str, models_dir: Path = DEFAULT_MODELS_DIR) -> Path:
    """The exported model in ``models_dir`` whose weights hash is ``weights`` (16 hex digits), as a
    version 6 or 7 stream, which leaves the model's name out, identifies it: its file name ends in the
    hash's first 8 digits (``load_model`` verifies the rest)."""
    matches = sorted(models_dir.glob(f"*-{weights[:8]}.pt"))
    if not matches:
        available = ", ".join(sorted(m.name for m in models_dir.glob("*.pt"))) or "none"
        raise CheckpointNotFound(f"no model with weights {weights} in {models_dir} (a file ending in "
                                 f"-{weights[:8]}.pt); available: {available}")
    if len(matches) > 1:
        raise CheckpointError(f"several files for weights {weights}: {[m.name for m in matches]}; keep one")
    return matches[0]


def load_model(name_or_path: str | Path, models_dir: Path = DEFAULT_MODELS_DIR) -> tuple[VariableRateHyperprior, dict]:
    """Load and verify an exported model. Returns (model in eval mode on CPU, metadata)."""
    path = find_model(name_or_path, models_dir)
    ckpt = safe_load(path)
    if ckpt.get("format") != FORMAT or ckpt.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} is not an exported latentwire model (format {ckpt.get('format')!r}): "
            "run `latentwire export` on it first"
        )
    digest = weights_hash(ckpt["state_dict"])
    if digest != ckpt.get("weights"):
        raise CheckpointHashMismatch(
            f"{path.name}: weights hash to {digest}, the file claims {ckpt.get('weights')}: "
            "the file is damaged or was edited; restore it from the repository"
        )
    if not path.stem.endswith("-" + digest[:8]):
        raise CheckpointHashMismatch(
            f"{path.name}: the name must end in the weights hash prefix -{digest[:8]}: "
            "the file was renamed; rename it back or export it again"
        )
    model = VariableRateHyperprior(NetworkConfig(**ckpt["network"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    meta["path"] = str(path)
    return model, meta


def join_parts(folder: Path) -> dict:
    """``meta.pt`` + ``weights_part*.pt`` (each returned file must stay under 16 MiB) -> one checkpoint."""
    folder = Path(folder)
    parts = sorted(folder.glob("weights_part*.pt"))
    if not parts:
        raise CheckpointNotFound(f"{folder} holds no weights_part*.pt files")
    ckpt = safe_load(folder / "meta.pt", required=("network",))
    ckpt["state_dict"] = {}
    for part in parts:
        ckpt["state_dict"].update(safe_load(part, required=()))
    return ckpt


def safe_load(path: Path, required: tuple[str, ...] = ("state_dict", "network"), hint: str = "") -> dict:
    """``torch.load(weights_only=True)`` of a dict holding ``required`` keys, or a clear error."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointNotFound(f"model file {path} does not exist{hint}") from exc
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path} cannot be loaded safely ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(obj, dict) or any(k not in obj for k in required):
        raise CheckpointError(f"{path} holds no latentwire weights (missing {'/'.join(required)})")
    return obj
