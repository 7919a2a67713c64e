"""Copy the part of a training folder that fits in a lent GPU's 64 MiB carry, keeping validation.

    python -m shared.tools.device.make_subset ../shared/datasets/train .data/sub --keep 7 [--offset 6]

`latentwire train` holds out every 25th image by name. This keeps each held-out image and KEEP-1
of the 24 training images that follow it (from the OFFSET-th on), so with ``--holdout-every KEEP``
the run on the GPU holds out the very same images and its validation figures compare with the CPU
runs'. With KEEP = 7 that is 140 of BSDS500's 500 images, 120 of them for training: what fits
beside the two shipped checkpoints and the wheels. Step OFFSET by KEEP-1 from one lent GPU to the
next (0, 6, 12, 18) and four runs see every training image.

``--keep 25`` copies the whole folder: it fits only when the main codec trains alone
(``RUNS=main HOLDOUT=25 bash tests/gpu/run_on_device.sh``) with the denoising checkpoint moved out
of the working tree for that call, and then only just (sizes in models/TRAINING.md).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from shared.tools.train import HOLDOUT_EVERY, list_images, split_holdout


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--keep", type=int, default=7)
    ap.add_argument("--offset", type=int, default=0, help="skip this many training images after each held-out one")
    args = ap.parse_args()
    if not 0 <= args.offset <= HOLDOUT_EVERY - args.keep:
        ap.error(f"--offset must be 0..{HOLDOUT_EVERY - args.keep} with --keep {args.keep}")
    files = list_images(args.src)
    subset = [f for i, f in enumerate(files)
              if i % HOLDOUT_EVERY == 0 or args.offset < i % HOLDOUT_EVERY < args.offset + args.keep]
    args.dst.mkdir(parents=True, exist_ok=True)
    for f in subset:
        shutil.copy(f, args.dst / f.name)
    held = split_holdout(files)[1]
    assert [f.name for f in split_holdout(list_images(args.dst), args.keep)[1]] == [f.name for f in held]
    print(f"{len(subset)} images ({sum(f.stat().st_size for f in subset) / 1e6:.1f} MB) in {args.dst}; "
          f"the same {len(held)} held out with --holdout-every {args.keep}")


if __name__ == "__main__":
    main()
