"""``latentwire bench soak``: both services as real processes under steady load, bounded in time
and in requests, watching latency, errors, delivery and memory.

    latentwire bench soak [--duration-s 600] [--max-requests 100000] [-c 2] [--images DIR]
                          [--crop 128] [--quality 0.5] [--threads 1] [--sample-s 5] [--drain-s 300]

Starts a receiver and a sender on loopback ports (``shared.tools.launcher.ServicePair``, CPU), then C
client threads each post one image at a time (round-robin over the images, or over their
``--crop`` x ``--crop`` tiles) until the duration or the request budget is spent; a client told
503 + Retry-After waits that long, as a well-behaved one would. A sampler reads both processes'
resident memory (VmRSS in /proc/<pid>/status) every ``--sample-s`` seconds. When the load stops,
the sender gets up to ``--drain-s`` to deliver what it accepted, and every accepted id is looked
up in the receiver's store. The table gives requests/s, p50/p99 upload latency, answers by
status, accepted vs stored, and RSS per process: at start, after warm-up (20 % into the load),
peak, and at the end of the load, with a verdict: "flat" unless the end is more than 10 % above
the warm-up figure. The exit status is 0 when every accepted image was stored once, no answer was
a 5xx other than 503 backpressure, and both verdicts are flat.
"""

from __future__ import annotations

import math
import secrets
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shared.tools import SAMPLES

WARMUP_FRACTION = 0.2  # memory before this point of the load is allocator and cache warm-up
GROWTH_LIMIT = 0.10  # end RSS more than 10 % above the warm-up RSS counts as growth


# ---- pure parts: statistics and the memory verdict ------------------------------------------
def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100) of ``values``; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class RssSample:
    t_s: float  # seconds since the load started
    kb: dict[str, int]  # process name -> VmRSS in KiB


@dataclass(frozen=True)
class MemoryVerdict:
    start_kb: int
    warm_kb: int  # the first sample at or after WARMUP_FRACTION of the load
    peak_kb: int
    end_kb: int  # the last sample of the load
    growth: float  # end / warm - 1

    @property
    def flat(self) -> bool:
        return self.growth <= GROWTH_LIMIT


def memory_verdict(samples: list[RssSample], name: str, load_s: float) -> MemoryVerdict:
    """RSS of process ``name`` over the load (samples in time order, taken while it ran)."""
    series = [(s.t_s, s.kb[name]) for s in samples if name in s.kb and s.t_s <= load_s]
    if not series:
        raise ValueError(f"no RSS samples of the {name} during the load")
    warm = next((kb for t, kb in series if t >= WARMUP_FRACTION * load_s), series[-1][1])
    end = series[-1][1]
    return MemoryVerdict(start_kb=series[0][1], warm_kb=warm, peak_kb=max(kb for _, kb in series),
                         end_kb=end, growth=end / warm - 1)


def read_rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"/proc/{pid}/status has no VmRSS line (a zombie process?)")


