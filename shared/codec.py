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
    on a CPU receiver (``tests/gpu/check_device_streams.py`` checks streams made on an H200).
  * g_s (decoder side) may run on any device; pixels are identical across CPU thread counts
    because coding uses ``InferenceTransform`` copies of g_a and g_s: transposed convolutions
    rewritten as convolutions plus pixel shuffle (``SubpixelDeconv``), run as channels_last oneDNN
    convolutions, which partition work by output block rather than splitting reductions. (The
    training model's own ``ConvTranspose2d`` layers do not have that property: under 3 threads
    their output bits change.) Checked by tests/unit/test_determinism.py for 1, 2 and 3 threads.
  * Encoding is byte-identical across runs and CPU thread counts for the same reason.

PRECISION: ``precision="auto"`` (the default) runs the bodies of g_a and g_s in bfloat16 on a CPU
with native bf16 (AVX512-BF16 or AMX: ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``), and in
float32 elsewhere (other CPUs, CUDA). Output layers stay float32. On Kodak (lw-vr-hyperprior-56539fc6)
bf16 moved rate by +0.07..+0.22 % and PSNR by -0.003..+0.009 dB per quality point (BD-rate +0.04 %)
while encode/decode of a 768x512 image went from 388/477 ms to 210/261 ms (``latentwire bench
codec``, 2 threads; figures in models/README.md "Precision"). The choice is per machine, like
the device: a decoder with another precision still decodes every stream, with pixels that may
differ by a grey level or two, so a sender's preview PSNR is exact when sender and receiver run
the same precision.

CLEAN FIRST (denoising models, ``mode=denoise``): the one-pass denoiser codes a noisy image at low
and middle quality less well than it cleans it at full quality. So a codec with a ``CleanFirst``
rule (``Codec.load`` gives one to every model trained with ``--noise``) first reconstructs the
upload at quality 1 on the sender, without sending it: that picture C is the model's best estimate
of the clean image, and the rms difference between upload and C estimates the noise (grey levels;
about 4-5 on clean photos, 15 / 24 / 44 at sigma 15 / 25 / 50). When the asked quality is at most
``CleanFirst.max_quality(noise)`` it codes C instead of the upload; above it, the upload. The
stream is an ordinary one of the same model, so receivers need nothing new.
Just past the limit the upload's stream costs far more than the reconstruction's at it (kodim23
at sigma 25: 0.32 bpp at quality 0.657, 0.87 for the upload at 0.66), so a byte budget between
the two is filled with the reconstruction's streams past the limit, at the highest quality that
fits, rather than left two-thirds unused; a budget that fits the upload's stream just past the
limit gets the upload's. Qualities past the limit do the same over that whole range: when the
upload's stream just past it is more than ``CleanFirst.gap_ratio`` times the reconstruction's at
it, quality q codes the best stream (as a byte budget picks it) within a rate log-spaced from the
reconstruction's at the limit (q -> limit) to the upload's at quality 1 (q = 1), so rate rises
with quality without the jump. A smaller step is left as it is: the upload at q.
The rule comes from a sweep over the 20 held-out BSDS images, not Kodak (figures in
models/README.md, "Clean first"): coding C gained +0.06..+0.24 dB at equal rate at sigma 25 up to
quality 0.6 and lost from 0.8; +0.15..+0.50 dB at every quality at sigma 50; nothing at sigma 15.
Cost: one more analysis and synthesis on the sender for every denoise-mode image (768x512, 2
threads: 639 ms encode coded clean, against 194 ms for one pass); past the limit, the
reconstruction's analysis and stream at the limit to measure the gap, and across it a budget search.

