"""``latentwire receiver``: run the receiver service (flags override LATENTWIRE_RECEIVER_* env vars).

    LATENTWIRE_SECRET=... latentwire receiver --port 8001 --store-dir data/receiver
    latentwire receiver --insecure-demo          (local demo without a real secret; loud warning)

The web stack is imported inside the command, so ``latentwire --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("receiver", help="run the receiver service (decode, store, live gallery)",
                              description=__doc__.split("\n")[0])
    p.add_argument("--host", help="bind address (LATENTWIRE_RECEIVER_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="bind port (LATENTWIRE_RECEIVER_PORT, default 8001)")
    p.add_argument("--store-dir", type=Path,
                   help="images/ and index.sqlite3 live here (LATENTWIRE_RECEIVER_STORE_DIR, default ./data/receiver)")
    p.add_argument("--model", help="model name in --models-dir or a .pt path (LATENTWIRE_RECEIVER_MODEL)")
    p.add_argument("--denoise-model", help="also decode frames of this model "
                   "(LATENTWIRE_RECEIVER_DENOISE_MODEL, default lw-vr-denoise; '' = off)")
    p.add_argument("--models-dir", type=Path, help="exported models (LATENTWIRE_RECEIVER_MODELS_DIR, default models/)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where the synthesis transform runs (LATENTWIRE_RECEIVER_DEVICE, default auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="synthesis arithmetic (LATENTWIRE_RECEIVER_PRECISION, default auto: bf16 on CPUs with native bf16)")
    p.add_argument("--broker-url", help="cluster mode: be one worker of the NATS JetStream consumer at "
                   "nats://host:4222 (LATENTWIRE_RECEIVER_BROKER_URL)")
    p.add_argument("--database-url", help="cluster mode: the shared image index, postgresql://user@host/db "
                   "(LATENTWIRE_RECEIVER_DATABASE_URL; with --blob-url)")
    p.add_argument("--blob-url", help="cluster mode: the bucket for PNGs and received codes, s3://bucket[/prefix] "
                   "(LATENTWIRE_RECEIVER_BLOB_URL)")
    p.add_argument("--blob-endpoint-url", help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 "
                   "(LATENTWIRE_RECEIVER_BLOB_ENDPOINT_URL; default: AWS)")
    p.add_argument("--insecure-demo", action="store_true", default=None,
                   help="accept an empty or weak LATENTWIRE_SECRET (LATENTWIRE_INSECURE_DEMO=1); never in production")
    p.set_defaults(func=_cmd_receiver)


def _cmd_receiver(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from receiver.settings import Settings

    overrides = {name: getattr(args, name) for name in
                 ("host", "port", "store_dir", "model", "denoise_model", "models_dir", "device", "precision",
                  "broker_url", "database_url", "blob_url", "blob_endpoint_url", "insecure_demo")
                 if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"latentwire receiver: {where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2

    import uvicorn

    from receiver.app import create_app
    from shared.checkpoint import find_model

    find_model(settings.model, settings.models_dir)  # a missing model: one clear line, not a traceback
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SSE streams never end on their own; give them a few seconds, then close them at shutdown.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=5)
    return 0
