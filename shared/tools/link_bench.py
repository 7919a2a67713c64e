"""``latentwire bench link``: images offered at a fixed rate through a thin link, quality=auto against a
fixed quality.

    latentwire bench link [--kbps 32,64,256,1024] [--rate 1] [--target-s 10] [--duration-s 60]
                          [--quality 0.5] [--images DIR] [--size 768x512] [--delay-s 0.05]
                          [--drain-s 2xtarget] [--model NAME --models-dir DIR] [--threads 2] [--no-avif]
                          [--step KBPS | --outage-s S]

For each link rate: a receiver and a sender as real processes on loopback (shared/tools/launcher.py), the
sender's POSTs going through shared/tools/link_emulator.py at that rate (and ``--delay-s`` each way);
the sender has ``LATENTWIRE_SENDER_LATENCY_TARGET_S`` = ``--target-s``. Two runs, one after the
other on the same pair: ``auto`` (uploads with quality=auto), then ``q=<quality>`` (uploads at the
fixed quality). Each offers ``--rate`` images per second for ``--duration-s`` (the images of
``--images``, default tests/data/samples, resized to ``--size``, in turn; uploads with
preview=false, so the sender spends no time on its own previews), then waits up to ``--drain-s``
for the backlog to reach the receiver.

Per link rate and run, the table gives: delivered / offered (offered = upload attempts; a refused
upload is offered and never delivered), latency upload -> stored (the client's clock when it
started the upload to the receiver's ``received_at``; same machine, same clock) at p50 and p95 and
as the p50 of the first and last third of the uploads (a growing backlog shows as last >> first),
the mean PSNR of what the receiver stored (its PNG against the offered image), the mean bytes per
image on the wire (the receiver's stream size where it stored the frame), and AVIF's PSNR at the same bytes (Pillow's AVIF, the largest quality that fits
each offered image's mean bytes) beside ours on the same images: an image whose bytes not even
AVIF's lowest quality fits is left out of both (the column says on how many images they compare;
``-`` when on none). A frame still queued at
the end counts with its age then, a lower bound: such latencies are printed with ``>``.

``--step KBPS``: in each auto run the link drops to KBPS a third of the way through the offering and
comes back two thirds of the way; a timeline follows the table, per ``TIMELINE_S`` of upload time:
the link's rate then, the uploads' mean budget and stream bytes (what the receiver got: a frame
re-planned while queued, sender/replan.py, counts at its new size), how many were re-planned, and
their p50 latency.

``--outage-s S``: in each auto run the link stalls (accepts nothing, moves nothing: a cable pulled)
for S seconds from a third of the way through the offering; the same timeline follows, with the
link's rate 0 while it is down, and a line on what the outage cost: frames lost (accepted and
never stored), frames superseded, and when the last frame uploaded during the outage was stored.
"""

from __future__ import annotations

import io
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from shared.tools import SAMPLES

UPLOAD_WORKERS = 8  # uploads in flight at once: the offer keeps its rate while the sender encodes
TIMELINE_S = 5.0  # width of a --step timeline's windows


@dataclass
class Offer:
    at: float  # UNIX s when the upload started
    source: int  # index of the offered image
    id: str | None = None  # the sender's frame id; None: the upload was refused
    nbytes: int = 0
    budget: int | None = None  # quality=auto's byte budget for it
    replanned_from: int | None = None  # coded again while queued (sender/replan.py): the bytes it had


