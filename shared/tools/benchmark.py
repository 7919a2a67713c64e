"""``latentwire bench``: printed tables for the speed and size targets (never timed tests).

    latentwire bench codec      encode/decode ms vs CompressAI (below)
    latentwire bench overhead   rANS bytes and container vs the entropy model's own estimate
    latentwire bench e2e        images through real sender + receiver processes (e2e_bench.py)
    latentwire bench soak       both services under bounded steady load: rate, latency, RSS (soak.py)
    latentwire bench link       quality=auto vs a fixed quality through emulated thin links (link_bench.py)
    latentwire bench train      training step time, eager vs torch.compile (below)

``latentwire bench codec``: encode/decode latency of the shipped codec against CompressAI's
bmshj2018 hyperprior (quality 3: the same N=128, M=192 widths) on one 768x512 image, same run.

    latentwire bench codec [--image PATH] [--runs 7] [--threads 2] [--quality 0.5]

Ours is timed end to end through ``Codec.encode`` / ``Codec.decode`` (container included);
CompressAI's model through ``compress()`` / ``decompress()`` on the same image, replicate-padded
to a multiple of 64. CompressAI's weights are random (``pretrained=False``: nothing is
downloaded), so its byte count is meaningless, but its work per pixel is that of the real model.
One untimed warm-up run precedes ``--runs`` timed runs; the table gives median and p90 (nearest
rank) in milliseconds. ``--precision`` picks our transforms' arithmetic (default auto: bf16 on
CPUs with native bf16; see PRECISION in shared/codec.py); CompressAI's model runs in float32.

``latentwire bench train``: seconds per training step (forward, rate-distortion loss, backward,
Adam) of the shipped architecture, the way ``latentwire train`` runs it (channels_last, bf16
transforms unless ``--no-bf16``), eager and with ``--compile``'s ``torch.compile``, on random
crops of one batch shape. The compiled row also reports the compilation time it costs once.

    latentwire bench train [--batch-size 8] [--crop 192] [--steps 12] [--device auto] [--no-compile]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from shared.tools import SAMPLES

BENCH_SIZE = (768, 512)  # (width, height): Kodak's landscape size
DEFAULT_IMAGE = SAMPLES / "kodim01_half.png"


def add_parser(sub) -> None:
    from shared.tools.cli import _add_model_args

    p = sub.add_parser("bench", help="benchmarks: codec latency, coder overhead, end-to-end services, training steps")
    bench = p.add_subparsers(dest="bench", required=True)
    c = bench.add_parser("codec", help="encode/decode ms: ours vs CompressAI bmshj2018-hyperprior")
    c.add_argument("--image", type=Path, help=f"image to resize to {BENCH_SIZE[0]}x{BENCH_SIZE[1]} "
                                              f"(default {DEFAULT_IMAGE.name})")
    c.add_argument("--runs", type=int, default=7, help="timed runs per measurement (>= 5)")
    c.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    c.add_argument("--quality", type=float, default=0.5, help="our quality for the timed encodes")
    c.add_argument("--max-bytes", type=int, default=None,
                   help="time our encodes to this byte budget instead (the rate search)")
    _add_model_args(c)
    c.set_defaults(func=_cmd_codec)

    e = bench.add_parser("e2e", help="images through real sender + receiver processes vs codec-only")
    e.add_argument("--images", type=Path, default=None, help="folder of images (default: tests/data/samples)")
    e.add_argument("-n", "--count", type=int, default=60, help="images to send")
    e.add_argument("-c", "--concurrency", type=int, default=4, help="uploads in flight")
    e.add_argument("--quality", type=float, default=0.5)
    e.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    e.add_argument("--no-preview", action="store_true",
                   help="upload with preview=false: the sender skips its own decode, JPEG comparison and previews")
    e.set_defaults(func=_cmd_e2e)

    from shared.tools.soak import add_arguments as add_soak_arguments

    s = bench.add_parser("soak", help="both services under bounded steady load: rate, latency, errors, RSS")
    add_soak_arguments(s)
    s.set_defaults(func=_cmd_soak)

    from shared.tools.link_bench import add_arguments as add_link_arguments

    k = bench.add_parser("link", help="quality=auto vs a fixed quality through emulated thin links: delivered, "
                                      "latency, PSNR, bytes")
    add_link_arguments(k)
    k.set_defaults(func=_cmd_link)

    t = bench.add_parser("train", help="training step time: eager vs torch.compile")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--crop", type=int, default=192, help="crop side, a multiple of 64")
    t.add_argument("--steps", type=int, default=12, help="timed steps per mode (>= 5), after 2 warm-up steps")
    t.add_argument("--device", default="auto", help="auto | cpu | cuda")
    t.add_argument("--threads", type=int, default=0, help="torch threads on a CPU (default: all cores)")
    t.add_argument("--no-bf16", action="store_true", help="float32 transforms")
    t.add_argument("--no-compile", action="store_true", help="time the eager step only")
    t.set_defaults(func=_cmd_train)

    o = bench.add_parser("overhead", help="coded bytes vs the entropy model's own estimate")
    o.add_argument("dir", type=Path, help="folder of images (e.g. Kodak)")
    o.add_argument("--qualities", default="0,0.25,0.5,0.75,1")
    _add_model_args(o)
    o.set_defaults(func=_cmd_overhead)


def _cmd_e2e(args) -> int:
    from shared.tools.e2e_bench import print_report, run_e2e

    report = run_e2e(args.images or SAMPLES, args.count, args.concurrency, args.quality, args.threads,
                     preview=not args.no_preview)
    print_report(report)
    return 0 if report["delivered"] == report["images"] else 1


def _cmd_soak(args) -> int:
    from shared.tools.soak import command

    return command(args)


def _cmd_link(args) -> int:
    from shared.tools.link_bench import command

    return command(args)


def _cmd_overhead(args) -> int:
    """Acceptance check: container bytes <= 1.02 x the model's likelihood estimate + 100."""
    import torch

    from shared.images import load_image
    from shared.network import latent_extent
    from shared.tools.cli import _load_codec

    codec = _load_codec(args)
    qualities = [float(q) for q in args.qualities.split(",")]
    files = sorted(p for p in args.dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    print(f"{'quality':>7} {'images':>6} {'estimate B':>11} {'coded B':>9} {'container B':>11} "
          f"{'coded/est':>9} {'worst slack B':>13}")
    ok = True
    for q in qualities:
        est_total = coded_total = container_total = 0.0
        worst = -float("inf")
        for f in files:
            rgb = load_image(f).rgb
            with torch.inference_mode():
                y, z = codec._analysis(rgb)
                enc = codec._code(rgb.shape, y, z, q)
                est = codec.model.estimate_bits(y, z, q, latent_extent(*rgb.shape[:2])) / 8
            est_total += est
            coded_total += enc.stream.payload_bytes
            container_total += enc.nbytes
            worst = max(worst, enc.nbytes - (1.02 * est + 100))
        ok &= worst <= 0
        print(f"{q:>7.2f} {len(files):>6} {est_total / len(files):>11.0f} {coded_total / len(files):>9.0f} "
              f"{container_total / len(files):>11.0f} {coded_total / est_total:>9.4f} {worst:>13.0f}")
    print("container bytes <= 1.02 x estimate + 100 for every image:", "yes" if ok else "NO")
    return 0 if ok else 1


def bench_image(path: Path | None = None):
    """The benchmark input: ``path`` (or the default sample) resized to 768x512 (bicubic)."""
    import numpy as np
    from PIL import Image

    from shared.images import load_image

    rgb = load_image(path or DEFAULT_IMAGE).rgb
    if rgb.shape[1] < rgb.shape[0]:
        rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))  # portrait -> landscape
    if rgb.shape[:2] != (BENCH_SIZE[1], BENCH_SIZE[0]):
        rgb = np.array(Image.fromarray(rgb).resize(BENCH_SIZE, Image.Resampling.BICUBIC))  # writable
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

    from shared.network import pad_to_multiple
    from shared.tools.cli import _load_codec

    if args.runs < 5:
        print("latentwire bench codec: --runs must be at least 5", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    rgb = bench_image(args.image)
    H, W = rgb.shape[:2]

    codec = _load_codec(args)
    rate = {"quality": args.quality} if args.max_bytes is None else {"max_bytes": args.max_bytes}
    enc = codec.encode(rgb, **rate)
    ours_enc = timings_ms(lambda: codec.encode(rgb, **rate), args.runs)
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
        (f"ours {codec.name} {codec.precision} "
         + (f"q={args.quality:g}" if args.max_bytes is None else f"max_bytes={args.max_bytes}"), ours_enc, ours_dec,
         f"{enc.nbytes} B ({enc.bpp:.3f} bpp)"),
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


def _cmd_train(args) -> int:
    import os

    import torch

    from shared.codec import resolve_device
    from shared.network import DOWNSAMPLE, NetworkConfig, VariableRateHyperprior
    from shared.tools.train import compile_forward, parameter_groups, rd_loss

    if args.steps < 5 or args.crop <= 0 or args.crop % DOWNSAMPLE:
        print(f"latentwire bench train: --steps must be at least 5 and --crop a multiple of {DOWNSAMPLE}",
              file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
    autocast_dtype = None if args.no_bf16 else torch.bfloat16
    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, args.crop, args.crop, device=device).contiguous(
        memory_format=torch.channels_last)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows = []
    for mode in ("eager",) + (() if args.no_compile else ("compiled",)):
        torch.manual_seed(0)
        model = VariableRateHyperprior(NetworkConfig()).to(device).to(memory_format=torch.channels_last)
        model.train()
        optimizer = torch.optim.Adam(parameter_groups(model)[0], lr=1e-5)
        t0 = time.perf_counter()
        notes = []
        forward = (compile_forward(model, args.batch_size, args.crop, device, autocast_dtype, notes.append)
                   if mode == "compiled" else model)
        sync()
        setup_s = time.perf_counter() - t0
        if forward is model and mode == "compiled":
            print(f"bench train: {notes[-1]}", file=sys.stderr)
            return 1

        def step():
            quality = torch.rand(args.batch_size, device=device)
            loss = rd_loss(model, forward(x, quality, autocast_dtype=autocast_dtype), x, quality)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sync()

        step(), step()  # warm-up: allocator growth, cudnn autotuning
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        rows.append((mode, setup_s, *summary(times)))

    print(f"bench train: N=128 M=192, batch {args.batch_size} x {args.crop}x{args.crop}, "
          f"{'float32' if args.no_bf16 else 'bf16'} transforms, device {device}"
          + (f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else "")
          + f", {args.steps} timed steps after 2 warm-up")
    print(f"{'mode':<10} {'compile s':>9} {'s/step med':>10} {'s/step p90':>10} {'steps/hour':>10} {'speed-up':>8}")
    base = rows[0][2]
    for mode, setup_s, med, p90 in rows:
        print(f"{mode:<10} {setup_s if mode == 'compiled' else 0:>9.1f} {med:>10.4f} {p90:>10.4f} "
              f"{3600 / med:>10.0f} {base / med:>7.2f}x")
    return 0