RESOLUTION (byte budgets, format version 3 streams): a learned codec's lowest rate has a floor,
quality 0 at the full size (about 0.04-0.12 bpp on Kodak), and near it the hyper-latent and the
entropy model's overheads weigh most. Pillow-downscaling the picture, coding that and resizing
the decode back up spends the same bytes better there, and goes lower. So ``encode(max_bytes=N)``
first fits the full size as before; when that fails, or fits only below ``RESIZE_BELOW_QUALITY``,
it also fits each of ``RESIZE_SCALES`` (the same rate search on the Lanczos-resized picture) and
sends whichever candidate decodes closest, in squared error, to the reference: the upload, or for
a denoising codec that cleans this image its clean reconstruction (CLEAN FIRST). A reduced size's
stream is format version 3 (shared/bitstream.py): version 2 plus the coded size; the decoder
synthesises that size and resizes to the declared one with Pillow's Lanczos filter on 8-bit RGB
(integer arithmetic: the same pixels everywhere). ``encode(..., scale=s)`` fixes the size
instead. Qualities are never resized: a quality means the full size. On Kodak (figures in
models/TRAINING.md, "Byte budgets below the lowest rate") budgets of 0.02 / 0.04 bpp, which 0 / 1
of the 24 images met at the full size, were met by all 24, and budgets of 0.06 / 0.08 bpp gained
+0.19 / +0.11 dB on the images the full size could meet (none lost).
"""

from __future__ import annotations

import math
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shared import bitstream as bs
from shared.checkpoint import DEFAULT_MODELS_DIR, load_model, weights_hash
from shared.errors import BudgetTooSmall, CorruptBitstream, QualityOutOfRange
from shared.images import DEFAULT_MAX_SIDE, psnr
from shared.network import DOWNSAMPLE, InferenceTransform, VariableRateHyperprior, pad_to_multiple

DEFAULT_MODEL = "lw-vr-hyperprior"
DEFAULT_DENOISE_MODEL = "lw-vr-denoise"  # the same codec fine-tuned on noisy inputs with clean targets
# Rate control: a root search on quality over real coded sizes that ends, like 12 halvings of
# [0, 1] would, with the highest fitting quality bracketed to 1/4096, far below the step at which
# the coded size changes by more than a few bytes. It is ITP (interpolate, truncate, project:
# Oliveira and Takahashi, 2020) on log bytes, which is nearly straight in quality, so it usually
# codes 5-8 qualities where bisection codes 12 (Kodak), and never more than 12 + RATE_SEARCH_SLACK.
RATE_SEARCH_STEPS = 12
RATE_SEARCH_SLACK = 1
RATE_SEARCH_TRUNCATION = 0.2  # ITP's kappa_1, with kappa_2 = 2
# RESOLUTION: the reduced sizes a byte budget may be coded at, and the full size's fitted quality
# below which they are tried.
RESIZE_SCALES = (0.75, 0.5, 0.375, 0.25)
RESIZE_BELOW_QUALITY = 0.25
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}  # for g_a and g_s: see PRECISION in the module docstring


@dataclass(frozen=True)
class Encoded:
    data: bytes  # the .lw container
    stream: bs.Bitstream
    # The quality asked for (or found by rate control). ``stream.quality`` is the value actually
    # coded and stored: the same rounded to float32 (``bitstream.coded_quality``).
    quality: float
    # Clean first (module docstring): the noise estimate (rms grey levels) and whether the stream
    # codes the model's own clean reconstruction rather than the upload. None / False otherwise.
    noise: float | None = None
    cleaned: bool = False

    @property
    def nbytes(self) -> int:
        return len(self.data)

    @property
    def bpp(self) -> float:
        return self.nbytes * 8 / (self.stream.height * self.stream.width)


@dataclass(frozen=True)
class CleanFirst:
    """When a denoising codec codes its own clean reconstruction (module docstring, CLEAN FIRST):
    at qualities up to ``max_quality(noise)``, a line through (``noise_ref``, ``quality_at_ref``).
    Below about 15 grey levels of noise it is under 0: clean photos are coded as they are."""

    noise_ref: float = 24.0  # the noise estimate at sigma 25
    quality_at_ref: float = 0.65  # held-out crossover at sigma 25: gains to 0.6, level at 0.7
    per_grey_level: float = 0.07  # 0 at an estimate of 15 (sigma 15: no gain), above 1 from 29
    # Qualities past the limit are spread over rates (module docstring) when the upload's stream
    # just past it is more than this many times the reconstruction's at it. Smaller steps are left:
    # three hundredths of quality change the rate about as much.
    gap_ratio: float = 1.1

    def max_quality(self, noise: float) -> float:
        return self.quality_at_ref + self.per_grey_level * (noise - self.noise_ref)


class Codec:
    """One loaded model; encode and decode are thread-safe (a lock serialises model use)."""

    def __init__(self, model: VariableRateHyperprior, name: str, weights: str | None = None,
                 device: str | torch.device = "cpu", max_side: int = DEFAULT_MAX_SIDE,
                 precision: str = "auto", clean_first: CleanFirst | None = None) -> None:
        self.model = model.eval()
        self.clean_first = clean_first
        self.name = name
        self.weights = weights or weights_hash(model.state_dict())
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.max_side = max_side
        self._lock = threading.Lock()
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
        """``clean_first="auto"``: the default ``CleanFirst`` for a model trained on noisy inputs
        (its training config has ``noise_sigma_max`` > 0), none for others."""
        model, meta = load_model(name_or_path, models_dir)
        if clean_first == "auto":
            denoiser = (meta.get("train_config") or {}).get("noise_sigma_max", 0) > 0
            clean_first = CleanFirst() if denoiser else None
        return cls(model, meta["name"], meta["weights"], device=resolve_device(device), max_side=max_side,
                   precision=precision, clean_first=clean_first)

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, rgb: np.ndarray, quality: float | None = None, max_bytes: int | None = None,
               scale: float | None = None) -> Encoded:
        """(H, W, 3) uint8 -> bitstream at ``quality`` in [0, 1], or the best that fits ``max_bytes``.

        ``scale`` in (0, 1] codes the picture at that fraction of its size (a version 3 stream,
        which decodes at the full size). None: the full size for a quality; for a byte budget, the
        full size or a reduced one, whichever looks best within it (RESOLUTION)."""
        if (quality is None) == (max_bytes is None):
            raise QualityOutOfRange("give exactly one of quality (0..1) or max_bytes")
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
            if scale is not None:
                return self._fit_budget(rgb.shape, segments, int(max_bytes))
            return self._fit_budget_any_size(rgb, y, z, estimate, segments, reference, int(max_bytes))

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
        """CLEAN FIRST: (the reconstruction at quality 1, the noise estimate in rms grey levels)."""
        cleaned = self._reconstruct(y, z, 1.0, rgb.shape)
        noise = float(np.sqrt(np.mean(np.square(rgb.astype(np.float32) - cleaned.astype(np.float32)))))
        return cleaned, noise

    def _coder(self, rgb: np.ndarray, y: torch.Tensor, z: torch.Tensor, estimate: tuple | None,
               coded: tuple[int, int] | None = None):
        """(quality -> Encoded, the budget search's segments, the reference picture) for ``rgb``
        coded at ``coded`` (None: its own size). Without a clean estimate every quality codes the
        upload. With one (``_clean_estimate``), the CleanFirst rule picks the upload or the
        reconstruction per quality, and the reference is the reconstruction when the rule cleans
        any quality. Each picture is resized and analysed once, when a quality first needs it."""
        analysed: dict[str, tuple] = {} if coded else {"upload": (y, z)}

        def coder(kind: str, picture: np.ndarray, cleaned: bool, noise: float | None):
            streams: dict[float, Encoded] = {}  # the rules below ask for some qualities twice

            def code(q: float) -> Encoded:
                if q in streams:
                    return streams[q]
                if kind not in analysed:
                    analysed[kind] = self._analysis(picture if coded is None else resize_rgb(picture, coded))
                enc = self._code(rgb.shape, *analysed[kind], q, coded)
                streams[q] = enc if noise is None else replace(enc, noise=noise, cleaned=cleaned)
                return streams[q]
            return code

        if estimate is None:
            upload = coder("upload", rgb, False, None)
            return upload, [(upload, 0.0, 1.0)], rgb
        cleaned, noise = estimate
        upload, clean = coder("upload", rgb, False, noise), coder("clean", cleaned, True, noise)
        limit = self.clean_first.max_quality(noise)
        if limit >= 1.0:
            return clean, [(clean, 0.0, 1.0)], cleaned
        if limit < 0.0:
            return upload, [(upload, 0.0, 1.0)], rgb
        # Byte budgets (module docstring, CLEAN FIRST): the upload's streams above the limit where
        # one fits; else the reconstruction's at the highest quality that fits, past the limit if
        # the budget reaches there.
        above = float(np.nextafter(np.float32(limit), np.float32(2.0)))  # the first float32 past it
        segments = [(upload, above, 1.0), (clean, 0.0, 1.0)]

        def code(q: float) -> Encoded:
            if q <= limit:
                return clean(q)
            at_limit, past = clean(limit), upload(above)
            if past.nbytes <= self.clean_first.gap_ratio * at_limit.nbytes:
                return upload(q)
            # Across the gap: the best stream at a rate log-spaced from the reconstruction's at
            # the limit (q -> limit) to the upload's at quality 1 (q = 1).
            top = max(upload(1.0).nbytes, at_limit.nbytes)
            budget = int(at_limit.nbytes * (top / at_limit.nbytes) ** ((q - limit) / (1.0 - limit)))
            return replace(self._fit_budget(rgb.shape, segments, budget), quality=q)

        return code, segments, cleaned

    def _fit_budget_any_size(self, rgb: np.ndarray, y: torch.Tensor, z: torch.Tensor, estimate: tuple | None,
                             segments: list, reference: np.ndarray, max_bytes: int) -> Encoded:
        """RESOLUTION (module docstring): the full size's best fit, or a reduced size's when the
        budget is too small for the full size or holds it only below ``RESIZE_BELOW_QUALITY``,
        whichever decodes closest to the reference (the upload, or the clean reconstruction)."""
        candidates: list[Encoded] = []
        too_small: list[BudgetTooSmall] = []
        try:
            candidates.append(self._fit_budget(rgb.shape, segments, max_bytes))
            if candidates[0].quality >= RESIZE_BELOW_QUALITY:
                return candidates[0]
        except BudgetTooSmall as exc:
            too_small.append(exc)
        for s in RESIZE_SCALES:
            coded = coded_size(rgb.shape, s)
            if coded is None:
                continue
            try:
                candidates.append(self._fit_budget(rgb.shape, self._coder(rgb, y, z, estimate, coded)[1], max_bytes))
            except BudgetTooSmall as exc:
                too_small.append(exc)
        if not candidates:
            smallest = min(too_small, key=lambda exc: exc.min_bytes)
            if len(too_small) == 1:  # no reduced size differs from the full one (a few pixels wide)
                raise smallest
            raise BudgetTooSmall(
                f"even the lowest rate, coded at {min(RESIZE_SCALES):g} of the size, needs {smallest.min_bytes} "
                f"bytes for this {rgb.shape[1]}x{rgb.shape[0]} image; raise max_bytes to at least "
                f"{smallest.min_bytes}", min_bytes=smallest.min_bytes,
            )
        return max(candidates, key=lambda enc: psnr(reference, self._decode_stream(enc.stream)))

    def _reconstruct(self, y: torch.Tensor, z: torch.Tensor, quality: float, shape: tuple) -> np.ndarray:
        """What a receiver would show for (y, z) coded at ``quality``, without the entropy coder."""
        y_hat = self.model.quantize_latents(y, z, bs.coded_quality(quality))
        return _to_rgb(self._pixels(y_hat), shape[0], shape[1])

    def _code(self, shape: tuple, y: torch.Tensor, z: torch.Tensor, quality: float,
              coded: tuple[int, int] | None = None) -> Encoded:
        """Entropy-code latents of a ``shape`` picture, analysed at ``coded`` size (None: its own)."""
        H, W = shape[:2]
        # Code with exactly the value the stream stores (float32): the decoder derives the gains,
        # and so the entropy tables, from the stored value alone.
        coded_quality = bs.coded_quality(quality)
        out = self.model.compress_latents(y, z, coded_quality)
        stream = bs.Bitstream(
            model=self.name, weights=self.weights, height=H, width=W, quality=coded_quality,
            y_shape=tuple(y.shape[1:]), z_shape=tuple(z.shape[1:]),
            strings=(out["strings"][0][0], out["strings"][1][0]),
            version=self._stream_version(coded), coded_size=coded,
        )
        return Encoded(data=stream.to_bytes(), stream=stream, quality=quality)

    def _stream_version(self, coded: tuple[int, int] | None) -> int:
        if self.model.context is not None:
            return bs.CONTEXT_VERSION
        return bs.VERSION if coded is None else bs.RESAMPLED_VERSION

    def _fit_budget(self, shape: tuple, segments: list, max_bytes: int) -> Encoded:
        """The best stream whose *real* container size is <= max_bytes. ``segments``: (code,
        q_min, q_max) in order of preference, ``code`` mapping a quality to an Encoded whose size
        grows with it; the first segment whose q_min fits is searched for its highest quality that
        fits (``_highest_fitting``)."""
        if max_bytes <= 0:
            raise QualityOutOfRange(f"max_bytes must be positive, got {max_bytes}")
        smallest = None
        for code, lo, hi in segments:
            lowest = code(lo)
            if lowest.nbytes <= max_bytes:
                break
            smallest = lowest if smallest is None or lowest.nbytes < smallest.nbytes else smallest
        else:
            raise BudgetTooSmall(
                f"even the lowest rate needs {smallest.nbytes} bytes for this {shape[1]}x{shape[0]} "
                f"image; raise max_bytes to at least {smallest.nbytes} or downscale the image",
                min_bytes=smallest.nbytes,
            )
        highest = code(hi)
        if highest.nbytes <= max_bytes:
            return highest
        return _highest_fitting(code, (lo, lowest), (hi, highest), max_bytes)

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
        to the declared one when that differs (version 3: RESOLUTION in the module docstring)."""
        rgb = _to_rgb(self._synthesis(stream), stream.coded_height, stream.coded_width)
        return rgb if stream.coded_size is None else resize_rgb(rgb, (stream.height, stream.width))

    def _synthesis(self, stream: bs.Bitstream) -> torch.Tensor:
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


def _highest_fitting(code, fits: tuple[float, Encoded], over: tuple[float, Encoded], max_bytes: int) -> Encoded:
    """Rate control (RATE_SEARCH_STEPS): the stream of the highest quality found to fit, between
    ``fits`` (a quality and its stream, within ``max_bytes``) and ``over`` (one over it). Qualities
    are probed on the grid that 12 halvings of that interval reach, until the two are neighbours
    there, so where size grows with quality the answer is the bisection's. Each probe is ITP's: the
    secant of log bytes, nudged toward the middle (truncation) and kept within a shrinking distance
    of it (projection), then rounded onto the grid. Where sizes dip as quality rises (rare, a few
    bytes) the stream found may differ, and it still fits."""
    (q_fits, best), (q_over, above) = fits, over
    cells = 2**RATE_SEARCH_STEPS
    a, b = 0, cells  # the bracket, in grid cells from q_fits: a fits, b does not
    target = math.log(max_bytes + 0.5)
    ya, yb = math.log(best.nbytes) - target, math.log(above.nbytes) - target  # ya < 0 < yb
    most = RATE_SEARCH_STEPS + RATE_SEARCH_SLACK
    j = 0
    while b - a > 1:
        middle = (a + b) / 2
        secant = (yb * a - ya * b) / (yb - ya)
        toward = 1.0 if middle >= secant else -1.0
        nudge = RATE_SEARCH_TRUNCATION * (b - a) ** 2 / cells  # kappa_1 * (width in quality)^2, in cells
        x = secant + toward * nudge if nudge <= abs(middle - secant) else middle
        radius = max(2.0 ** (most - j - 1) - (b - a) / 2, 0.0)
        if abs(x - middle) > radius:
            x = middle - toward * radius
        k = min(max(round(x), a + 1), b - 1)
        enc = code(q_fits + (q_over - q_fits) * k / cells)
        y = math.log(enc.nbytes) - target
        if enc.nbytes <= max_bytes:
            best, a, ya = enc, k, y
        else:
            b, yb = k, y
        j += 1
    return best


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


def coded_size(shape: tuple, scale: float) -> tuple[int, int] | None:
    """The (height, width) a picture of ``shape`` is coded at for ``scale``; None when that is its own."""
    H, W = shape[:2]
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    return None if size == (H, W) else size


def resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8 with Pillow's Lanczos filter (8-bit integer
    arithmetic: the same pixels on every machine, which the decoder of a version 3 stream needs)."""
    from PIL import Image

    return np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.LANCZOS))


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


def _to_rgb(x_hat: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, 3, H', W') in [0, 1] -> (height, width, 3) uint8, the padding cut off."""
    x_hat = x_hat[0, :, :height, :width]
    return x_hat.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _to_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float().div_(255.0)


__all__ = ["CleanFirst", "Codec", "Encoded", "DEFAULT_MODEL", "DEFAULT_DENOISE_MODEL", "DOWNSAMPLE", "PRECISIONS", "check_quality",
           "check_scale", "coded_size", "load_optional", "resize_rgb", "resolve_device", "resolve_precision"]
