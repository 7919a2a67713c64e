"""The ``latentwire`` command line: codec tools, training, evaluation, services and benchmarks.

    latentwire encode photo.jpg -o photo.lw --quality 0.6      (or --max-bytes 20000)
    latentwire decode photo.lw -o photo.png
    latentwire train --data ../shared/datasets/train --out runs/main [--resume runs/main/last.pt]
    latentwire export runs/main/best.pt                          (writes models/<name>-<hash>.pt)
    latentwire eval ../shared/datasets/kodak --out results/kodak
    latentwire receiver [--host --port]  /  latentwire sender --receiver-url URL [--host --port]
    latentwire bench codec|overhead|e2e|soak|link|train

Every subcommand imports what it needs when it runs, so ``latentwire --help`` is instant and the
codec tools never import the web stack.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train (or resume training) the codec")
    p.add_argument("--data", required=True, help="folder of training images (every 25th is held out)")
    p.add_argument("--out", required=True, help="run folder: last.pt, best.pt, val.jsonl")
    p.add_argument("--resume", type=Path, help="training checkpoint or exported model to continue from")
    p.add_argument("--new-segment", action="store_true",
                   help="start a new schedule from --resume even if its segment was interrupted")
    p.add_argument("--steps", type=int, default=100_000, help="steps in this segment")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--crop", type=_crop_size, default=256, help="training crop side, a multiple of 64")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--val-every", type=int, default=1000)
    p.add_argument("--checkpoint-every-s", type=float, default=300.0)
    p.add_argument("--time-budget-s", type=float, default=0.0, help="fit the segment to this wall time")
    p.add_argument("--lmbda-min", type=float, help="override the rate range's lowest lambda")
    p.add_argument("--lmbda-max", type=float, help="override the rate range's highest lambda")
    p.add_argument("--no-bf16", action="store_true", help="train the transforms in float32")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training forward: slow to compile, then faster steps "
                        "(`latentwire bench train` measures by how much on this machine)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise", type=float, default=0.0, metavar="SIGMA_MAX",
                   help="denoising: Gaussian noise, sigma ~ U[0, SIGMA_MAX] on the 0-255 scale")
    p.add_argument("--noise-jpeg-prob", type=float, default=0.0,
                   help="denoising: probability of a JPEG round trip before the noise")
    p.add_argument("--no-noise-balance", action="store_true",
                   help="denoising: plain MSE (by default each crop's error is weighted to equalise noise levels)")
    p.add_argument("--decoder-only", action="store_true",
                   help="train the synthesis transform g_s alone: encoder and entropy models frozen, so a "
                        "sender's streams stay bit-identical; objective: the crops' mean PSNR")
    p.add_argument("--bd-objective", action="store_true",
                   help="weigh crops and qualities as the mean PSNR and the BD-rate do: each crop's "
                        "distortion as its log MSE, each quality's loss over its rate, both priced at the "
                        "resumed model's held-out figures (needs --resume)")
    p.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                   help="keep a moving average of the trained weights (e.g. 0.999: about the last 1 000 steps); "
                        "validation and best.pt use the average")
    p.add_argument("--synthesis-blocks", type=int, default=None, metavar="K",
                   help="residual refinement blocks per g_s stage (default: the resumed model's, else 0); "
                        "more than --resume has grows its decoder, the new blocks starting as the identity")
    p.set_defaults(func=_cmd_train)


def _crop_size(text: str) -> int:
    """argparse type: the crop must survive g_a and h_a's 64x downsampling whole (no torch import here)."""
    value = int(text)
    if value <= 0 or value % 64:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 64 (the latents are 1/64 of "
                                         "the crop per side): use e.g. 128, 192 or 256")
    return value


