"""Every sender setting, and the only place the sender reads the environment.

Each field of ``Settings`` below is one env var, LATENTWIRE_SENDER_<FIELD> (``receiver_url``:
LATENTWIRE_SENDER_RECEIVER_URL), with its default and a description: the one description of the
setting, which ``latentwire sender --help`` shows as its flag's help (sender/cli.py). The secret and
insecure demo mode are shared with the receiver: LATENTWIRE_SECRET and LATENTWIRE_INSECURE_DEMO
(LATENTWIRE_SENDER_INSECURE_DEMO works too). .env.example names every one;
tests/service/test_settings_docs.py keeps the fields, .env.example and the flags in step.

``latentwire sender --flag`` overrides the matching env var (the secret has no flag: command lines
are visible to every user in ``ps``). The secret policy is the receiver's: refuse an empty secret,
one shorter than 16 characters, or a placeholder ("change-me", "secret", ...), unless insecure demo
mode is on; then an empty secret becomes ``INSECURE_DEMO_SECRET`` (a public string the receiver
substitutes the same way) and the service logs a loud warning. The secret is never logged or
returned: it is a ``SecretStr`` and only ``secret_bytes()`` reveals it, to the signer.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import httpx

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.codec import DEFAULT_DENOISE_MODEL, DEFAULT_MODEL
from shared.jetstream import redact
from shared.wire import DEFAULT_MAX_BATCH, SecretSettings, check_secret


class Settings(SecretSettings, BaseSettings):
    """Sender configuration: one env var per field (module docstring)."""

    model_config = SettingsConfigDict(env_prefix="LATENTWIRE_SENDER_", extra="ignore",
                                      populate_by_name=True, frozen=True,
                                      # a model-level error would otherwise print every input, the secret too
                                      hide_input_in_errors=True)

    receiver_url: str | None = Field(None, description="where frames go: the receiver's base URL, e.g. "
                                     "http://127.0.0.1:8001 (this or broker_url)")
    broker_url: str | None = Field(None, description="cluster mode: publish frames to NATS JetStream at "
                                   "nats://host:4222 instead (sender/broker.py)")
    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8000, ge=1, le=65535, description="bind port")
    data_dir: Path = Field(Path("data/sender"), description="outbox.sqlite3, previews/ and sender.lock live here")
    model: str = Field(DEFAULT_MODEL, description="model name in models_dir, or a .pt path")
    denoise_model: str = Field(DEFAULT_DENOISE_MODEL, description="model for mode=denoise (trained on noisy "
                               "inputs, clean targets); '' turns the mode off, and so does a missing file "
                               "(the log says so)")
    default_mode: Literal["standard", "denoise"] = Field("standard", description="mode of uploads that name none")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="where exported models live")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the encoder's transforms run: auto | cpu | cuda[:N]")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="the transforms' arithmetic; auto: "
                                                       "bf16 on CPUs with native bf16 (PRECISION in shared/codec.py); "
                                                       "match the receiver's for exact previews")
    max_side: int = Field(4096, ge=64, le=16384, description="largest image width/height accepted (413 above)")
    default_quality: float = Field(0.5, ge=0.0, le=1.0, description="quality of uploads that name neither "
                                   "quality nor max_bytes (and no latency target makes them auto)")
    max_upload_bytes: int = Field(50 << 20, ge=1024, description="request body limit, enforced while the body "
                                  "streams in (413 above)")
    max_files: int = Field(32, ge=1, le=1000, description="images in one multipart request (413 above)")
    outbox_max_pending: int = Field(10_000, ge=1, description="queued frames before uploads get 503 + Retry-After")
    # Each waiting image holds its decoded pixels (up to 48 MiB at 4096x4096): 32 bounds that
    # memory to ~1.5 GiB, and past it a client is better served by 503 + Retry-After than by a
    # queue whose wait exceeds its own timeout.
    encode_queue_size: int = Field(32, ge=1, le=10_000, description="images waiting for the encoder (503 above)")
    batch_max: int = Field(8, ge=1, le=256, description="CUDA only: images per batched encode")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="CUDA only: how long a batch waits to fill")
    delivery_batch_max: int = Field(16, ge=1, le=DEFAULT_MAX_BATCH, description="frames per POST to the receiver")
    delivery_concurrency: int = Field(2, ge=1, le=8, description="POSTs to the receiver on their way at once: "
                                      "with 2, the next batch travels while the receiver decodes the last")
    # Half the receiver's default 16 MiB body limit, so one POST never trips its 413.
    delivery_batch_max_bytes: int = Field(8 << 20, ge=1024, description="stream bytes per POST to the receiver")
    request_timeout_s: float = Field(10.0, gt=0, le=600, description="timeout of one POST to the receiver")
    retry_base_s: float = Field(0.5, gt=0, le=3600, description="first retry delay after a failed delivery; "
                                "it doubles per failure, with jitter")
    retry_max_s: float = Field(60.0, gt=0, le=86_400, description="longest retry delay")
    previews_keep: int = Field(200, ge=0, le=100_000, description="reconstruction and JPEG previews kept on disk "
                               "(the newest images')")
    # quality=auto (sender/link.py). Positivity is checked by validators below, whose messages say
    # what to do, rather than by Field(gt=0).
    link_kbps: float | None = Field(None, description="pin the link's rate, kbit/s (> 0); unset, the delivery "
                                    "worker measures it")
    latency_target_s: float | None = Field(None, description="seconds from upload to the receiver (> 0); set, "
                                           "quality=auto is on and is the default")
    link_start_kbps: float = Field(64.0, description="quality=auto's rate, kbit/s, before any POST was measured "
                                   "and with no link_kbps")
    # 0.02 bpp is the smallest budget every Kodak image met (at a reduced size; models/TRAINING.md,
    # "Byte budgets below the lowest rate"): about 1 KB at 768x512.
    auto_min_bpp: float = Field(0.02, gt=0, le=24, description="quality=auto's floor, bits per pixel: below it a "
                                "budget buys no recognisable picture")

    # Shared by both services, hence no LATENTWIRE_SENDER_ prefix. Never logged or returned.
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("LATENTWIRE_SECRET"),
                              description="HMAC key shared with the receiver: 16+ characters, not a placeholder")
    insecure_demo: bool = Field(False, validation_alias=AliasChoices(
        "LATENTWIRE_INSECURE_DEMO", "LATENTWIRE_SENDER_INSECURE_DEMO"),
        description="accept a weak or empty secret, with a loud warning: local demos only")

    @field_validator("receiver_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        url = httpx.URL(value.strip())
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"receiver_url must be an http(s) URL like http://127.0.0.1:8001, got {value!r}")
        return str(url).rstrip("/")

    @field_validator("broker_url")
    @classmethod
    def _nats_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if not value.startswith(("nats://", "tls://")) or len(value.split("://", 1)[1]) == 0:
            raise ValueError(f"broker_url must be a NATS URL like nats://127.0.0.1:4222, got {redact(value)!r}")
        return value

    @field_validator("link_kbps", "link_start_kbps")
    @classmethod
    def _positive_kbps(cls, value: float | None, info) -> float | None:
        if value is not None and not value > 0:  # not > 0: NaN too
            raise ValueError(f"{info.field_name} is the link's rate in kbit/s and must be > 0, got {value}; "
                             + ("leave LATENTWIRE_SENDER_LINK_KBPS unset to have the sender measure the link"
                                if info.field_name == "link_kbps" else "e.g. 64"))
        return value

    @field_validator("latency_target_s")
    @classmethod
    def _positive_target(cls, value: float | None) -> float | None:
        if value is not None and not value > 0:
            raise ValueError(f"latency_target_s must be > 0 seconds, got {value}; leave "
                             "LATENTWIRE_SENDER_LATENCY_TARGET_S unset to turn quality=auto off")
        return value

    @model_validator(mode="after")
    def _check(self) -> "Settings":
        if not self.receiver_url and not self.broker_url:
            raise ValueError("set where frames go: a receiver's http(s) URL (--receiver-url or "
                             "LATENTWIRE_SENDER_RECEIVER_URL), or for cluster mode a NATS URL nats://host:4222 "
                             "(--broker-url or LATENTWIRE_SENDER_BROKER_URL)")
        if self.retry_max_s < self.retry_base_s:
            raise ValueError("retry_max_s must be >= retry_base_s")
        if self.default_mode == "denoise" and not self.denoise_model:
            raise ValueError("default_mode is denoise but denoise_model is empty: name a denoising model")
        check_secret(self.secret.get_secret_value(), self.insecure_demo)
        return self

    @property
    def frames_url(self) -> str:
        return f"{self.receiver_url}/v1/frames"

    @property
    def destination(self) -> str:
        """Where frames go, for logs and pages (no credentials)."""
        return f"NATS JetStream at {redact(self.broker_url)}" if self.broker_url else self.frames_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once (tests build ``Settings(...)`` directly instead)."""
    return Settings()
