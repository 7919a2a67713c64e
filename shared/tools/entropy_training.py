"""Training the entropy model alone, on cached latents: ``latentwire train-entropy``.

    latentwire train-entropy --model models/lw-vr-hyperprior-<hash8>.pt \\
        --data ../shared/datasets/train --out runs/ctx1 --time-budget-s 3600

The analysis transform g_a stays frozen, and the gain is applied after it, so the latent y of a
training image is the same at every step and every quality. The first run therefore computes y
once for every training image and its mirror image (the codec's own ``InferenceTransform``, in
its precision) and keeps them in ``--cache`` (a file under ``.data/``, named by the model's
weights hash). Each step then crops latents from that cache, draws a quality per crop, and costs
only the networks that run at 1/16 of the image side: the context model (``shared/context.py``)
and, unless ``--context-only``, the hyperprior (h_a, h_s, the factorised density of z and the
hyper gains). The synthesis transform and the latent gains are frozen too, so the distortion at
each quality is what it was and the loss is the rate alone: the mean over crops of log(bpp),
i.e. every crop's relative saving counts alike, whatever its quality.

A denoising model (its training config has ``noise_sigma_max`` > 0, e.g. lw-vr-denoise) codes noisy
uploads, so its cache holds the latents of noisy images: each view gets Gaussian noise with sigma ~
U[0, sigma_max] (0-255 scale, rounded to grey levels as an uploaded file is), drawn once per view
from a generator seeded by the file name, so a rebuilt cache is the same. ``--noise`` overrides the
model's own sigma_max (0: clean inputs).

Validation: the exact -log2 P of the rounded symbols (``VariableRateHyperprior.estimate_bits``,
the float64 coding path) on the held-out images (every 25th file by name, as ``latentwire
train``), at ``VAL_QUALITIES``, reported against the starting model. ``best.pt`` keeps the lowest
mean log-ratio; ``last.pt`` (every ``--checkpoint-every-s``) resumes a run exactly. Either exports
with ``latentwire export``.
"""

from __future__ import annotations

import math
import os
import random
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from shared.checkpoint import load_model, safe_load
from shared.network import InferenceTransform, VariableRateHyperprior
from shared.tools.train import VAL_QUALITIES, list_images, load_rgb, split_holdout

LATENT_ALIGN = 4  # h_a halves twice: latent crops are multiples of 4


@dataclass
class EntropyTrainConfig:
    model: str
    data: str
    out: str
    cache: str = ""  # "" -> .data/latents-<weights16>.pt
    context_groups: tuple[int, ...] = (16, 16, 32, 64, 64)
    context_width: int = 128
    context_checkerboard: bool = True
    context_blocks: int | None = None  # None: the model's own (0 without a context model)
    context_only: bool = False  # freeze the hyperprior too
    noise_sigma_max: float | None = None  # None -> the model's own training noise (0 for a clean codec)
    steps: int = 20_000
    time_budget_s: float = 0.0  # > 0: size `steps` to fit it, from the pace of the first steps
    batch_size: int = 16
    latent_crop: int = 16  # 16 -> 256x256 pixels
    lr: float = 5e-4
    hyper_lr_scale: float = 0.2  # the hyperprior starts trained: a gentler rate
    lr_final_fraction: float = 0.02
    warmup_steps: int = 100
    aux_lr: float = 1e-3
    clip_grad_norm: float = 1.0
    val_every: int = 500
    checkpoint_every_s: float = 300.0
    seed: int = 0


