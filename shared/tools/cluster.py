"""``latentwire cluster`` (``make cluster``): cluster mode on one machine, every part a real process.

Starts NATS with JetStream, PostgreSQL and SeaweedFS's S3 gateway from the installed packages
(shared/tools/engines.py; data under ``--work-dir``), then one sender publishing to JetStream and
``--workers`` receivers that share its consumer, keep their index in PostgreSQL and their PNGs and
codes in S3. It sends the sample images, waits until every one is stored, prints the URLs, and
keeps everything up until Ctrl-C (or exits with ``--once``). It is
the local equivalent of ``docker compose --profile cluster up``.
"""

from __future__ import annotations

import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

from shared.tools import SAMPLES


def add_parser(sub) -> None:
    p = sub.add_parser("cluster", help="run cluster mode locally: NATS, PostgreSQL, S3, a sender and receiver workers")
    p.add_argument("--work-dir", type=Path, default=Path("data/cluster"), help="engine data, outbox and logs")
    p.add_argument("--workers", type=int, default=2, help="receiver worker processes (default 2)")
    p.add_argument("--sender-port", type=int, default=8000)
    p.add_argument("--receiver-port", type=int, default=8001, help="the first worker's port; the next ones follow")
    p.add_argument("--samples", type=Path, default=SAMPLES, help="folder of images to send")
    p.add_argument("--once", action="store_true", help="exit after the samples are stored")
    p.set_defaults(func=run_cluster)


def run_cluster(args) -> int:
    import httpx

    from shared.tools.engines import NatsServer, PostgresServer, S3Server
    from shared.tools.launcher import Cluster

    if args.workers < 1:
        print("latentwire cluster: --workers must be at least 1", file=sys.stderr)
        return 2
    files = sorted(p for p in args.samples.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})
    work = args.work_dir.resolve()
    with ExitStack() as stack:
        print(f"starting NATS JetStream, PostgreSQL and SeaweedFS S3 under {work} ...", flush=True)
        engines = [NatsServer(work / "nats"), PostgresServer(work / "postgres"), S3Server(work / "s3")]
        with ThreadPoolExecutor(3) as pool:
            nats, pg, s3 = pool.map(lambda e: e.start(), engines)
        for engine in engines:
            stack.callback(engine.stop)
        spec = Cluster(work_dir=work / "services", secret=secrets.token_hex(32), broker_url=nats.url,
                       database_url=pg.url, blob_url="s3://latentwire", blob_endpoint_url=s3.endpoint,
                       s3_keys=(s3.access_key, s3.secret_key))
        sender = spec.sender("sender", args.sender_port)
        workers = [spec.receiver(f"receiver-{k + 1}", args.receiver_port + k) for k in range(args.workers)]
        for process in (sender, *workers):
            stack.callback(process.stop)
        print("starting 1 sender and %d receiver workers ..." % args.workers, flush=True)
        with ThreadPoolExecutor(1 + len(workers)) as pool:
            list(pool.map(lambda p: p.start(), (sender, *workers)))
        ids = []
        with httpx.Client(base_url=sender.url, timeout=120.0) as client:
            for path in files:
                r = client.post("/v1/images", params={"quality": 0.5},
                                files={"file": (path.name, path.read_bytes(), "image/png")})
                if r.status_code != 202:
                    print(f"{path.name}: sender answered {r.status_code} {r.text}", file=sys.stderr)
                    return 1
                ids.append(r.json()["images"][0]["id"])
        stored = _wait_stored(workers[0].url, ids, timeout_s=180)
        print(f"\n{len(stored)} of {len(ids)} sample images stored once each, in PostgreSQL + S3:")
        print(f"  sender (upload page, API)   {sender.url}/")
        for w in workers:
            print(f"  receiver worker {w.name:<10}  {w.url}/   (every worker's gallery shows every image)")
        print(f"  NATS {nats.url}   PostgreSQL {pg.url}   S3 {s3.endpoint}")
        print(f"  logs in {work / 'services' / 'logs'}")
        if len(stored) < len(ids):
            print("not every sample was stored in time: see the logs", file=sys.stderr)
            return 1
        if args.once:
            return 0
        print("\nCtrl-C stops everything.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopping ...")
    return 0


def _wait_stored(url: str, ids: list[str], timeout_s: float) -> set[str]:
    import httpx

    deadline = time.monotonic() + timeout_s
    stored: set[str] = set()
    while time.monotonic() < deadline and len(stored) < len(ids):
        try:
            items = httpx.get(f"{url}/v1/images", params={"limit": 200}, timeout=10).json()["items"]
            stored = {i["id"] for i in items} & set(ids)
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    return stored