@dataclass
class SoakReport:
    duration_s: float  # the load phase, from the first request to the last answer
    concurrency: int
    image_desc: str
    quality: float
    latencies_ms: list[float]
    statuses: Counter  # "202", "503", ..., or an httpx error name -> count
    accepted: int  # images answered 202
    stored: int  # of those, found in the receiver's store
    unexpected_stored: int  # stored ids nobody was told about (must be 0)
    outbox: dict  # the sender's counts per status after the drain
    drain_s: float
    memory: dict[str, MemoryVerdict]

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        """5xx answers other than 503 (backpressure, which the client is told to retry)."""
        return sum(n for s, n in self.statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")

    @property
    def transport_errors(self) -> int:
        """Requests that got no HTTP answer at all (refused, reset, timed out)."""
        return sum(n for s, n in self.statuses.items() if not s.isdigit())

    @property
    def ok(self) -> bool:
        return (self.stored == self.accepted and self.unexpected_stored == 0 and self.server_errors == 0
                and self.transport_errors == 0 and all(m.flat for m in self.memory.values()))


def format_report(r: SoakReport) -> str:
    mb = 1024.0
    answers = ", ".join(f"{status}: {n}" for status, n in sorted(r.statuses.items())) or "none"
    p50, p99 = percentile(r.latencies_ms, 50), percentile(r.latencies_ms, 99)
    unexpected = f" (+{r.unexpected_stored} unexpected)" if r.unexpected_stored else ""
    rows = [
        ("load duration (s)", f"{r.duration_s:.0f}"),
        ("requests", f"{r.requests}"),
        ("requests/s", f"{r.requests / r.duration_s:.2f}" if r.duration_s > 0 else "n/a"),
        ("upload -> 202 latency p50 / p99 (ms)", f"{p50:.0f} / {p99:.0f}"),
        ("answers by status", answers),
        ("5xx other than 503 / no answer", f"{r.server_errors} / {r.transport_errors}"),
        ("accepted (202) / stored in receiver", f"{r.accepted} / {r.stored}{unexpected}"),
        ("sender outbox after drain", ", ".join(f"{k} {v}" for k, v in r.outbox.items()) + f" ({r.drain_s:.0f} s)"),
    ]
    for name, m in r.memory.items():
        rows.append((f"{name} RSS MB start / warm / peak / end",
                     f"{m.start_kb / mb:.0f} / {m.warm_kb / mb:.0f} / {m.peak_kb / mb:.0f} / {m.end_kb / mb:.0f}"))
        rows.append((f"{name} RSS end vs warm ({WARMUP_FRACTION:.0%} in)",
                     f"{m.growth:+.1%}: {'flat' if m.flat else f'GROWS (over {GROWTH_LIMIT:.0%})'}"))
    rows.append(("verdict", "ok" if r.ok else "FAILED"))
    width = max(len(k) for k, _ in rows) + 2
    head = f"latentwire bench soak — concurrency {r.concurrency}, {r.image_desc}, quality {r.quality}"
    return "\n".join([head, *(f"{k:<{width}}{v}" for k, v in rows)])


# ---- the run -----------------------------------------------------------------------------------
def tiles(data: bytes, side: int) -> list[bytes]:
    """``data`` (an image file) cut into non-overlapping ``side`` x ``side`` PNG tiles; the whole
    image as PNG when ``side`` is 0 or larger than it."""
    import numpy as np

    from shared.images import encode_png, load_image

    rgb = load_image(data).rgb
    h, w = rgb.shape[:2]
    if side <= 0 or side > min(h, w):
        return [encode_png(rgb)]
    return [encode_png(np.ascontiguousarray(rgb[y:y + side, x:x + side]))
            for y in range(0, h - side + 1, side) for x in range(0, w - side + 1, side)]


class _Sampler(threading.Thread):
    def __init__(self, pids: dict[str, int], interval_s: float, t0: float) -> None:
        super().__init__(daemon=True, name="soak-rss")
        self.pids, self.interval_s, self.t0 = pids, interval_s, t0
        self.samples: list[RssSample] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            kb = {}
            for name, pid in self.pids.items():
                try:
                    kb[name] = read_rss_kb(pid)
                except (OSError, ValueError):
                    pass  # the process is gone: the run reports it through its answers
            self.samples.append(RssSample(time.monotonic() - self.t0, kb))
            if self.stop.wait(self.interval_s):
                return


@dataclass
class _Load:
    """Client threads sharing one request budget and one deadline."""

    url: str
    uploads: list[bytes]
    quality: float
    deadline: float  # time.monotonic()
    max_requests: int
    timeout_s: float = 300.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    accepted_ids: list[str] = field(default_factory=list)
    _issued: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _next(self) -> int | None:
        with self._lock:
            if self._issued >= self.max_requests or time.monotonic() >= self.deadline:
                return None
            self._issued += 1
            return self._issued - 1

    def client(self) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=self.timeout_s) as c:
            while (i := self._next()) is not None:
                data = self.uploads[i % len(self.uploads)]
                t0 = time.perf_counter()
                retry_after = None
                try:
                    r = c.post("/v1/images", params={"quality": self.quality}, content=data,
                               headers={"content-type": "image/png"})
                    status = str(r.status_code)
                    ids = [im["id"] for im in r.json()["images"]] if r.status_code == 202 else []
                    retry_after = r.headers.get("retry-after")
                except httpx.HTTPError as exc:
                    status, ids = type(exc).__name__, []
                latency_ms = (time.perf_counter() - t0) * 1000
                with self._lock:
                    self.statuses[status] += 1
                    self.accepted_ids += ids
                    if ids:
                        self.latencies_ms.append(latency_ms)
                if retry_after and retry_after.isdigit():
                    time.sleep(min(float(retry_after), max(0.0, self.deadline - time.monotonic())))