def build_cache(model: VariableRateHyperprior, files: list[Path], path: Path, mirror: bool, log=print,
                noise_sigma_max: float = 0.0) -> list[torch.Tensor]:
    """y (float16, (M, h, w)) for every file (and its mirror image), computed once and kept; with
    ``noise_sigma_max`` > 0, of each view with its own noise (``noisy_view``)."""
    if path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if (cached.get("files") == [f.name for f in files] and cached.get("mirror") == mirror
                and cached.get("noise_sigma_max", 0.0) == noise_sigma_max):
            return cached["latents"]
    from shared.codec import PRECISIONS, resolve_precision

    g_a = InferenceTransform(model.g_a, PRECISIONS[resolve_precision("auto", torch.device("cpu"))])
    latents, t0 = [], time.time()
    with torch.inference_mode():
        for i, f in enumerate(files):
            x = load_rgb(f)[None].float() / 255.0  # (1, 3, H, W)
            H, W = (s - s % 64 for s in x.shape[-2:])
            x = x[..., :H, :W]
            for k, view in enumerate([x, x.flip(-1)] if mirror else [x]):
                if noise_sigma_max > 0:
                    view = noisy_view(view, noise_sigma_max, f"{f.name}/{k}")
                latents.append(g_a(view)[0].to(torch.float16).contiguous())
            if i % 100 == 0:
                log(f"cache: {i}/{len(files)} images, {time.time() - t0:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"files": [f.name for f in files], "mirror": mirror, "noise_sigma_max": noise_sigma_max,
                "latents": latents}, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)
    return latents


def noisy_view(x: torch.Tensor, sigma_max: float, key: str) -> torch.Tensor:
    """x (1, 3, H, W) in [0, 1] + Gaussian noise of sigma ~ U[0, sigma_max] (0-255 scale), rounded
    to grey levels and clipped; the draws come from a generator seeded by ``key``."""
    gen = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    sigma = float(torch.rand((), generator=gen)) * sigma_max
    noisy = x * 255.0 + sigma * torch.randn(x.shape, generator=gen)
    return noisy.round().clamp(0, 255) / 255.0


def sample_batch(latents: list[torch.Tensor], batch: int, crop: int, rng: random.Random) -> torch.Tensor:
    out = []
    for _ in range(batch):
        y = latents[rng.randrange(len(latents))]
        _, h, w = y.shape
        i, j = rng.randrange(h - crop + 1), rng.randrange(w - crop + 1)
        out.append(y[:, i : i + crop, j : j + crop])
    return torch.stack(out).float()


