"""``latentwire sender``: run the sender service (uvicorn) with settings from flags and env.

    LATENTWIRE_SECRET=... latentwire sender --receiver-url http://127.0.0.1:8001 [--port 8000]

Each flag overrides its env var (``sender/settings.py`` lists them all); the secret comes from
LATENTWIRE_SECRET only. Importing this module is cheap: the web stack loads when the command runs.
"""

from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser("sender", help="run the sender service (upload page + API, delivers to a receiver)",
                       description=__doc__.split("\n\n")[1].strip() if __doc__ else None)
    p.add_argument("--receiver-url", help="receiver base URL (env LATENTWIRE_SENDER_RECEIVER_URL; this or --broker-url)")
    p.add_argument("--broker-url", help="cluster mode: publish frames to NATS JetStream at nats://host:4222 "
                   "(env LATENTWIRE_SENDER_BROKER_URL)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="bind port (default 8000)")
    p.add_argument("--data-dir", help="outbox, previews, lock file (default .data/sender)")
    p.add_argument("--model", help="model name in --models-dir, or a .pt path (default lw-vr-hyperprior)")
    p.add_argument("--denoise-model", help="model for mode=denoise; '' turns the mode off (default lw-vr-denoise)")
    p.add_argument("--default-mode", choices=("standard", "denoise"), help="mode of uploads that name none")
    p.add_argument("--models-dir", help="where exported models live (default: the repository's models/)")
    p.add_argument("--device", help="auto | cpu | cuda[:N] (default auto)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                   help="transforms' arithmetic (default auto: bf16 on CPUs with native bf16)")
    p.add_argument("--insecure-demo", action="store_true", default=None,
                   help="accept a weak or empty LATENTWIRE_SECRET (local demos only; logs a warning)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=_cmd_sender)


def _cmd_sender(args) -> int:
    import logging

    import uvicorn
    from pydantic import ValidationError

    from sender.app import create_app
    from sender.settings import Settings

    overrides = {name: getattr(args, name) for name in
                 ("receiver_url", "broker_url", "host", "port", "data_dir", "model", "denoise_model", "default_mode", "models_dir",
                  "device", "precision", "insecure_demo")
                 if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
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
