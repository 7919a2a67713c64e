"""``latentwire receiver``: run the receiver service (flags override LATENTWIRE_RECEIVER_* env vars).

    LATENTWIRE_SECRET=... latentwire receiver --port 8001 --store-dir data/receiver
    latentwire receiver --insecure-demo          (local demo without a real secret; loud warning)

The web stack is imported inside the command, so ``latentwire --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys

from shared.service.flags import add_settings_flags, given

# The settings that have a flag, --field-name (receiver/settings.py describes each one; that
# description is the flag's help): field name -> argparse keywords beyond the help.
FLAGS = {
    "host": {}, "port": {"type": int}, "store_dir": {}, "model": {}, "denoise_model": {}, "models_dir": {},
    "device": {}, "precision": {"choices": ("auto", "fp32", "bf16")},
    "broker_url": {}, "database_url": {}, "blob_url": {}, "blob_endpoint_url": {},
    "insecure_demo": {"action": "store_true", "default": None},  # None: unset, the env decides
}
# Settings with no flag, from the environment only: the secret, because command lines are visible
# to every user in ``ps``; the rest are limits and policies a deployment sets once (.env.example).
ENV_ONLY = (
    "secret", "max_side", "max_frame_bytes", "max_batch", "decode_queue_size", "sse_heartbeat_s",
    "sse_client_queue", "broker_ack_wait_s", "broker_max_deliveries",
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("receiver", help="run the receiver service (decode, store, live gallery)",
                              description=__doc__.split("\n")[0], add_help=False)
    add_settings_flags(p, FLAGS, "receiver.settings:Settings")
    p.set_defaults(func=_cmd_receiver)


def _cmd_receiver(args: argparse.Namespace) -> int:
    import logging

    from pydantic import ValidationError

    from receiver.settings import Settings

    try:
        settings = Settings(**given(args, FLAGS))
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
