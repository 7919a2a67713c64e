"""Training loop for the variable-rate codec: ``latentwire train --data DIR --out DIR``.

Rate–distortion loss over the whole rate range: each crop draws its own ``quality`` ~ U[0, 1] and
is charged ``lambda(quality) * 255^2 * MSE + bpp`` (bpp from the entropy models' likelihoods).
With ``--noise SIGMA_MAX`` > 0 the inputs are corrupted with Gaussian noise (sigma ~ U[0, max] on
the 0–255 scale, optionally JPEG-recompressed) while the target stays clean: a denoising
autoencoder. A sigma-50 crop's error is several times a sigma-10 crop's, so plain MSE lets the
noisiest crops set the gradient and the model learns to over-smooth everything; each crop's
distortion is therefore weighted by ``noise_weight(sigma)`` = (the error a good denoiser leaves
at sigma 25) / (the error it leaves at this sigma), which puts every noise level on an equal
footing in dB (the weight is 1 at sigma 25). Validation then uses a fixed sigma of max/2.

``--decoder-only`` trains the synthesis transform g_s alone: the analysis transform, the hyperprior
and the entropy models stay frozen, so every stream a sender makes is bit-identical before and after
and only the pictures a receiver draws from it change. The rate is then fixed, and
``lambda(quality)``, which spans 125x across the range, would only tilt the decoder towards the
highest qualities; the objective is instead the mean PSNR of the crops (each crop's own, so every
quality and noise level counts alike), and best.pt is chosen by the mean held-out PSNR.

``--bd-objective`` keeps each quality's rate–distortion trade-off but weighs crops and qualities
against each other as the BD-rate and the mean PSNR of ``latentwire eval`` do. Plain training adds
MSEs, so the crops with the largest errors (textures) steer the shared networks, where the mean PSNR
counts a relative error change alike on every crop; and it adds absolute rate changes, so the
highest qualities, whose rates are 20x the lowest's, outweigh the rest, where the BD-rate counts a
relative rate change alike at every quality. So each crop's distortion term becomes
``lambda * D_ref(q) * ln(MSE)`` (the same gradient as ``lambda * MSE`` for a crop at the reference
error D_ref(q), less for worse crops, more for better ones: the crop's PSNR, priced at the
quality's trade-off), and each crop's loss is divided by ``R_ref(q)``. The references are the
resumed model's held-out geometric-mean MSE and mean bpp at each validation quality, measured when
the segment starts (interpolated in log between them, the weight normalised to 1 at quality 0.5);
best.pt is chosen by the held-out loss computed alike.
``--synthesis-blocks K`` gives g_s K residual refinement blocks per stage (``network.synthesis_transform``);
resuming a model with fewer grows it, the new blocks starting as the identity, which with
``--decoder-only`` buys the receiver a stronger decoder for the very same streams.

A run is a segment of ``--steps`` steps with its own warm-up + cosine learning-rate schedule.
Checkpoints (``last.pt`` every ``--checkpoint-every-s`` seconds, ``best.pt`` on the best held-out
validation loss) carry the model, both optimisers, the schedule and the RNG states, so
``--resume last.pt`` continues an interrupted segment exactly, and resuming a finished segment
starts a new one (fine-tuning) from its weights. Validation uses images held out of ``--data``
(every 25th file by name); Kodak is never used to choose checkpoints.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.codec import resolve_device
from shared.network import DOWNSAMPLE, NetworkConfig, VariableRateHyperprior, grow_synthesis

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm"}
HOLDOUT_EVERY = 25
VAL_QUALITIES = (0.0, 0.25, 0.5, 0.75, 1.0)
# A time-budgeted segment is sized by the pace of its steps SIZE_FROM..SIZE_AT (after warm-up and
# autotuning), then re-fitted over windows of at least SIZE_FROM steps.
SIZE_FROM, SIZE_AT = 50, 250


@dataclass
class TrainConfig:
    data: str
    out: str
    steps: int = 100_000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-4
    lr_final_fraction: float = 0.05
    warmup_steps: int = 200
    aux_lr: float = 1e-3
    clip_grad_norm: float = 1.0
    val_every: int = 1000
    checkpoint_every_s: float = 300.0
    time_budget_s: float = 0.0  # > 0: size `steps` to fit this wall time, measured after warm-up
    seed: int = 0
    bf16: bool = True
    compile: bool = False  # torch.compile the training forward (validation and saving use the plain model)
    device: str = "auto"
    noise_sigma_max: float = 0.0
    noise_jpeg_prob: float = 0.0
    noise_balance: bool = True  # weight each crop's distortion by noise_weight(sigma)
    decoder_only: bool = False  # train g_s alone, all else frozen: streams unchanged (module docstring)
    synthesis_blocks: int | None = None  # None: the checkpoint's; more than it has grows g_s (module docstring)
    lmbda_min: float | None = None  # None: the network's (checkpoint's) own
    lmbda_max: float | None = None
    bd_objective: bool = False  # log-MSE distortion, each quality's loss over its rate (module docstring)
    ema_decay: float = 0.0  # > 0: validate and keep the running average of the trained weights (WeightAverage)
    # --bd-objective's references: {"bpp": [...], "mse": [...]} at VAL_QUALITIES, measured when a segment starts
    reference: dict | None = None
    holdout_every: int = HOLDOUT_EVERY  # a subset of the folder (device/make_subset.py) keeps its held-out images
    network: dict = field(default_factory=lambda: NetworkConfig().to_dict())


def list_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def split_holdout(files: list[Path], every: int = HOLDOUT_EVERY) -> tuple[list[Path], list[Path]]:
    """Deterministic split: every ``every``-th file by name is held out for validation."""
    val = files[::every]
    train = [f for i, f in enumerate(files) if i % every]
    return train, val


def load_rgb(path: Path) -> torch.Tensor:
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)  # (3, H, W) uint8


class CropSampler:
    """All training images held in memory (on the training device) as uint8; random crops + flips.

    BSDS500 is 500 images of 481x321, about 230 MB decoded: cheaper to keep resident than to
    decode JPEGs every step, and on a GPU it keeps the data pipeline off the CPU entirely.
    """

    def __init__(self, files: list[Path], crop: int, device: torch.device, seed: int) -> None:
        self.images = []
        for f in files:
            img = load_rgb(f)
            if min(img.shape[1:]) < crop:
                scale = crop / min(img.shape[1:])
                img = torch.nn.functional.interpolate(
                    img[None].float(), scale_factor=scale + 1e-6, mode="bicubic", align_corners=False
                ).clamp(0, 255).round().to(torch.uint8)[0]
            self.images.append(img.to(device))
        self.crop = crop
        self.device = device
        self.rng = random.Random(seed)

    def sample(self, batch_size: int) -> torch.Tensor:
        crops = []
        for _ in range(batch_size):
            img = self.images[self.rng.randrange(len(self.images))]
            _, H, W = img.shape
            top = self.rng.randrange(H - self.crop + 1)
            left = self.rng.randrange(W - self.crop + 1)
            c = img[:, top : top + self.crop, left : left + self.crop]
            if self.rng.random() < 0.5:
                c = c.flip(-1)
            if self.rng.random() < 0.5:
                c = c.flip(-2)
            crops.append(c)
        return torch.stack(crops).float().div_(255.0)

    def state(self) -> list:
        return list(self.rng.getstate()[1]) + [self.rng.getstate()[2] or 0]

    def set_state(self, state: list) -> None:
        self.rng.setstate((3, tuple(int(v) for v in state[:-1]), None))


def corrupt(x: torch.Tensor, sigma_max: float, jpeg_prob: float, gen: torch.Generator,
            fixed_sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoising-autoencoder input: Gaussian noise with sigma ~ U[0, sigma_max] (0-255 scale) per
    image (or exactly ``fixed_sigma``), and with probability ``jpeg_prob`` a JPEG round trip at a
    random quality 30-90 first. Returns (noisy x, sigma per image (B,) on the 0-255 scale).

    Draws come from ``gen`` on its own device: training passes a generator on the training device
    (a CUDA generator keeps the noise, 3 floats per pixel, off the CPU); validation a CPU one, so
    its noise is the same on every device."""
    B, dev = x.shape[0], gen.device
    if jpeg_prob > 0:
        draws = torch.rand(B, 2, generator=gen, device=dev).tolist()  # one host sync per batch
        out = []
        for img, (u, v) in zip(x, draws):
            if u < jpeg_prob:
                arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=int(30 + 60 * v))
                img = load_rgb_bytes(buf.getvalue()).to(x.device).float() / 255.0
            out.append(img)
        x = torch.stack(out)
    if fixed_sigma is None:
        sigma = torch.rand(B, generator=gen, device=dev) * sigma_max
    else:
        sigma = torch.full((B,), float(fixed_sigma), device=dev)
    noise = torch.randn(x.shape, generator=gen, device=dev).to(x.device)
    sigma = sigma.to(x.device)
    return (x + (sigma / 255.0).view(-1, 1, 1, 1) * noise).clamp(0, 1), sigma


