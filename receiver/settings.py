"""Every receiver setting, and the only place the receiver reads the environment.

    env var                                  default                 meaning
    LATENTWIRE_SECRET                        (required, see below)   HMAC key shared with the sender
    LATENTWIRE_INSECURE_DEMO                 0                       accept a weak/empty secret (demo only)
    LATENTWIRE_RECEIVER_HOST                 127.0.0.1               bind address
    LATENTWIRE_RECEIVER_PORT                 8001                    bind port
    LATENTWIRE_RECEIVER_STORE_DIR            ./data/receiver         images/<id>.png + index.sqlite3
    LATENTWIRE_RECEIVER_MODEL                lw-vr-hyperprior        model name in MODELS_DIR, or a .pt path
    LATENTWIRE_RECEIVER_DENOISE_MODEL        lw-vr-denoise           second model it decodes (the sender's
                                                                     mode=denoise); "" = off; a missing
                                                                     file turns it off with a log line
    LATENTWIRE_RECEIVER_MODELS_DIR           <repo>/models           where exported models live
    LATENTWIRE_RECEIVER_DEVICE               auto                    auto | cpu | cuda[:N]
    LATENTWIRE_RECEIVER_PRECISION            auto                    auto | fp32 | bf16 (synthesis arithmetic;
                                                                     auto = bf16 on CPUs with native bf16;
                                                                     see PRECISION in shared/codec.py)
    LATENTWIRE_RECEIVER_MAX_SIDE             4096                    largest width/height decoded
    LATENTWIRE_RECEIVER_MAX_FRAME_BYTES      16777216                request body limit (413 above)
    LATENTWIRE_RECEIVER_MAX_BATCH            64                      frames per request
    LATENTWIRE_RECEIVER_DECODE_QUEUE_SIZE    8                       requests waiting to decode (503 above)
    LATENTWIRE_RECEIVER_SSE_HEARTBEAT_S      15                      seconds between SSE comment heartbeats
    LATENTWIRE_RECEIVER_SSE_CLIENT_QUEUE     100                     events buffered per live client
  cluster mode (each setting alone switches on its part; docs in receiver/worker.py):
    LATENTWIRE_RECEIVER_BROKER_URL           (unset)                 nats://host:4222: this process is one worker
                                                                     of the JetStream consumer, and live events
                                                                     reach every replica through NATS
    LATENTWIRE_RECEIVER_DATABASE_URL         (unset)                 postgresql://user@host/db: the image index
    LATENTWIRE_RECEIVER_BLOB_URL             (unset)                 s3://bucket[/prefix]: PNGs and received codes
                                                                     (with DATABASE_URL; both or neither)
    LATENTWIRE_RECEIVER_BLOB_ENDPOINT_URL    (unset: AWS)            S3-compatible endpoint, e.g. SeaweedFS's
                                                                     http://host:8333; keys from the usual
                                                                     AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
    LATENTWIRE_RECEIVER_BROKER_ACK_WAIT_S    30                      a worker that dies holding a frame: seconds
                                                                     until the frame goes to another worker
    LATENTWIRE_RECEIVER_BROKER_MAX_DELIVERIES 10                     deliveries of one frame before it is
                                                                     dead-lettered (it keeps killing workers)

``latentwire receiver --flag`` overrides the matching env var. The secret policy: refuse an
empty secret, one shorter than 16 characters, or a placeholder ("change-me", "secret", ...),
unless insecure demo mode is on; then an empty secret becomes ``INSECURE_DEMO_SECRET`` (a
public string the sender uses the same way) and the service logs a loud warning.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.codec import DEFAULT_DENOISE_MODEL, DEFAULT_MODEL
from shared.jetstream import redact
from shared.wire import DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME_BYTES, SecretSettings, check_secret


class Settings(SecretSettings, BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LATENTWIRE_RECEIVER_", extra="ignore",
                                      populate_by_name=True, frozen=True,
                                      hide_input_in_errors=True)  # errors must not echo the secret

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8001
    store_dir: Path = Path("data/receiver")
    model: str = DEFAULT_MODEL
    denoise_model: str = DEFAULT_DENOISE_MODEL
    models_dir: Path = DEFAULT_MODELS_DIR
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    max_side: Annotated[int, Field(ge=64, le=16384)] = 4096
    max_frame_bytes: Annotated[int, Field(ge=1024)] = DEFAULT_MAX_FRAME_BYTES
    max_batch: Annotated[int, Field(ge=1, le=1024)] = DEFAULT_MAX_BATCH
    # Requests (each up to max_frame_bytes) allowed to wait for the one decode thread. 8 bounds
    # the memory held by waiting bodies to ~9 x 16 MiB, and since one CPU decoder is the
    # bottleneck a deeper queue would only add latency: past it the sender gets 503 +
    # Retry-After and keeps the frames in its outbox.
    decode_queue_size: Annotated[int, Field(ge=0, le=1024)] = 8
    sse_heartbeat_s: Annotated[float, Field(gt=0, le=300)] = 15.0
    # Events a live client may lag behind before it is dropped (it reconnects and refetches).
    sse_client_queue: Annotated[int, Field(ge=1, le=10_000)] = 100

    broker_url: str | None = None
    database_url: str | None = None
    blob_url: str | None = None
    blob_endpoint_url: str | None = None
    # Decoding takes well under a second per image here; 30 s leaves room for the largest ones
    # on a busy CPU (the worker also tells the broker it is still working while it decodes).
    broker_ack_wait_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    broker_max_deliveries: Annotated[int, Field(ge=1, le=1000)] = 10

    # Shared by both services, hence no LATENTWIRE_RECEIVER_ prefix. Never logged or returned.
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("LATENTWIRE_SECRET"))
    insecure_demo: bool = Field(False, validation_alias=AliasChoices(
        "LATENTWIRE_INSECURE_DEMO", "LATENTWIRE_RECEIVER_INSECURE_DEMO"))

    @field_validator("broker_url", "database_url", "blob_url", "blob_endpoint_url")
    @classmethod
    def _url(cls, value: str | None, info) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        schemes = {"broker_url": ("nats://", "tls://"), "database_url": ("postgresql://", "postgres://"),
                   "blob_url": ("s3://",), "blob_endpoint_url": ("http://", "https://")}[info.field_name]
        if not value.startswith(schemes) or not value.split("://", 1)[1].strip("/"):
            raise ValueError(f"{info.field_name} must start with {' or '.join(schemes)} and name a host or bucket, "
                             f"got {redact(value)!r}")
        return value

    @model_validator(mode="after")
    def _refuse_weak_secret(self) -> "Settings":
        if bool(self.database_url) != bool(self.blob_url):
            raise ValueError("set LATENTWIRE_RECEIVER_DATABASE_URL and LATENTWIRE_RECEIVER_BLOB_URL together (the "
                             "shared index and the bucket its images live in), or neither for the embedded store")
        check_secret(self.secret.get_secret_value(), self.insecure_demo)
        return self

    @property
    def cluster_store(self) -> bool:
        return bool(self.database_url)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once (tests build ``Settings(...)`` directly instead)."""
    return Settings()
