"""Half-size copies of exported checkpoints, for a lent GPU's 64 MiB carry (README "Training on a
lent GPU").

    python -m shared.tools.device.pack_for_device models/lw-vr-hyperprior-*.pt models/lw-vr-denoise-*.pt --out .carry

The two shipped checkpoints and the whole training folder do not fit in one call together (sizes
in models/README.md and models/TRAINING.md). Packed, they do: every floating-point tensor of more
than LARGE elements (the convolution weights, nearly all the float bytes) is stored as float16, the entropy coder's CDF
tables are left out (export rebuilds them), everything else (gains, entropy-model parameters) is
kept as it is. ``train --resume PACKED`` loads them into the float32 network, so training
continues in float32 from weights rounded to 11 significant bits; the run exports float32
weights as usual. Prints each file's size and what a call carrying
``.carry``, ``.data/full`` and the two wheel files would send.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from shared.checkpoint import safe_load
from shared.tools import ROOT

LARGE = 4096
CARRY_LIMIT = 64 << 20
CODER_TABLES = ("_quantized_cdf", "_offset", "_cdf_length")


def pack_state_dict(state: dict) -> dict:
    """Large float tensors as float16; the entropy coder's tables emptied (training never codes, and
    export rebuilds them from the densities); the rest as it is."""
    packed = {}
    for k, v in state.items():
        if k.rsplit(".", 1)[-1] in CODER_TABLES:
            packed[k] = v.new_empty((0,) * v.dim())
        elif v.is_floating_point() and v.numel() > LARGE:
            packed[k] = v.half()
        else:
            packed[k] = v
    return packed


def pack(source: Path, out_dir: Path) -> Path:
    """Exported model -> ``out_dir/<name>.pt``: its metadata, its state dict packed."""
    ckpt = safe_load(source, required=("name", "network", "state_dict"))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{ckpt['name']}.pt"
    torch.save({**ckpt, "state_dict": pack_state_dict(ckpt["state_dict"]), "packed_from": source.name}, target)
    return target


def travel_bytes(repo: Path, extra: list[Path]) -> int:
    """What a device call sends: tracked and untracked-not-ignored files, less the checkpoints
    moved out (they are absent from the tree), plus the carried paths."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=repo, capture_output=True, check=True).stdout.decode().split("\0")
    total = sum((repo / f).stat().st_size for f in listed if f and (repo / f).is_file())
    for path in extra:
        total += sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path(".carry"))
    args = ap.parse_args()
    for source in args.checkpoints:
        target = pack(source, args.out)
        print(f"{source} ({source.stat().st_size / 1e6:.1f} MB) -> {target} ({target.stat().st_size / 1e6:.1f} MB)")
    repo = ROOT
    wheels = sorted((repo / ".whl").glob("*.whl"))
    total = travel_bytes(repo, [args.out.resolve(), repo / ".data" / "full", *wheels])
    moved = [c for c in args.checkpoints if c.exists() and c.resolve().is_relative_to(repo)]
    total -= sum(c.stat().st_size for c in moved)
    print(f"a call carrying {args.out}, .data/full and {len(wheels)} wheel files, with "
          f"{', '.join(c.name for c in moved) or 'no checkpoint'} moved out of the checkout, sends "
          f"{total / 2**20:.1f} MiB of the {CARRY_LIMIT >> 20} MiB limit")
    if total > CARRY_LIMIT:
        sys.exit(f"over the limit by {(total - CARRY_LIMIT) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