def run_soak(images_dir: Path, duration_s: float, max_requests: int, concurrency: int, crop: int,
             quality: float, threads: int, sample_s: float, drain_s: float, model: str | None = None,
             models_dir: Path | None = None) -> SoakReport:
    import httpx

    from shared.tools.launcher import ServicePair

    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if not files:
        raise ValueError(f"no .png/.jpg images in {images_dir}")
    uploads = [t for f in files for t in tiles(f.read_bytes(), crop)]
    image_desc = (f"{len(uploads)} {crop}x{crop} tiles of {len(files)} images in {images_dir}" if crop
                  else f"{len(files)} images in {images_dir}")

    with tempfile.TemporaryDirectory(prefix="latentwire-soak-") as tmp:
        pair = ServicePair(work_dir=Path(tmp), secret=secrets.token_hex(32), model=model, models_dir=models_dir,
                           extra_env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        with pair:
            t0 = time.monotonic()
            sampler = _Sampler({"sender": pair.sender.proc.pid, "receiver": pair.receiver.proc.pid},
                               sample_s, t0)
            sampler.start()
            load = _Load(pair.sender.url, uploads, quality, t0 + duration_s, max_requests)
            clients = [threading.Thread(target=load.client, name=f"soak-client-{k}") for k in range(concurrency)]
            for c in clients:
                c.start()
            for c in clients:
                c.join()
            load_s = time.monotonic() - t0
            sampler.stop.set()
            sampler.join()

            drain_start = time.monotonic()
            with httpx.Client(timeout=60) as c:
                while True:
                    outbox = c.get(pair.sender.url + "/v1/images", params={"limit": 1}).json()["counts"]
                    if outbox.get("queued", 0) == 0 or time.monotonic() - drain_start > drain_s:
                        break
                    time.sleep(1.0)
                drained_s = time.monotonic() - drain_start
                stored = _stored_ids(c, pair.receiver.url)

    accepted = set(load.accepted_ids)
    return SoakReport(
        duration_s=load_s, concurrency=concurrency, image_desc=image_desc, quality=quality,
        latencies_ms=load.latencies_ms, statuses=load.statuses, accepted=len(accepted),
        stored=len(accepted & stored), unexpected_stored=len(stored - accepted), outbox=outbox,
        drain_s=drained_s, memory={name: memory_verdict(sampler.samples, name, load_s)
                                   for name in ("sender", "receiver")},
    )


def _stored_ids(client, receiver_url: str) -> set[str]:
    """Every id in the receiver's store, following its pagination."""
    ids, cursor = set(), None
    while True:
        params = {"limit": 200} | ({"before": cursor} if cursor is not None else {})
        page = client.get(receiver_url + "/v1/images", params=params).json()
        ids |= {item["id"] for item in page["items"]}
        cursor = page.get("next")
        if not cursor:
            return ids


def add_arguments(p) -> None:
    p.add_argument("--duration-s", type=float, default=600.0, help="length of the load phase")
    p.add_argument("--max-requests", type=int, default=100_000, help="upload budget (the run stops at either)")
    p.add_argument("-c", "--concurrency", type=int, default=2, help="client threads, one upload in flight each")
    p.add_argument("--images", type=Path, default=SAMPLES, help="folder of images (default: tests/data/samples)")
    p.add_argument("--crop", type=int, default=0, help="upload NxN tiles cut from each image (0: whole images)")
    p.add_argument("--quality", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each service process")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--drain-s", type=float, default=300.0, help="longest wait for the sender's outbox to empty")
    p.add_argument("--model", default=None, help="model name in --models-dir (default: the shipped model)")
    p.add_argument("--models-dir", type=Path, default=None)


def command(args) -> int:
    report = run_soak(args.images, args.duration_s, args.max_requests, args.concurrency, args.crop, args.quality,
                      args.threads, args.sample_s, args.drain_s, args.model, args.models_dir)
    print(format_report(report), flush=True)
    return 0 if report.ok else 1
