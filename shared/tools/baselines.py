"""The two "seed idea" baselines the learned codec is measured against, each a real codec.

    PCACodec          8x8 RGB patches (192-dim) ─ minus mean ─► PCA basis (first K rows) ─► c
                      c ─► q = round(c / step) ─► rANS, one discrete-Laplacian table per component
    PlainAutoencoder  x ─► g_a (3 stride-2 convs) ─► y (C, H/8, W/8) ─► 8 bits (per-tensor min/max)
                      ─► zlib;  no entropy model, so every latent costs about 8 bits before zlib

Both have ``encode(rgb) -> bytes`` and ``decode(bytes) -> rgb`` ((H, W, 3) uint8, original size).
The bytes are the complete container (a msgpack map), so ``len(data)`` is the honest rate:

    PCA  {"fmt": "lw-pca", "v": 1, "h", "w", "k", "step", "scales": K bytes (table index per
          component), "data": rANS string}
    AE   {"fmt": "lw-ae", "v": 1, "h", "w", "c", "lo", "hi", "data": zlib(uint8 latents, CHW order)}

The PCA coefficients are coded with CompressAI's rANS coder (``compressai.ans``) and CDF tables
built the way ``GaussianConditional.update`` builds its Gaussian ones (a discretised density plus
a tail-mass bin, quantised by ``pmf_to_quantized_cdf``), with a Laplacian density: the same kind
of entropy coding as the learned codec, on a linear transform. The encoder picks, per component,
the table whose code length for this image is smallest and sends its index (one byte).

Shipped files (``models/``), recreated by ``latentwire eval --train-baselines DATA``:
    baseline-pca.npz         mean + 192x192 basis fitted on patches of the training split
    baseline-ae-c{C}.pt      PlainAutoencoder state dict + config + how it was trained
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack
import numpy as np
import torch
from torch import nn

from shared.checkpoint import DEFAULT_MODELS_DIR, safe_load
from shared.errors import CheckpointError, CheckpointNotFound, CorruptBitstream, NotABitstream

PATCH = 8
PATCH_DIM = PATCH * PATCH * 3  # 192
PCA_FILE = "baseline-pca.npz"
AE_LATENT_CHANNELS = (4, 12, 32)
AE_CROP, AE_BATCH = 64, 8
AE_STEPS, AE_CPU_BUDGET_S = 2000, 480.0  # ~1 CPU-minute each here; the 8-minute cap guards slow CPUs
# (components kept, quantiser step on the 0-255 scale): one eval point each, low to high rate.
# Components whose variance is far below step^2 quantise to zero anyway; dropping them saves the
# (small) cost of coding those zeros.
# Points on the upper RD hull of a (K, step) grid measured on six held-out BSDS500 images
# (not Kodak), 0.25-1.9 bpp there.
PCA_SETTINGS = ((8, 128.0), (16, 128.0), (32, 96.0), (64, 64.0), (64, 48.0), (96, 32.0), (96, 24.0))

# Laplacian tables, log-spaced scales (in quantiser steps) as in CompressAI's get_scale_table.
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.05, 256.0, 64
TAIL_MASS = 1e-6
CDF_PRECISION = 16


def ae_file(channels: int) -> str:
    return f"baseline-ae-c{channels}.pt"


# ==== PCA over 8x8 patches + rANS ===========================================================

@dataclass(frozen=True)
class PCABasis:
    mean: np.ndarray  # (192,) float64, 0-255 scale
    components: np.ndarray  # (192, 192) float64, rows orthonormal, by decreasing variance
    variances: np.ndarray  # (192,) eigenvalues
    info: dict

    @classmethod
    def fit(cls, images: list[np.ndarray], patches_per_image: int = 400, seed: int = 0,
            info: dict | None = None) -> "PCABasis":
        """Eigen-decomposition of the covariance of random 8x8 patches (any position)."""
        rng = np.random.default_rng(seed)
        rows = []
        for rgb in images:
            H, W = rgb.shape[:2]
            ys = rng.integers(0, H - PATCH + 1, patches_per_image)
            xs = rng.integers(0, W - PATCH + 1, patches_per_image)
            for y, x in zip(ys, xs):
                rows.append(rgb[y : y + PATCH, x : x + PATCH].reshape(-1))
        X = np.asarray(rows, dtype=np.float64)  # (P, 192), in to_patches' (row, col, rgb) order
        mean = X.mean(0)
        cov = np.cov(X - mean, rowvar=False)
        variances, vectors = np.linalg.eigh(cov)
        order = np.argsort(variances)[::-1]
        info = dict(info or {}, patches=len(X), seed=seed)
        return cls(mean, vectors[:, order].T.copy(), np.clip(variances[order], 0, None), info)

    def save(self, path: Path) -> Path:
        path = Path(path)
        np.savez_compressed(path, mean=self.mean.astype(np.float32),
                            components=self.components.astype(np.float32),
                            variances=self.variances.astype(np.float32),
                            info=np.array(json.dumps(self.info)))
        return path

    @classmethod
    def load(cls, path: Path) -> "PCABasis":
        try:
            with np.load(path, allow_pickle=False) as f:
                mean, comps, var, info = f["mean"], f["components"], f["variances"], str(f["info"])
        except FileNotFoundError as exc:
            raise CheckpointNotFound(f"{path} does not exist: run `latentwire eval --train-baselines DATA`") from exc
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a PCA baseline file ({exc})") from exc
        if comps.shape != (PATCH_DIM, PATCH_DIM) or mean.shape != (PATCH_DIM,):
            raise CheckpointError(f"{path}: basis shape {comps.shape}, expected ({PATCH_DIM}, {PATCH_DIM})")
        # The float32 file is re-orthonormalised so that encoder and decoder agree to float64 precision.
        q, r = np.linalg.qr(comps.astype(np.float64).T)
        comps64 = (q * np.sign(np.diag(r))).T
        return cls(mean.astype(np.float64), comps64, var.astype(np.float64), json.loads(info))


def to_patches(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) -> (H8 * W8, 192) float64 after replicate padding to multiples of 8."""
    H, W = rgb.shape[:2]
    ph, pw = (-H) % PATCH, (-W) % PATCH
    x = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="edge").astype(np.float64)
    h8, w8 = x.shape[0] // PATCH, x.shape[1] // PATCH
    x = x.reshape(h8, PATCH, w8, PATCH, 3).transpose(0, 2, 1, 3, 4)  # (h8, w8, 8, 8, 3)
    return x.reshape(h8 * w8, PATCH_DIM), (h8, w8)


