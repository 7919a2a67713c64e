"""Prometheus metrics of one receiver app, in a registry of its own (never the global one, so a
test process can build several apps). Served as text at ``GET /metrics``.

    latentwire_receiver_frames_total{result}        stored | duplicate per frame; a rejected request
                                                    counts once under its error code (BadSignature, ...);
                                                    cluster mode: dead_letter per frame taken off the stream
    latentwire_receiver_received_bytes_total        request body bytes read on POST /v1/frames
    latentwire_receiver_decode_seconds              histogram: bitstream -> pixels
    latentwire_receiver_bpp                         histogram: bits per pixel of stored frames
    latentwire_receiver_decode_queue_depth          requests queued or decoding now
    latentwire_receiver_errors_total{code}          every error answered, by error code
    latentwire_receiver_sse_clients                 live /v1/events connections
    latentwire_receiver_dead_letters_total{reason}  cluster mode: frames from the stream dead-lettered, by
                                                    reason (BadSignature, ModelMismatch, ...; receiver/worker.py)
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ns = "latentwire_receiver"
        r = self.registry
        self.frames = Counter("frames", "Frames by result", ["result"], namespace=ns, registry=r)
        self.received_bytes = Counter("received_bytes", "Request body bytes read on POST /v1/frames",
                                      namespace=ns, registry=r)
        self.decode_seconds = Histogram(
            "decode_seconds", "Bitstream to pixels", namespace=ns, registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.bpp = Histogram("bpp", "Bits per pixel of stored frames", namespace=ns, registry=r,
                             buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0))
        self.decode_queue_depth = Gauge("decode_queue_depth", "Requests queued or decoding",
                                        namespace=ns, registry=r)
        self.errors = Counter("errors", "Errors answered, by code", ["code"], namespace=ns, registry=r)
        self.sse_clients = Gauge("sse_clients", "Live /v1/events connections", namespace=ns, registry=r)
        self.dead_letters = Counter("dead_letters", "Cluster mode: frames dead-lettered, by reason", ["reason"],
                                    namespace=ns, registry=r)
        for result in ("stored", "duplicate"):
            self.frames.labels(result=result)  # present at 0 from the start

    def render(self) -> bytes:
        return generate_latest(self.registry)