@dataclass
class Row:
    kbps: float
    mode: str  # "auto" | "q=0.50"
    offered: int
    delivered: int
    latencies_s: list[tuple[float, bool]] = field(default_factory=list)  # (seconds, lower bound only)
    psnr_db: float | None = None
    bytes_per_image: float | None = None
    avif_psnr_db: float | None = None  # mean over the offered images AVIF fits at our mean bytes
    ours_where_avif_db: float | None = None  # ours over the same images (each image's mean first)
    avif_images: tuple[int, int] = (0, 0)  # (images AVIF fits, images offered and accepted)
    link_kbps: list[tuple[float, float]] = field(default_factory=list)  # --step/--outage-s: (UNIX s, kbit/s from then on)
    offers: list[Offer] = field(default_factory=list)
    stored_latency: dict[str, float] = field(default_factory=dict)  # frame id -> upload -> stored, s
    stored_at: dict[str, float] = field(default_factory=dict)  # frame id -> the receiver's received_at

    def pct(self, p: float, part: slice = slice(None)) -> tuple[float, bool] | None:
        values = sorted(self.latencies_s[part])
        if not values:
            return None
        return values[min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))]


def parse_size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def load_images(images_dir: Path, size: tuple[int, int]) -> list:
    """Each image of ``images_dir`` as (H, W, 3) uint8 at ``size`` (width, height), landscape."""
    import numpy as np
    from PIL import Image

    from shared.images import load_image

    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise ValueError(f"no .png or .jpg images in {images_dir}")
    out = []
    for f in files:
        rgb = load_image(f).rgb
        if rgb.shape[1] < rgb.shape[0]:
            rgb = rgb.transpose(1, 0, 2)
        out.append(np.array(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.Resampling.BICUBIC)))
    return out


def run_link_bench(kbps_list: list[float], rate_per_s: float, target_s: float, duration_s: float,
                   quality: float, images: list, drain_s: float, delay_s: float = 0.05,
                   model: str | None = None, models_dir: Path | None = None, threads: int = 2,
                   avif: bool = True, step_kbps: float | None = None, outage_s: float | None = None) -> list[Row]:
    from shared.tools.launcher import ServicePair, free_port
    from shared.tools.link_emulator import LinkEmulator

    pngs = [_png(rgb) for rgb in images]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kbps in kbps_list:
            receiver_port = free_port()
            link = LinkEmulator("127.0.0.1", receiver_port, kbps=kbps, delay_s=delay_s)
            with link.running():
                pair = ServicePair(work_dir=Path(tmp) / f"{kbps:g}kbps", secret=secrets.token_hex(32), model=model,
                                   models_dir=models_dir, receiver_port=receiver_port, receiver_url=link.url,
                                   extra_env={"LATENTWIRE_SENDER_LATENCY_TARGET_S": str(target_s),
                                              "OMP_NUM_THREADS": str(threads)})
                with pair:
                    for mode, params in (("auto", {"quality": "auto"}), (f"q={quality:.2f}", {"quality": quality})):
                        steps = [(time.time(), kbps)]
                        timers = []
                        if step_kbps is not None and mode == "auto":
                            timers = [threading.Timer(duration_s * k / 3, _set_rate, (link, steps, rate))
                                      for k, rate in ((1, step_kbps), (2, kbps))]
                        if outage_s is not None and mode == "auto":
                            link.outage(outage_s, start_in_s=duration_s / 3)
                            timers = [threading.Timer(duration_s / 3, _mark, (steps, 0.0)),
                                      threading.Timer(duration_s / 3 + outage_s, _mark, (steps, kbps))]
                        for timer in timers:
                            timer.start()
                        offers = _offer(pair.sender.url, pngs, params, rate_per_s, duration_s)
                        for timer in timers:
                            timer.join()
                        _drain(pair.sender.url, drain_s)
                        row = _row(kbps, mode, offers, pair.receiver.url, images, avif)
                        if timers:
                            row.link_kbps, row.offers = steps, offers
                        rows.append(row)
    return rows


def _set_rate(link, steps: list[tuple[float, float]], kbps: float) -> None:
    link.kbps = kbps
    _mark(steps, kbps)


def _mark(steps: list[tuple[float, float]], kbps: float) -> None:
    steps.append((time.time(), kbps))