def noise_weight(sigma: torch.Tensor) -> torch.Tensor:
    """Per-crop distortion weight for denoising training, 1 at sigma 25 (0-255 scale).

    The reference error e(sigma) = 30 + 1.72 * sigma^1.2 (MSE on the 0-255 scale) fits what a good
    denoiser leaves: measured non-local means on held-out BSDS images gives MSE 46 / 82 / 192 at
    sigma 15 / 25 / 50, and the codec alone leaves about 30 on clean crops at mid rate. Weighting
    by e(25) / e(sigma) makes each crop's gradient that of its PSNR rather than its MSE."""
    def e(s):
        return 30.0 + 1.72 * s.clamp_min(0).pow(1.2)

    return e(torch.tensor(25.0)) / e(sigma)


def load_rgb_bytes(data: bytes) -> torch.Tensor:
    with Image.open(io.BytesIO(data)) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def at_quality(quality: torch.Tensor, values: list[float]) -> torch.Tensor:
    """``values`` (one per VAL_QUALITIES, positive) at each ``quality`` (B,), log-linear between them."""
    logs = torch.log(torch.tensor(values, dtype=torch.float32, device=quality.device))
    pos = quality.float().clamp(0, 1) * (len(VAL_QUALITIES) - 1)
    lo = pos.floor().long().clamp(max=len(VAL_QUALITIES) - 2)
    t = pos - lo
    return torch.exp(logs[lo] * (1 - t) + logs[lo + 1] * t)


