"""``Codec``: image <-> bitstream with one shipped checkpoint, at any quality or byte budget.

    codec = Codec.load("lw-vr-hyperprior")                  # from models/, hash-verified
    enc = codec.encode(rgb, quality=0.6)                     # or max_bytes=20_000
    enc.data                                                  # the .lw bytes the sender transmits
    rgb_hat = codec.decode(enc.data)                          # (H, W, 3) uint8, original size

DEVICE POLICY (what makes a stream portable across machines):
  * Anything that decides *which entropy-coder table* codes a symbol, or what a symbol means, is
    computed on the CPU in float64 on both sides: the gains from the stored quality, z_hat,
    h_s(z_hat), the means and the scale indexes (``VariableRateHyperprior.entropy_parameters``).
    A one-ulp difference there would pick another CDF and desynchronise the rANS decoder, so
    that path never runs on a GPU, in bf16, or with TF32. For the same reason the encoder first
    rounds the requested quality to the float32 the stream stores and codes with that value.
  * g_a and h_a (encoder side) may run on any device and precision: their outputs are rounded to
    integers and sent; the decoder never recomputes them. A GPU-encoded stream therefore decodes
    on a CPU receiver (``shared/tools/device/check_device_streams.py`` checks streams made on an H200).
  * g_s (decoder side) may run on any device; pixels are identical across CPU thread counts
    because coding uses ``InferenceTransform`` copies of g_a and g_s: transposed convolutions
    rewritten as convolutions plus pixel shuffle (``SubpixelDeconv``), run as channels_last oneDNN
    convolutions, which partition work by output block rather than splitting reductions. (The
    training model's own ``ConvTranspose2d`` layers do not have that property: under 3 threads
    their output bits change.) Checked by tests/unit/test_determinism.py for 1, 2 and 3 threads.
  * Encoding is byte-identical across runs and CPU thread counts for the same reason.

PRECISION: ``precision="auto"`` (the default) runs the bodies of g_a and g_s in bfloat16 on a CPU
with native bf16 (AVX512-BF16 or AMX: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), and in
float32 elsewhere (other CPUs, CUDA). Output layers stay float32. On Kodak bf16 moves rate and
PSNR by a fraction of a percent and of a dB while encode and decode take about half the time
(figures in models/README.md, "Streams on any machine"; ``latentwire bench codec`` measures a machine). The
choice is per machine, like the device: a decoder with another precision still decodes every
stream, with pixels that may differ by a grey level or two, so a sender's preview PSNR is exact
when sender and receiver run the same precision.

BYTE BUDGETS, REDUCED SIZES, CLEAN FIRST: ``encode(max_bytes=N)`` searches quality on real coded
sizes (shared/rate_control.py) and, for budgets the full size meets badly or not at all, reduced
sizes as well (shared/resolution.py: format version 3 streams; ``encode(..., scale=s)`` fixes the
size). A codec for a denoising model may code its own clean reconstruction instead of a noisy
upload, by a rule its checkpoint carries (shared/clean_first.py). The ``Codec`` owns the model,
the device and precision, the coder of one picture and the decoder; those modules decide what to
code.
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shared import bitstream as bs
from shared.checkpoint import DEFAULT_MODELS_DIR, load_model, weights_hash
from shared.clean_first import CleanFirst, noise_estimate, rule_of
from shared.errors import CorruptBitstream, QualityOutOfRange
from shared.images import DEFAULT_MAX_SIDE, psnr
from shared.network import DOWNSAMPLE, InferenceTransform, VariableRateHyperprior, latent_extent, pad_to_multiple
from shared.rate_control import QUICK_TOLERANCE, RateCurve, fit_budget
from shared.resolution import coded_size, fit_any_size, resize_rgb

DEFAULT_MODEL = "lw-vr-hyperprior"
DEFAULT_DENOISE_MODEL = "lw-vr-denoise"  # the same codec fine-tuned on noisy inputs with clean targets
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # for g_a and g_s: see PRECISION in the module docstring
SEARCHES = ("exact", "quick")  # how a byte budget is searched: Codec.encode


@dataclass(frozen=True)
class Encoded:
    data: bytes  # the .lw container
    stream: bs.Bitstream
    # The quality asked for (or found by rate control). ``stream.quality`` is the value actually
    # coded and stored: the same rounded to float32 (``bitstream.coded_quality``).
    quality: float
    # Clean first (shared/clean_first.py): the noise estimate (rms grey levels) and whether the stream
    # codes the model's own clean reconstruction rather than the upload. None / False otherwise.
    noise: float | None = None
    cleaned: bool = False

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return self.nbytes * 8 / (self.stream.height * self.stream.width)


class Codec:
    """One loaded model; encode and decode are thread-safe (a lock serialises model use)."""

    def __init__(self, model: VariableRateHyperprior, name: str, weights: str | None = None,
                 device: str | torch.device = "cpu", max_side: int = DEFAULT_MAX_SIDE,
                 precision: str = "auto", clean_first: CleanFirst | None = None,
                 rate_curve: RateCurve | None = None) -> None:
        self.model = model.eval()
        self.clean_first = clean_first
        self.rate_curve = rate_curve  # places a quick budget search's codings (shared/rate_control.py)
        self.name = name
        self.weights = weights or weights_hash(model.state_dict())
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_side = max_side
        self._lock = threading.Lock()
        if self.device.type == "cpu":
            keep_freed_buffers()
        # Entropy models, gains and h_s stay on the CPU (device policy); the transforms coding
        # uses move: h_a, and the InferenceTransform copies of g_a and g_s (see DEVICE POLICY).
        self.model.h_a.to(self.device, memory_format=torch.channels_last)
        self.model.update(force=False)  # no-op for exported models: their tables are stored
        dtype = PRECISIONS[self.precision]
        self._g_a = InferenceTransform(self.model.g_a, dtype).to(self.device)
        self._g_s = InferenceTransform(self.model.g_s, dtype).to(self.device)

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_MODEL, models_dir: Path = DEFAULT_MODELS_DIR,
             device: str = "cpu", max_side: int = DEFAULT_MAX_SIDE, precision: str = "auto",
             clean_first: CleanFirst | None | str = "auto") -> "Codec":
        """``clean_first="auto"``: the rule the checkpoint carries (a denoising model's:
        shared/clean_first.py), none for a file without one."""
        model, meta = load_model(name_or_path, models_dir)
        if clean_first == "auto":
            clean_first = rule_of(meta)
        return cls(model, meta["name"], meta["weights"], device=resolve_device(device), max_side=max_side,
                   precision=precision, clean_first=clean_first, rate_curve=RateCurve.from_meta(meta.get("rate_curve")))

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, rgb: np.ndarray, quality: float | None = None, max_bytes: int | None = None,
               scale: float | None = None, search: str = "exact") -> Encoded:
        """(H, W, 3) uint8 -> bitstream at ``quality`` in [0, 1], or the best that fits ``max_bytes``.

        ``scale`` in (0, 1] codes the picture at that fraction of its size (a version 3 stream,
        which decodes at the full size). None: the full size for a quality; for a byte budget, the
        full size or a reduced one, whichever looks best within it (shared/resolution.py).
        ``search`` (byte budgets): "exact" finds the highest quality that fits; "quick" takes the
        first stream within ``QUICK_TOLERANCE`` of the budget (searched on the entropy model's own
        size estimates and coded once, mostly, when the file carries a rate curve) and tries reduced
        sizes only when the full size cannot meet it at all: a fraction of the codings, for callers
        that must keep up with a feed (the sender's quality=auto)."""
        if (quality is None) == (max_bytes is None):
            raise QualityOutOfRange("give exactly one of quality (0..1) or max_bytes")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
        quick = search == "quick"
        self._check_image(rgb)
        if quality is not None:
            quality = check_quality(quality)  # before the expensive analysis
        elif max_bytes <= 0:
            raise QualityOutOfRange(f"max_bytes must be positive, got {max_bytes}")
        coded = None if scale is None else coded_size(rgb.shape, check_scale(scale))
        with self._lock, torch.inference_mode():
            # The full size's analysis: for its own streams and for the clean estimate, which a
            # fixed reduced size of a plain codec needs neither of.
            full = coded is None or self.clean_first is not None
            y, z = self._analysis(rgb) if full else (None, None)
            estimate = self._clean_estimate(rgb, y, z) if self.clean_first is not None else None
            code, segments, reference = self._coder(rgb, y, z, estimate, coded)
            if quality is not None:
                return code(quality)
            tolerance, curve = (QUICK_TOLERANCE, self.rate_curve) if quick else (0.0, None)
            if scale is not None:
                H, W = coded or rgb.shape[:2]
                return fit_budget(rgb.shape, segments, int(max_bytes), tolerance, curve, H * W)
            return fit_any_size(rgb.shape, segments, lambda size: self._coder(rgb, y, z, estimate, size)[1],
                                lambda enc: psnr(reference, self._decode_stream(enc.stream)), int(max_bytes),
                                below_quality=0.0 if quick else None, tolerance=tolerance, curve=curve,
                                first_fit=quick)

    def encode_batch(self, images: list[np.ndarray], quality: float) -> list[Encoded]:
        """Several images in one call; same-size images share one g_a pass (the GPU batching path)."""
        quality = check_quality(quality)
        for rgb in images:
            self._check_image(rgb)
        if self.clean_first is not None:  # each image decides on its own noise estimate
            return [self.encode(rgb, quality=quality) for rgb in images]
        out: list[Encoded | None] = [None] * len(images)
        groups: dict[tuple, list[int]] = {}
        for i, rgb in enumerate(images):
            groups.setdefault(rgb.shape, []).append(i)
        with self._lock, torch.inference_mode():
            for shape, idx in groups.items():
                x = torch.cat([_to_tensor(images[i]) for i in idx])
                y, z = self._analysis_tensor(x)
                for k, i in enumerate(idx):
                    out[i] = self._code(shape, y[k : k + 1], z[k : k + 1], quality)
        return out  # type: ignore[return-value]

    def _check_image(self, rgb: np.ndarray) -> None:
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise TypeError("encode expects an (H, W, 3) uint8 array; use shared.images.load_image")
        H, W = rgb.shape[:2]
        if not (1 <= H <= self.max_side and 1 <= W <= self.max_side):
            from shared.errors import ImageTooLarge

            raise ImageTooLarge(f"{W}x{H} is outside 1..{self.max_side} per side")

    def _analysis(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self._analysis_tensor(_to_tensor(rgb))

    def _analysis_tensor(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = pad_to_multiple(x.to(self.device)).contiguous(memory_format=torch.channels_last)
        y = self._g_a(x)  # (B, M, H/16, W/16)
        z = self.model.h_a(y)  # (B, N, H/64, W/64)
        return y.float().cpu(), z.float().cpu()

    def _clean_estimate(self, rgb: np.ndarray, y: torch.Tensor, z: torch.Tensor) -> tuple[np.ndarray, float]:
        """Clean first: (the reconstruction at quality 1, the noise estimate in rms grey levels)."""
        cleaned = self._reconstruct(y, z, 1.0, rgb.shape)
        return cleaned, noise_estimate(rgb, cleaned)

    def _coder(self, rgb: np.ndarray, y: torch.Tensor, z: torch.Tensor, estimate: tuple | None,
               coded: tuple[int, int] | None = None):
        """(quality -> Encoded, the budget search's segments, the reference picture) for ``rgb``
        coded at ``coded`` (None: its own size). Without a clean estimate every quality codes the
        upload. With one (``_clean_estimate``), the clean-first rule picks the upload or the
        reconstruction per quality (shared/clean_first.py). Each picture is resized and analysed
        once, when a quality first needs it."""
        noise = None if estimate is None else estimate[1]
        upload = _PictureCoder(self, rgb.shape, rgb, coded, None if coded else (y, z), noise=noise)
        if estimate is None:
            return upload, [(upload, 0.0, 1.0)], rgb
        cleaned = estimate[0]
        clean = _PictureCoder(self, rgb.shape, cleaned, coded, noise=noise, cleaned=True)
        return self.clean_first.coder(upload, clean, rgb, cleaned, noise)

    def _reconstruct(self, y: torch.Tensor, z: torch.Tensor, quality: float, shape: tuple) -> np.ndarray:
        """What a receiver would show for (y, z) coded at ``quality``, without the entropy coder."""
        y_hat = self.model.quantize_latents(y, z, bs.coded_quality(quality), latent_extent(*shape[:2]))
        return _to_rgb(self._pixels(y_hat), shape[0], shape[1])

    def _code(self, shape: tuple, y: torch.Tensor, z: torch.Tensor, quality: float,
              coded: tuple[int, int] | None = None) -> Encoded:
        """Entropy-code latents of a ``shape`` picture, analysed at ``coded`` size (None: its own)."""
        H, W = shape[:2]
        # Code with exactly the value the stream stores (float32): the decoder derives the gains,
        # and so the entropy tables, from the stored value alone.
        coded_quality = bs.coded_quality(quality)
        version = self._stream_version(coded)
        extent = latent_extent(*(coded or (H, W)))  # past it, padding: its means, not coded (version 7)
        if version == bs.CONTEXT_VERSION:  # z and y in one string; the shapes follow the size
            strings = tuple(self.model.compress_joint(y, z, coded_quality, extent))
            y_shape, z_shape = (None, *y.shape[2:]), (None, *z.shape[2:])
        else:
            out = self.model.compress_latents(y, z, coded_quality, extent)
            strings = (out["strings"][0][0], out["strings"][1][0])
            y_shape, z_shape = tuple(y.shape[1:]), tuple(z.shape[1:])
        stream = bs.Bitstream(  # versions 6 and 7 leave the name out: the weights name the model
            model="" if version in bs.UNNAMED_VERSIONS else self.name, weights=self.weights, height=H, width=W,
            quality=coded_quality, y_shape=y_shape, z_shape=z_shape, strings=strings, version=version,
            coded_size=coded,
        )
        return Encoded(data=stream.to_bytes(), stream=stream, quality=quality)

    def _stream_version(self, coded: tuple[int, int] | None) -> int:
        if self.model.context is not None:
            return bs.CONTEXT_VERSION
        return bs.VERSION if coded is None else bs.RESAMPLED_VERSION

    # ---- decoding ------------------------------------------------------------------------
    def parse(self, data: bytes | list | dict | bs.Bitstream) -> bs.Bitstream:
        """Validate a stream for this decoder without decoding pixels (cheap; raises on any fault).

        ``data``: the ``.lw`` bytes, their unpacked msgpack object (``Bitstream.to_obj()``), or an
        already parsed ``Bitstream`` (then only the model and limits are checked)."""
        if isinstance(data, bs.Bitstream):
            stream = data
        elif isinstance(data, (list, dict)):
            stream = bs.parse(data)
        else:
            stream = bs.loads(data)
        bs.check_model(stream, self.name, self.weights,
                       (self.model.config.M, self.model.config.N), self.max_side, self.model.context is not None)
        return stream

    def decode(self, data: bytes | list | dict | bs.Bitstream) -> np.ndarray:
        """Bitstream -> (H, W, 3) uint8 at the original size."""
        stream = self.parse(data)
        with self._lock, torch.inference_mode():
            try:
                return self._decode_stream(stream)
            except (RuntimeError, ValueError) as exc:
                raise CorruptBitstream(f"the entropy-coded data does not decode ({exc})") from exc

    def _decode_stream(self, stream: bs.Bitstream) -> np.ndarray:
        """A parsed stream -> (height, width, 3) uint8: synthesised at its coded size, then resized
        to the declared one when that differs (version 3 streams: shared/resolution.py)."""
        rgb = _to_rgb(self._synthesis(stream), stream.coded_height, stream.coded_width)
        return rgb if stream.coded_size is None else resize_rgb(rgb, (stream.height, stream.width))

    def _synthesis(self, stream: bs.Bitstream) -> torch.Tensor:
        if stream.version in bs.JOINT_VERSIONS:
            extent = (latent_extent(stream.coded_height, stream.coded_width)
                      if stream.version in bs.CROPPED_VERSIONS else None)
            y_hat = self.model.decode_joint([stream.strings[0]], stream.z_shape[1:], stream.quality, extent)
        else:
            y_hat = self.model.decode_latents([[stream.strings[0]], [stream.strings[1]]], stream.z_shape[1:],
                                              stream.quality)
        return self._pixels(y_hat)

    def _pixels(self, y_hat: torch.Tensor) -> torch.Tensor:
        """Decoded latents -> (B, 3, H', W') in [0, 1] on the CPU, H' and W' padded."""
        y_hat = y_hat.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        return self._g_s(y_hat).clamp_(0, 1).float().cpu()

    def info(self) -> dict:
        return {"name": self.name, "weights": self.weights, "device": str(self.device),
                "precision": self.precision, "network": self.model.config.to_dict(), "max_side": self.max_side,
                "clean_first": None if self.clean_first is None else asdict(self.clean_first)}


class _PictureCoder:
    """quality -> Encoded for one picture coded at ``coded`` (None: its own size), each quality
    coded once (clean first asks for some twice); the picture is resized and analysed when first
    needed. ``predict(q)``: the entropy model's quick estimate of the stream's size, which a quick
    budget search places its codings by (shared/rate_control.py). ``noise``/``cleaned``: what
    clean first records in each stream's Encoded (shared/clean_first.py)."""

    def __init__(self, codec: Codec, shape: tuple, picture: np.ndarray, coded: tuple[int, int] | None,
                 latents: tuple | None = None, noise: float | None = None, cleaned: bool = False) -> None:
        self.codec, self.shape, self.picture, self.coded = codec, shape, picture, coded
        self.noise, self.cleaned = noise, cleaned
        self._latents = latents
        self._streams: dict[float, Encoded] = {}

    def latents(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._latents is None:
            picture = self.picture if self.coded is None else resize_rgb(self.picture, self.coded)
            self._latents = self.codec._analysis(picture)
        return self._latents

    def __call__(self, q: float) -> Encoded:
        if q not in self._streams:
            enc = self.codec._code(self.shape, *self.latents(), q, self.coded)
            self._streams[q] = enc if self.noise is None else replace(enc, noise=self.noise, cleaned=self.cleaned)
        return self._streams[q]

    def predict(self, q: float) -> float:
        return self.codec.model.predict_bytes(*self.latents(), bs.coded_quality(q),
                                              latent_extent(*(self.coded or self.shape[:2])))


def load_optional(name_or_path: str, models_dir: Path = DEFAULT_MODELS_DIR, device: str = "cpu",
                  max_side: int = DEFAULT_MAX_SIDE, precision: str = "auto") -> "Codec | None":
    """An optional second model (the denoising one): None when it is not named or not installed.
    A file that exists but fails its hash or format check still raises."""
    from shared.errors import CheckpointNotFound

    if not name_or_path:
        return None
    try:
        return Codec.load(name_or_path, models_dir, device=device, max_side=max_side, precision=precision)
    except CheckpointNotFound:
        return None


def _number_in(value, name: str, interval: str, inside, meaning: str) -> float:
    """``value`` as a float if ``inside(value)``, else QualityOutOfRange naming ``interval``."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise QualityOutOfRange(f"{name} must be a number in {interval}, got {value!r}") from exc
    if math.isnan(v) or not inside(v):
        raise QualityOutOfRange(f"{name} must be in {interval} ({meaning}), got {value!r}")
    return v


def check_quality(quality: float) -> float:
    return _number_in(quality, "quality", "[0, 1]", lambda q: 0.0 <= q <= 1.0, "0 = fewest bytes, 1 = best")


def check_scale(scale: float) -> float:
    return _number_in(scale, "scale", "(0, 1]", lambda s: 0.0 < s <= 1.0, "the fraction of the size to code at")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" on a CPU with native bf16, else "fp32"; explicit choices are kept."""
    if precision not in ("auto", *PRECISIONS):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    if precision != "auto":
        return precision
    native_bf16 = device.type == "cpu" and torch.backends.mkldnn.is_available() and bool(
        torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "bf16" if native_bf16 else "fp32"


@functools.cache
def keep_freed_buffers() -> bool:
    """Make glibc's malloc keep large freed blocks for reuse (once per process; False where the C
    library is not glibc).

    By default glibc serves each allocation above its mmap threshold (at most 32 MB) with fresh
    pages from the kernel and returns them on free, so every full-resolution activation of g_s and
    g_a faults in its pages again on every image. With the threshold raised, such buffers come from
    the heap and the next image reuses them; the trim threshold keeps the heap from shrinking
    between images. The cost is that the process keeps its peak heap."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        return bool(libc.mallopt(m_mmap_threshold, 1 << 30)) and bool(libc.mallopt(m_trim_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def _to_rgb(x_hat: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, 3, H', W') in [0, 1] -> (height, width, 3) uint8, the padding cut off."""
    x_hat = x_hat[0, :, :height, :width]
    return x_hat.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)


__all__ = ["Codec", "Encoded", "DEFAULT_MODEL", "DEFAULT_DENOISE_MODEL", "DOWNSAMPLE", "PRECISIONS", "check_quality",
           "check_scale", "load_optional", "resolve_device", "resolve_precision"]