def _png(rgb) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def _offer(sender_url: str, pngs: list[bytes], params: dict, rate_per_s: float, duration_s: float) -> list[Offer]:
    import httpx

    offers = [Offer(at=0.0, source=i % len(pngs)) for i in range(max(1, round(rate_per_s * duration_s)))]
    local = threading.local()

    def upload(offer: Offer) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=sender_url, timeout=300)
        offer.at = time.time()
        try:
            r = local.client.post("/v1/images", params={**params, "preview": "false"},
                                  content=pngs[offer.source], headers={"content-type": "image/png"})
        except httpx.HTTPError:
            return  # refused in transport: offered, never delivered
        if r.status_code == 202:
            image = r.json()["images"][0]
            offer.id, offer.nbytes = image["id"], image["bytes"]
            offer.budget = (image.get("budget") or {}).get("bytes")

    start = time.monotonic()
    with ThreadPoolExecutor(UPLOAD_WORKERS) as pool:
        for i, offer in enumerate(offers):
            time.sleep(max(0.0, start + i / rate_per_s - time.monotonic()))
            pool.submit(upload, offer)
    return offers


def _drain(sender_url: str, drain_s: float) -> None:
    import httpx

    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        if httpx.get(sender_url + "/v1/link", timeout=30).json()["queued_frames"] == 0:
            return
        time.sleep(0.2)


def _row(kbps: float, mode: str, offers: list[Offer], receiver_url: str, images: list, avif: bool) -> Row:
    import httpx

    from shared.images import load_image, psnr

    now = time.time()
    accepted = [o for o in offers if o.id is not None]
    received = _received(receiver_url, {o.id for o in accepted})
    stored = {id_: at for id_, (at, _) in received.items()}
    row = Row(kbps=kbps, mode=mode, offered=len(offers), delivered=len(stored))
    # What crossed the link: the receiver's stream size (a re-plan may have coded a queued frame
    # again, smaller, after its upload was answered).
    for o in accepted:
        if o.id in received and received[o.id][1] != o.nbytes:
            o.replanned_from, o.nbytes = o.nbytes, received[o.id][1]
    row.stored_at = stored
    row.latencies_s = [(stored[o.id] - o.at, False) if o.id in stored else (now - o.at, True) for o in accepted]
    row.stored_latency = {o.id: stored[o.id] - o.at for o in accepted if o.id in stored}
    bytes_by_source: dict[int, list[int]] = {}
    psnr_by_source: dict[int, list[float]] = {}
    with httpx.Client(base_url=receiver_url, timeout=60) as client:
        for o in accepted:
            bytes_by_source.setdefault(o.source, []).append(o.nbytes)
            if o.id in stored:
                shown = load_image(client.get(f"/v1/images/{o.id}.png").content).rgb
                value = psnr(images[o.source], shown)
                if value != float("inf"):
                    psnr_by_source.setdefault(o.source, []).append(value)
    finite = [p for values in psnr_by_source.values() for p in values]
    row.psnr_db = statistics.mean(finite) if finite else None
    row.bytes_per_image = statistics.mean(o.nbytes for o in accepted) if accepted else None
    if avif and bytes_by_source:
        pairs = [(statistics.mean(psnr_by_source[s]), _avif_psnr_at(images[s], statistics.mean(b)))
                 for s, b in bytes_by_source.items() if s in psnr_by_source]
        pairs = [(ours, theirs) for ours, theirs in pairs if theirs is not None]
        row.avif_images = (len(pairs), len(bytes_by_source))
        if pairs:
            row.ours_where_avif_db = statistics.mean(ours for ours, _ in pairs)
            row.avif_psnr_db = statistics.mean(theirs for _, theirs in pairs)
    return row


def _received(receiver_url: str, ids: set[str]) -> dict[str, tuple[float, int]]:
    """The receiver's (received_at, stream_bytes) of each of ``ids`` it stored, following its pagination."""
    import httpx

    out, cursor = {}, None
    with httpx.Client(base_url=receiver_url, timeout=60) as client:
        while True:
            params = {"limit": 200} if cursor is None else {"limit": 200, "before": cursor}
            page = client.get("/v1/images", params=params).json()
            out.update({item["id"]: (item["received_at"], item["stream_bytes"]) for item in page["items"]
                        if item["id"] in ids})
            cursor = page.get("next")
            if not cursor:
                return out


