"""Decode, on this CPU, streams that train_on_device.py (beside this) encoded with g_a/h_a on a GPU.

    python -m shared.tools.device.check_device_streams runs/gpu1 [DATA]
        (runs/gpu1: the folder with weights_part*.pt, meta.pt, device_streams.msgpack;
         DATA: the training folder, default ../shared/datasets/train)

For each stream: decode with the CPU decoder (float64 entropy parameters, see shared/codec.py's
device policy), re-encode the same image on the CPU, and compare PSNR of both reconstructions.
A stream whose entropy parameters disagreed between devices would decode to noise (PSNR < 15 dB).
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgpack
import torch

from shared.checkpoint import join_parts
from shared.images import psnr
from shared.network import NetworkConfig, VariableRateHyperprior, pad_to_multiple
from shared.tools.train import load_rgb


def main(run_dir: Path, data_dir: Path) -> int:
    ckpt = join_parts(run_dir)
    model = VariableRateHyperprior(NetworkConfig(**ckpt["network"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    model.update(force=True)
    streams = msgpack.unpackb((run_dir / "device_streams.msgpack").read_bytes())
    worst = float("inf")
    print(f"{'image':<12} {'q':>4} {'gpu bytes':>9} {'cpu bytes':>9} {'gpu-enc PSNR':>12} {'cpu-enc PSNR':>12}")
    with torch.inference_mode():
        for s in streams:
            x = load_rgb(data_dir / s["file"])[None].float() / 255.0
            H, W = s["height"], s["width"]
            ref = (x[0] * 255).round().byte().permute(1, 2, 0).numpy()
            out = model.decompress([[s["y"]], [s["z"]]], tuple(s["shape"]), s["quality"])["x_hat"]
            gpu = (out[0, :, :H, :W] * 255).round().byte().permute(1, 2, 0).numpy()
            cpu_enc = model.compress(pad_to_multiple(x), s["quality"])
            out2 = model.decompress(cpu_enc["strings"], cpu_enc["shape"], s["quality"])["x_hat"]
            cpu = (out2[0, :, :H, :W] * 255).round().byte().permute(1, 2, 0).numpy()
            p_gpu, p_cpu = psnr(ref, gpu), psnr(ref, cpu)
            worst = min(worst, p_gpu - p_cpu)
            nb_gpu = len(s["y"]) + len(s["z"])
            nb_cpu = len(cpu_enc["strings"][0][0]) + len(cpu_enc["strings"][1][0])
            print(f"{s['file']:<12} {s['quality']:>4.1f} {nb_gpu:>9} {nb_cpu:>9} {p_gpu:>12.2f} {p_cpu:>12.2f}")
    print(f"largest PSNR loss of GPU-encoded vs CPU-encoded streams: {-worst:.3f} dB")
    return 0 if worst > -0.1 else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "../shared/datasets/train")))