def _cmd_train(args) -> int:
    from shared.tools.train import TrainConfig, train

    cfg = TrainConfig(
        data=args.data, out=args.out, steps=args.steps, batch_size=args.batch_size, crop=args.crop,
        lr=args.lr, warmup_steps=args.warmup_steps, val_every=args.val_every,
        checkpoint_every_s=args.checkpoint_every_s, time_budget_s=args.time_budget_s,
        seed=args.seed, bf16=not args.no_bf16, compile=args.compile, device=args.device, noise_sigma_max=args.noise,
        noise_jpeg_prob=args.noise_jpeg_prob, noise_balance=not args.no_noise_balance,
        lmbda_min=args.lmbda_min, lmbda_max=args.lmbda_max, decoder_only=args.decoder_only,
        synthesis_blocks=args.synthesis_blocks, bd_objective=args.bd_objective, ema_decay=args.ema,
    )
    train(cfg, args.resume, new_segment=args.new_segment)
    return 0


def _add_codec_tools(sub) -> None:
    p = sub.add_parser("encode", help="image -> .lw bitstream (the exact payload the sender transmits)")
    p.add_argument("image", type=Path)
    p.add_argument("-o", "--output", type=Path, help="default: IMAGE with suffix .lw")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=float, help="0 (fewest bytes) .. 1 (best); default 0.5")
    rate.add_argument("--max-bytes", type=int, help="the best stream that fits this many bytes (below the full "
                      "size's lowest rate, coded at a reduced size; it still decodes to the full size)")
    _add_model_args(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help=".lw bitstream -> PNG at the original size")
    p.add_argument("stream", type=Path)
    p.add_argument("-o", "--output", type=Path, help="default: STREAM with suffix .png")
    _add_model_args(p)
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("export", help="training checkpoint -> models/<name>-<hash8>.pt with entropy tables")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--name", default=None, help="model name (default: lw-vr-hyperprior)")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--replace", action="store_true", help="delete older files of the same model name")
    p.add_argument("--half-synthesis", action="store_true",
                   help="store the decoder's (g_s) weights in float16: a smaller file, the same bitstreams")
    p.add_argument("--half-analysis", action="store_true",
                   help="store the encoder's (g_a) weights in float16: a smaller file, streams that differ by a "
                        "few bytes")
    p.add_argument("--scale-levels", type=int, default=None,
                   help="entries of the Gaussian coder's scale table (default: the checkpoint's; more "
                        "entries code each latent with a closer scale: smaller streams, the same pixels)")
    p.add_argument("--synthesis-from", type=Path, default=None, metavar="CHECKPOINT",
                   help="take g_s from this checkpoint (e.g. a --decoder-only run of the same model beside a "
                        "train-entropy run): its g_a must be the source's")
    p.add_argument("--curve-images", type=Path, default=None,
                   help="photos to measure the model's rate curve on (default: the sample images)")
    p.set_defaults(func=_cmd_export)


def _add_model_args(p) -> None:
    p.add_argument("--model", default=None, help="model name in --models-dir, or a .pt path")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (see the device policy in shared/codec.py)")
    p.add_argument("--max-side", type=int, default=4096, help="largest width/height accepted")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="transforms' arithmetic: auto = bf16 on CPUs with native bf16, else fp32")


def _load_codec(args):
    from shared.checkpoint import DEFAULT_MODELS_DIR
    from shared.codec import DEFAULT_MODEL, Codec

    return Codec.load(args.model or DEFAULT_MODEL, args.models_dir or DEFAULT_MODELS_DIR,
                      device=args.device, max_side=args.max_side, precision=args.precision)


def _cmd_encode(args) -> int:
    from shared.images import load_image

    codec = _load_codec(args)
    img = load_image(args.image, max_side=args.max_side)
    quality = 0.5 if args.quality is None and args.max_bytes is None else args.quality
    enc = codec.encode(img.rgb, quality=quality, max_bytes=args.max_bytes)
    out = args.output or args.image.with_suffix(".lw")
    out.write_bytes(enc.data)
    original = args.image.stat().st_size
    print(f"{out}: {enc.nbytes} bytes, {enc.bpp:.3f} bpp, quality {enc.quality:.4f}, "
          f"{img.width}x{img.height}, {original / enc.nbytes:.1f}x smaller than {args.image.name}")
    if enc.stream.coded_size is not None:  # shared/resolution.py
        h, w = enc.stream.coded_size
        print(f"coded at {w}x{h} to fit the budget (format version {enc.stream.version}); "
              f"decodes to {img.width}x{img.height}")
    if enc.noise is not None:  # a denoising model (shared/clean_first.py)
        print(f"noise estimate {enc.noise:.1f} grey levels (rms); coded "
              + ("the model's clean reconstruction" if enc.cleaned else "the image as uploaded"))
    return 0