def _avif_psnr_at(rgb, nbytes: float) -> float | None:
    """PSNR of Pillow's AVIF at the largest quality whose file fits ``nbytes``; None if none does."""
    from PIL import Image

    from shared.images import load_image, psnr

    def encode(q: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="AVIF", quality=q, speed=6)
        return buf.getvalue()

    lo, hi, best = 0, 100, None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = encode(mid)
        if len(data) <= nbytes:
            best, lo = data, mid + 1
        else:
            hi = mid - 1
    return None if best is None else psnr(rgb, load_image(best).rgb)


def _latency(value: tuple[float, bool] | None) -> str:
    if value is None:
        return "-"
    seconds, lower_bound = value
    return (">" if lower_bound else "") + f"{seconds:.2f}"


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def print_report(rows: list[Row], rate_per_s: float, target_s: float, duration_s: float, size: tuple[int, int],
                 delay_s: float) -> None:
    print(f"\nlatentwire bench link — {rate_per_s:g} image/s of {size[0]}x{size[1]} for {duration_s:g} s, "
          f"latency target {target_s:g} s, link delay {delay_s:g} s each way; latency = upload -> stored, "
          "'>' = still queued at the end (age then)")
    print(f"{'kbps':>6} {'mode':<7} {'delivered':>10} {'p50 s':>8} {'p95 s':>8} {'first p50':>10} {'last p50':>9} "
          f"{'PSNR dB':>8} {'bytes/img':>10}  {'same images: ours / AVIF dB':<28}")
    for r in rows:
        third = max(1, len(r.latencies_s) // 3)
        print(f"{r.kbps:>6g} {r.mode:<7} {f'{r.delivered}/{r.offered}':>10} {_latency(r.pct(50)):>8} "
              f"{_latency(r.pct(95)):>8} {_latency(r.pct(50, slice(None, third))):>10} "
              f"{_latency(r.pct(50, slice(-third, None))):>9} {_num(r.psnr_db, '.2f'):>8} "
              f"{_num(r.bytes_per_image, '.0f'):>10}  {_same_images(r):<28}")


def print_timeline(row: Row) -> None:
    """The auto run of a ``--step`` or ``--outage-s`` bench, per TIMELINE_S of upload time."""
    t0, (down_at, low), (up_at, _) = row.link_kbps[0][0], row.link_kbps[1], row.link_kbps[-1]
    what = "down" if low == 0 else f"stepping to {low:g} kbit/s"
    print(f"\n{row.kbps:g} kbit/s, auto, the link {what} at {down_at - t0:.1f} s and back at {up_at - t0:.1f} s "
          "(upload times):")
    print(f"{'from s':>7} {'link kbps':>10} {'uploads':>8} {'budget B':>9} {'stream B':>9} {'re-planned':>10} "
          f"{'p50 s':>7}")
    end = max(o.at for o in row.offers) - t0
    start = 0.0
    while start <= end:
        window = [o for o in row.offers if o.id is not None and start <= o.at - t0 < start + TIMELINE_S]
        rate = [k for at, k in row.link_kbps if at - t0 <= start + TIMELINE_S / 2][-1]
        budgets = [o.budget for o in window if o.budget is not None]
        waits = sorted(row.stored_latency[o.id] for o in window if o.id in row.stored_latency)
        print(f"{start:>7.0f} {rate:>10g} {len(window):>8} {_num(statistics.mean(budgets) if budgets else None, '.0f'):>9} "
              f"{_num(statistics.mean(o.nbytes for o in window) if window else None, '.0f'):>9} "
              f"{sum(o.replanned_from is not None for o in window):>10} "
              f"{_num(waits[len(waits) // 2] if waits else None, '.1f'):>7}")
        start += TIMELINE_S
    if low == 0:
        accepted = [o for o in row.offers if o.id is not None]
        lost = sum(o.id not in row.stored_at for o in accepted)
        before_up = [row.stored_at[o.id] for o in accepted if o.at < up_at and o.id in row.stored_at]
        caught_up = f"{max(before_up) - up_at:.1f} s after it came back" if before_up else "-"
        print(f"outage: {len(accepted)} frames accepted, {lost} lost (never stored); every frame uploaded "
              f"before the link came back was stored {caught_up}")


def _same_images(r: Row) -> str:
    if r.avif_psnr_db is None:
        return "-"
    return f"{r.ours_where_avif_db:.2f} / {r.avif_psnr_db:.2f} ({r.avif_images[0]} of {r.avif_images[1]})"


def command(args) -> int:
    import sys

    try:
        kbps_list = [float(k) for k in args.kbps.split(",")]
        size = parse_size(args.size)
    except ValueError:
        print("latentwire bench link: --kbps is a comma-separated list of numbers, --size WIDTHxHEIGHT",
              file=sys.stderr)
        return 2
    if args.step is not None and args.outage_s is not None:
        print("latentwire bench link: --step and --outage-s are two separate benches; give one", file=sys.stderr)
        return 2
    if (min(kbps_list) <= 0 or (args.step is not None and args.step <= 0)
            or (args.outage_s is not None and args.outage_s <= 0) or args.rate <= 0 or args.target_s <= 0 or args.duration_s <= 0 or min(size) < 16
            or not 0 <= args.quality <= 1):
        print("latentwire bench link: --kbps, --step, --outage-s, --rate, --target-s and --duration-s must be > 0, "
              "--size at least "
              "16x16, --quality in 0..1", file=sys.stderr)
        return 2
    images = load_images(args.images or SAMPLES, size)
    drain_s = 2 * args.target_s if args.drain_s is None else args.drain_s
    rows = run_link_bench(kbps_list, args.rate, args.target_s, args.duration_s, args.quality, images, drain_s,
                          args.delay_s, args.model, args.models_dir, args.threads, avif=not args.no_avif,
                          step_kbps=args.step, outage_s=args.outage_s)
    print_report(rows, args.rate, args.target_s, args.duration_s, size, args.delay_s)
    for row in rows:
        if row.offers:
            print_timeline(row)
    return 0 if any(r.delivered for r in rows) else 1


def add_arguments(p) -> None:
    p.add_argument("--kbps", default="32,64,256,1024", help="link rates to run, kbit/s, comma-separated")
    p.add_argument("--rate", type=float, default=1.0, help="images offered per second")
    p.add_argument("--target-s", type=float, default=10.0, help="LATENTWIRE_SENDER_LATENCY_TARGET_S")
    p.add_argument("--duration-s", type=float, default=60.0, help="seconds of offering, per run")
    p.add_argument("--quality", type=float, default=0.5, help="the fixed run's quality")
    p.add_argument("--images", type=Path, default=None, help="folder of images (default: tests/data/samples)")
    p.add_argument("--size", default="768x512", help="WIDTHxHEIGHT the images are resized to")
    p.add_argument("--delay-s", type=float, default=0.05, help="the emulator's one-way delay")
    p.add_argument("--drain-s", type=float, default=None,
                   help="after offering, wait this long at most for the backlog (default: 2 x --target-s)")
    p.add_argument("--model", default=None, help="model name in --models-dir (default: the shipped one)")
    p.add_argument("--models-dir", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2, help="torch threads in each process")
    p.add_argument("--no-avif", action="store_true", help="skip AVIF's PSNR at the same bytes")
    p.add_argument("--step", type=float, default=None,
                   help="kbit/s the link drops to for the middle third of each auto run (a rate step)")
    p.add_argument("--outage-s", type=float, default=None,
                   help="seconds the link is down from a third of the way through each auto run")
