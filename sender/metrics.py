"""Prometheus metrics of one sender app, in a registry of its own (two apps in one test process,
or an app and a library user, never share or collide on the global registry).

    latentwire_sender_encode_seconds            histogram  encoder time per image (batch time / size)
    latentwire_sender_encode_batch_size         histogram  images per encoder call, observed per image
                                                           (always 1 on CPU; CUDA batches concurrent uploads)
    latentwire_sender_bpp                       histogram  bits per pixel of accepted images
    latentwire_sender_images_total              counter    images accepted (queued)
    latentwire_sender_stream_bytes_total        counter    bitstream bytes of accepted images
    latentwire_sender_upload_errors_total       counter    rejected uploads, by error code
    latentwire_sender_transmit_seconds          histogram  one POST to the receiver, by outcome (cluster mode:
                                                           one acknowledged publish, outcome "published")
    latentwire_sender_wire_bytes_total          counter    request body bytes POSTed to the receiver (or published)
    latentwire_sender_delivery_attempts_total   counter    POSTs, by outcome: delivered | retry | failed |
                                                           split (a refused batch resent frame by frame)
    latentwire_sender_delivery_errors_total     counter    failed POSTs, by kind: timeout | connect |
                                                           http_429 | http_503 | http_507 | http_5xx |
                                                           http_4xx | bad_reply; cluster mode: connect |
                                                           broker (no ack) | too_large (over max_payload)
    latentwire_sender_frames_total              counter    frames settled, by result: stored | duplicate | failed
                                                           (cluster mode: published | duplicate | failed)
    latentwire_sender_outbox_depth              gauge      frames queued for delivery (refreshed per scrape)
    latentwire_sender_outbox_queued_bytes       gauge      stream bytes queued for delivery (per scrape)
    latentwire_sender_link_goodput_bytes_per_second gauge  the rate quality=auto budgets from: pinned, else
                                                           measured; 0 until there is one (per scrape)
    latentwire_sender_link_measured_bytes_per_second gauge acknowledged POST bytes / seconds, smoothed
    latentwire_sender_link_rtt_seconds          gauge      time of one acknowledged POST, smoothed
    latentwire_sender_link_pinned               gauge      1: LATENTWIRE_SENDER_LINK_KBPS pins the rate
    latentwire_sender_auto_budgets_total        counter    quality=auto images, by reason: target | pace | start |
                                                           floor | ceiling | codec_minimum (re-plans: replans_total)
    latentwire_sender_auto_budget_bytes         histogram  quality=auto budgets (max_bytes) chosen
    latentwire_sender_auto_late_total           counter    quality=auto images expected after the target
    latentwire_sender_replans_total             counter    queued quality=auto frames coded again at a smaller
                                                           budget after the link slowed (sender/replan.py)
    latentwire_sender_replan_saved_bytes_total  counter    stream bytes those re-plans took off the queue
    latentwire_sender_superseded_total          counter    queued frames dropped for a newer upload with the
                                                           same supersede=<key> (sender/outbox.py)
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.encode_seconds = Histogram("latentwire_sender_encode_seconds", "Encoder time per image",
                                        buckets=_SECONDS, registry=r)
        self.encode_batch_size = Histogram("latentwire_sender_encode_batch_size", "Images per encoder call",
                                           buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.bpp = Histogram("latentwire_sender_bpp", "Bits per pixel of accepted images",
                             buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0), registry=r)
        self.images = Counter("latentwire_sender_images", "Images accepted and queued", registry=r)
        self.stream_bytes = Counter("latentwire_sender_stream_bytes", "Bitstream bytes of accepted images",
                                    registry=r)
        self.upload_errors = Counter("latentwire_sender_upload_errors", "Rejected uploads by error code",
                                     ["error"], registry=r)
        self.transmit_seconds = Histogram("latentwire_sender_transmit_seconds", "One POST to the receiver",
                                          ["outcome"], buckets=_SECONDS, registry=r)
        self.wire_bytes = Counter("latentwire_sender_wire_bytes", "Request body bytes POSTed to the receiver",
                                  registry=r)
        self.delivery_attempts = Counter("latentwire_sender_delivery_attempts", "POSTs to the receiver by outcome",
                                         ["outcome"], registry=r)
        self.delivery_errors = Counter("latentwire_sender_delivery_errors", "Failed POSTs by kind", ["kind"],
                                       registry=r)
        self.frames = Counter("latentwire_sender_frames", "Frames settled, by result", ["result"], registry=r)
        self.outbox_depth = Gauge("latentwire_sender_outbox_depth", "Frames queued for delivery", registry=r)
        self.outbox_queued_bytes = Gauge("latentwire_sender_outbox_queued_bytes",
                                         "Stream bytes queued for delivery", registry=r)
        self.link_goodput = Gauge("latentwire_sender_link_goodput_bytes_per_second",
                                  "The link rate quality=auto budgets from (pinned, else measured)", registry=r)
        self.link_measured = Gauge("latentwire_sender_link_measured_bytes_per_second",
                                   "Smoothed bytes per second of acknowledged POSTs", registry=r)
        self.link_rtt = Gauge("latentwire_sender_link_rtt_seconds", "Smoothed time of one acknowledged POST",
                              registry=r)
        self.link_pinned = Gauge("latentwire_sender_link_pinned", "1 when LATENTWIRE_SENDER_LINK_KBPS pins the rate",
                                 registry=r)
        self.auto_budgets = Counter("latentwire_sender_auto_budgets", "quality=auto images by budget reason",
                                    ["reason"], registry=r)
        self.auto_budget_bytes = Histogram("latentwire_sender_auto_budget_bytes", "quality=auto budgets chosen",
                                           buckets=(500, 1000, 2000, 5000, 10_000, 20_000, 50_000, 100_000,
                                                    200_000, 500_000, 1_000_000), registry=r)
        self.auto_late = Counter("latentwire_sender_auto_late", "quality=auto images expected after the target",
                                 registry=r)

        self.replans = Counter("latentwire_sender_replans", "Queued quality=auto frames coded again at a "
                               "smaller budget after the link slowed", registry=r)
        self.replan_saved_bytes = Counter("latentwire_sender_replan_saved_bytes", "Stream bytes re-plans took "
                                          "off the queue", registry=r)
        self.superseded = Counter("latentwire_sender_superseded", "Queued frames superseded by a newer upload "
                                  "with the same supersede key", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
