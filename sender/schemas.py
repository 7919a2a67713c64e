"""The sender's JSON shapes (response models, so /docs shows them exactly). The ones both services
answer alike (``Readiness``, ``ModelInfo``, ``ErrorBody``) are in ``shared.schemas``."""

from __future__ import annotations

from pydantic import BaseModel, Field

from sender.outbox import FrameRecord
from shared.schemas import ErrorBody as SharedErrorBody
from shared.schemas import ModelInfo, Readiness  # noqa: F401 (re-exported: the sender's answers use them)


class JpegSameBytes(BaseModel):
    """Pillow JPEG at the largest quality whose size fits our stream's bytes (see sender/comparison.py)."""

    bytes: int
    psnr: float | None = Field(description="dB; null when exact")
    quality: int = Field(description="Pillow JPEG quality 1..95")
    fits: bool = Field(description="false: even quality 1 is larger than our stream (tiny images)")


class DeliveryError(BaseModel):
    error: str = Field(description="the receiver's error code, or the transport failure kind")
    message: str
    http_status: int | None = None


class BudgetOut(BaseModel):
    """How quality=auto chose this image's byte budget (sender/link.py has the rule)."""

    bytes: int = Field(description="the max_bytes the image was encoded with")
    reason: str = Field(description="target: its share of rate x target - queued bytes | pace: its share of "
                        "rate x the interval between auto uploads, when that is less | start: nothing measured yet, what "
                        "the start rate carries in one second | floor: that share was "
                        "below LATENTWIRE_SENDER_AUTO_MIN_BPP, the floor was used | ceiling: quality 1 fitted "
                        "the share | codec_minimum: the codec's smallest stream for this image is larger than "
                        "the floor, and was sent | replan: queued when the link slowed, coded again from the kept upload "
                        "so that the queue meets its targets (sender/replan.py; the other fields describe the re-plan)")
    late: bool = Field(description="true: even so, the frame is expected at the receiver after target_s; "
                       "it is queued and sent all the same")
    expected_latency_s: float = Field(description="(queued bytes ahead + this upload's streams through this one) "
                                      "/ link rate, at upload time")
    target_s: float = Field(description="LATENTWIRE_SENDER_LATENCY_TARGET_S")
    link_kbps: float = Field(description="the link rate the budget was computed from")
    link_source: str = Field(description="measured (the delivery worker's goodput) | pinned "
                             "(LATENTWIRE_SENDER_LINK_KBPS) | start (nothing measured yet: "
                             "LATENTWIRE_SENDER_LINK_START_KBPS)")
    queued_bytes: int = Field(description="stream bytes ahead of this upload when it was planned: frames in the "
                              "outbox, and the budgets of uploads still being encoded")
    replanned_from: int | None = Field(None, description="reason replan: the bytes of the stream it replaced")


class LinkOut(BaseModel):
    """The sender's view of its link to the receiver (sender/link.py)."""

    goodput_kbps: float | None = Field(description="the rate quality=auto budgets from: pinned, else measured; "
                                       "null before the first delivered POST when not pinned")
    measured_kbps: float | None = Field(description="smoothed body bytes over time of the POSTs the receiver "
                                        "acknowledged; null before the first")
    rtt_s: float | None = Field(description="smoothed time of one acknowledged POST, request sent to reply read")
    source: str = Field(description="measured | pinned (LATENTWIRE_SENDER_LINK_KBPS) | none (nothing yet)")
    samples: int = Field(description="acknowledged POSTs measured since the sender started")
    queued_bytes: int = Field(description="stream bytes of the frames queued for delivery")
    queued_frames: int
    drain_s: float | None = Field(description="queued_bytes / goodput: how long the backlog takes to send")
    latency_target_s: float | None = Field(description="null: quality=auto is off")
    start_kbps: float = Field(description="the rate quality=auto assumes while goodput_kbps is null")


