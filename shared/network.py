"""The learned codec network: a variable-rate mean-scale hyperprior autoencoder.

One checkpoint covers the whole rate range. A continuous ``quality`` in [0, 1] selects a
per-channel quantisation gain for the latent ``y`` (and the hyper-latent ``z``), interpolated in
log space between ``levels`` learned gain vectors (Cui et al. 2021, "Asymmetric gained deep image
compression with continuous rate adaptation"). Training samples ``quality`` uniformly and weights
distortion with ``lambda(quality)``, log-linear between ``lmbda_min`` and ``lmbda_max``, so every
quality in between is trained, not only the anchors.

Dataflow (Minnen et al. 2018 without the autoregressive context model)::

          ┌─────┐ y ──×g(q)──► y_s ──Q──► ŷ_s ──÷g(q)──► ŷ ┌─────┐
    x ──► │ g_a │──┤                    ▲ (μ·g, σ·g)        │ g_s │──► x̂
          └─────┘  │                    │                   └─────┘
                   ▼                ┌─────┐
                ┌─────┐             │ h_s │ ◄── ẑ = ẑ_s ÷ h(q)
                │ h_a │── z ──×h(q)─► Q ─► ẑ_s (EntropyBottleneck)
                └─────┘

With ``context_groups`` set, a context model (``shared/context.py``) refines h_s's mean and scale
step by step from what is already decoded (channel groups, each in checkerboard halves); y is
then coded in that order after z, in one rANS string (format versions 5 to 7; version 4 coded z apart).
The hyper-synthesis predicts the mean and scale of
the *unscaled* latent; multiplying both by the gain turns them into the Gaussian of the scaled
latent, so quantising ``y_s`` at unit step is quantising ``y`` with step ``1/g``.

A picture whose sides are not multiples of 64 is replicate-padded to them; y's positions past
the picture (``latent_extent``) carry no pixel the receiver shows. Their elements are set to
their means (symbol 0, the likeliest): format version 7 (``compress_joint``) leaves them out of
the string and its decoder takes the means; the older layouts code the zeros.

Contract (as in CompressAI): ``forward`` is for training (x_hat + likelihoods), ``compress``
returns strings + shapes, ``decompress`` returns x_hat. The entropy-parameter path
(``z_hat -> h_s -> means, scale indexes``) runs on the CPU in float64 in both directions, so a
stream encoded on any device decodes on a CPU receiver: see ``DEVICE POLICY`` in ``codec.py``.
"""

from __future__ import annotations

import array
import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models.base import CompressionModel, get_scale_table
from compressai.models.utils import conv, deconv
from compressai.ops import quantize_ste
from torch import Tensor, nn

from shared.context import ContextModel

# The synthesis and analysis transforms downsample four times by 2; the hyper transforms twice more.
DOWNSAMPLE = 64
# y's stride: one latent position per 16x16 pixels.
LATENT_STRIDE = 16


@dataclass(frozen=True)
class NetworkConfig:
    """Architecture arguments: stored inside every checkpoint so it rebuilds itself."""

    N: int = 128
    M: int = 192
    levels: int = 8
    lmbda_min: float = 0.0012
    lmbda_max: float = 0.15
    # Residual refinement blocks in g_s after each of its first two inverse-GDN stages (1/8 and 1/4
    # of the image side). 0 is the plain Balle et al. synthesis; see ``grow_synthesis``.
    synthesis_blocks: int = 0
    # Channel groups of the context model (``shared/context.py``); empty: the hyperprior alone.
    context_groups: tuple[int, ...] = ()
    context_width: int = 128
    context_checkerboard: bool = True  # each group in two checkerboard halves (shared/context.py)
    context_blocks: int = 0  # residual blocks on each side of every group's join (shared/context.py)
    # Entries of the Gaussian coder's scale table (log-spaced, CompressAI's range): each latent is
    # coded with the table's next scale up, so more entries cost fewer bits (``update``).
    scale_levels: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "context_groups", tuple(self.context_groups))  # a list from a checkpoint

    def to_dict(self) -> dict:
        return asdict(self)


