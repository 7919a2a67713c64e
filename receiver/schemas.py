"""JSON shapes the receiver answers with (they also document the API at /docs). The ones both
services answer alike (``Readiness``, ``ModelInfo``, ``ErrorBody``) are in ``shared.schemas``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from shared.schemas import ErrorBody, ModelInfo, Readiness  # noqa: F401 (re-exported: the receiver's answers use them)


class FrameResult(BaseModel):
    id: str
    status: Literal["stored", "duplicate"]


class FramesResponse(BaseModel):
    results: list[FrameResult] = Field(description="one entry per frame, in the request's order")


class ImageMeta(BaseModel):
    id: str = Field(description="32 lowercase hex digits, the sender's frame id")
    width: int
    height: int
    stream_bytes: int = Field(description="size of the .lw bitstream that crossed the wire")
    bpp: float = Field(description="stream_bytes * 8 / (width * height), to 4 decimals")
    quality: float = Field(description="the rate the stream was coded at, 0..1")
    model: str
    weights: str
    sent_at: float = Field(description="sender's UNIX time when the frame was queued")
    received_at: float = Field(description="receiver's UNIX time when the image was stored; the list cursor")
    decode_ms: float
    mode: str = Field(description="the sender's mode, standard | denoise: which of the receiver's models "
                                  "decoded it (/v1/models)")
    coded_width: int = Field(description="the width the picture was coded at: below width when a byte budget too "
                                         "small for the full size made the sender code it smaller (it is stored "
                                         "and shown at width x height)")
    coded_height: int
    latency_ms: float = Field(description="received_at - sent_at, in ms (includes clock skew)")
    png_url: str


class ImagePage(BaseModel):
    items: list[ImageMeta] = Field(description="newest first")
    next: float | None = Field(description="pass as ?before= for the next page; null at the end")


class Health(BaseModel):
    status: Literal["ok"]


class ReceiverReadiness(Readiness):
    """/readyz: the shared body plus the receiver's own keys."""

    model: str | None = Field(description="the main model as name@weights; null before it is loaded")
    insecure_demo: bool


class ReceiverModels(BaseModel):
    """/v1/models: every model the receiver decodes, and the limits a sender must respect."""

    models: list[ModelInfo] = Field(description="the main (standard) model, then the denoising one when installed")
    insecure_demo: bool
    wire_version: int = Field(description="the transmission format version of this build; it reads older ones too "
                                          "(shared/wire.py)")
    max_frame_bytes: int = Field(description="largest POST /v1/frames body accepted")
    max_batch: int = Field(description="most frames in one POST /v1/frames")
