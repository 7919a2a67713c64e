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

``latentwire receiver --flag`` overrides the matching env var. The secret policy: refuse an
empty secret, one shorter than 16 characters, or a placeholder ("change-me", "secret", ...),
unless insecure demo mode is on; then an empty secret becomes ``INSECURE_DEMO_SECRET`` (a
public string the sender uses the same way) and the service logs a loud warning.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.checkpoint import DEFAULT_MODELS_DIR
from shared.codec import DEFAULT_DENOISE_MODEL, DEFAULT_MODEL
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

    # Shared by both services, hence no LATENTWIRE_RECEIVER_ prefix. Never logged or returned.
    secret: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices("LATENTWIRE_SECRET"))
    insecure_demo: bool = Field(False, validation_alias=AliasChoices(
        "LATENTWIRE_INSECURE_DEMO", "LATENTWIRE_RECEIVER_INSECURE_DEMO"))

    @model_validator(mode="after")
    def _refuse_weak_secret(self) -> "Settings":
        check_secret(self.secret.get_secret_value(), self.insecure_demo)
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings from the environment, read once (tests build ``Settings(...)`` directly instead)."""
    return Settings()
