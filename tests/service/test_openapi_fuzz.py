"""schemathesis against both services' OpenAPI schemas, each app in process (ASGI, tiny model).

Every operation in ``/openapi.json`` gets ``EXAMPLES`` generated requests in positive mode
(schema-valid) and as many in negative mode (schema-violating), and schemathesis checks each
answer: no 5xx, every status code and content type documented, every JSON body valid against its
documented schema, headers as documented, schema-violating requests refused with a 4xx.

Bodies the schemas can only call "binary" come from our own strategies, so the positive run also
reaches the success paths: images (valid PNG/JPEG of any small size, truncated, random bytes, a
40 000 x 40 000 decompression-bomb header) and msgpack frame batches (valid signed frames, other
secret, bit flips, cuts, random msgpack, random bytes).

``positive_data_acceptance`` is left out: a schema cannot say "a decodable image", "a signed
frame" or "an id that exists", so a schema-valid request is often refused, correctly, with a
documented 4xx (``NotAnImage``, ``BadSignature``, ``InvalidImageId``, ``ImageNotFound``).

Examples are derandomized (the same requests every run) and no example database is written.
"""

from __future__ import annotations

import io
import os
import time

import msgpack
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from PIL import Image
from schemathesis import GenerationMode
from schemathesis.python import asgi as schemathesis_asgi
from schemathesis.specs.openapi import media_types
from schemathesis.specs.openapi.checks import positive_data_acceptance
# Imported here, at collection, rather than lazily by register_media_type inside the fixture: a
# module compiled that late, on a deep stack, can hit CPython 3.11's spurious "AST constructor
# recursion depth mismatch" (python/cpython#106905, fixed in 3.11.8).
from schemathesis.transport import asgi as _asgi_transport  # noqa: F401

from receiver.app import create_app as create_receiver
from sender.app import create_app as create_sender
from shared.wire import Frame, pack_frames
from tests.service.conftest import RECEIVER_SECRET, png_bomb, receiver_rgb, sender_settings, storing_receiver

EXAMPLES = 30  # per operation and mode: about 300 requests, ~20 s of CPU for both services
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
STREAM_TIMEOUT_S = 0.5  # /v1/events never ends: read what it sent by then
REQUEST_TIMEOUT_S = 30.0
# Schema gaps found here whose fix belongs in a route's ``responses=`` (reported with the exact change):
# (service, mode, operation, schemathesis check code). Strict: once fixed, the test asks to delete it.
AWAITING_FIX: set[tuple[str, str, str, str]] = set()


def _image(width: int, height: int, seed: int, fmt: str) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


images = st.one_of(
    st.builds(_image, st.integers(1, 48), st.integers(1, 48), st.integers(0, 9), st.sampled_from(["PNG", "JPEG"])),
    st.builds(lambda data, cut: data[:cut], st.builds(_image, st.just(32), st.just(24), st.integers(0, 9),
                                                      st.just("PNG")), st.integers(0, 400)),
    st.binary(max_size=256),
    st.just(png_bomb()),
)


def frame_batches(codec) -> st.SearchStrategy[bytes]:
    """Signed batches as the sender makes them, and every way of getting one wrong."""
    streams = [codec.encode(receiver_rgb(seed=s), quality=q).stream for s, q in ((0, 0.2), (1, 0.9))]

    def batch(ids: list[int], which: int, secret: str = RECEIVER_SECRET) -> bytes:
        frames = [Frame(id=f"{i:032x}", sent_at=time.time(), stream=streams[which]) for i in ids]
        return pack_frames(frames, secret.encode())

    ids = st.lists(st.integers(0, 2**128 - 1), min_size=1, max_size=3)
    valid = st.builds(batch, ids, st.integers(0, 1))

    @st.composite
    def damaged(draw) -> bytes:
        data = bytearray(draw(valid))
        if draw(st.booleans()):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
            return bytes(data)
        return bytes(data[: draw(st.integers(0, len(data) - 1))])

    leaves = st.none() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=8) | st.binary(max_size=16)
    any_msgpack = st.recursive(leaves, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                          max_size=3), max_leaves=8)
    other_secret = st.builds(batch, ids, st.integers(0, 1), st.just("another-secret-of-enough-length"))
    return st.one_of(valid, other_secret, damaged(), any_msgpack.map(lambda v: msgpack.packb(v, use_bin_type=True)),
                     st.binary(max_size=256))