def rate_bits(model: VariableRateHyperprior, y: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Training rate of each crop in bits (B,): noisy likelihoods, context steps rounded (STE)."""
    _, likelihoods = model.latent_forward(y, model.h_a(y), quality)
    return -sum(torch.log2(lik).sum((1, 2, 3)) for lik in likelihoods.values())


@torch.no_grad()
def held_out_bits(model: VariableRateHyperprior, latents: list[torch.Tensor]) -> list[float]:
    """Total exact bits over the held-out latents at each of VAL_QUALITIES (float64 coding path)."""
    model.eval()
    totals = []
    for q in VAL_QUALITIES:
        total = 0.0
        for y in latents:
            y = y[None].float()
            total += model.estimate_bits(y, model.h_a(y), q)
        totals.append(total)
    model.train()
    return totals


def _lr_factor(step: int, steps: int, cfg: EntropyTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, steps - cfg.warmup_steps))
    return cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * t))


def train_entropy(cfg: EntropyTrainConfig, resume: Path | None = None, log=print) -> Path:
    if cfg.latent_crop <= 0 or cfg.latent_crop % LATENT_ALIGN:
        raise ValueError(f"latent crop {cfg.latent_crop} must be a positive multiple of {LATENT_ALIGN}")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base, meta = load_model(cfg.model)
    blocks = base.config.context_blocks if cfg.context_blocks is None else cfg.context_blocks
    config = replace(base.config, context_groups=tuple(cfg.context_groups), context_width=cfg.context_width,
                     context_checkerboard=cfg.context_checkerboard, context_blocks=blocks)
    model = VariableRateHyperprior(config)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    if unexpected or any(not k.startswith("context.") for k in missing):
        raise ValueError(f"{cfg.model} does not fit a context model: unexpected {unexpected}, missing "
                         f"{[k for k in missing if not k.startswith('context.')]}")

    if cfg.noise_sigma_max is None:  # the model's own: the file says what it was trained on
        cfg = replace(cfg, noise_sigma_max=float((meta.get("train_config") or {}).get("noise_sigma_max", 0.0)))
    sigma_max = cfg.noise_sigma_max
    if sigma_max < 0:
        raise ValueError(f"noise sigma_max {sigma_max:g} must be >= 0 (0: clean inputs)")
    if sigma_max > 0:
        log(f"noisy inputs: sigma ~ U[0, {sigma_max:g}] per cached view")
    files = list_images(Path(cfg.data))
    train_files, val_files = split_holdout(files)
    suffix = f"-noise{sigma_max:g}" if sigma_max > 0 else ""
    cache = Path(cfg.cache or f".data/latents-{meta['weights']}{suffix}.pt")
    train_latents = build_cache(model, train_files, cache, mirror=True, log=log, noise_sigma_max=sigma_max)
    val_latents = build_cache(model, val_files, cache.with_name(cache.stem + "-val.pt"), mirror=False, log=log,
                              noise_sigma_max=sigma_max)
    train_latents = [y for y in train_latents if min(y.shape[-2:]) >= cfg.latent_crop]

    for p in model.parameters():
        p.requires_grad_(False)
    context_params = list(model.context.parameters())
    hyper_params = [] if cfg.context_only else [
        *model.h_a.parameters(), *model.h_s.parameters(), model.log_hyper_gain,
        *(p for n, p in model.entropy_bottleneck.named_parameters() if not n.endswith("quantiles")),
    ]
    for p in context_params + hyper_params:
        p.requires_grad_(True)
    groups = [{"params": context_params, "lr": cfg.lr, "scale": 1.0}]
    if hyper_params:
        groups.append({"params": hyper_params, "lr": cfg.lr * cfg.hyper_lr_scale, "scale": cfg.hyper_lr_scale})
    optimizer = torch.optim.Adam(groups)
    quantiles = model.entropy_bottleneck.quantiles
    quantiles.requires_grad_(not cfg.context_only)
    aux_optimizer = torch.optim.Adam([quantiles], lr=cfg.aux_lr)

    step, steps, best, start_bits = 0, cfg.steps, math.inf, None
    if resume is not None:
        ckpt = safe_load(resume, required=("state_dict", "optimizer"))
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        step, steps, best, start_bits = ckpt["step"], ckpt["steps"], ckpt["best"], ckpt["start_bits"]
        rng.setstate(_tuple_state(ckpt["rng"]))
        torch.set_rng_state(ckpt["torch_rng"])
    if start_bits is None:
        start_bits = held_out_bits(model, val_latents)
        log("held-out bits at the start: " + " ".join(f"q{q:g} {b / 8 / len(val_latents):.0f} B/image"
                                                       for q, b in zip(VAL_QUALITIES, start_bits)))

    def save(path: Path) -> None:
        payload = {
            "kind": "latentwire-training-checkpoint", "network": model.config.to_dict(),
            "train_config": {**meta.get("train_config", {}), "entropy": asdict(cfg)},
            **({"clean_first": meta["clean_first"]} if meta.get("clean_first") else {}),
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "aux_optimizer": aux_optimizer.state_dict(),
            "step": step, "steps": steps, "best": best, "start_bits": start_bits,
            "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
        }
        torch.save(payload, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)

    model.train()
    t_start, t_saved, window = time.time(), time.time(), []
    pixels = (cfg.latent_crop * 16) ** 2
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * group["scale"] * _lr_factor(step, steps, cfg)
        y = sample_batch(train_latents, cfg.batch_size, cfg.latent_crop, rng)
        quality = torch.rand(cfg.batch_size)
        bits = rate_bits(model, y, quality)
        loss = torch.log(bits / pixels).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], cfg.clip_grad_norm)
        optimizer.step()
        if not cfg.context_only:
            aux_optimizer.zero_grad(set_to_none=True)
            model.entropy_bottleneck.loss().backward()
            aux_optimizer.step()
        window.append(float(bits.detach().mean()) / pixels)
        step += 1
        if step == 30 and cfg.time_budget_s > 0 and resume is None:
            pace = (time.time() - t_start) / step
            steps = max(step + 1, int(cfg.time_budget_s * 0.93 / pace))  # validation takes the rest
            log(f"{pace:.3f} s per step: {steps} steps fit {cfg.time_budget_s:.0f} s")
        if step % cfg.val_every == 0 or step == steps:
            bits_now = held_out_bits(model, val_latents)
            ratios = [b / s for b, s in zip(bits_now, start_bits)]
            score = float(np.mean(np.log(ratios)))
            log(f"step {step}/{steps} train {np.mean(window):.4f} bpp, held-out bits vs start: "
                + " ".join(f"q{q:g} {100 * (r - 1):+.2f} %" for q, r in zip(VAL_QUALITIES, ratios))
                + f" (mean {100 * (math.exp(score) - 1):+.2f} %)")
            window = []
            if score < best:
                best = score
                save(out / "best.pt")
        if time.time() - t_saved > cfg.checkpoint_every_s or step == steps:
            save(out / "last.pt")
            t_saved = time.time()
    return out / "best.pt"


def _tuple_state(state):
    """random.Random state back from the lists a weights-only load gives."""
    return tuple(_tuple_state(s) if isinstance(s, list) else s for s in state)


def add_parser(sub) -> None:
    p = sub.add_parser("train-entropy", help="train the context model (and hyperprior) on cached latents of a "
                                             "frozen analysis transform")
    p.add_argument("--model", required=True, help="exported model whose g_a, g_s and gains stay frozen")
    p.add_argument("--data", required=True, help="training image folder (every 25th file held out)")
    p.add_argument("--out", required=True, help="run folder for best.pt / last.pt")
    p.add_argument("--cache", default="", help="latent cache file (default .data/latents-<weights>.pt)")
    p.add_argument("--resume", type=Path, help="last.pt of an interrupted run")
    p.add_argument("--groups", default="16,16,32,64,64", help="context channel groups, summing to M")
    p.add_argument("--width", type=int, default=128, help="context network width")
    p.add_argument("--no-checkerboard", action="store_true", help="one step per channel group (no spatial "
                                                                  "context within a group)")
    p.add_argument("--blocks", type=int, default=None, help="residual blocks on each side of every context "
                   "group's join, new ones starting as the identity (default: the model's own)")
    p.add_argument("--context-only", action="store_true", help="keep the hyperprior frozen too")
    p.add_argument("--noise", type=float, default=None, metavar="SIGMA_MAX",
                   help="cache latents of noisy inputs, sigma ~ U[0, SIGMA_MAX] (0-255 scale); default: the "
                        "model's own training noise (a denoising model's), 0 for a clean codec")
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--time-budget-s", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--latent-crop", type=int, default=16, help="latent crop side (x16 pixels)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd)


def _cmd(args) -> int:
    groups = tuple(int(g) for g in args.groups.split(","))
    cfg = EntropyTrainConfig(model=args.model, data=args.data, out=args.out, cache=args.cache,
                             context_groups=groups, context_width=args.width, context_only=args.context_only,
                             context_checkerboard=not args.no_checkerboard, context_blocks=args.blocks,
                             noise_sigma_max=args.noise,
                             steps=args.steps, time_budget_s=args.time_budget_s, batch_size=args.batch_size,
                             latent_crop=args.latent_crop, lr=args.lr, val_every=args.val_every, seed=args.seed)
    path = train_entropy(cfg, args.resume, log=lambda m: print(m, flush=True))
    print(f"best checkpoint: {path}; export it with `latentwire export {path} --replace`")
    return 0