def rate_weight(quality: torch.Tensor, rate_ref: list[float]) -> torch.Tensor:
    """``--bd-objective``: 1 / the reference bpp at each ``quality`` (B,), normalised to 1 at quality 0.5."""
    return at_quality(torch.full_like(quality, 0.5, dtype=torch.float32), rate_ref) / at_quality(quality, rate_ref)


def rd_loss(model: VariableRateHyperprior, out: dict, x: torch.Tensor, quality: torch.Tensor,
            weight: torch.Tensor | None = None, decoder_only: bool = False,
            reference: dict | None = None) -> dict:
    """``weight`` (B,): per-crop factor on the distortion term (denoising: ``noise_weight``).
    ``decoder_only``: the loss is minus the crops' mean PSNR (the rate is frozen; module docstring).
    ``reference``: the ``--bd-objective`` loss with these references (module docstring)."""
    B, _, H, W = x.shape
    num_pixels = H * W
    bits = sum(
        torch.log(lik).flatten(1).sum(1) for lik in out["likelihoods"].values()
    ) / -math.log(2)  # (B,)
    bpp = bits / num_pixels
    mse = (out["x_hat"] - x).pow(2).flatten(1).mean(1)  # (B,)
    distortion = mse if weight is None else weight * mse
    crop_psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))  # (B,)
    if decoder_only:
        loss = -crop_psnr.mean()
    else:
        lam = model.lmbda(quality) * 255**2
        if reference is None:
            loss = (lam * distortion + bpp).mean()
        else:
            log_d = torch.log(distortion.clamp_min(1e-10))
            per_crop = lam * at_quality(quality, reference["mse"]) * log_d + bpp
            loss = (per_crop * rate_weight(quality, reference["bpp"])).mean()
    return {"loss": loss, "bpp": bpp.mean(), "mse": mse.mean(), "psnr": crop_psnr.mean()}


def lr_at(step_in_run: int, cfg: TrainConfig) -> float:
    if step_in_run < cfg.warmup_steps:
        return cfg.lr * (step_in_run + 1) / cfg.warmup_steps
    t = (step_in_run - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, t)
    floor = cfg.lr * cfg.lr_final_fraction
    return floor + (cfg.lr - floor) * 0.5 * (1 + math.cos(math.pi * t))


