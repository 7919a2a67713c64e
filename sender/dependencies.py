"""What handlers get from the app: the ``Services`` the lifespan built, through Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import anyio
import httpx
from fastapi import Depends, Request

from sender.encoder import Encoder
from sender.metrics import Metrics
from sender.outbox import Outbox
from sender.previews import PreviewStore
from sender.settings import Settings
from sender.transmit import Deliverer
from shared.codec import Codec


@dataclass
class Services:
    """Everything with a lifetime, created and closed by ``sender.app.lifespan``."""

    settings: Settings
    codecs: dict[str, Codec]  # mode -> model: "standard", and "denoise" when its model is installed
    outbox: Outbox
    encoder: Encoder
    deliverer: Deliverer
    previews: PreviewStore
    client: httpx.AsyncClient
    metrics: Metrics
    # Pillow decoding and PNG/JPEG coding of up to 4096x4096 images run on threads; two at a time
    # keeps a burst of uploads from holding a dozen full-size images in memory at once.
    pixel_limiter: anyio.CapacityLimiter

    @property
    def codec(self) -> Codec:
        """The standard model (always loaded)."""
        return self.codecs["standard"]


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
