"""``latentwire bench e2e``: images through real sender and receiver processes, against codec-only.

    latentwire bench e2e [--images DIR] [-n 60] [-c 4] [--quality 0.5] [--no-preview]

Starts both services on loopback (shipped model, CPU), uploads N images at concurrency C, and
timestamps each image's arrival from the receiver's SSE stream. Prints images/s, p50/p99 latency
upload -> stored, bytes on the wire per image against the original file and against JPEG and AVIF
at the same PSNR, and, in the same run, the codec alone (encode + decode in one process).
By default uploads ask for the sender's preview (its own decode for the PSNR, the JPEG comparison,
preview images): work the codec-only figure does not do. ``--no-preview`` measures the lean path
(``preview=false``), where the services do the codec's work plus their own. With previews on, the
report adds the codec alone doing the pipeline's work (one encode, two decodes) and the services'
cost against that.
"""

from __future__ import annotations

import io
import json
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_e2e(images_dir: Path, n: int, concurrency: int, quality: float, threads: int, preview: bool = True) -> dict:
    import httpx
    import torch

    from shared.codec import Codec
    from shared.images import load_image, psnr
    from shared.tools.launcher import ServicePair

    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    uploads = [files[i % len(files)].read_bytes() for i in range(n)]

    # Codec alone, same images, same thread count: the ceiling the services are measured against.
    torch.set_num_threads(threads)
    codec = Codec.load()
    rgbs = [load_image(u).rgb for u in uploads[: len(files)]]
    codec.decode(codec.encode(rgbs[0], quality=quality).data)  # warm-up
    t_enc = t_dec = 0.0
    streams = []
    for i in range(n):
        t0 = time.perf_counter()
        enc = codec.encode(rgbs[i % len(rgbs)], quality=quality)
        t1 = time.perf_counter()
        codec.decode(enc.data)
        t_enc, t_dec = t_enc + t1 - t0, t_dec + time.perf_counter() - t1
        streams.append(enc)
    codec_ips = n / (t_enc + t_dec)
    # With previews the pipeline decodes every stream twice (sender for its PSNR, receiver to
    # store): the codec alone doing that same work is the fair ceiling for the services' own cost.
    same_work_ips = n / (t_enc + (2 if preview else 1) * t_dec)

    arrivals: dict[str, float] = {}
    sent: dict[str, float] = {}
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        pair = ServicePair(work_dir=Path(tmp), secret=secrets.token_hex(32),
                           extra_env={"OMP_NUM_THREADS": str(threads)})
        with pair:
            stop = threading.Event()
            ready = threading.Event()

            def listen() -> None:
                try:
                    with httpx.Client(timeout=None) as c, c.stream("GET", pair.receiver.url + "/v1/events") as r:
                        ready.set()
                        for line in r.iter_lines():
                            if line.startswith("data:"):
                                try:
                                    arrivals.setdefault(json.loads(line[5:])["id"], time.time())
                                except (ValueError, KeyError):
                                    pass
                            if stop.is_set():
                                return
                except httpx.HTTPError:
                    if not stop.is_set():
                        raise  # the stream broke mid-run: arrivals would be missing

            listener = threading.Thread(target=listen, daemon=True)
            listener.start()
            ready.wait(10)

            def upload(data: bytes) -> None:
                with httpx.Client(base_url=pair.sender.url, timeout=300) as c:
                    t = time.time()
                    params = {"quality": quality, "preview": str(preview).lower()}
                    r = c.post("/v1/images", params=params, content=data,
                               headers={"content-type": "image/png"})
                    r.raise_for_status()
                    img = r.json()["images"][0]
                    sent[img["id"]] = t
                    results.append(img)

            start = time.time()
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(upload, uploads))
            deadline = time.time() + 300
            while len(arrivals.keys() & sent.keys()) < n and time.time() < deadline:
                time.sleep(0.05)
            stop.set()
            end = max(arrivals[i] for i in sent if i in arrivals)

    latencies = sorted((arrivals[i] - sent[i]) * 1000 for i in sent if i in arrivals)
    wire = statistics.mean(r["bytes"] for r in results)
    original = statistics.mean(len(u) for u in uploads)
    jpeg, avif, psnrs = [], [], []
    for rgb, enc in zip(rgbs, streams):
        target = psnr(rgb, codec.decode(enc.data))
        psnrs.append(target)
        jpeg.append(_bytes_at_psnr(rgb, target, "JPEG"))
        avif.append(_bytes_at_psnr(rgb, target, "AVIF"))
    e2e_ips = len(latencies) / (end - start)
    return {
        "images": n, "delivered": len(latencies), "concurrency": concurrency, "quality": quality, "preview": preview,
        "e2e_images_per_s": e2e_ips, "codec_images_per_s": codec_ips,
        "services_cost": 1 - e2e_ips / codec_ips,
        "same_work_images_per_s": same_work_ips, "services_cost_same_work": 1 - e2e_ips / same_work_ips,
        "p50_ms": _pct(latencies, 50), "p99_ms": _pct(latencies, 99),
        "wire_bytes": wire, "original_bytes": original,
        "jpeg_bytes_same_psnr": statistics.mean(jpeg), "avif_bytes_same_psnr": statistics.mean(avif),
        "mean_psnr": statistics.mean(psnrs),  # the codec's decode: the receiver's pixels exactly
    }