class ImageOut(BaseModel):
    id: str = Field(description="32 lowercase hex; the frame id the receiver stores it under")
    filename: str
    mode: str
    status: str = Field(description="queued | delivered | failed | superseded (a newer upload with the same "
                        "supersede key replaced it before it was sent; its stream is dropped)")
    width: int
    height: int
    original_bytes: int = Field(description="size of the uploaded file")
    bytes: int = Field(description="size of the bitstream on the wire")
    bpp: float = Field(description="bits per pixel on the wire, to 4 decimals (as the receiver lists it)")
    ratio: float = Field(description="original_bytes / bytes")
    psnr: float | None = Field(description="dB of the reconstruction the receiver will show, against the upload; "
                               "null when exact or when uploaded with preview=false")
    quality: float = Field(description="the quality the stream was coded at (the one found for max_bytes)")
    coded_width: int = Field(description="the width the picture was coded at: below width when a byte budget too "
                             "small for the full size was met at a reduced size (the receiver shows it at width "
                             "x height; bitstream format version 3)")
    coded_height: int
    noise: float | None = Field(description="mode=denoise: the sender's estimate of the upload's noise, rms grey "
                                "levels (about 4-5 on clean photos, 24 at sigma 25); null in other modes")
    cleaned: bool = Field(description="true: the stream codes the denoiser's own clean reconstruction of the "
                          "upload rather than the upload (clean first; see /v1/models)")
    jpeg_same_bytes: JpegSameBytes | None = Field(description="null when uploaded with preview=false")
    budget: BudgetOut | None = Field(None, description="quality=auto: the byte budget chosen and why; null "
                                     "for a quality or max_bytes upload")
    max_bytes: int | None = Field(None, description="the byte budget it was encoded with: the upload's max_bytes, "
                                  "or quality=auto's budget.bytes; null for a quality upload")
    budget_binding: bool | None = Field(None, description="whether max_bytes limited the stream: false when the "
                                        "best stream (quality 1, full size) fitted under it, so the budget had "
                                        "no effect; null for a quality upload")
    stream_key: str | None = Field(None, description="the upload's supersede key")
    superseded_by: str | None = Field(None, description="status superseded: the newer frame that replaced it")
    preview: bool = Field(description="whether the sender decoded the stream and kept previews (upload's preview)")
    attempts: int = Field(description="POSTs that carried this frame")
    last_error: DeliveryError | None
    created_at: float
    next_attempt_at: float | None = Field(description="UNIX s of the next delivery try (queued only)")
    delivered_at: float | None
    receiver_status: str | None = Field(description="once delivered: stored | duplicate (the receiver's answer); "
                                        "cluster mode: published | duplicate (the JetStream stream's ack)")
    reconstruction_url: str | None = Field(description="the sender's preview; null with preview=false")
    jpeg_url: str | None

    @classmethod
    def from_record(cls, r: FrameRecord) -> "ImageOut":
        return cls(
            id=r.id, filename=r.filename, mode=r.mode, status=r.status, width=r.width, height=r.height,
            original_bytes=r.original_bytes, bytes=r.nbytes, bpp=round(r.bpp, 4),
            ratio=round(r.original_bytes / r.nbytes, 3), psnr=r.psnr, quality=r.quality,
            noise=None if r.noise is None else round(r.noise, 2), cleaned=r.cleaned,
            coded_height=r.coded_size[0] if r.coded_size else r.height,
            coded_width=r.coded_size[1] if r.coded_size else r.width,
            jpeg_same_bytes=JpegSameBytes(**r.jpeg) if r.jpeg else None, attempts=r.attempts,
            budget=BudgetOut(**r.budget) if r.budget else None, max_bytes=r.max_bytes,
            budget_binding=None if r.max_bytes is None else not (r.quality >= 1.0 and r.coded_size is None),
            stream_key=r.stream_key, superseded_by=r.superseded_by,
            last_error=DeliveryError(**r.last_error) if r.last_error else None, created_at=r.created_at,
            next_attempt_at=r.next_attempt_at, delivered_at=r.delivered_at, receiver_status=r.receiver_status,
            preview=r.jpeg is not None,  # every previewed upload has its JPEG comparison
            reconstruction_url=f"/v1/images/{r.id}/reconstruction.png" if r.jpeg else None,
            jpeg_url=f"/v1/images/{r.id}/jpeg.jpg" if r.jpeg else None,
        )


class UploadResponse(BaseModel):
    images: list[ImageOut]
    superseded: list[str] = Field(default_factory=list, description="supersede=<key>: ids of the older queued "
                                  "frames with that key that these images replaced (status superseded)")


class ImageList(BaseModel):
    images: list[ImageOut] = Field(description="newest first")
    counts: dict[str, int] = Field(description="frames per status in the whole outbox")


class ErrorBody(SharedErrorBody):
    """Every error's answer, with the two keys only the sender's uploads add."""

    file: str | None = Field(None, description="the file of a multi-file upload the error is about")
    min_bytes: int | None = Field(None, description="BudgetTooSmall: the smallest max_bytes that works")


class ModelsOut(BaseModel):
    models: list[ModelInfo] = Field(description="one entry per mode: the standard model, then the denoising one")
    default_quality: float
    modes: list[str] = Field(description="modes this sender can serve (it has their models)")
    default_mode: str