def _cmd_decode(args) -> int:
    from shared.images import encode_png

    from shared import bitstream

    data = args.stream.read_bytes()
    if args.model is None:  # the stream names the model that made it (e.g. lw-vr-denoise) ...
        stream = bitstream.loads(data)
        if stream.model:
            args.model = stream.model
        else:  # ... or, versions 6 and 7, its weights do
            from shared.checkpoint import DEFAULT_MODELS_DIR, find_model_by_weights

            args.model = str(find_model_by_weights(stream.weights, args.models_dir or DEFAULT_MODELS_DIR))
    codec = _load_codec(args)
    rgb = codec.decode(data)
    out = args.output or args.stream.with_suffix(".png")
    out.write_bytes(encode_png(rgb))
    print(f"{out}: {rgb.shape[1]}x{rgb.shape[0]}")
    return 0


def _rate_curve(model: Path, images_dir: Path):
    """The exported ``model``'s rate curve (shared/rate_control.py) over the photos of ``images_dir``;
    None for a model whose sizes do not grow with quality."""
    from shared.codec import Codec
    from shared.images import load_image
    from shared.rate_control import RateCurve

    files = sorted(f for f in Path(images_dir).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"latentwire export: no .png/.jpg photos in {images_dir} to measure the rate curve on")
    codec = Codec.load(model)
    pictures = [load_image(f.read_bytes()).rgb for f in files]
    return RateCurve.measure(lambda q: [codec.encode(rgb, quality=q).bpp for rgb in pictures])


def _cmd_export(args) -> int:
    from shared.checkpoint import DEFAULT_MODELS_DIR, export_model, write_metadata
    from shared.codec import DEFAULT_MODEL
    from shared.tools import SAMPLES

    name = args.name or DEFAULT_MODEL
    models_dir = args.models_dir or DEFAULT_MODELS_DIR
    path = export_model(args.checkpoint, name, models_dir, half_synthesis=args.half_synthesis,
                        scale_levels=args.scale_levels, synthesis_from=args.synthesis_from,
                        half_analysis=args.half_analysis)
    curve = _rate_curve(path, args.curve_images or SAMPLES)
    write_metadata(path, rate_curve=None if curve is None else curve.to_meta())
    if args.replace:
        for old in models_dir.glob(f"{name}-*.pt"):
            if old != path and len(old.stem) == len(name) + 9:
                old.unlink()
                print(f"removed {old}")
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


# Subcommands defined beside the code they run: (module, function adding the parser).
_PLUGINS = (
    ("shared.tools.evaluate", "add_parser"),     # latentwire eval
    ("shared.tools.entropy_training", "add_parser"),  # latentwire train-entropy
    ("shared.tools.benchmark", "add_parser"),    # latentwire bench
    ("receiver.cli", "add_parser"),        # latentwire receiver
    ("sender.cli", "add_parser"),          # latentwire sender
    ("shared.tools.demo", "add_parser"),         # latentwire demo
    ("shared.tools.cluster", "add_parser"),      # latentwire cluster
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="latentwire", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_codec_tools(sub)
    _add_train(sub)
    for module, func in _PLUGINS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        getattr(mod, func)(sub)
    _plain_text(parser)
    return parser


def _plain_text(parser: argparse.ArgumentParser) -> None:
    """--help as plain text: descriptions taken from docstrings lose their ``literal`` marks."""
    parser.description = parser.description and parser.description.replace("``", "")
    for action in parser._actions:
        if isinstance(action.help, str):
            action.help = action.help.replace("``", "")
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                choice.help = choice.help and choice.help.replace("``", "")
            for sub in action.choices.values():
                _plain_text(sub)


def main(argv: list[str] | None = None) -> int:
    from shared.errors import LatentwireError

    # CompressAI imports torch_geometric, whose import calls the deprecated torch.jit.script: a
    # warning on every command that tells a user nothing they can act on.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LatentwireError as exc:
        print(f"latentwire {args.command}: {exc.code}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
