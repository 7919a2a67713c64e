"""What handlers get from the app: the ``Services`` the lifespan built, through Annotated aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from receiver.decoder import Decoder
from receiver.events import EventHub
from receiver.metrics import Metrics
from receiver.settings import Settings
from receiver.store import Store
from receiver.worker import FrameWorker
from shared.codec import Codec
from shared.jetstream import Broker


@dataclass
class Services:
    """Everything with a lifetime, created and closed by the lifespan in ``receiver.app``."""

    settings: Settings
    codecs: list[Codec]  # the main model, then the denoising one when installed
    store: Store  # or receiver.cluster_store.ClusterStore (cluster mode): the same methods
    hub: EventHub
    decoder: Decoder
    metrics: Metrics
    broker: Broker | None = None  # cluster mode: this process is one worker of the JetStream consumer
    worker: FrameWorker | None = None

    @property
    def codec(self) -> Codec:
        """The main model (always loaded)."""
        return self.codecs[0]


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]
