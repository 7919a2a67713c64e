"""``latentwire bench codec``: encode/decode latency of the shipped codec against CompressAI's
bmshj2018 hyperprior (quality 3: the same N=128, M=192 widths) on one 768x512 image, same run.

    latentwire bench codec [--image PATH] [--runs 7] [--threads 2] [--quality 0.5]

Ours is timed end to end through ``Codec.encode`` / ``Codec.decode`` (container included);
CompressAI's model through ``compress()`` / ``decompress()`` on the same image, replicate-padded
to a multiple of 64. CompressAI's weights are random (``pretrained=False``: nothing is
downloaded), so its byte count is meaningless, but its work per pixel is that of the real model.
One untimed warm-up run precedes ``--runs`` timed runs; the table gives median and p90 (nearest
rank) in milliseconds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

BENCH_SIZE = (768, 512)  # (width, height): Kodak's landscape size
DEFAULT_IMAGE = Path(__file__).resolve().parent.parent / "tests" / "data" / "samples" / "kodim01_half.png"


def add_parser(sub) -> None:
    from shared.cli import _add_model_args

    p = sub.add_parser("bench", help="benchmarks: codec latency against CompressAI")
    bench = p.add_subparsers(dest="bench", required=True)
    c = bench.add_parser("codec", help="encode/decode ms: ours vs CompressAI bmshj2018-hyperprior")
    c.add_argument("--image", type=Path, help=f"image to resize to {BENCH_SIZE[0]}x{BENCH_SIZE[1]} "
                                              f"(default {DEFAULT_IMAGE.name})")
    c.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    c.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    c.add_argument("--quality", type=float, default=0.5, help="our quality for the timed encodes")
    _add_model_args(c)
    c.set_defaults(func=_cmd_codec)


def bench_image(path: Path | None = None):
    """The benchmark input: ``path`` (or the default sample) resized to 768x512 (bicubic)."""
    import numpy as np
    from PIL import Image

    from shared.images import load_image

    rgb = load_image(path or DEFAULT_IMAGE).rgb
    if rgb.shape[1] < rgb.shape[0]:
        rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))  # portrait -> landscape
    if rgb.shape[:2] != (BENCH_SIZE[1], BENCH_SIZE[0]):
        rgb = np.asarray(Image.fromarray(rgb).resize(BENCH_SIZE, Image.Resampling.BICUBIC))
    return rgb


def timings_ms(fn, runs: int) -> list[float]:
    fn()  # warm-up: lazy caches and allocator growth are not per-image cost
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def summary(ms: list[float]) -> tuple[float, float]:
    """(median, p90 by nearest rank)."""
    import math
    import statistics

    s = sorted(ms)
    return statistics.median(s), s[min(len(s) - 1, math.ceil(0.9 * len(s)) - 1)]


def _cmd_codec(args) -> int:
    import torch
    from compressai.zoo import bmshj2018_hyperprior

    from shared.cli import _load_codec
    from shared.network import pad_to_multiple

    if args.runs < 5:
        print("latentwire bench codec: --runs must be at least 5", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rgb = bench_image(args.image)
    H, W = rgb.shape[:2]

    codec = _load_codec(args)
    enc = codec.encode(rgb, quality=args.quality)
    ours_enc = timings_ms(lambda: codec.encode(rgb, quality=args.quality), args.runs)
    ours_dec = timings_ms(lambda: codec.decode(enc.data), args.runs)

    torch.manual_seed(0)
    ref = bmshj2018_hyperprior(quality=3, pretrained=False).eval()
    ref.update(force=True)
    x = pad_to_multiple(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0)
    with torch.inference_mode():
        out = ref.compress(x)
        ref_bytes = sum(len(s[0]) for s in out["strings"])
        ref_enc = timings_ms(lambda: ref.compress(x), args.runs)
        ref_dec = timings_ms(lambda: ref.decompress(out["strings"], out["shape"]), args.runs)

    rows = [
        (f"ours {codec.name} q={args.quality:g}", ours_enc, ours_dec, f"{enc.nbytes} B ({enc.bpp:.3f} bpp)"),
        ("CompressAI bmshj2018-hyperprior q3", ref_enc, ref_dec, f"{ref_bytes} B (random weights)"),
    ]
    print(f"bench codec: {W}x{H} image ({(args.image or DEFAULT_IMAGE).name} resized), "
          f"torch threads {torch.get_num_threads()}, {args.runs} timed runs after 1 warm-up, device {codec.device}")
    print(f"{'codec':<38} {'enc med':>8} {'enc p90':>8} {'dec med':>8} {'dec p90':>8}  size")
    for name, e, d, size in rows:
        (em, ep), (dm, dp) = summary(e), summary(d)
        print(f"{name:<38} {em:>8.1f} {ep:>8.1f} {dm:>8.1f} {dp:>8.1f}  {size}")
    (oe, _), (od, _) = summary(ours_enc), summary(ours_dec)
    (re_, _), (rd_, _) = summary(ref_enc), summary(ref_dec)
    print(f"{'ratio ours / CompressAI (median)':<38} {oe / re_:>8.2f} {'':>8} {od / rd_:>8.2f}")
    return 0