def compile_forward(model: VariableRateHyperprior, batch_size: int, crop: int, device: torch.device,
                    autocast_dtype: torch.dtype | None, log) -> torch.nn.Module:
    """``torch.compile(model)``, compiled and checked (forward and backward) on a throwaway batch of
    the training shape; the plain model, with a log line, if the compiler fails on this stack (a
    lent GPU's few minutes must not be lost to it). The compiled module shares the parameters."""
    compiled = torch.compile(model)
    x = torch.zeros(batch_size, 3, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
    quality = torch.full((batch_size,), 0.5, device=device)
    t0 = time.monotonic()
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            rd_loss(model, compiled(x, quality, autocast_dtype=autocast_dtype), x, quality)["loss"].backward()
    except Exception as e:  # noqa: BLE001 - any compiler failure: train without it
        log(f"torch.compile failed ({type(e).__name__}: {str(e)[:300]}); training without it")
        return model
    finally:
        model.zero_grad(set_to_none=True)
    log(f"torch.compile: forward and backward compiled in {time.monotonic() - t0:.0f} s")
    return compiled


def parameter_groups(model: torch.nn.Module) -> tuple[list, list]:
    """(trainable parameters, the entropy bottleneck's quantiles)."""
    main, aux = [], []
    for n, p in model.named_parameters():
        if n.endswith(".quantiles"):
            aux.append(p)
        elif p.requires_grad:
            main.append(p)
    return main, aux


def freeze_all_but_synthesis(model: VariableRateHyperprior) -> None:
    """``--decoder-only``: g_s trains; g_a, the hyperprior, the gains and the entropy models do not."""
    for n, p in model.named_parameters():
        p.requires_grad_(n.startswith("g_s."))


@torch.no_grad()
def validate(model: VariableRateHyperprior, images: list[torch.Tensor], device: torch.device,
             noise: tuple[float, float] | None = None, reference: dict | None = None) -> dict:
    """Held-out RD at fixed qualities, hard quantisation, bpp from likelihoods (cheap, for
    choosing checkpoints; real bitstreams are measured by ``latentwire eval``). With
    ``reference`` the loss is ``--bd-objective``'s. Per quality also the geometric-mean MSE."""
    from shared.network import pad_to_multiple

    model.eval()
    per_q = {}
    gen = torch.Generator().manual_seed(1234)
    for q in VAL_QUALITIES:
        losses, bpps, psnrs = [], [], []
        for img in images:
            x = img[None].to(device).float() / 255.0
            H, W = x.shape[-2:]
            x_in = corrupt(x, noise[0], 0.0, gen, fixed_sigma=noise[0])[0] if noise else x
            xp = pad_to_multiple(x_in)
            quality = torch.full((1,), q, device=device)
            out = model(xp, quality)
            out["x_hat"] = out["x_hat"][..., :H, :W].clamp(0, 1)
            bits = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / -math.log(2)
            bpp = bits / (H * W)
            mse = (out["x_hat"] - x).pow(2).mean()
            lam = model.lmbda(quality)[0] * 255**2
            if reference is None:
                losses.append((lam * mse + bpp).item())
            else:
                d_ref = at_quality(quality, reference["mse"])[0]
                losses.append(((lam * d_ref * torch.log(mse) + bpp) * rate_weight(quality, reference["bpp"])[0]).item())
            bpps.append(bpp.item())
            psnrs.append((10 * torch.log10(1 / mse)).item())
        per_q[q] = {"loss": float(np.mean(losses)), "bpp": float(np.mean(bpps)), "psnr": float(np.mean(psnrs)),
                    "mse": float(10 ** (-np.mean(psnrs) / 10))}
    model.train()
    return {"loss": float(np.mean([v["loss"] for v in per_q.values()])),
            "psnr": float(np.mean([v["psnr"] for v in per_q.values()])), "per_quality": per_q}


def _objective(run: dict) -> tuple:
    """What the validation loss measures: runs that differ here cannot share a best checkpoint."""
    sigma = float(run.get("noise_sigma_max", 0.0))
    net = run.get("network", {})
    rate_range = (float(net.get("lmbda_min", 0.0)), float(net.get("lmbda_max", 0.0)))
    return (sigma, float(run.get("noise_jpeg_prob", 0.0)), sigma > 0 and bool(run.get("noise_balance", False)),
            rate_range, bool(run.get("decoder_only", False)), bool(run.get("bd_objective", False)))


class WeightAverage:
    """An exponential moving average of the trained parameters (Polyak averaging): a fine-tuning
    run at a constant-ish learning rate wanders around its minimum, and the average of where it
    wandered sits nearer the bottom than any one step. ``update`` after each optimiser step;
    ``applied()`` swaps the average into the model (to validate or save it) and back."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight average's decay must lie in (0, 1), got {decay}: e.g. 0.999 averages "
                             "over about the last 1 000 steps")
        self.decay = decay
        self.names = [n for n, p in model.named_parameters() if p.requires_grad and not n.endswith(".quantiles")]
        params = dict(model.named_parameters())
        self.params = [params[n] for n in self.names]
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self) -> None:
        for p, s in zip(self.params, self.shadow):
            held = p.detach().clone()
            p.copy_(s)
            s.copy_(held)

    @contextmanager
    def applied(self):
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def state(self) -> dict:
        return {n: s.detach().cpu().clone() for n, s in zip(self.names, self.shadow)}

    def restore(self, state: dict) -> bool:
        """Take a saved average if it covers the same parameters; False (left as is) otherwise."""
        if sorted(state) != sorted(self.names):
            return False
        with torch.no_grad():
            for n, s in zip(self.names, self.shadow):
                s.copy_(state[n])
        return True


def save_training_checkpoint(path: Path, model, optimizer, aux_optimizer, state: dict, cfg: TrainConfig) -> None:
    payload = {
        "kind": "latentwire-training-checkpoint",
        "network": model.config.to_dict(),
        "train_config": asdict(cfg),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "aux_optimizer": aux_optimizer.state_dict(),
        **state,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def build_model(cfg: TrainConfig, ckpt: dict | None, log) -> VariableRateHyperprior:
    """The network ``cfg`` (or the checkpoint it resumes) describes, with the checkpoint's weights,
    g_s grown when ``--synthesis-blocks`` asks for more blocks than it has. Updates
    ``cfg.network`` to what was built."""
    if ckpt is not None:
        cfg.network = dict(ckpt["network"])  # shapes come from the checkpoint
    # The rate range may be re-chosen, e.g. widened when fine-tuning (gains adapt to it).
    for key in ("lmbda_min", "lmbda_max"):
        if getattr(cfg, key) is not None:
            cfg.network[key] = getattr(cfg, key)
    blocks = cfg.synthesis_blocks
    if ckpt is None and blocks is not None:
        cfg.network["synthesis_blocks"] = blocks
    model = VariableRateHyperprior(NetworkConfig(**cfg.network))
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        if blocks is not None and blocks != model.config.synthesis_blocks:
            model = grow_synthesis(model, blocks)  # raises when asked to shrink
            cfg.network = model.config.to_dict()
            log(f"g_s grown to {blocks} refinement block(s) per stage (identity at first)")
    return model


@dataclass
class Segment:
    """Where training stands in its segment (a run of ``cfg.steps`` with one lr schedule)."""

    step: int = 0  # global step
    run_start: int = 0  # global step the segment began at
    best_val: float = float("inf")  # the best held-out score so far (what ``_objective`` measures)
    continuing: bool = False  # resumed in the middle of an interrupted segment


@dataclass
class Streams:
    """The run's random streams: crops, noise, qualities (all in the checkpoint)."""

    sampler: CropSampler
    noise: torch.Generator
    quality: torch.Generator

    def state(self) -> dict:
        return {"sampler_rng": self.sampler.state(), "torch_rng": torch.get_rng_state(),
                "noise_rng": self.noise.get_state(), "quality_rng": self.quality.get_state()}

    def restore(self, ckpt: dict, log) -> None:
        self.sampler.set_state(ckpt["sampler_rng"])
        torch.set_rng_state(ckpt["torch_rng"])
        try:
            self.noise.set_state(ckpt["noise_rng"])
        except RuntimeError:  # interrupted on another kind of device: its generator state does not fit
            log("noise generator state is from another device; reseeded")
        self.quality.set_state(ckpt["quality_rng"])


def restore(ckpt: dict, cfg: TrainConfig, model: VariableRateHyperprior, optimizer, aux_optimizer,
            streams: Streams, new_segment: bool, log) -> Segment:
    """Continue an interrupted segment exactly (its schedule, optimiser state and random streams),
    or start a new segment from the checkpoint's weights, keeping Adam's moments where they fit."""
    seg = Segment(step=int(ckpt["step"]), run_start=int(ckpt.get("run_start", 0)),
                  best_val=float(ckpt.get("best_val", float("inf"))))
    prev_run = ckpt["train_config"]
    # Adam's state fits only the same set of trained parameters.
    same_params = (bool(prev_run.get("decoder_only", False)) == cfg.decoder_only
                   and int(ckpt["network"].get("synthesis_blocks", 0)) == model.config.synthesis_blocks)
    if not new_segment and same_params and "optimizer" in ckpt and seg.step - seg.run_start < int(prev_run["steps"]):
        seg.continuing = True  # an interrupted segment: same schedule, same optimiser state
        cfg.steps, cfg.lr, cfg.warmup_steps = int(prev_run["steps"]), float(prev_run["lr"]), int(prev_run["warmup_steps"])
        cfg.lr_final_fraction = float(prev_run["lr_final_fraction"])
        cfg.reference = prev_run.get("reference") if cfg.bd_objective else None
        optimizer.load_state_dict(ckpt["optimizer"])
        aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        streams.restore(ckpt, log)
        return seg
    seg.run_start = seg.step  # the previous segment finished (or --new-segment): new schedule
    if cfg.bd_objective and prev_run.get("bd_objective") and prev_run.get("reference"):
        cfg.reference = dict(prev_run["reference"])  # the same references, so best_val stays comparable
    if _objective(prev_run) != _objective(asdict(cfg)):
        # A different task (e.g. denoising fine-tuned from the clean codec): the old validation
        # loss measured something else, so it cannot gate best.pt.
        seg.best_val = float("inf")
    if "optimizer" in ckpt and same_params:
        optimizer.load_state_dict(ckpt["optimizer"])  # keep Adam's moments, not its lr
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr
    if "aux_optimizer" in ckpt:
        aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
    return seg


class Pacer:
    """Fits a time-budgeted segment to its budget. The pace of steps SIZE_FROM..SIZE_AT (after
    warm-up and autotuning) sizes it; then, at each validation, the pace of the window since the
    last re-fit sizes what is left: shorter when the steps slowed down (a second run sharing the
    GPU finishing its compile, say), longer when they sped up (sized beside a job that has since
    ended). The segment ends at once, to be validated and saved, if the deadline passes anyway."""

    GROW = 1.1  # lengthen only when at least this many more steps fit: the cosine then moves little

    def __init__(self, cfg: TrainConfig, seg: Segment, t_start: float, log) -> None:
        self.cfg, self.seg, self.log = cfg, seg, log
        self.t_start = t_start
        self.sized = cfg.time_budget_s <= 0 or seg.continuing  # a continued segment keeps its plan
        self.deadline = None if self.sized else t_start + cfg.time_budget_s
        self.t_window, self.step_window, self.t_measure = t_start, seg.step, t_start

    @property
    def end(self) -> int:
        return self.seg.run_start + self.cfg.steps

    def after_step(self) -> bool:
        """Called after each step; True when the segment's length changed."""
        cfg, step, done = self.cfg, self.seg.step, self.seg.step - self.seg.run_start
        now, changed = time.monotonic(), False
        if not self.sized and done == SIZE_FROM:
            self.t_measure = now
        if not self.sized and done == SIZE_AT:
            per_step = (now - self.t_measure) / (SIZE_AT - SIZE_FROM)
            cfg.time_budget_s -= now - self.t_start - SIZE_AT * per_step
            cfg.steps = max(SIZE_AT + 1, int(cfg.time_budget_s / per_step * 0.97))
            self.sized, changed = True, True
            self.t_window, self.step_window = now, step
            self.log(f"\n{per_step * 1000:.1f} ms/step -> {cfg.steps} steps in {cfg.time_budget_s:.0f} s")
        elif (self.deadline is not None and self.sized and step % cfg.val_every == 0
                and step - self.step_window >= SIZE_FROM):
            # The last window holds one validation, as the rest of the segment will: its pace is the pace.
            per_step = (now - self.t_window) / (step - self.step_window)
            self.t_window, self.step_window = now, step
            fits = done + int((self.deadline - now) / per_step * 0.97)
            if fits < cfg.steps or fits > self.GROW * cfg.steps:
                self.log(f"\n{'slower' if fits < cfg.steps else 'faster'} than planned: "
                         f"{per_step * 1000:.1f} ms/step -> {max(done + 1, fits)} steps")
                cfg.steps, changed = max(done + 1, fits), True
        if self.deadline is not None and step < self.end and now > self.deadline:
            self.log(f"\ntime budget spent at step {step}: ending the segment here")
            cfg.steps, changed = done, True
        return changed


def train_step(model, forward, batch: tuple, cfg: TrainConfig, optimizer, aux_optimizer,
               main_params: list, autocast_dtype) -> dict | None:
    """One optimisation step on ``batch`` = (input, target, quality, weight); the losses, or None
    when the loss was not finite and the batch was dropped."""
    x_in, x, quality, weight = batch
    out = forward(x_in, quality, autocast_dtype=autocast_dtype)
    losses = rd_loss(model, out, x, quality, weight, cfg.decoder_only, cfg.reference)
    optimizer.zero_grad(set_to_none=True)
    if not torch.isfinite(losses["loss"]):
        return None
    losses["loss"].backward()
    if cfg.clip_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(main_params, cfg.clip_grad_norm)
    optimizer.step()
    if not cfg.decoder_only:  # the quantiles set z's medians: frozen with the rest of the coder
        aux_loss = model.aux_loss()
        aux_optimizer.zero_grad(set_to_none=True)
        aux_loss.backward()
        aux_optimizer.step()
    return losses


def train(cfg: TrainConfig, resume: Path | None = None, log=print, new_segment: bool = False) -> Path:
    """One training segment (module docstring); returns the path of best.pt."""
    if cfg.crop <= 0 or cfg.crop % DOWNSAMPLE:
        raise ValueError(f"crop {cfg.crop} is not a positive multiple of {DOWNSAMPLE}: the hyper-latent of a crop "
                         f"is 1/{DOWNSAMPLE} of its side, so use e.g. 128, 192 or 256")
    if cfg.bd_objective and (resume is None or cfg.decoder_only):
        raise ValueError("--bd-objective takes its references from a trained model: it needs --resume; "
                         "and --decoder-only has its own objective (the mean PSNR)")
    if cfg.synthesis_blocks is not None and cfg.synthesis_blocks < 0:
        raise ValueError(f"synthesis_blocks must be 0 or more, got {cfg.synthesis_blocks}")
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        # The cores this process may use (taskset); platforms without affinity: every core.
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    ckpt = torch.load(resume, map_location="cpu", weights_only=True) if resume else None
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, ckpt, log)
    model.to(device).to(memory_format=torch.channels_last)
    model.train()
    if cfg.decoder_only:
        freeze_all_but_synthesis(model)
    main_params, aux_params = parameter_groups(model)
    optimizer = torch.optim.Adam(main_params, lr=cfg.lr)
    aux_optimizer = torch.optim.Adam(aux_params, lr=cfg.aux_lr)

    train_files, val_files = split_holdout(list_images(Path(cfg.data)), cfg.holdout_every)
    streams = Streams(CropSampler(train_files, cfg.crop, device, cfg.seed),
                      torch.Generator(device=device).manual_seed(cfg.seed + 1),
                      torch.Generator().manual_seed(cfg.seed + 2))
    val_images = [load_rgb(f) for f in val_files]
    log(f"device={device} train_images={len(train_files)} val_images={len(val_files)} "
        f"params={sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")

    seg = Segment()
    if ckpt is not None:
        seg = restore(ckpt, cfg, model, optimizer, aux_optimizer, streams, new_segment, log)
        log(f"resumed from {resume} at step {seg.step} ({'continuing its segment' if seg.continuing else 'new segment'})")
    if cfg.bd_objective and not cfg.reference:
        start = validate(model, val_images, device, (cfg.noise_sigma_max / 2, 0.0) if cfg.noise_sigma_max > 0 else None)
        cfg.reference = {key: [r[key] for r in start["per_quality"].values()] for key in ("bpp", "mse")}
        log("--bd-objective references: held-out bpp " + " ".join(f"{r:.3f}" for r in cfg.reference["bpp"])
            + ", MSE " + " ".join(f"{m:.2e}" for m in cfg.reference["mse"]))

    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    if average is not None:
        kept = (ckpt is not None and seg.continuing and "weight_average" in ckpt
                and average.restore(ckpt["weight_average"]))
        log(f"weight average (decay {cfg.ema_decay}) {'continued' if kept else 'starts at the weights'}: "
            "validated and kept in best.pt")

    def save(name: str, with_average: bool = True) -> None:
        extra = {"weight_average": average.state()} if average is not None and with_average else {}
        save_training_checkpoint(out_dir / name, model, optimizer, aux_optimizer,
                                 {"step": seg.step, "run_start": seg.run_start, "best_val": seg.best_val,
                                  **streams.state(), **extra}, cfg)

    autocast_dtype = torch.bfloat16 if cfg.bf16 else None
    t_start = time.monotonic()  # the time budget includes compiling
    forward = compile_forward(model, cfg.batch_size, cfg.crop, device, autocast_dtype, log) if cfg.compile else model
    pacer = Pacer(cfg, seg, t_start, log)
    last_save = time.monotonic()
    shown, skipped = None, 0
    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=seg.step - seg.run_start, desc="train", file=sys.stdout,
               mininterval=5.0, dynamic_ncols=False, ncols=110)
    while seg.step < pacer.end:
        for g in optimizer.param_groups:
            g["lr"] = lr_at(seg.step - seg.run_start, cfg)
        batch = draw_batch(streams, cfg)
        losses = train_step(model, forward, batch, cfg, optimizer, aux_optimizer, main_params, autocast_dtype)
        if losses is None:
            # A rare bf16 overflow must not poison Adam's moments: drop the batch, keep going.
            skipped += 1
            log(f"\nstep {seg.step}: non-finite loss, batch skipped ({skipped} so far)")
            if skipped > 50:
                raise FloatingPointError("more than 50 non-finite losses: lower --lr or disable --bf16")
            continue
        seg.step += 1
        if average is not None:
            average.update()
        bar.update(1)
        if seg.step % 20 == 0:
            vals = {k: v.item() for k, v in losses.items() if k != "mse"}
            shown = vals if shown is None else {k: 0.9 * shown[k] + 0.1 * vals[k] for k in vals}
            bar.set_postfix(loss=f"{shown['loss']:.3f}", bpp=f"{shown['bpp']:.3f}", psnr=f"{shown['psnr']:.2f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if pacer.after_step():
            bar.total = cfg.steps

        is_last = seg.step == pacer.end
        if seg.step % cfg.val_every == 0 or is_last:
            # With a weight average, the average is what is validated and what best.pt keeps.
            with average.applied() if average is not None else nullcontext():
                if validate_and_log(model, val_images, device, cfg, seg, out_dir, t_start, log):
                    save("best.pt", with_average=False)  # its weights are the average
        if is_last or time.monotonic() - last_save > cfg.checkpoint_every_s:
            save("last.pt")
            last_save = time.monotonic()
    bar.close()
    what = "minus mean PSNR" if cfg.decoder_only else "loss"
    log(f"done at step {seg.step}; best held-out val {what} {seg.best_val:.4f}; checkpoints in {out_dir}")
    return out_dir / "best.pt"


def draw_batch(streams: Streams, cfg: TrainConfig) -> tuple:
    """(input, target, quality, distortion weight or None): clean crops, their qualities, and for
    denoising the corrupted input and ``noise_weight``."""
    x = streams.sampler.sample(cfg.batch_size).contiguous(memory_format=torch.channels_last)
    quality = torch.rand(cfg.batch_size, generator=streams.quality).to(x.device)
    if cfg.noise_sigma_max <= 0:
        return x, x, quality, None
    x_in, sigma = corrupt(x, cfg.noise_sigma_max, cfg.noise_jpeg_prob, streams.noise)
    return x_in, x, quality, noise_weight(sigma) if cfg.noise_balance else None


def validate_and_log(model, val_images: list, device: torch.device, cfg: TrainConfig, seg: Segment,
                     out_dir: Path, t_start: float, log) -> bool:
    """Validate, log a line and append it to val.jsonl; True (and ``seg.best_val`` updated) when
    it is the best so far by what this run's objective selects."""
    v = validate(model, val_images, device, (cfg.noise_sigma_max / 2, 0.0) if cfg.noise_sigma_max > 0 else None,
                 cfg.reference)
    pq = " ".join(f"q{q:.2f}:{r['bpp']:.3f}bpp/{r['psnr']:.2f}dB" for q, r in v["per_quality"].items())
    log(f"\nstep {seg.step} val_loss {v['loss']:.4f} mean_psnr {v['psnr']:.3f} {pq}")
    with open(out_dir / "val.jsonl", "a") as fh:
        fh.write(json.dumps({"step": seg.step, "time_s": time.monotonic() - t_start, **v}) + "\n")
    score = -v["psnr"] if cfg.decoder_only else v["loss"]
    if score < seg.best_val:
        seg.best_val = score
        return True
    return False
