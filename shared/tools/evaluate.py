"""``latentwire eval DIR``: measured rate-distortion of the codec against real baselines.

    latentwire eval ../shared/datasets/kodak --out runs/eval-kodak \\
        [--qualities 0,0.2,0.4,0.6,0.8,1] [--limit N] [--reference-dir ../shared/reference/compressai_kodak]
        [--no-baselines] [--noise SIGMA] [--model NAME|PATH --models-dir DIR] [--threads N] [--timing cpu]
        [--budgets 0.02,0.04,0.06]
    latentwire eval ../shared/datasets/kodak --noise 25 --denoise-model lw-vr-denoise --grid kodim23.png
    latentwire eval --train-baselines ../shared/datasets/train     (recreates models/baseline-*)

Every number is measured on real bytes in this run, on the same images:
  * ours: ``len(Codec.encode(...).data)`` (the whole .lw container) at each ``--qualities`` point;
    with ``--budgets``, also ``<ours>@budget``: ``Codec.encode(max_bytes=bpp * H * W / 8)`` at each
    of those bpp, which may code a picture at a reduced size (shared/resolution.py);
  * Pillow JPEG (optimize=True), WebP (method=6) and AVIF (speed 6), each over a quality sweep;
  * the two seed-idea baselines of ``shared.tools.baselines`` (PCA + rANS, plain autoencoder + zlib).
Per image and setting: bpp = 8 * bytes / (H * W); PSNR-RGB on the 8-bit decoded image; MS-SSIM
(pytorch_msssim, data_range=1; undefined, so null, for images with a side of 160 px or less);
encode and decode ms (wall clock, or with ``--timing cpu`` this process's CPU time). Curves
average per-image values per setting, as CompressAI's ``eval_model`` does. BD-rate
(``shared.tools.rd``) compares every codec with JPEG and with AVIF.

``--noise SIGMA`` adds Gaussian noise (0-255 scale, seeded by the image's file name) to every
codec's input while PSNR and MS-SSIM are still measured against the clean image. The table then
answers "what should a noisy picture be sent as": (a) the noisy input itself, losslessly (PNG);
(b) the plain codec on the noisy image; (c) JPEG and AVIF of the noisy image; (d) a classical
denoiser (scikit-image non-local means, its strength tuned per sigma on BSDS500 images held out
from training, never on the evaluation set) followed by AVIF; (e) with ``--denoise-model``, the
denoising checkpoint. Denoising curves flatten, so besides BD-rate the report compares each
codec with (d) point by point: at every rate (d) spends, the best PSNR the codec reaches with no
more bits (``shared.tools.rd.psnr_at_rate``). ``--grid IMAGE`` draws noisy / (d) / ours / clean crops
of one image into grid.png.

Outputs in --out: results.json ({"codecs": {key: CompressAI-layout entry}, "bd_rate": ...}),
per_image.csv and rd.png.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

DEFAULT_QUALITIES = "0,0.2,0.4,0.6,0.8,1"
JPEG_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
AVIF_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
AVIF_SPEED = 6  # libavif's default: well under a second per Kodak image here; 0-4 take many seconds
BD_ANCHORS = ("jpeg", "avif", "nlm-avif")
# Non-local means strength h = factor * sigma, chosen per sigma on 20 BSDS500 images held out
# from training (patch 5, search distance 6, fast mode): the best factor of 0.3-1.2 was 0.6 at
# sigma 15, 0.5 at 25 and 0.3-0.4 at 50. Linear in between, clamped outside.
NLM_H_FACTORS = ((15.0, 0.6), (25.0, 0.5), (50.0, 0.35))
GRID_CROP = 256
GRID_BPP = 0.5  # the grid shows ours at the quality whose mean rate is nearest this
CSV_COLUMNS = ("codec", "setting", "image", "bpp", "psnr", "ms_ssim", "enc_ms", "dec_ms")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


def add_parser(sub) -> None:
    from shared.tools.cli import _add_model_args

    p = sub.add_parser("eval", help="rate-distortion of the codec and baselines on a folder of images",
                       description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path, nargs="?", help="folder of images (e.g. Kodak)")
    p.add_argument("--out", type=Path, help="output folder (default: runs/eval-<DIR name>)")
    p.add_argument("--qualities", default=DEFAULT_QUALITIES, help=f"our quality points (default {DEFAULT_QUALITIES})")
    p.add_argument("--limit", type=int, help="only the first N images (by name)")
    p.add_argument("--budgets", default=None, metavar="BPPS",
                   help="also our byte-budget mode at these bpp, e.g. 0.02,0.04,0.06 (key <ours>@budget)")
    p.add_argument("--reference-dir", type=Path, help="CompressAI result JSONs to overlay and BD-compare")
    p.add_argument("--no-baselines", action="store_true", help="only our codec (no JPEG/WebP/AVIF/seed baselines)")
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA",
                   help="Gaussian noise on the inputs (0-255 scale); quality is measured against the clean image")
    p.add_argument("--denoise-model", default=None, metavar="NAME|PATH",
                   help="also measure this (denoising) checkpoint, e.g. lw-vr-denoise")
    p.add_argument("--grid", default=None, metavar="IMAGE",
                   help="with --noise: write grid.png, crops of this image (file name in DIR)")
    p.add_argument("--bd-method", choices=("pchip", "cubic"), default="pchip")
    p.add_argument("--threads", type=int, default=0, help="torch (and libavif) CPU threads (0: their defaults)")
    p.add_argument("--timing", choices=("wall", "cpu"), default="wall",
                   help="enc/dec ms as wall-clock latency, or as this process's CPU time (steadier on a busy machine)")
    p.add_argument("--train-baselines", type=Path, metavar="DATA",
                   help="first recreate models/baseline-* from this training folder")
    p.add_argument("--train-steps", type=int, default=2000, help="steps per autoencoder, with --train-baselines")
    _add_model_args(p)
    p.set_defaults(func=_cmd_eval)


# ---- what gets measured -------------------------------------------------------------------

@dataclass
class Setting:
    label: str
    encode: Callable  # (H, W, 3) uint8 -> bytes
    decode: Callable  # bytes -> (H, W, 3) uint8


@dataclass
class Contender:
    key: str  # results.json key and CSV codec column
    name: str
    description: str
    settings: list[Setting] = field(default_factory=list)


@dataclass
class Row:
    codec: str
    setting: str
    image: str
    bpp: float
    psnr: float
    ms_ssim: float
    enc_ms: float
    dec_ms: float


def learned_contender(codec, qualities: list[float]) -> Contender:
    def setting(q: float) -> Setting:
        return Setting(f"q={q:g}", lambda rgb: codec.encode(rgb, quality=q).data, codec.decode)

    return Contender(codec.name, codec.name, f"latentwire {codec.name}, weights {codec.weights}",
                     [setting(q) for q in qualities])


def budget_contender(codec, bpps: list[float]) -> Contender:
    """``codec`` asked for the best stream within bpp * H * W / 8 bytes, per image."""
    def setting(bpp: float) -> Setting:
        def encode(rgb):
            return codec.encode(rgb, max_bytes=max(1, int(bpp * rgb.shape[0] * rgb.shape[1] / 8))).data
        return Setting(f"budget={bpp:g}bpp", encode, codec.decode)

    return Contender(f"{codec.name}@budget", f"{codec.name} (byte budgets)",
                     f"latentwire {codec.name}, weights {codec.weights}, encode(max_bytes=...)",
                     [setting(b) for b in bpps])


def pillow_contenders(threads: int = 0) -> list[Contender]:
    from PIL import features

    out = [
        _pillow("jpeg", "JPEG", JPEG_QUALITIES, {"optimize": True}, "Pillow JPEG, optimize=True, 4:2:0"),
        _pillow("webp", "WEBP", WEBP_QUALITIES, {"method": 6}, "Pillow WebP (lossy), method=6"),
    ]
    if features.check("avif"):
        out.append(_pillow("avif", "AVIF", AVIF_QUALITIES, _avif_options(threads),
                           f"Pillow AVIF (libavif {features.version('avif')}), speed={AVIF_SPEED}, 4:2:0"))
    else:
        print("eval: this Pillow has no AVIF support; AVIF skipped", file=sys.stderr)
    return out


def _avif_options(threads: int) -> dict:
    return {"speed": AVIF_SPEED, **({"max_threads": threads} if threads > 0 else {})}


def _pillow(key: str, fmt: str, qualities, options: dict, description: str) -> Contender:
    import io

    from PIL import Image

    def setting(q: int) -> Setting:
        def encode(rgb):
            buf = io.BytesIO()
            Image.fromarray(rgb).save(buf, format=fmt, quality=q, **options)
            return buf.getvalue()

        return Setting(f"q={q}", encode, _pillow_decode)

    from PIL import __version__ as pil_version

    return Contender(key, key.upper() if key != "webp" else "WebP", f"{description} (Pillow {pil_version})",
                     [setting(q) for q in qualities])


def baseline_contenders(models_dir: Path) -> list[Contender]:
    from shared.tools.baselines import (AE_LATENT_CHANNELS, PCA_FILE, PCA_SETTINGS, PCABasis, PCACodec,
                                        PlainAutoencoder)

    basis = PCABasis.load(models_dir / PCA_FILE)
    pca = [PCACodec(basis, k, step) for k, step in PCA_SETTINGS]
    aes = [PlainAutoencoder.load(c, models_dir) for c in AE_LATENT_CHANNELS]
    return [
        Contender("pca", "PCA-8x8 + rANS", "linear transform (PCA of 8x8 RGB patches), uniform quantiser, "
                  "rANS with per-component Laplacian tables", [Setting(c.label, c.encode, c.decode) for c in pca]),
        Contender("plain-ae", "plain autoencoder", "conv autoencoder, C latent channels at H/8, 8-bit latents + "
                  "zlib, no entropy model", [Setting(m.label, m.encode, m.decode) for m in aes]),
    ]


def denoise_contenders(sigma: float, threads: int = 0) -> list[Contender]:
    """(a) the noisy image itself, lossless; (d) non-local means, then AVIF."""
    import io

    from PIL import Image, features

    def png_encode(rgb):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
        return buf.getvalue()

    out = [Contender("noisy-png", "noisy input (PNG)", "the noisy image itself, lossless PNG (optimize=True)",
                     [Setting("lossless", png_encode, _pillow_decode)])]
    if not features.check("avif"):
        print("eval: this Pillow has no AVIF support; NLM + AVIF skipped", file=sys.stderr)
        return out
    h = nlm_strength(sigma)
    avif = _pillow("avif", "AVIF", AVIF_QUALITIES, _avif_options(threads), "")

    def setting(s: Setting) -> Setting:
        return Setting(s.label, lambda rgb: s.encode(nlm_denoise(rgb, sigma, h)), s.decode)

    out.append(Contender("nlm-avif", "NLM + AVIF",
                         f"scikit-image non-local means (h={h:.1f}, sigma={sigma:g}, patch 5, distance 6, fast "
                         f"mode) then Pillow AVIF speed={AVIF_SPEED}", [setting(s) for s in avif.settings]))
    return out


def nlm_strength(sigma: float) -> float:
    import numpy as np

    sig, fac = zip(*NLM_H_FACTORS)
    return float(np.interp(sigma, sig, fac)) * sigma


def nlm_denoise(rgb, sigma: float, h: float):
    """(H, W, 3) uint8 -> denoised uint8 (scikit-image non-local means, fast mode)."""
    import numpy as np
    from skimage.restoration import denoise_nl_means

    x = rgb.astype(np.float32) / 255.0
    y = denoise_nl_means(x, h=h / 255.0, sigma=sigma / 255.0, fast_mode=True, patch_size=5, patch_distance=6,
                         channel_axis=-1)
    return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)


def _pillow_decode(data):
    from shared.images import load_image

    # A contender's own output, the size of an image --max-side already admitted: no limit of its own.
    return load_image(data, max_side=sys.maxsize).rgb  # writable: torch.from_numpy warns otherwise


# ---- measuring ----------------------------------------------------------------------------

def list_image_files(folder: Path, limit: int | None = None) -> list[Path]:
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files[:limit] if limit else files


def add_noise(rgb, sigma: float, name: str):
    """Clean image + N(0, sigma^2) on the 0-255 scale, rounded and clipped; seeded by ``name``."""
    import zlib

    import numpy as np

    rng = np.random.default_rng(zlib.crc32(name.encode()))
    noisy = rgb.astype(np.float64) + rng.normal(0.0, sigma, rgb.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def ms_ssim_rgb(a, b) -> float:
    """MS-SSIM of two (H, W, 3) uint8 images with data_range=1; NaN when a side is <= 160 px
    (the five-scale, 11-tap MS-SSIM is undefined there)."""
    import torch
    from pytorch_msssim import ms_ssim

    if min(a.shape[:2]) <= 160:
        return math.nan
    x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0
    y = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 255.0
    return float(ms_ssim(x, y, data_range=1.0))


def measure(contenders: list[Contender], images: list[tuple[str, object, object]], timing: str = "wall",
            progress=True) -> list[Row]:
    """Encode + decode every (image, setting). ``images``: (name, clean rgb, input rgb).
    ``timing``: "wall" (latency) or "cpu" (process CPU time: all threads' work, immune to other
    processes competing for the cores)."""
    from tqdm import tqdm

    clock = time.perf_counter if timing == "wall" else time.process_time
    from shared.images import psnr

    rows = []
    for c in contenders:
        # One untimed round trip first: lazy table building and allocator warm-up are not coding time.
        c.settings[0].decode(c.settings[0].encode(images[0][2]))
        bar = tqdm(total=len(images) * len(c.settings), desc=f"{c.key:>16}", disable=not progress,
                   file=sys.stderr, leave=True)
        for name, clean, x in images:
            H, W = clean.shape[:2]
            for s in c.settings:
                t0 = clock()
                data = s.encode(x)
                t1 = clock()
                x_hat = s.decode(data)
                t2 = clock()
                if x_hat.shape != clean.shape:
                    raise RuntimeError(f"{c.key} {s.label} decoded {name} to {x_hat.shape}, expected {clean.shape}")
                rows.append(Row(c.key, s.label, name, len(data) * 8 / (H * W), psnr(clean, x_hat),
                                ms_ssim_rgb(clean, x_hat), (t1 - t0) * 1e3, (t2 - t1) * 1e3))
                bar.update(1)
        bar.close()
    return rows


def summarise(contenders: list[Contender], rows: list[Row]) -> dict:
    """CompressAI-layout entry per codec: per-setting means over images (times in seconds)."""
    import numpy as np

    out = {}
    for c in contenders:
        res = {"setting": [], "bpp": [], "psnr-rgb": [], "ms-ssim-rgb": [], "encoding_time": [], "decoding_time": []}
        for s in c.settings:
            rs = [r for r in rows if r.codec == c.key and r.setting == s.label]
            ms = np.array([r.ms_ssim for r in rs], dtype=np.float64)
            res["setting"].append(s.label)
            res["bpp"].append(float(np.mean([r.bpp for r in rs])))
            res["psnr-rgb"].append(float(np.mean([r.psnr for r in rs])))
            res["ms-ssim-rgb"].append(float(np.mean(ms)) if np.isfinite(ms).all() else math.nan)
            res["encoding_time"].append(float(np.mean([r.enc_ms for r in rs])) / 1e3)
            res["decoding_time"].append(float(np.mean([r.dec_ms for r in rs])) / 1e3)
        out[c.key] = {"name": c.name, "description": c.description, "results": res}
    return out


def bd_rates(codecs: dict, references: list, ours: str, method: str = "pchip") -> dict:
    """BD-rate (%) of every codec against each measured anchor, and of ours against references."""
    from shared.tools.rd import bd_rate, curve_from_results

    curves = {k: curve_from_results(v) for k, v in codecs.items()}
    anchors = {a: {k: bd_rate(curves[a], curves[k], method) for k in curves} for a in BD_ANCHORS if a in curves}
    refs = {r.name: bd_rate(r, curves[ours], method) for r in references}
    return {"metric": "psnr-rgb", "method": method, "unit": "% rate at equal PSNR (negative: fewer bits)",
            "anchors": anchors, "ours_vs_reference": refs}


def equal_rate_comparison(codecs: dict, anchor: str) -> dict:
    """Per codec: at each rate the anchor spends, the best PSNR the codec reaches with at most that
    many bits, and the difference (None where the codec has no point that cheap)."""
    from shared.tools.rd import curve_from_results, psnr_at_rate

    a = codecs[anchor]["results"]
    out = {}
    for key, entry in codecs.items():
        if key == anchor:
            continue
        curve = curve_from_results(entry)
        points = []
        for label, bpp, p in zip(a["setting"], a["bpp"], a["psnr-rgb"]):
            q = psnr_at_rate(curve, bpp)
            points.append({"anchor_setting": label, "bpp": bpp, "anchor_psnr": p, "psnr": q,
                           "delta_db": None if q is None else q - p})
        deltas = [pt["delta_db"] for pt in points if pt["delta_db"] is not None]
        out[key] = {"points": points, "at_least_as_good": sum(d >= 0 for d in deltas), "compared": len(deltas),
                    "mean_delta_db": float(sum(deltas) / len(deltas)) if deltas else None}
    return out


def format_equal_rate(cmp: dict, anchor: str) -> str:
    keys = list(cmp)
    first = cmp[keys[0]]["points"] if keys else []
    lines = [f"PSNR at equal or lower rate than {anchor} (dB; + = better than {anchor})",
             f"{anchor + ' setting':<16} {'bpp':>6} {'PSNR':>7} " + " ".join(f"{k[:14]:>14}" for k in keys)]
    for i, pt in enumerate(first):
        cells = []
        for k in keys:
            d = cmp[k]["points"][i]["delta_db"]
            cells.append(f"{'below range' if d is None else f'{d:+.2f}':>14}")
        lines.append(f"{pt['anchor_setting']:<16} {pt['bpp']:>6.3f} {pt['anchor_psnr']:>7.2f} " + " ".join(cells))
    lines.append(f"{'at least as good':<31} " + " ".join(
        f"{str(cmp[k]['at_least_as_good']) + '/' + str(cmp[k]['compared']):>14}" for k in keys))
    return "\n".join(lines)


def write_denoise_grid(path: Path, image: tuple, sigma: float, ours: Contender, ours_summary: dict,
                       anchor: Contender, anchor_summary: dict) -> None:
    """noisy | anchor | ours | clean, centre crops of one image. Ours at the setting whose mean rate
    is nearest GRID_BPP; the anchor at its cheapest setting that spends at least as many bits on
    average (so the anchor never has fewer bits than ours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from shared.images import psnr

    name, clean, x = image
    H, W = clean.shape[:2]
    r = ours_summary["results"]
    i = int(np.argmin([abs(math.log(b / GRID_BPP)) for b in r["bpp"]]))
    a = anchor_summary["results"]
    j = next((k for k in np.argsort(a["bpp"]) if a["bpp"][k] >= r["bpp"][i]), int(np.argmax(a["bpp"])))
    panels = [(f"noisy input, sigma {sigma:g}", x, None)]
    for c, s in ((anchor, anchor.settings[j]), (ours, ours.settings[i])):
        data = s.encode(x)
        panels.append((f"{c.name} {s.label}", s.decode(data), len(data) * 8 / (H * W)))
    panels.append(("clean original", clean, None))
    c = min(GRID_CROP, H, W)
    top, left = (H - c) // 2, (W - c) // 2
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.6))
    for ax, (title, img, bpp) in zip(axes, panels):
        ax.imshow(img[top : top + c, left : left + c], interpolation="nearest")
        detail = [] if bpp is None else [f"{bpp:.3f} bpp"]
        if img is not clean:
            detail.append(f"{psnr(clean, img):.2f} dB")
        ax.set_title(title + ("\n" + ", ".join(detail) if detail else "\n "), fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{name}: centre {c}x{c} crop; PSNR and bpp of the whole image, against the clean original")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---- reporting ----------------------------------------------------------------------------

def format_table(codecs: dict, timing: str = "wall") -> str:
    unit = "ms" if timing == "wall" else "cpu ms"
    lines = [f"{'codec':<18} {'setting':<14} {'bpp':>7} {'PSNR':>7} {'MS-SSIM':>8} {'enc ' + unit:>10} {'dec ' + unit:>10}"]
    for key, entry in codecs.items():
        r = entry["results"]
        for i, label in enumerate(r["setting"]):
            ms = r["ms-ssim-rgb"][i]
            lines.append(f"{key:<18} {label:<14} {r['bpp'][i]:>7.3f} {r['psnr-rgb'][i]:>7.2f} "
                         f"{'   n/a' if not math.isfinite(ms) else f'{ms:.4f}':>8} "
                         f"{r['encoding_time'][i] * 1e3:>10.1f} {r['decoding_time'][i] * 1e3:>10.1f}")
    return "\n".join(lines)


def format_bd(bd: dict) -> str:
    anchors = list(bd["anchors"])
    if not anchors and not bd["ours_vs_reference"]:
        return "BD-rate: no JPEG/AVIF anchor measured (--no-baselines) and no --reference-dir"
    lines = [f"BD-rate ({bd['metric']}, {bd['method']}; negative = fewer bits than the anchor at equal PSNR)"]
    if anchors:
        lines.append(f"{'codec':<18} " + " ".join(f"{'vs ' + a:>10}" for a in anchors))
        for key in next(iter(bd["anchors"].values())):
            lines.append(f"{key:<18} " + " ".join(_pct(bd["anchors"][a][key]) for a in anchors))
    if bd["ours_vs_reference"]:
        lines.append("ours vs CompressAI reference curves:")
        for name, v in bd["ours_vs_reference"].items():
            lines.append(f"  {name:<40} {_pct(v)}")
    return "\n".join(lines)


def _pct(v) -> str:
    return f"{'n/a (no overlap)' if v is None else f'{v:+.1f}%':>10}"


def plot_rd(path: Path, codecs: dict, references: list, ours: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_p, ax_m) = plt.subplots(1, 2, figsize=(14, 6))
    our_max = max(codecs[ours]["results"]["bpp"])
    x_max = max(1.0, min(4.0, 1.6 * our_max))
    for key, entry in codecs.items():
        r = entry["results"]
        style = {"lw": 2.5, "marker": "o", "color": "k", "zorder": 5} if key == ours else {"lw": 1.3, "marker": "."}
        ax_p.plot(r["bpp"], r["psnr-rgb"], label=f"{entry['name']} (measured)", **style)
        ms = np.asarray(r["ms-ssim-rgb"], dtype=np.float64)
        if np.isfinite(ms).any():
            ax_m.plot(r["bpp"], -10 * np.log10(1 - ms), label=entry["name"], **style)
    for c in references:
        ax_p.plot(c.bpp, c.psnr, "--", lw=1, alpha=0.8, label=f"{c.name} (CompressAI ref.)")
        if c.ms_ssim and len(c.ms_ssim) == len(c.bpp):
            ax_m.plot(c.bpp, -10 * np.log10(1 - np.asarray(c.ms_ssim)), "--", lw=1, alpha=0.8, label=c.name)
    for ax, ylabel in ((ax_p, "PSNR-RGB (dB)"), (ax_m, "MS-SSIM (dB, -10 log10(1 - MS-SSIM))")):
        ax.set_xlim(0, x_max)
        ax.set_xlabel("bits per pixel (real bytes)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_p.set_ylim(*_ylim(codecs, references, x_max))
    ax_p.legend(fontsize=7, loc="lower right")
    if ax_m.get_legend_handles_labels()[0]:
        ax_m.legend(fontsize=7, loc="lower right")
    else:
        ax_m.text(0.5, 0.5, "MS-SSIM undefined (images of 160 px or less)", ha="center", transform=ax_m.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ylim(codecs: dict, references: list, x_max: float) -> tuple[float, float]:
    ys = [p for e in codecs.values() for b, p in zip(e["results"]["bpp"], e["results"]["psnr-rgb"])
          if b <= x_max and math.isfinite(p)]
    ys += [p for c in references for b, p in zip(c.bpp, c.psnr) if b <= x_max and math.isfinite(p)]
    return (math.floor(min(ys)) - 1, math.ceil(max(ys)) + 1) if ys else (20, 45)


def write_outputs(out: Path, report: dict, rows: list[Row], references: list) -> None:
    import csv
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(_json_safe(report), indent=1) + "\n")
    with open(out / "per_image.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([r.codec, r.setting, r.image, f"{r.bpp:.6f}", f"{r.psnr:.4f}",
                        "" if not math.isfinite(r.ms_ssim) else f"{r.ms_ssim:.6f}", f"{r.enc_ms:.2f}", f"{r.dec_ms:.2f}"])
    noise = f", input noise sigma {report['noise_sigma']:g}" if report["noise_sigma"] else ""
    plot_rd(out / "rd.png", report["codecs"], references, report["ours"],
            f"{report['dataset']} ({report['images']} images{noise})")


def _json_safe(obj):
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def parse_qualities(text: str) -> list[float]:
    from shared.codec import check_quality

    try:
        return [check_quality(float(v)) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise SystemExit(f"latentwire eval: --qualities must be numbers in [0, 1] separated by commas ({exc})")


def _cmd_eval(args) -> int:
    import numpy as np
    import torch

    from shared.checkpoint import DEFAULT_MODELS_DIR
    from shared.images import load_image, psnr
    from shared.tools.rd import load_curves

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    models_dir = args.models_dir or DEFAULT_MODELS_DIR
    if args.train_baselines:
        from shared.tools.baselines import train_baselines

        train_baselines(args.train_baselines, models_dir, steps=args.train_steps)
        if args.dir is None:
            return 0
    if args.dir is None:
        print("latentwire eval: give a folder of images (or --train-baselines DATA)", file=sys.stderr)
        return 2
    if args.noise < 0:
        print("latentwire eval: --noise must be >= 0", file=sys.stderr)
        return 2
    qualities = parse_qualities(args.qualities)

    from shared.tools.cli import _load_codec

    codec = _load_codec(args)
    contenders = [learned_contender(codec, qualities)]
    ours = codec.name
    if args.denoise_model:
        from shared.codec import Codec

        denoiser = Codec.load(args.denoise_model, models_dir, device=args.device, max_side=args.max_side,
                              precision=args.precision)
        if denoiser.name == codec.name:
            print(f"latentwire eval: --denoise-model names the same model as --model ({codec.name})", file=sys.stderr)
            return 2
        contenders.append(learned_contender(denoiser, qualities))
        ours = denoiser.name
    if args.budgets:
        try:
            budgets = [float(b) for b in args.budgets.split(",")]
        except ValueError:
            budgets = []
        if not budgets or min(budgets) <= 0:
            print("latentwire eval: --budgets takes positive bpp values, e.g. 0.02,0.04,0.06", file=sys.stderr)
            return 2
        contenders.append(budget_contender(denoiser if args.denoise_model else codec, budgets))
    if args.grid and not (args.noise > 0 and args.denoise_model and not args.no_baselines):
        print("latentwire eval: --grid needs --noise, --denoise-model and the baselines", file=sys.stderr)
        return 2
    if not args.no_baselines:
        pillow = pillow_contenders(args.threads)
        # On noisy inputs the question is (c) JPEG and AVIF of the noisy image; WebP adds nothing.
        contenders += [c for c in pillow if c.key != "webp"] if args.noise > 0 else pillow
        # The seed baselines show what an entropy model buys on clean images; on noisy ones the
        # question is what to do about the noise, which the denoising contenders answer.
        contenders += denoise_contenders(args.noise, args.threads) if args.noise > 0 else baseline_contenders(models_dir)

    images = []
    for f in list_image_files(args.dir, args.limit):
        clean = load_image(f, max_side=args.max_side).rgb
        x = add_noise(clean, args.noise, f.name) if args.noise > 0 else clean
        images.append((f.name, clean, x))
    if args.grid and args.grid not in {name for name, _, _ in images}:
        print(f"latentwire eval: --grid {args.grid} is not among the evaluated images", file=sys.stderr)
        return 2
    references = load_curves(args.reference_dir) if args.reference_dir else []

    rows = measure(contenders, images, args.timing)
    codecs = summarise(contenders, rows)
    report = {
        "dataset": args.dir.name, "images": len(images), "noise_sigma": args.noise,
        "ours": ours, "torch_threads": torch.get_num_threads(), "precision": codec.precision,
        "timing": args.timing, "codecs": codecs,
        "bd_rate": bd_rates(codecs, references, ours, args.bd_method),
    }
    if args.noise > 0:
        report["noisy_input_psnr"] = float(np.mean([psnr(c, x) for _, c, x in images]))
        if "nlm-avif" in codecs:
            report["vs_nlm_avif"] = equal_rate_comparison(codecs, "nlm-avif")
    out = args.out or Path("runs") / f"eval-{args.dir.name}"
    write_outputs(out, report, rows, references)
    if args.grid:
        by_key = {c.key: c for c in contenders}
        write_denoise_grid(out / "grid.png", next(im for im in images if im[0] == args.grid), args.noise,
                           by_key[ours], codecs[ours], by_key["nlm-avif"], codecs["nlm-avif"])

    print(f"\n{args.dir} ({len(images)} images), torch threads {torch.get_num_threads()}, {args.timing} timing"
          + (f", input noise sigma {args.noise:g} (noisy input PSNR {report['noisy_input_psnr']:.2f} dB)"
             if args.noise > 0 else ""))
    print(format_table(codecs, args.timing))
    print()
    print(format_bd(report["bd_rate"]))
    if "vs_nlm_avif" in report:
        print()
        print(format_equal_rate(report["vs_nlm_avif"], "nlm-avif"))
    print(f"\nwrote {out / 'results.json'}, {out / 'per_image.csv'}, {out / 'rd.png'}"
          + (f", {out / 'grid.png'}" if args.grid else ""))
    return 0