@pytest.fixture(scope="module")
def schemas(tmp_path_factory, tiny_models_dir, tiny_codec):
    from receiver.settings import Settings as ReceiverSettings

    sender = create_sender(sender_settings(tmp_path_factory.mktemp("sender"), tiny_models_dir),
                           transport=storing_receiver())
    with pytest.MonkeyPatch.context() as env:  # no LATENTWIRE_* variable of the shell leaks in
        for key in [k for k in os.environ if k.startswith("LATENTWIRE_")]:
            env.delenv(key)
        receiver = create_receiver(ReceiverSettings(
            secret=RECEIVER_SECRET, store_dir=tmp_path_factory.mktemp("store"), model=tiny_codec.name,
            models_dir=tiny_models_dir, device="cpu", sse_heartbeat_s=0.1))
    media_types.register_media_type("image/png", images)  # also serves the schema's image/*
    media_types.register_media_type("application/octet-stream", images)
    media_types.register_media_type("application/msgpack", frame_batches(tiny_codec))
    try:
        yield {"sender": schemathesis.openapi.from_asgi("/openapi.json", sender),
               "receiver": schemathesis.openapi.from_asgi("/openapi.json", receiver)}
    finally:
        media_types.unregister_all()
        schemathesis_asgi.shutdown_lifespans()  # runs both apps' shutdown: workers stop, stores close


def _messages(exc: BaseException) -> list[str]:
    """Each distinct failure's own report (hypothesis groups several failures of one operation)."""
    if isinstance(exc, BaseExceptionGroup) and not str(exc).startswith("Schemathesis found"):
        return [m for sub in exc.exceptions for m in _messages(sub)]
    return [str(exc)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
@pytest.mark.parametrize("service", ["sender", "receiver"])
def test_every_operation_answers_as_documented(schemas, service, mode):
    schema = schemas[service]
    failures, statuses = [], {}
    for result in schema.get_all_operations():
        operation = result.ok()
        timeout = STREAM_TIMEOUT_S if operation.path == "/v1/events" else REQUEST_TIMEOUT_S
        seen = statuses.setdefault(operation.label, set())

        @FUZZ
        @given(case=operation.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call_and_validate(timeout=timeout, excluded_checks=[positive_data_acceptance])
            seen.add(response.status_code)

        try:
            check()
        except Unsatisfiable:
            pass  # negative mode: nothing in this operation can be made schema-invalid (no parameters)
        except (Exception, BaseExceptionGroup) as exc:  # schemathesis reports a BaseExceptionGroup
            failures += [f"{operation.label}: {message}" for message in _messages(exc)]
    awaited = {(label, code) for s, m, label, code in AWAITING_FIX if (s, m) == (service, mode.value)}

    def gap(failure: str) -> tuple[str, str] | None:
        return next(((label, code) for label, code in awaited
                     if failure.startswith(f"{label}: ") and f"- {code} " in failure), None)

    unexpected = [f for f in failures if gap(f) is None]
    assert not unexpected, "\n\n".join(unexpected)
    fixed = awaited - {gap(f) for f in failures}
    assert not fixed, f"fixed now: delete {sorted(fixed)} from AWAITING_FIX"

    if mode is GenerationMode.POSITIVE:  # the generated bodies reach the success paths too
        success = {"sender": ("POST /v1/images", 202), "receiver": ("POST /v1/frames", 200)}[service]
        assert success[1] in statuses[success[0]], statuses
    with schemathesis_asgi.get_client(schema.app) as client:  # and the app still serves
        assert client.get("/readyz").status_code == 200
