"""Every sender setting, and the only place the sender reads the environment.

    env var                                   default            meaning
    LATENTWIRE_SENDER_RECEIVER_URL            (this or BROKER)   receiver base URL, e.g. http://127.0.0.1:8001
    LATENTWIRE_SENDER_BROKER_URL              (unset)            cluster mode: nats://host:4222; frames go to
                                                                 NATS JetStream instead (sender/broker.py)
    LATENTWIRE_SECRET                         (required, below)  HMAC key shared with the receiver
    LATENTWIRE_INSECURE_DEMO                  0                  accept a weak/empty secret (demo only);
                                                                 LATENTWIRE_SENDER_INSECURE_DEMO works too
    LATENTWIRE_SENDER_HOST                    127.0.0.1          bind address
    LATENTWIRE_SENDER_PORT                    8000               bind port
    LATENTWIRE_SENDER_DATA_DIR                data/sender        outbox.sqlite3, previews/, sender.lock
    LATENTWIRE_SENDER_MODEL                   lw-vr-hyperprior   model name in MODELS_DIR, or a .pt path
    LATENTWIRE_SENDER_DENOISE_MODEL           lw-vr-denoise      model for mode=denoise (trained on noisy
                                                                 inputs, clean targets); "" turns the mode
                                                                 off. If the file is missing the mode is
                                                                 off and the log says so.
    LATENTWIRE_SENDER_DEFAULT_MODE            standard           mode when the upload names none:
                                                                 standard | denoise
    LATENTWIRE_SENDER_MODELS_DIR              <repo>/models      where exported models live
    LATENTWIRE_SENDER_DEVICE                  auto               auto | cpu | cuda[:N] (encoder transforms)
    LATENTWIRE_SENDER_PRECISION               auto               auto | fp32 | bf16 (transforms' arithmetic;
                                                                 auto = bf16 on CPUs with native bf16; see
                                                                 PRECISION in shared/codec.py)
    LATENTWIRE_SENDER_MAX_SIDE                4096               largest width/height accepted (413 above)
    LATENTWIRE_SENDER_DEFAULT_QUALITY         0.5                quality when the upload names neither
                                                                 quality nor max_bytes
    LATENTWIRE_SENDER_MAX_UPLOAD_BYTES        52428800           request body limit, 50 MiB (413 above,
                                                                 enforced while the body streams in)
    LATENTWIRE_SENDER_MAX_FILES               32                 images in one multipart request (413 above)
    LATENTWIRE_SENDER_OUTBOX_MAX_PENDING      10000              queued frames before uploads get 503 +
                                                                 Retry-After
    LATENTWIRE_SENDER_ENCODE_QUEUE_SIZE       32                 images waiting for the encoder (503 above)
    LATENTWIRE_SENDER_BATCH_MAX               8                  CUDA only: images per encode_batch call
    LATENTWIRE_SENDER_BATCH_WAIT_MS           5                  CUDA only: how long a batch waits to fill
    LATENTWIRE_SENDER_DELIVERY_BATCH_MAX      16                 frames per POST to the receiver
    LATENTWIRE_SENDER_DELIVERY_BATCH_MAX_BYTES 8388608           stream bytes per POST (receiver takes 16 MiB)
    LATENTWIRE_SENDER_REQUEST_TIMEOUT_S       10                 timeout of one POST to the receiver
    LATENTWIRE_SENDER_RETRY_BASE_S            0.5                first retry delay (doubles per failure)
    LATENTWIRE_SENDER_RETRY_MAX_S             60                 longest retry delay
    LATENTWIRE_SENDER_PREVIEWS_KEEP           200                reconstruction/JPEG previews kept on disk
    LATENTWIRE_SENDER_LINK_KBPS               (unset: measured)  pin the link's rate, kbit/s (> 0); unset, the
                                                                 delivery worker measures it (sender/link.py)
    LATENTWIRE_SENDER_LATENCY_TARGET_S        (unset: off)       seconds from upload to the receiver (> 0);
                                                                 set, quality=auto is on and is the default
    LATENTWIRE_SENDER_LINK_START_KBPS         64                 quality=auto before any POST was measured
                                                                 and with no LINK_KBPS: the rate assumed
    LATENTWIRE_SENDER_AUTO_MIN_BPP            0.02               quality=auto's floor, bits per pixel: below
                                                                 it a budget buys no recognisable picture

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
from typing import Annotated, Literal

import httpx

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.codec import DEFAULT_DENOISE_MODEL, DEFAULT_MODEL
from shared.jetstream import redact
from shared.wire import DEFAULT_MAX_BATCH, SecretSettings, check_secret


class Settings(SecretSettings, BaseSettings):
    """Sender configuration; see the module docstring for every env var."""

    model_config = SettingsConfigDict(env_prefix="LATENTWIRE_SENDER_", extra="ignore",
                                      populate_by_name=True, frozen=True,
                                      # a model-level error would otherwise print every input, the secret too
                                      hide_input_in_errors=True)

    receiver_url: str | None = Field(None, description="receiver base URL; frames go to {receiver_url}/v1/frames")
    broker_url: str | None = Field(None, description="cluster mode: nats://host:4222; frames go to JetStream")
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    data_dir: Path = Field(Path("data/sender"), description="outbox database, previews and lock file")
    model: str = DEFAULT_MODEL
    denoise_model: str = DEFAULT_DENOISE_MODEL
    default_mode: Literal["standard", "denoise"] = "standard"
    models_dir: Path = DEFAULT_MODELS_DIR
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_side: Annotated[int, Field(ge=64, le=16384)] = 4096
    default_quality: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    max_upload_bytes: Annotated[int, Field(ge=1024, description="request body limit (413 above)")] = 50 << 20
    max_files: Annotated[int, Field(ge=1, le=1000, description="images per multipart request")] = 32
    outbox_max_pending: Annotated[int, Field(ge=1, description="queued frames before 503 + Retry-After")] = 10_000
    # Each waiting image holds its decoded pixels (up to 48 MiB at 4096x4096): 32 bounds that
    # memory to ~1.5 GiB, and past it a client is better served by 503 + Retry-After than by a
    # queue whose wait exceeds its own timeout.
    encode_queue_size: Annotated[int, Field(ge=1, le=10_000)] = 32
    batch_max: Annotated[int, Field(ge=1, le=256, description="CUDA only: images per encode_batch")] = 8
    batch_wait_ms: Annotated[float, Field(ge=0, le=1000, description="CUDA only: wait for a batch to fill")] = 5.0
    delivery_batch_max: Annotated[int, Field(ge=1, le=DEFAULT_MAX_BATCH)] = 16
    # Half the receiver's default 16 MiB body limit, so one POST never trips its 413.
    delivery_batch_max_bytes: Annotated[int, Field(ge=1024)] = 8 << 20
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    retry_base_s: Annotated[float, Field(gt=0, le=3600)] = 0.5
    retry_max_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    previews_keep: Annotated[int, Field(ge=0, le=100_000, description="previews kept on disk")] = 200
    # quality=auto (sender/link.py). Positivity is checked by validators below, whose messages say
    # what to do, rather than by Field(gt=0).
    link_kbps: float | None = Field(None, description="pin the link's rate, kbit/s; unset: measured")
    latency_target_s: float | None = Field(None, description="upload -> receiver target; set: quality=auto on")
    link_start_kbps: float = Field(64.0, description="quality=auto's rate before the first measurement")
    # 0.02 bpp is the smallest budget every Kodak image met (at a reduced size; models/TRAINING.md,
    # "Byte budgets below the lowest rate"): about 1 KB at 768x512.
    auto_min_bpp: Annotated[float, Field(gt=0, le=24)] = 0.02

    # Shared by both services, hence no LATENTWIRE_SENDER_ prefix. Never logged or returned.
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("LATENTWIRE_SECRET"))
    insecure_demo: bool = Field(False, validation_alias=AliasChoices(
        "LATENTWIRE_INSECURE_DEMO", "LATENTWIRE_SENDER_INSECURE_DEMO"))

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