def from_patches(patches: np.ndarray, grid: tuple[int, int], H: int, W: int) -> np.ndarray:
    h8, w8 = grid
    x = patches.reshape(h8, w8, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(h8 * PATCH, w8 * PATCH, 3)
    return np.clip(np.rint(x[:H, :W]), 0, 255).astype(np.uint8)


class LaplacianTables:
    """Quantised CDFs of discretised zero-mean Laplacians, one per scale (CompressAI layout)."""

    def __init__(self) -> None:
        self.scales = np.exp(np.linspace(math.log(SCALE_MIN), math.log(SCALE_MAX), SCALE_LEVELS))
        self.centers = np.ceil(self.scales * math.log(1 / TAIL_MASS)).astype(np.int64)
        from compressai.entropy_models.entropy_models import pmf_to_quantized_cdf

        cdfs = []
        for b, c in zip(self.scales, self.centers):
            pmf = _laplace_pmf(np.abs(np.arange(-c, c + 1)), b)
            tail = max(0.0, 1.0 - float(pmf.sum()))
            prob = torch.tensor(np.append(pmf, tail), dtype=torch.float32)
            cdfs.append(pmf_to_quantized_cdf(prob, CDF_PRECISION).tolist())
        width = max(len(c) for c in cdfs)
        self.cdfs = [c + [0] * (width - len(c)) for c in cdfs]
        self.cdf_lengths = [int(2 * c + 1 + 2) for c in self.centers]
        self.offsets = [int(-c) for c in self.centers]
        # Code length (bits) of |v| = 0..V under each table, for choosing a table per component;
        # values past a table's range are escaped by rANS at roughly tail + 2 log2|v| bits.
        self._max_v = int(self.centers.max()) * 4
        v = np.arange(self._max_v + 1)
        bits = np.empty((SCALE_LEVELS, v.size))
        for t, (b, c) in enumerate(zip(self.scales, self.centers)):
            p = _laplace_pmf(v, b) * np.where(v == 0, 1.0, 2.0)  # P(|x| = v)
            inside = -np.log2(np.maximum(p, 2.0**-CDF_PRECISION))
            escape = -math.log2(TAIL_MASS) + 2 * np.log2(np.maximum(v, 1)) + 4
            bits[t] = np.where(v <= c, inside, escape)
        self.bits = bits  # (T, V)

    def choose(self, q: np.ndarray) -> np.ndarray:
        """q: (N, K) integer symbols -> (K,) table index with the fewest bits for each column."""
        mags = np.minimum(np.abs(q), self._max_v)
        hist = np.stack([np.bincount(col, minlength=self._max_v + 1) for col in mags.T])  # (K, V)
        return np.argmin(hist @ self.bits.T, axis=1).astype(np.uint8)


def _laplace_pmf(v: np.ndarray, b: float) -> np.ndarray:
    """P(X = v) for the Laplacian of scale b rounded to integers, at v >= 0 (symmetric)."""
    v = np.asarray(v, dtype=np.float64)
    p0 = 1.0 - math.exp(-0.5 / b)
    pv = 0.5 * (np.exp(-(v - 0.5) / b) - np.exp(-(v + 0.5) / b))
    return np.where(v == 0, p0, pv)


@functools.lru_cache(maxsize=1)
def laplacian_tables() -> LaplacianTables:
    return LaplacianTables()


class PCACodec:
    """Linear transform coder: K principal components of 8x8 RGB patches, step ``step``."""

    def __init__(self, basis: PCABasis, k: int, step: float) -> None:
        if not 1 <= k <= PATCH_DIM or step <= 0:
            raise ValueError(f"need 1 <= k <= {PATCH_DIM} and step > 0, got k={k}, step={step}")
        self.basis, self.k, self.step = basis, int(k), float(step)

    @classmethod
    def load(cls, k: int, step: float, models_dir: Path = DEFAULT_MODELS_DIR) -> "PCACodec":
        return cls(PCABasis.load(Path(models_dir) / PCA_FILE), k, step)

    @property
    def label(self) -> str:
        return f"k{self.k}-step{self.step:g}"

    def encode(self, rgb: np.ndarray) -> bytes:
        from compressai.ans import RansEncoder

        H, W = rgb.shape[:2]
        patches, _ = to_patches(rgb)  # (N, 192)
        c = (patches - self.basis.mean) @ self.basis.components[: self.k].T  # (N, K)
        q = np.rint(c / self.step).astype(np.int64)
        tables = laplacian_tables()
        scales = tables.choose(q)  # (K,)
        symbols = q.T.reshape(-1)  # component-major
        indexes = np.repeat(scales.astype(np.int64), q.shape[0])
        data = RansEncoder().encode_with_indexes(
            symbols.tolist(), indexes.tolist(), tables.cdfs, tables.cdf_lengths, tables.offsets)
        return msgpack.packb({"fmt": "lw-pca", "v": 1, "h": H, "w": W, "k": self.k, "step": self.step,
                              "scales": scales.tobytes(), "data": data})

    def decode(self, data: bytes) -> np.ndarray:
        from compressai.ans import RansDecoder

        m = _unpack(data, "lw-pca")
        H, W, k, step = int(m["h"]), int(m["w"]), int(m["k"]), float(m["step"])
        scales = np.frombuffer(m["scales"], dtype=np.uint8)
        if not 1 <= k <= PATCH_DIM or scales.size != k or scales.max(initial=0) >= SCALE_LEVELS:
            raise CorruptBitstream(f"PCA stream header is inconsistent (k={k}, {scales.size} scales)")
        grid = (-(-H // PATCH), -(-W // PATCH))
        n = grid[0] * grid[1]
        tables = laplacian_tables()
        indexes = np.repeat(scales.astype(np.int64), n)
        symbols = RansDecoder().decode_with_indexes(
            m["data"], indexes.tolist(), tables.cdfs, tables.cdf_lengths, tables.offsets)
        q = np.asarray(symbols, dtype=np.float64).reshape(k, n).T  # (N, K)
        patches = (q * step) @ self.basis.components[:k] + self.basis.mean
        return from_patches(patches, grid, H, W)


# ==== plain autoencoder, no entropy model ===================================================

@dataclass(frozen=True)
class AEConfig:
    C: int = 12  # latent channels at H/8 x W/8
    N: int = 32  # hidden channels

    def to_dict(self) -> dict:
        return asdict(self)


class PlainAutoencoder(nn.Module):
    """Conv autoencoder whose latents are sent as 8-bit integers packed by zlib::

        x (3, H, W) ─► g_a ─► y (C, H/8, W/8) ─► uint8 (lo/hi in header) ─► zlib ─► bytes
        bytes ─► zlib⁻¹ ─► ŷ ─► g_s ─► x̂
    """

    def __init__(self, config: AEConfig) -> None:
        super().__init__()
        from compressai.layers import GDN
        from compressai.models.utils import conv, deconv

        self.config = config
        N, C = config.N, config.C
        self.g_a = nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, C))
        self.g_s = nn.Sequential(deconv(C, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
                                 deconv(N, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training path: the 8-bit quantiser in the loop with a straight-through gradient."""
        y = self.g_a(x)  # (B, C, H/8, W/8)
        lo, hi = y.amin(dim=(1, 2, 3), keepdim=True).detach(), y.amax(dim=(1, 2, 3), keepdim=True).detach()
        scale = (hi - lo).clamp_min(1e-8) / 255.0
        y_hat = y + ((torch.round((y - lo) / scale) * scale + lo) - y).detach()
        return self.g_s(y_hat)  # (B, 3, H, W)

    @classmethod
    def load(cls, channels: int, models_dir: Path = DEFAULT_MODELS_DIR) -> "PlainAutoencoder":
        path = Path(models_dir) / ae_file(channels)
        ckpt = safe_load(path, required=("state_dict", "config"),
                         hint=": run `latentwire eval --train-baselines DATA`")
        if ckpt.get("format") != "latentwire-baseline-ae":
            raise CheckpointError(f"{path} is not a plain-autoencoder baseline file")
        model = cls(AEConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        model.train_config = ckpt.get("train_config", {})
        return model.eval()

    def save(self, path: Path, train_config: dict) -> Path:
        torch.save({"format": "latentwire-baseline-ae", "config": self.config.to_dict(),
                    "train_config": train_config, "state_dict": self.state_dict()}, path)
        return Path(path)

    @property
    def label(self) -> str:
        return f"c{self.config.C}"

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> bytes:
        H, W = rgb.shape[:2]
        x = _pad8(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255.0)
        y = self.g_a(x)[0].double()  # (C, H/8, W/8)
        lo, hi = float(y.min()), float(y.max())
        levels = np.rint(((y - lo) / max(hi - lo, 1e-8) * 255.0).numpy()).clip(0, 255).astype(np.uint8)
        return msgpack.packb({"fmt": "lw-ae", "v": 1, "h": H, "w": W, "c": self.config.C, "lo": lo, "hi": hi,
                              "data": zlib.compress(levels.tobytes(), 9)})

    @torch.inference_mode()
    def decode(self, data: bytes) -> np.ndarray:
        m = _unpack(data, "lw-ae")
        H, W, C, lo, hi = int(m["h"]), int(m["w"]), int(m["c"]), float(m["lo"]), float(m["hi"])
        if C != self.config.C:
            raise CorruptBitstream(f"stream has {C} latent channels, this model {self.config.C}")
        h8, w8 = -(-H // PATCH), -(-W // PATCH)
        try:
            raw = zlib.decompress(m["data"])
        except zlib.error as exc:
            raise CorruptBitstream(f"the zlib latent data does not inflate ({exc})") from exc
        if len(raw) != C * h8 * w8:
            raise CorruptBitstream(f"{len(raw)} latent bytes, expected {C * h8 * w8}")
        levels = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(1, C, h8, w8)
        y_hat = levels.double() * (max(hi - lo, 1e-8) / 255.0) + lo
        x_hat = self.g_s(y_hat.float())[0, :, :H, :W].clamp(0, 1)
        return x_hat.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def _pad8(x: torch.Tensor) -> torch.Tensor:
    ph, pw = (-x.shape[-2]) % PATCH, (-x.shape[-1]) % PATCH
    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def _unpack(data: bytes, fmt: str) -> dict:
    try:
        m = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise NotABitstream(f"not a {fmt} stream ({exc})") from exc
    if not isinstance(m, dict) or m.get("fmt") != fmt or m.get("v") != 1:
        raise NotABitstream(f"not a {fmt} version 1 stream")
    return m


# ==== recreating the shipped files ==========================================================

def train_baselines(data: Path, models_dir: Path = DEFAULT_MODELS_DIR, steps: int = AE_STEPS,
                    cpu_budget_s: float = AE_CPU_BUDGET_S, channels: tuple[int, ...] = AE_LATENT_CHANNELS,
                    seed: int = 0, log=print) -> list[Path]:
    """Fit the PCA basis and train one PlainAutoencoder per latent size on ``data``'s training
    split (the same held-out split as ``latentwire train``), ``steps`` steps each; a run that
    uses ``cpu_budget_s`` seconds of CPU time stops early (the steps reached are stored)."""
    from shared.tools.train import CropSampler, list_images, split_holdout

    data = Path(data)
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    train_files, _ = split_holdout(list_images(data))
    sampler = CropSampler(train_files, AE_CROP, torch.device("cpu"), seed)  # decodes every JPEG once
    images = [img.permute(1, 2, 0).numpy() for img in sampler.images]
    basis = PCABasis.fit(images, seed=seed, info={"data": data.name, "images": len(images)})
    written = [basis.save(models_dir / PCA_FILE)]
    log(f"{written[-1]}: PCA basis from {basis.info['patches']} patches")
    for C in channels:
        sampler.rng = random.Random(seed)
        written.append(train_autoencoder(sampler, C, models_dir / ae_file(C), steps, cpu_budget_s,
                                         seed, data.name, log))
    return written


def train_autoencoder(sampler, channels: int, out: Path, steps: int = AE_STEPS,
                      cpu_budget_s: float = AE_CPU_BUDGET_S, seed: int = 0, data_name: str = "",
                      log=print) -> Path:
    """MSE training on ``sampler``'s random crops (a ``shared.tools.train.CropSampler``). Small crops
    and a narrow network because the budget is minutes of one CPU thread: more steps beat
    bigger ones there. The budget is CPU time, not wall time, so a busy machine changes how long
    the run takes but not what it computes."""
    torch.manual_seed(seed)
    crop, batch_size, lr = sampler.crop, AE_BATCH, 1e-3
    model = PlainAutoencoder(AEConfig(C=channels))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    t0, cpu0, step, ema = time.perf_counter(), time.process_time(), 0, None
    model.train()
    while step < steps and time.process_time() - cpu0 < cpu_budget_s:
        for g in opt.param_groups:  # the last fifth of the steps at a tenth of the learning rate
            g["lr"] = lr if step < 0.8 * steps else lr / 10
        x = sampler.sample(batch_size)
        loss = torch.mean((model(x) - x) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 200 == 0:
            log(f"ae c{channels} step {step} mse {ema:.5f} psnr {10 * math.log10(1 / ema):.2f} "
                f"cpu {time.process_time() - cpu0:.0f}s wall {time.perf_counter() - t0:.0f}s")
    model.eval()
    cfg = {"data": data_name, "images": len(sampler.images), "steps": step, "batch_size": batch_size, "crop": crop,
           "lr": lr, "loss": "MSE, 8-bit latent quantiser in the loop (straight-through)", "seed": seed,
           "cpu_s": round(time.process_time() - cpu0, 1), "wall_s": round(time.perf_counter() - t0, 1),
           "final_train_mse": ema}
    path = model.save(out, cfg)
    log(f"{path}: {step} steps, train PSNR {10 * math.log10(1 / ema):.2f} dB")
    return path
