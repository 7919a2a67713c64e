"""Every receiver setting, and the only place the receiver reads the environment.

Each field of ``Settings`` below is one env var, LATENTWIRE_RECEIVER_<FIELD> (``store_dir``:
LATENTWIRE_RECEIVER_STORE_DIR), with its default and a description: the one description of the
setting, which ``latentwire receiver --help`` shows as its flag's help (receiver/cli.py). The secret
and insecure demo mode are shared with the sender: LATENTWIRE_SECRET and LATENTWIRE_INSECURE_DEMO
(LATENTWIRE_RECEIVER_INSECURE_DEMO works too). .env.example names every one;
tests/service/test_settings_docs.py keeps the fields, .env.example and the flags in step.

``latentwire receiver --flag`` overrides the matching env var. The secret policy: refuse an
empty secret, one shorter than 16 characters, or a placeholder ("change-me", "secret", ...),
unless insecure demo mode is on; then an empty secret becomes ``INSECURE_DEMO_SECRET`` (a
public string the sender uses the same way) and the service logs a loud warning.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.codec import DEFAULT_DENOISE_MODEL, DEFAULT_MODEL
from shared.jetstream import redact
from shared.wire import DEFAULT_MAX_BATCH, DEFAULT_MAX_FRAME_BYTES, SecretSettings, check_secret


class Settings(SecretSettings, BaseSettings):
    """Receiver configuration: one env var per field (module docstring)."""

    model_config = SettingsConfigDict(env_prefix="LATENTWIRE_RECEIVER_", extra="ignore",
                                      populate_by_name=True, frozen=True,
                                      hide_input_in_errors=True)  # errors must not echo the secret

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8001, ge=1, le=65535, description="bind port")
    store_dir: Path = Field(Path("data/receiver"), description="images/<id>.png, codes/<id>.lw and "
                            "index.sqlite3 live here (the embedded store)")
    model: str = Field(DEFAULT_MODEL, description="model name in models_dir, or a .pt path")
    denoise_model: str = Field(DEFAULT_DENOISE_MODEL, description="a second model it decodes, for frames of the "
                               "sender's mode=denoise; '' turns it off, and so does a missing file (the log says so)")
    models_dir: Path = Field(DEFAULT_MODELS_DIR, description="where exported models live")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the synthesis transform runs: auto | cpu | cuda[:N]")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="the synthesis arithmetic; auto: bf16 "
                                                       "on CPUs with native bf16 (PRECISION in shared/codec.py)")
    max_side: int = Field(4096, ge=64, le=16384, description="largest declared image width/height decoded (413 "
                          "above)")
    max_frame_bytes: int = Field(DEFAULT_MAX_FRAME_BYTES, ge=1024, description="request body limit of POST "
                                 "/v1/frames (413 above)")
    max_batch: int = Field(DEFAULT_MAX_BATCH, ge=1, le=1024, description="frames in one request")
    # Requests (each up to max_frame_bytes) allowed to wait for the one decode thread. 8 bounds
    # the memory held by waiting bodies to ~9 x 16 MiB, and since one CPU decoder is the
    # bottleneck a deeper queue would only add latency: past it the sender gets 503 +
    # Retry-After and keeps the frames in its outbox.
    decode_queue_size: int = Field(8, ge=0, le=1024, description="requests waiting for the decoder (503 above)")
    sse_heartbeat_s: float = Field(15.0, gt=0, le=300, description="seconds between the live stream's heartbeat "
                                   "comments")
    sse_client_queue: int = Field(100, ge=1, le=10_000, description="events a live client may lag behind before "
                                  "it is dropped (it reconnects and refetches)")

    # Cluster mode (receiver/worker.py): each setting alone switches its part on.
    broker_url: str | None = Field(None, description="cluster mode: be one worker of the NATS JetStream consumer "
                                   "at nats://host:4222; live events then reach every replica through NATS")
    database_url: str | None = Field(None, description="cluster mode: the shared image index, "
                                     "postgresql://user@host/db (with blob_url)")
    blob_url: str | None = Field(None, description="cluster mode: the bucket for PNGs and received codes, "
                                 "s3://bucket[/prefix] (with database_url)")
    blob_endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. SeaweedFS's "
                                          "http://host:8333; unset: AWS. Keys from AWS_ACCESS_KEY_ID / "
                                          "AWS_SECRET_ACCESS_KEY")
    # Decoding takes well under a second per image here; 30 s leaves room for the largest ones
    # on a busy CPU (the worker also tells the broker it is still working while it decodes).
    broker_ack_wait_s: float = Field(30.0, ge=1, le=3600, description="cluster mode: seconds until a frame held "
                                     "by a worker that died goes to another worker")
    broker_max_deliveries: int = Field(10, ge=1, le=1000, description="cluster mode: deliveries of one frame "
                                       "before it is dead-lettered (it keeps killing workers)")

    # Shared by both services, hence no LATENTWIRE_RECEIVER_ prefix. Never logged or returned.
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("LATENTWIRE_SECRET"),
                              description="HMAC key shared with the sender: 16+ characters, not a placeholder")
    insecure_demo: bool = Field(False, validation_alias=AliasChoices(
        "LATENTWIRE_INSECURE_DEMO", "LATENTWIRE_RECEIVER_INSECURE_DEMO"),
        description="accept a weak or empty secret, with a loud warning: local demos only, never in production")

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