def _pct(values: list[float], p: float) -> float:
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def _bytes_at_psnr(rgb, target_db: float, fmt: str) -> int:
    """Smallest file of ``fmt`` (Pillow) whose PSNR reaches ``target_db`` (bisection on quality)."""
    from PIL import Image

    from shared.images import load_image, psnr

    def encode(q: int) -> tuple[int, float]:
        buf = io.BytesIO()
        kwargs = {"optimize": True} if fmt == "JPEG" else {"speed": 6}
        Image.fromarray(rgb).save(buf, format=fmt, quality=q, **kwargs)
        return buf.tell(), psnr(rgb, load_image(buf.getvalue()).rgb)

    lo, hi = 1, 100
    best = encode(100)[0]
    while lo <= hi:
        mid = (lo + hi) // 2
        size, p = encode(mid)
        if p >= target_db:
            best, hi = size, mid - 1
        else:
            lo = mid + 1
    return best


def print_report(r: dict) -> None:
    print(f"\nlatentwire bench e2e — {r['images']} images, concurrency {r['concurrency']}, quality {r['quality']}, "
          f"sender preview {'on' if r['preview'] else 'off (preview=false)'}")
    print(f"{'':<40}{'value':>10}")
    rows = [
        ("delivered", f"{r['delivered']}/{r['images']}"),
        ("e2e throughput (images/s)", f"{r['e2e_images_per_s']:.2f}"),
        ("codec-only encode+decode (images/s)", f"{r['codec_images_per_s']:.2f}"),
        ("services cost vs codec-only", f"{r['services_cost'] * 100:.0f} %"),
    ]
    if r["preview"]:
        rows += [
            ("codec-only encode+2 decodes (images/s)", f"{r['same_work_images_per_s']:.2f}"),
            ("services cost vs that same codec work", f"{r['services_cost_same_work'] * 100:.0f} %"),
        ]
    rows += [
        ("latency upload->stored p50 (ms)", f"{r['p50_ms']:.0f}"),
        ("latency upload->stored p99 (ms)", f"{r['p99_ms']:.0f}"),
        ("mean PSNR (dB)", f"{r['mean_psnr']:.2f}"),
        ("bytes on the wire / image", f"{r['wire_bytes']:.0f}"),
        ("original file / image", f"{r['original_bytes']:.0f}"),
        ("JPEG at same PSNR / image", f"{r['jpeg_bytes_same_psnr']:.0f}"),
        ("AVIF at same PSNR / image", f"{r['avif_bytes_same_psnr']:.0f}"),
    ]
    for k, v in rows:
        print(f"{k:<40}{v:>10}")
