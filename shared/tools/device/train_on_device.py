"""One prepared GPU training run for a lent accelerator (see README "Training on a lent GPU";
tests/gpu/run_on_device.sh runs two of these side by side).

    python3 -m shared.tools.device.train_on_device --data .data/sub --holdout-every 7 --out "$OUT/main" \
        --time-budget-s 360 --resume models/lw-vr-hyperprior-*.pt --lr 2e-4
    # the denoising model, fine-tuned from the shipped one (σ ~ U[0, 50], 10 % JPEG first):
    python3 -m shared.tools.device.train_on_device --data .data/sub --holdout-every 7 --out "$OUT/denoise" \
        --time-budget-s 360 --resume models/lw-vr-denoise-*.pt --noise 50 --noise-jpeg-prob 0.1 --lr 1e-4

Trains the shipped architecture from scratch (or ``--resume``) for a fixed wall-time budget,
then writes what must come back in files under 16 MiB each: the best weights split in two
``weights_partK.pt`` files (``latentwire export FOLDER`` joins them), the validation log, and
``device_streams.msgpack``: held-out images encoded with g_a/h_a on CUDA, to be decoded on a CPU
by ``check_device_streams.py`` beside this (the device policy's cross-device check).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import msgpack
import torch

from shared.network import NetworkConfig, VariableRateHyperprior, pad_to_multiple
from shared.tools.train import HOLDOUT_EVERY, TrainConfig, list_images, load_rgb, split_holdout, train


def split_state_dict(state: dict, out: Path, max_bytes: int = 14 << 20) -> None:
    parts, current, size = [], {}, 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if current and size + nbytes > max_bytes:
            parts.append(current)
            current, size = {}, 0
        current[k] = v
        size += nbytes
    parts.append(current)
    for i, part in enumerate(parts):
        torch.save(part, out / f"weights_part{i}.pt")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-budget-s", type=float, default=450)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--resume", default=None)
    ap.add_argument("--lmbda-min", type=float, default=None, help="override the rate range's lowest lambda")
    ap.add_argument("--noise", type=float, default=0.0, help="denoising: sigma ~ U[0, NOISE] on 0-255")
    ap.add_argument("--noise-jpeg-prob", type=float, default=0.0)
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward (falls back "
                    "to eager if the compiler fails; the time budget includes compiling)")
    ap.add_argument("--val-every", type=int, default=2500)
    ap.add_argument("--holdout-every", type=int, default=HOLDOUT_EVERY,
                    help="hold out every Nth image (default as `latentwire train`); for a carried "
                         "subset of the training folder chosen so the same images stay held out")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path("/tmp") / f"latentwire-run-{out.name}"  # two runs may share the machine
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    print(torch.__version__, torch.cuda.get_device_name(0) if dev == "cuda" else "cpu", flush=True)
    cfg = TrainConfig(data=args.data, out=str(work), batch_size=args.batch_size, crop=args.crop,
                      lr=args.lr, val_every=args.val_every, checkpoint_every_s=120, time_budget_s=args.time_budget_s,
                      warmup_steps=300, steps=10**9, lmbda_min=args.lmbda_min,
                      noise_sigma_max=args.noise, noise_jpeg_prob=args.noise_jpeg_prob,
                      holdout_every=args.holdout_every, compile=args.compile)
    t0 = time.time()
    best = train(cfg, Path(args.resume) if args.resume else None)
    print(f"training wall time {time.time() - t0:.0f} s", flush=True)
    if not best.exists():  # no validation beat the inherited best: return the last weights instead
        print(f"no {best.name}; returning last.pt", flush=True)
        best = work / "last.pt"
    shutil.copy(work / "val.jsonl", out / "val.jsonl")
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    split_state_dict(ckpt["state_dict"], out)
    torch.save({k: v for k, v in ckpt.items() if k in ("network", "train_config", "step", "best_val")},
               out / "meta.pt")

    model = VariableRateHyperprior(NetworkConfig(**ckpt["network"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    model.update(force=True)
    model.g_a.to(dev)
    model.h_a.to(dev)
    _, val_files = split_holdout(list_images(Path(args.data)), args.holdout_every)
    streams = []
    with torch.no_grad():
        for f in val_files[:6]:
            x = load_rgb(f)[None].float() / 255.0
            H, W = x.shape[-2:]
            y, z = model.analysis(pad_to_multiple(x).to(dev))
            for q in (0.1, 0.5, 0.9):
                enc = model.compress_latents(y.cpu(), z.cpu(), q)
                streams.append({"file": f.name, "quality": q, "height": H, "width": W,
                                "y": enc["strings"][0][0], "z": enc["strings"][1][0], "shape": list(enc["shape"])})
    (out / "device_streams.msgpack").write_bytes(msgpack.packb(streams))
    print(f"wrote {len(streams)} CUDA-encoded streams", flush=True)


if __name__ == "__main__":
    main()
