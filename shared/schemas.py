"""JSON shapes both services answer with alike (issue 23): ``/readyz``, the model entries of
``/v1/models`` and every error (``ErrorBody``, answered by shared/service/handlers.py). Each service's ``schemas.py`` builds its own answers on these, adding only its own
keys (the receiver's ``model`` and ``insecure_demo`` on /readyz; each service's top-level keys on
/v1/models). Plain pydantic, no FastAPI: this package stays a library.

    GET /readyz     200 {"status": "ready", "reasons": [], "checks": {"model": true, ...}}
                    503 {"status": "unavailable", "reasons": ["what is wrong: what to do", ...],
                         "checks": {"model": true, "store": false, ...}}
    GET /v1/models  {"models": [ModelInfo, ...], ...}: one entry per model, the same keys on both sides
    any error       {"error": "NotAnImage", "message": "what went wrong and what to do"}
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"] = Field(description="ready (HTTP 200) | unavailable (HTTP 503)")
    reasons: list[str] = Field(description="one sentence per failed check: what is wrong and what to do; "
                                           "empty when ready")
    checks: dict[str, bool] = Field(description="each check by name, true when it passed")

    @classmethod
    def of(cls, checks: dict[str, bool], reasons: list[str], **extra) -> "Readiness":
        """Ready when every check passed; ``reasons`` explains the ones that did not."""
        return cls(status="ready" if all(checks.values()) else "unavailable", reasons=reasons, checks=checks,
                   **extra)


class ErrorBody(BaseModel):
    error: str = Field(description="stable error name, e.g. NotAnImage, BadSignature, InvalidRequest "
                                   "(shared/errors.py lists them with their HTTP status)")
    message: str = Field(description="what went wrong and what to do next")


class ModelInfo(BaseModel):
    """One model a service serves; ``shared.codec.Codec.info()`` plus the mode it serves."""

    mode: str = Field(description="the sender's upload mode this model serves: standard | denoise")
    name: str
    weights: str = Field(description="hash of the weights; a frame names it, and the receiver must serve it")
    device: str
    precision: str = Field(description="arithmetic of the transforms: fp32 | bf16")
    network: dict = Field(description="the architecture arguments the checkpoint carries")
    max_side: int = Field(description="the largest image side this service codes")
    clean_first: dict | None = Field(None, description="denoising models: the rule by which the sender codes its "
                                     "own clean reconstruction instead of the upload (shared/clean_first.py)")
