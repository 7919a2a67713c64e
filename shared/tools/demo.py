"""``latentwire demo``: both services on the shipped model, sample images pushed through.

Starts the receiver and the sender as processes on loopback (stores under ``--work-dir``), with a
fresh random shared secret, uploads the sample images at a spread of qualities (low quality =
fewer bytes and a blurrier picture), waits until the receiver has stored every one, prints what
crossed the wire, and keeps both services up until Ctrl-C (or exits with ``--once``).

When the denoising model is installed, one sample also goes through with Gaussian noise added
(sigma 25), once in the standard mode and once with ``mode=denoise``; the table compares the bytes
on the wire and the PSNR of what the receiver stored against the clean picture.
"""

from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

from shared.tools import SAMPLES


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run receiver + sender locally and push sample images through")
    p.add_argument("--samples", type=Path, default=SAMPLES, help="folder of images to send")
    p.add_argument("--work-dir", type=Path, default=Path("data/demo"), help="stores, outbox and logs")
    p.add_argument("--receiver-port", type=int, default=8001)
    p.add_argument("--sender-port", type=int, default=8000)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--once", action="store_true", help="exit after the samples are delivered")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import httpx

    from shared.tools.launcher import ServicePair

    files = sorted(p for p in args.samples.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    if not files:
        print(f"no sample images in {args.samples}", file=sys.stderr)
        return 2
    pair = ServicePair(work_dir=args.work_dir, secret=secrets.token_hex(32), device=args.device,
                       receiver_port=args.receiver_port, sender_port=args.sender_port)
    print(f"starting receiver on {pair.receiver.url} and sender on {pair.sender.url} "
          f"(logs in {args.work_dir / 'logs'}) ...", flush=True)
    with pair:
        qualities = [round(0.1 + 0.8 * i / max(1, len(files) - 1), 2) for i in range(len(files))]
        rows = []
        with httpx.Client(base_url=pair.sender.url, timeout=120.0) as client:
            for path, q in zip(files, qualities):
                r = client.post("/v1/images", params={"quality": q},
                                files={"file": (path.name, path.read_bytes(), "image/png")})
                if r.status_code != 202:
                    print(f"{path.name}: sender answered {r.status_code} {r.text}", file=sys.stderr)
                    return 1
                rows.append((path, r.json()["images"][0]))
            noisy = []
            if "denoise" in client.get("/v1/models").json().get("modes", []):
                noisy = _send_noisy(client, files[-1])
                rows += [(path, img) for path, img, _ in noisy]
            deadline = time.monotonic() + 120
            pending = {img["id"] for _, img in rows}
            while pending and time.monotonic() < deadline:
                for image_id in list(pending):
                    status = client.get(f"/v1/images/{image_id}").json().get("status")
                    if status == "delivered":
                        pending.discard(image_id)
                    elif status == "failed":
                        print(f"{image_id} failed: {client.get(f'/v1/images/{image_id}').text}", file=sys.stderr)
                        return 1
                time.sleep(0.2)
        print(f"\n{'image':<34} {'size':>9} {'quality':>7} {'file bytes':>10} {'wire bytes':>10} "
              f"{'bpp':>6} {'smaller':>7} {'PSNR dB vs upload':>17}")
        for path, img in rows:
            print(f"{_label(path, img):<34} {img['width']}x{img['height']:<5} {img['quality']:>7.2f} "
                  f"{img['original_bytes']:>10} {img['bytes']:>10} {img['bpp']:>6.3f} "
                  f"{img['ratio']:>6.1f}x {img['psnr']:>17.2f}")
        if noisy and not pending:
            _print_noisy(noisy, pair.receiver.url)
        if pending:
            print(f"{len(pending)} image(s) not delivered within 120 s; see {pair.receiver.log_path}", file=sys.stderr)
            return 1
        print(f"\nall {len(rows)} images delivered; only the latent codes crossed the wire.")
        print(f"  upload page (sender):      {pair.sender.url}/")
        print(f"  live gallery (receiver):   {pair.receiver.url}/")
        print(f"  API:                       {pair.receiver.url}/v1/images   docs: {pair.sender.url}/docs")
        if args.once:
            return 0
        print("\nboth services keep running; press Ctrl-C to stop.", flush=True)
        try:
            while pair.receiver.proc.poll() is None and pair.sender.proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping ...")
            return 0
        print("a service exited; see the logs in " + str(args.work_dir / "logs"), file=sys.stderr)
        return 1


NOISE_SIGMA = 25.0


def _send_noisy(client, path: Path) -> list[tuple[Path, dict, object]]:
    """The sample with Gaussian noise, sent in both modes: [(path, sender's answer, clean rgb)]."""
    import io

    from PIL import Image

    from shared.images import load_image
    from shared.tools.evaluate import add_noise

    clean = load_image(path).rgb
    buf = io.BytesIO()
    Image.fromarray(add_noise(clean, NOISE_SIGMA, path.name)).save(buf, format="PNG")
    out = []
    for mode in ("standard", "denoise"):
        r = client.post("/v1/images", params={"quality": 0.5, "mode": mode},
                        files={"file": (f"noisy-{path.name}", buf.getvalue(), "image/png")})
        r.raise_for_status()
        out.append((path, r.json()["images"][0], clean))
    return out


def _print_noisy(noisy: list, receiver_url: str) -> None:
    import httpx

    from shared.images import load_image, psnr

    print(f"\nnoisy photo (sigma {NOISE_SIGMA:g}), quality 0.5, PSNR of the receiver's image against the clean one:")
    for path, img, clean in noisy:
        png = httpx.get(f"{receiver_url}/v1/images/{img['id']}.png", timeout=30).content
        stored = load_image(png).rgb
        print(f"  mode {img['mode']:<9} {img['bytes']:>7} bytes on the wire, {psnr(clean, stored):6.2f} dB vs clean")


def _label(path: Path, img: dict) -> str:
    return f"noisy {path.name} ({img['mode']})" if img["filename"].startswith("noisy-") else path.name
