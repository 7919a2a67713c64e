"""``latentwire sender``: run the sender service (uvicorn) with settings from flags and env.

    LATENTWIRE_SECRET=... latentwire sender --receiver-url http://127.0.0.1:8001 [--port 8000]

Each flag overrides its env var (``sender/settings.py`` lists them all); the secret comes from
LATENTWIRE_SECRET only. Importing this module is cheap: the web stack loads when the command runs.
"""

from __future__ import annotations

import sys

from shared.service.flags import add_settings_flags, given

# The settings that have a flag, --field-name (sender/settings.py describes each one; that
# description is the flag's help): field name -> argparse keywords beyond the help.
FLAGS = {
    "receiver_url": {}, "broker_url": {}, "host": {}, "port": {"type": int}, "data_dir": {}, "model": {},
    "denoise_model": {}, "default_mode": {"choices": ("standard", "denoise")}, "models_dir": {}, "device": {},
    "precision": {"choices": ("auto", "fp32", "bf16")},
    "insecure_demo": {"action": "store_true", "default": None},  # None: unset, the env decides
}
# Settings with no flag, from the environment only: the secret, because command lines are visible
# to every user in ``ps``; the rest are limits and policies a deployment sets once (.env.example).
ENV_ONLY = (
    "secret", "max_side", "default_quality", "max_upload_bytes", "max_files", "outbox_max_pending",
    "encode_queue_size", "batch_max", "batch_wait_ms", "delivery_batch_max", "delivery_batch_max_bytes",
    "delivery_concurrency",
    "request_timeout_s", "retry_base_s", "retry_max_s", "previews_keep", "link_kbps", "latency_target_s",
    "link_start_kbps", "auto_min_bpp",
)


def add_parser(sub) -> None:
    p = sub.add_parser("sender", help="run the sender service (upload page + API, delivers to a receiver)",
                       description=__doc__.split("\n\n")[1].strip() if __doc__ else None, add_help=False)
    add_settings_flags(p, FLAGS, "sender.settings:Settings")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=_cmd_sender)


def _cmd_sender(args) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from sender.app import create_app
    from sender.settings import Settings

    try:
        settings = Settings(**given(args, FLAGS))
    except ValidationError as exc:  # hide_input_in_errors: the secret is never echoed
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            hint = {"receiver_url": " (--receiver-url or LATENTWIRE_SENDER_RECEIVER_URL)",
                    "broker_url": " (--broker-url or LATENTWIRE_SENDER_BROKER_URL)"}.get(where, "")
            message = error["msg"].removeprefix("Value error, ")
            print(f"latentwire sender: {where}: {message}{hint}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level)
    return 0


__all__ = ["add_parser"]