class VariableRateHyperprior(CompressionModel):
    """Mean-scale hyperprior with continuous-rate gain vectors (see module docstring)."""

    def __init__(self, config: NetworkConfig) -> None:
        super().__init__()
        self.config = config
        N, M, K = config.N, config.M, config.levels
        self.g_a = nn.Sequential(
            conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M)
        )
        self.g_s = synthesis_transform(M, N, config.synthesis_blocks)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N, stride=2, kernel_size=5), nn.LeakyReLU(inplace=True),
            conv(N, N, stride=2, kernel_size=5),
        )
        # Narrower than Minnen et al.'s (M -> 3M/2 channels) to keep the checkpoint under 30 MB.
        self.h_s = nn.Sequential(
            deconv(N, N, stride=2, kernel_size=5), nn.LeakyReLU(inplace=True),
            deconv(N, N * 3 // 2, stride=2, kernel_size=5), nn.LeakyReLU(inplace=True),
            conv(N * 3 // 2, M * 2, stride=1, kernel_size=3),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)
        init = torch.linspace(math.log(0.3), math.log(3.3), K)
        self.log_gain = nn.Parameter(init[:, None].repeat(1, M))  # (K, M)
        self.log_hyper_gain = nn.Parameter(torch.zeros(K, N))  # (K, N)
        self.context = (ContextModel(M, config.context_groups, config.context_width, config.context_checkerboard,
                                     config.context_blocks) if config.context_groups else None)

    # ---- rate selection -------------------------------------------------------------------
    def lmbda(self, quality: Tensor) -> Tensor:
        lo, hi = math.log(self.config.lmbda_min), math.log(self.config.lmbda_max)
        return torch.exp(lo + quality * (hi - lo))

    @staticmethod
    def _interpolate(table: Tensor, quality: Tensor) -> Tensor:
        """Log-linear interpolation of a (K, C) log-gain table at qualities (B,) -> (B, C, 1, 1)."""
        K = table.shape[0]
        t = quality.to(table.dtype).clamp(0.0, 1.0) * (K - 1)
        i = t.floor().clamp(max=K - 2).long()
        frac = (t - i.to(t.dtype))[:, None]
        log_g = table[i] * (1 - frac) + table[i + 1] * frac
        return torch.exp(log_g)[:, :, None, None]

    def gains(self, quality: Tensor, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(gain for y, gain for z), each (B, C, 1, 1), computed in ``dtype`` on the tables' device."""
        q = quality.to(device=self.log_gain.device, dtype=dtype)
        return (
            self._interpolate(self.log_gain.to(dtype), q),
            self._interpolate(self.log_hyper_gain.to(dtype), q),
        )

    # ---- training -------------------------------------------------------------------------
    def forward(self, x: Tensor, quality: Tensor, autocast_dtype: torch.dtype | None = None) -> dict:
        """x: (B, 3, H, W) in [0, 1]; quality: (B,). Returns x_hat and likelihoods of y and z.

        ``autocast_dtype`` (e.g. bfloat16) applies to the four transforms only; gains and entropy
        models stay in float32, where the likelihoods need the precision.
        """
        with _autocast(x.device, autocast_dtype):
            y = self.g_a(x)  # (B, M, H/16, W/16)
            z = self.h_a(y)  # (B, N, H/64, W/64)
        y_hat, likelihoods = self.latent_forward(y.float(), z.float(), quality, autocast_dtype)
        with _autocast(x.device, autocast_dtype):
            x_hat = self.g_s(y_hat)  # (B, 3, H, W)
        return {"x_hat": x_hat.float(), "likelihoods": likelihoods}

    def latent_forward(self, y: Tensor, z: Tensor, quality: Tensor,
                       autocast_dtype: torch.dtype | None = None) -> tuple[Tensor, dict]:
        """Training from analysed latents (float32): (ŷ for g_s, likelihoods of y and z). The
        entropy-model half of ``forward``, which ``latentwire train-entropy`` runs on cached y."""
        g, hg = self.gains(quality)
        z_s = z * hg
        _, z_likelihoods = self.entropy_bottleneck(z_s)
        medians = self.entropy_bottleneck._get_medians()  # (1, N, 1, 1)
        z_hat = (quantize_ste(z_s - medians) + medians) / hg
        with _autocast(y.device, autocast_dtype):
            gaussian_params = self.h_s(z_hat)  # (B, 2M, H/16, W/16)
        scales, means = gaussian_params.float().chunk(2, 1)
        y_s = y * g
        if self.context is None:
            y_hat = (quantize_ste(y_s - means * g) + means * g) / g
        else:
            means, scales, y_hat = self.refine(means, scales, quality, y, g)
        _, y_likelihoods = self.gaussian_conditional(y_s, scales * g, means=means * g)
        return y_hat, {"y": y_likelihoods, "z": z_likelihoods}

    def refine(self, means: Tensor, scales: Tensor, quality: Tensor, y: Tensor, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Training: the context model's (means, scales, ŷ) for the unscaled y, rounding each step
        around its own mean with a straight-through gradient, as coding rounds it."""

        def quantize(sl, mask, mu, sigma, y_k):
            g_k = g[:, sl]
            return (quantize_ste(y_k * g_k - mu * g_k) + mu * g_k) / g_k

        return self.context.run(means, scales, quality, y, quantize)

    # ---- coding ---------------------------------------------------------------------------
    def entropy_parameters(self, z_hat_s: Tensor, quality: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Decoded scaled hyper-latent -> (scale indexes, means_s, y gain, scales_s), deterministically.

        Runs h_s on the CPU in float64 whatever device the caller uses: the indexes choose the
        entropy coder's tables, so encoder and decoder must compute them bit-identically.
        """
        means, scales, g = self._hyper_parameters(z_hat_s, quality)
        scales_s = scales * g
        return scale_indexes(self.gaussian_conditional, scales_s), means * g, g, scales_s

    def _hyper_parameters(self, z_hat_s: Tensor, quality: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """h_s's (means, scales) of the unscaled latent and the y gain, float64 on the CPU."""
        h_s64 = _float64_copy(self.h_s)
        q = quality.detach().to("cpu", torch.float64)
        g, hg = self.gains(q.to(self.log_gain.device), dtype=torch.float64)
        g, hg = g.cpu(), hg.cpu()
        z_hat = z_hat_s.detach().to("cpu", torch.float64) / hg
        scales, means = h_s64(z_hat).chunk(2, 1)
        return means, scales, g

    def _context_walk(self, z_hat_s: Tensor, quality: Tensor, y: Tensor | None, code,
                      extent: tuple[int, int] | None = None, omit_past: bool = False) -> tuple[Tensor, ...]:
        """The context model's decoding order (``shared/context.py``) in float64 on the CPU, for one
        image. ``code(symbols_or_None, indexes)`` gets each step's scale indexes and returns
        its integer symbols: the encoder passes round(y_s - μ_s) on and returns them, the decoder
        ignores them (``y`` is None) and returns what it decodes. Past ``extent`` the symbols are 0
        (module docstring); with ``omit_past`` those never reach ``code`` (format version 7).
        Returns (means_s, g, scales_s, ŷ_s) of the whole latent, float64."""
        means, scales, g = self._hyper_parameters(z_hat_s, quality)
        context64 = _float64_copy(self.context)
        y64 = torch.zeros_like(means) if y is None else y.detach().to("cpu", torch.float64)
        past = _past(extent, means.shape[-2:])
        omitted = past if omit_past else None

        def quantize(sl, mask, mu, sigma, y_k):
            # Only this step's positions (row-major), gathered as (B, C_k, n): symbols in the order
            # batch, channel, position.
            B, C = mu.shape[:2]
            at = mask.flatten().nonzero().squeeze(1)
            g_k = g[:, sl].reshape(B, C, 1)
            mu_s = mu.flatten(2)[:, :, at] * g_k
            sigma_s = sigma.flatten(2)[:, :, at] * g_k
            indexes = scale_indexes(self.gaussian_conditional, sigma_s)
            symbols = None
            if y is not None:
                symbols = torch.round(y_k.flatten(2)[:, :, at] * g_k - mu_s)
                symbols = symbols if past is None else symbols.masked_fill(past.flatten()[at], 0.0)
            # The positions coded: all, or (version 7) the picture's alone; the rest stay 0.
            keep = slice(None) if omitted is None else ~omitted.flatten()[at]
            decoded = torch.zeros_like(mu_s)
            coded = code(None if symbols is None else symbols[:, :, keep].reshape(-1), indexes[:, :, keep].reshape(-1))
            decoded[:, :, keep] = coded.to(torch.float64).reshape(B, C, -1)
            y_hat = torch.zeros_like(mu).flatten(2)
            y_hat[:, :, at] = (decoded + mu_s) / g_k
            return y_hat.reshape(mu.shape)

        q = quality.detach().to("cpu", torch.float64)
        means, scales, y_hat = context64.run(means, scales, q, y64, quantize)
        return means * g, g, scales * g, y_hat * g

    def _cdfs(self, entropy_model=None) -> tuple[list, list, list]:
        """An entropy model's tables (default the Gaussian's; the hyper-latent's for
        ``self.entropy_bottleneck``) as the rANS coder's calls take them: (CDFs, lengths, offsets),
        each CDF cut to its length, cached until ``update`` rebuilds the tables. The coder reads no
        entry past a table's length, and its binding converts every entry passed on every call
        (once per step of the context model), padding included."""
        em = self.gaussian_conditional if entropy_model is None else entropy_model
        tables = (em._quantized_cdf, em._cdf_length, em._offset)
        versions = tuple(t._version for t in tables)
        cached = getattr(em, "_coder_tables", None)
        if cached is None or any(a is not b for a, b in zip(cached[0], tables)) or cached[1] != versions:
            lengths = em._cdf_length.reshape(-1).int().tolist()
            cdfs = [row[:n] for row, n in zip(em._quantized_cdf.tolist(), lengths)]
            cached = (tables, versions, (cdfs, lengths, em._offset.reshape(-1).int().tolist()))
            object.__setattr__(em, "_coder_tables", cached)
        return cached[2]

    def analysis(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The quality-independent part of encoding: (y, z) for x (B, 3, H, W), H and W multiples of 64."""
        y = self.g_a(x)  # (B, M, H/16, W/16)
        z = self.h_a(y)  # (B, N, H/64, W/64)
        return y, z

    @torch.no_grad()
    def compress_latents(self, y: Tensor, z: Tensor, quality: float, extent: tuple[int, int] | None = None) -> dict:
        """Entropy-code analysed latents at one quality. Cheap, so rate control can repeat it.
        ``extent``: y's (rows, columns) that hold the picture (``latent_extent``); past them every
        element is coded as its mean. None: the whole latent is picture."""
        B = y.shape[0]
        q = torch.full((B,), float(quality), dtype=torch.float64)
        _, hg = self.gains(q, dtype=torch.float64)
        z_s = z.detach().to("cpu", torch.float64) * hg.cpu()
        z_strings = self.entropy_bottleneck.compress(z_s)
        z_hat_s = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:]).to(torch.float64)
        if self.context is not None:
            y_strings = [self._context_compress(y[b : b + 1], z_hat_s[b : b + 1], q[b : b + 1], extent)
                         for b in range(B)]
            return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}
        indexes, means_s, g, _ = self.entropy_parameters(z_hat_s, q)
        y_s = _means_past(extent, y.detach().to("cpu", torch.float64) * g, means_s)
        y_strings = self.gaussian_conditional.compress(y_s, indexes, means=means_s)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.shape[-2:])}

    def _context_compress(self, y: Tensor, z_hat_s: Tensor, quality: Tensor, extent: tuple[int, int] | None) -> bytes:
        """One image's y as one rANS string, step by step in the context model's order."""
        from compressai.ans import BufferedRansEncoder

        encoder = BufferedRansEncoder()
        self._context_encode(encoder, y, z_hat_s, quality, extent)
        return encoder.flush()

    def _context_encode(self, encoder, y: Tensor, z_hat_s: Tensor, quality: Tensor,
                        extent: tuple[int, int] | None, omit_past: bool = False) -> None:
        """One image's y into ``encoder``, step by step in the context model's order."""
        cdfs = self._cdfs()

        def code(symbols, indexes):
            encoder.encode_with_indexes(symbols.to(torch.int32).tolist(), indexes.tolist(), *cdfs)
            return symbols

        self._context_walk(z_hat_s, quality, y, code, extent, omit_past)

    @torch.no_grad()
    def compress_joint(self, y: Tensor, z: Tensor, quality: float, extent: tuple[int, int] | None = None,
                       omit_past: bool = True) -> list[bytes]:
        """Format versions 5 to 7 (a model with a context model): each image's z and then its y, step by
        step in the context model's order, in one rANS string (one coder state and tail instead of
        two). z is rounded and dequantised as ``_hat_latents`` does, so ``quantize_latents`` still
        predicts the decode bit for bit. ``extent``: y's positions that hold the picture
        (``latent_extent``); the elements past it are set to their means and, with ``omit_past``
        (version 7), left out of the string; without it (versions 5 and 6) coded as zeros."""
        from compressai.ans import BufferedRansEncoder

        if self.context is None:
            raise ValueError("joint coding (format versions 5 to 7) is for a model with a context model")
        q = torch.full((y.shape[0],), float(quality), dtype=torch.float64)
        z_symbols, z_hat_s = self._z_symbols(z, q)
        z_cdfs, z_indexes = self._cdfs(self.entropy_bottleneck), _channel_indexes(z.shape[1:])
        strings = []
        for b in range(y.shape[0]):
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(z_symbols[b].reshape(-1).tolist(), z_indexes, *z_cdfs)
            self._context_encode(encoder, y[b : b + 1], z_hat_s[b : b + 1], q[b : b + 1], extent, omit_past)
            strings.append(encoder.flush())
        return strings

    @torch.no_grad()
    def decode_joint(self, strings: list[bytes], shape: tuple[int, int], quality: float,
                     extent: tuple[int, int] | None = None) -> Tensor:
        """Format version 5 to 7 strings (``compress_joint``) -> ŷ (B, M, h, w), float64 on the CPU;
        ``shape``: z's (H/64, W/64); ``extent``: for version 7, the positions the string holds (past
        them ŷ is the means); None for versions 5 and 6, which hold every position."""
        from compressai.ans import RansDecoder

        N = self.config.N
        q = torch.full((len(strings),), float(quality), dtype=torch.float64)
        z_cdfs, z_indexes = self._cdfs(self.entropy_bottleneck), _channel_indexes((N, *shape))
        out = []
        for b, string in enumerate(strings):
            decoder = RansDecoder()
            decoder.set_stream(string)
            z_symbols = _int32(decoder.decode_stream(z_indexes, *z_cdfs))
            z_hat_s = self._z_hat(z_symbols.reshape(1, N, *shape))
            out.append(self._context_decode(decoder, z_hat_s, q[b : b + 1], extent))
        return torch.cat(out)

    def _z_symbols(self, z: Tensor, quality: Tensor) -> tuple[Tensor, Tensor]:
        """(z's integer symbols round(z_s - median), int32; ẑ_s, float64 as the decoder gets it)."""
        _, hg = self.gains(quality, dtype=torch.float64)
        z_s = z.detach().to("cpu", torch.float64) * hg.cpu()
        medians = self.entropy_bottleneck._get_medians().detach().cpu()  # float32
        symbols = torch.round(z_s - medians.to(torch.float64)).to(torch.int32)
        return symbols, self._z_hat(symbols)

    def _z_hat(self, symbols: Tensor) -> Tensor:
        """ẑ_s, float64, from z's integer symbols (B, N, h, w): dequantised in the medians' float32 as
        ``EntropyBottleneck.decompress`` does. Contiguous like the entropy decoder's output: h_s's
        float64 convolutions round differently on a channels_last input (by about 1e-13), and the
        means must match the decoder's exactly."""
        medians = self.entropy_bottleneck._get_medians().detach().cpu()  # float32, (N, 1, 1)
        return (symbols.float() + medians).to(torch.float64).contiguous()

    def _hat_latents(self, y: Tensor, z: Tensor, quality: float,
                     extent: tuple[int, int] | None = None) -> tuple[Tensor, ...]:
        """What the entropy decoder reconstructs for (y, z) coded at ``quality``, bit for bit, without
        running the coder: (z_hat_s, means_s, y gain, scales_s, y_hat_s), float64 on the CPU.
        Mirrors CompressAI's rounding: symbols round(v - mean); z_hat is dequantised in the medians'
        float32 as ``EntropyBottleneck.decompress`` does."""
        B = y.shape[0]
        q = torch.full((B,), float(quality), dtype=torch.float64)
        _, z_hat_s = self._z_symbols(z, q)
        if self.context is not None:
            means_s, g, scales_s, y_hat_s = self._context_walk(z_hat_s, q, y, lambda symbols, *_: symbols, extent)
            return z_hat_s, means_s, g, scales_s, y_hat_s
        _, means_s, g, scales_s = self.entropy_parameters(z_hat_s, q)
        y_hat_s = torch.round(_means_past(extent, y.detach().to("cpu", torch.float64) * g, means_s) - means_s) + means_s
        return z_hat_s, means_s, g, scales_s, y_hat_s

    @torch.no_grad()
    def estimate_bits(self, y: Tensor, z: Tensor, quality: float, extent: tuple[int, int] | None = None) -> float:
        """The entropy models' own estimate, -log2 P(symbols), of what ``compress_joint`` codes for
        the same (y, z, quality, extent), y's positions within ``extent`` only: the yardstick for the
        coder's overhead."""
        z_hat_s, means_s, _, scales_s, y_hat_s = self._hat_latents(y, z, quality, extent)
        _, z_lik = self.entropy_bottleneck(z_hat_s.float(), training=False)
        y_lik = self.gaussian_conditional._likelihood(y_hat_s, scales_s, means_s)
        y_lik = self.gaussian_conditional.likelihood_lower_bound(y_lik)
        if extent is not None:
            y_lik = y_lik[..., : extent[0], : extent[1]]
        return float(-(torch.log2(y_lik).sum() + torch.log2(z_lik.double()).sum()))

    @torch.no_grad()
    def predict_bytes(self, y: Tensor, z: Tensor, quality: float, extent: tuple[int, int] | None = None) -> float:
        """A quick float32 estimate of the bytes ``compress_joint`` gives (the training forward's
        likelihoods, y's within ``extent``, as version 7 codes them): cheaper than coding, and under
        the real strings by the coder's overhead, which a quick budget search corrects
        (shared/rate_control.py)."""
        q = torch.full((y.shape[0],), float(quality))
        _, likelihoods = self.latent_forward(y.float(), z.float(), q)
        y_lik = likelihoods["y"] if extent is None else likelihoods["y"][..., : extent[0], : extent[1]]
        return float(-(torch.log2(y_lik).sum() + torch.log2(likelihoods["z"]).sum())) / 8

    @torch.no_grad()
    def quantize_latents(self, y: Tensor, z: Tensor, quality: float, extent: tuple[int, int] | None = None) -> Tensor:
        """The y_hat that coding (y, z) at ``quality`` and decoding the strings gives (float64, CPU),
        bit for bit, without the entropy coder: for a sender that wants the reconstruction only
        (shared/clean_first.py)."""
        _, _, g, _, y_hat_s = self._hat_latents(y, z, quality, extent)
        return y_hat_s / g

    def compress(self, x: Tensor, quality: float) -> dict:
        y, z = self.analysis(x)
        return self.compress_latents(y, z, quality)

    @torch.no_grad()
    def decode_latents(self, strings: list, shape: tuple[int, int], quality: float) -> Tensor:
        """Entropy-decode [y_strings, z_strings] -> y_hat (B, M, h, w), float64 on the CPU."""
        y_strings, z_strings = strings
        B = len(z_strings)
        q = torch.full((B,), float(quality), dtype=torch.float64)
        z_hat_s = self.entropy_bottleneck.decompress(z_strings, shape).to(torch.float64)
        if self.context is not None:
            return torch.cat([self._context_decompress(s, z_hat_s[b : b + 1], q[b : b + 1])
                              for b, s in enumerate(y_strings)])
        indexes, means_s, g, _ = self.entropy_parameters(z_hat_s, q)
        y_hat_s = self.gaussian_conditional.decompress(
            y_strings, indexes, dtype=torch.float64, means=means_s
        )
        return y_hat_s / g

    def _context_decompress(self, string: bytes, z_hat_s: Tensor, quality: Tensor) -> Tensor:
        """One image's ŷ (unscaled, float64) from its y string: ``_context_compress`` in reverse."""
        from compressai.ans import RansDecoder

        decoder = RansDecoder()
        decoder.set_stream(string)
        return self._context_decode(decoder, z_hat_s, quality)

    def _context_decode(self, decoder, z_hat_s: Tensor, quality: Tensor,
                        extent: tuple[int, int] | None = None) -> Tensor:
        """ŷ (unscaled, float64) of one image, decoded step by step from ``decoder``'s stream, which
        holds the positions within ``extent`` only when that is given (version 7)."""
        cdfs = self._cdfs()

        def code(_, indexes):
            return _int32(decoder.decode_stream(indexes.tolist(), *cdfs))

        _, g, _, y_hat_s = self._context_walk(z_hat_s, quality, None, code, extent, omit_past=extent is not None)
        return y_hat_s / g

    def decompress(self, strings: list, shape: tuple[int, int], quality: float) -> dict:
        y_hat = self.decode_latents(strings, shape, quality)
        g_s_device = next(self.g_s.parameters()).device  # g_s may live on another device
        y_hat = y_hat.to(g_s_device, torch.float32).contiguous(memory_format=torch.channels_last)
        x_hat = self.g_s(y_hat).clamp_(0, 1)  # (B, 3, H, W)
        return {"x_hat": x_hat}

    def update(self, scale_table: Tensor | None = None, force: bool = False, **kwargs) -> bool:
        return super().update(
            scale_table=get_scale_table(levels=self.config.scale_levels) if scale_table is None else scale_table,
            force=force, **kwargs
        )


def _int32(symbols: list[int]) -> Tensor:
    """Decoded symbols as an int32 tensor, via array.array: torch.tensor converts a long list
    element by element."""
    buf = array.array("i", symbols)
    return torch.frombuffer(buf, dtype=torch.int32) if buf else torch.zeros(0, dtype=torch.int32)


def latent_extent(height: int, width: int) -> tuple[int, int]:
    """y's (rows, columns) that hold pixels of a height x width picture; the rest of its latent,
    up to the padded size's, is padding."""
    return -(-height // LATENT_STRIDE), -(-width // LATENT_STRIDE)


def _past(extent: tuple[int, int] | None, shape: tuple[int, int]) -> Tensor | None:
    """(h, w) bool, True at the positions past ``extent``; None when there are none."""
    h, w = shape
    if extent is None or (extent[0] >= h and extent[1] >= w):
        return None
    past = torch.ones(h, w, dtype=torch.bool)
    past[: extent[0], : extent[1]] = False
    return past


def _means_past(extent: tuple[int, int] | None, y_s: Tensor, means_s: Tensor) -> Tensor:
    """y_s with its elements past ``extent`` replaced by their means (coded as symbol 0)."""
    past = _past(extent, y_s.shape[-2:])
    return y_s if past is None else torch.where(past, means_s, y_s)


def _channel_indexes(shape: tuple[int, ...]) -> list[int]:
    """The hyper-latent's table per symbol, for one image of (N, h, w) in row-major order: its channel,
    as ``EntropyBottleneck`` codes it."""
    N, h, w = shape
    return torch.arange(N, dtype=torch.int32).repeat_interleave(h * w).tolist()


def scale_indexes(conditional, scales: Tensor) -> Tensor:
    """``GaussianConditional.build_indexes``, bit for bit, as one search rather than a pass over
    the tensor per scale-table entry (64 passes, most of what each coding in a rate search cost).
    CompressAI's index is (entries - 1) minus the count of entries but the last at or above the
    scale, which is the count of those below it: ``searchsorted`` with ``right=False``."""
    scales = conditional.lower_bound_scale(scales).contiguous()
    table = conditional.scale_table[:-1].to(device=scales.device, dtype=scales.dtype)
    return torch.searchsorted(table, scales, right=False).to(torch.int32)


# g_s layers after which ``synthesis_blocks`` residual blocks go (its first two inverse GDNs); each
# stage of blocks is named "r<index>".
REFINED_AFTER = (1, 3)


def synthesis_transform(M: int, N: int, blocks: int) -> nn.Sequential:
    """g_s: four stride-2 deconvolutions with inverse GDN, plus ``blocks`` ``ResidualBlock`` after
    each of the first two inverse GDNs. The plain layers keep the names "0".."6" whatever
    ``blocks`` is (the refinement stages are "r1" and "r3"), so a plain model's weights load into
    a grown one unchanged: see ``grow_synthesis``."""
    layers = [deconv(M, N), GDN(N, inverse=True), deconv(N, N), GDN(N, inverse=True),
              deconv(N, N), GDN(N, inverse=True), deconv(N, 3)]
    named: list[tuple[str, nn.Module]] = []
    for i, layer in enumerate(layers):
        named.append((str(i), layer))
        if blocks and i in REFINED_AFTER:
            named.append((f"r{i}", nn.Sequential(*(ResidualBlock(N) for _ in range(blocks)))))
    return nn.Sequential(OrderedDict(named))


class ResidualBlock(nn.Module):
    """x + conv(leaky_relu(conv(x))), 3x3 convolutions. The second convolution starts at zero, so a
    freshly added block is the identity and a grown decoder starts exactly where the old one was."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.leaky_relu(self.conv1(x), 0.2))


def grow_synthesis(model: VariableRateHyperprior, blocks: int) -> VariableRateHyperprior:
    """A copy of ``model`` whose g_s has ``blocks`` refinement blocks per stage (more than it has).

    Every existing tensor is copied; the new blocks start as the identity, so the grown model codes
    the same streams and decodes the same pixels until its decoder is trained
    (``latentwire train --decoder-only --synthesis-blocks K``)."""
    if blocks <= model.config.synthesis_blocks:
        raise ValueError(f"the model already has {model.config.synthesis_blocks} synthesis blocks per stage; "
                         f"--synthesis-blocks must be larger to grow it")
    grown = VariableRateHyperprior(replace(model.config, synthesis_blocks=blocks))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = {k for k in missing if k.startswith(tuple(f"g_s.r{i}." for i in REFINED_AFTER))}
    if unexpected or set(missing) != new:
        raise ValueError(f"cannot grow this model: unexpected {unexpected}, missing {sorted(set(missing) - new)}")
    return grown


# ---- inference forms of the transforms ------------------------------------------------------
class SubpixelDeconv(nn.Module):
    """A stride-2, 5x5 ``ConvTranspose2d`` (CompressAI's ``deconv``) rewritten as a 3x3 convolution
    to 4x the channels followed by ``pixel_shuffle(2)``: the same function, another algorithm.

    Output pixel (2m+a, 2n+b) of the transposed convolution only ever sees the 3x3 inputs around
    (m, n), through the kernel taps of parity (a, b); gathering those taps per phase gives an
    ordinary convolution. Why bother: oneDNN's transposed-convolution kernels split their
    reductions differently for some thread counts (3 threads, for instance, changes the output
    bits), while its forward convolutions partition by output block. In this form decoding gives
    the same pixels under any thread count, in float32 and in bfloat16.
    """

    def __init__(self, deconv: nn.ConvTranspose2d) -> None:
        super().__init__()
        w = deconv.weight.detach()  # (C_in, C_out, 5, 5)
        c_in, c_out, k, _ = w.shape
        if (k, deconv.stride, deconv.padding, deconv.output_padding) != (5, (2, 2), (2, 2), (1, 1)):
            raise ValueError("SubpixelDeconv converts only 5x5, stride-2 deconv layers (compressai deconv)")
        phases = torch.zeros(c_out, 2, 2, c_in, 3, 3, dtype=w.dtype, device=w.device)
        for a in range(2):
            for b in range(2):
                for dy in range(3):  # input row offset -1, 0, 1 sees kernel row a + 4 - 2*dy
                    for dx in range(3):
                        ky, kx = a + 4 - 2 * dy, b + 4 - 2 * dx
                        if ky < 5 and kx < 5:
                            phases[:, a, b, :, dy, dx] = w[:, :, ky, kx].t()
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1, bias=deconv.bias is not None,
                              device=w.device, dtype=w.dtype)
        self.conv.weight.data.copy_(phases.reshape(4 * c_out, c_in, 3, 3))
        if deconv.bias is not None:
            self.conv.bias.data.copy_(deconv.bias.detach().repeat_interleave(4))

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)


class InferenceTransform(nn.Module):
    """A frozen copy of g_a or g_s for coding: deconvs in ``SubpixelDeconv`` form, the body in
    ``dtype`` (bfloat16 halves CPU time where the CPU has native bf16), and the output layer in
    float32 so the reconstruction is not rounded to bf16's 8-bit mantissa. Takes and returns
    float32 tensors."""

    def __init__(self, transform: nn.Sequential, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        import copy

        layers = [SubpixelDeconv(m) if isinstance(m, nn.ConvTranspose2d) else copy.deepcopy(m) for m in transform]
        self.dtype = dtype
        self.body = nn.Sequential(*layers[:-1]).to(dtype=dtype, memory_format=torch.channels_last)
        self.head = layers[-1].to(dtype=torch.float32, memory_format=torch.channels_last)
        self.requires_grad_(False).eval()

    def forward(self, x: Tensor) -> Tensor:
        h = self.body(x.to(self.dtype).contiguous(memory_format=torch.channels_last))
        return self.head(_float_channels_last(h))


def _float_channels_last(x: Tensor) -> Tensor:
    """``x.float()`` for a channels_last (B, C, H, W) tensor, converted as the flat (B, H, W, C)
    array it is in memory: ``Tensor.float`` takes a much slower strided path on this layout."""
    return x.permute(0, 2, 3, 1).float().permute(0, 3, 1, 2)


def _float64_copy(module: nn.Module) -> nn.Module:
    """A float64 CPU copy of ``module``, cached on it until its parameters change."""
    version = tuple(p._version for p in module.parameters())
    cached = getattr(module, "_float64_cache", None)
    if cached is not None and cached[0] == version:
        return cached[1]
    import copy

    copy64 = copy.deepcopy(module).to("cpu", torch.float64).eval()
    object.__setattr__(module, "_float64_cache", (version, copy64))
    return copy64


class _autocast:
    """``torch.autocast`` when a dtype is given, a no-op otherwise."""

    def __init__(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self._ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else None

    def __enter__(self):
        return self._ctx.__enter__() if self._ctx is not None else None

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc) if self._ctx is not None else False


def pad_to_multiple(x: Tensor, multiple: int = DOWNSAMPLE) -> Tensor:
    """Replicate-pad (B, C, H, W) on the right and bottom to multiples of ``multiple``."""
    H, W = x.shape[-2:]
    pad_h, pad_w = (-H) % multiple, (-W) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
