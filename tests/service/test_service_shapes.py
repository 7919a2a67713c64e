"""Both services answer the same questions with the same shapes (issue 23): /readyz, the model
entries of /v1/models and the name of a bad request's 422, asserted key for key on a sender and a
receiver app in process (tiny model, CPU)."""

from __future__ import annotations

import socket
import sqlite3

import pytest

from receiver.app import create_app as create_receiver
from sender.app import create_app as create_sender
from tests.conftest import TINY_MODEL
from tests.service.conftest import TestClient, sender_settings, storing_receiver

READY_KEYS = {"status", "reasons", "checks"}
MODEL_KEYS = {"mode", "name", "weights", "device", "precision", "network", "max_side", "clean_first"}


@pytest.fixture
def sender_client(tmp_path, tiny_models_dir):
    app = create_sender(sender_settings(tmp_path / "sender", tiny_models_dir), transport=storing_receiver())
    with TestClient(app) as client:
        yield client


def test_readyz_is_one_body_on_both_services(sender_client, receiver_client, tiny_codec):
    sender, receiver = sender_client.get("/readyz"), receiver_client.get("/readyz")
    assert (sender.status_code, receiver.status_code) == (200, 200)
    assert sender.json() == {"status": "ready", "reasons": [],
                             "checks": {"model": True, "outbox": True, "encoder": True, "delivery": True}}
    assert receiver.json() == {"status": "ready", "reasons": [], "checks": {"model": True, "store": True},
                               "model": f"{TINY_MODEL}@{tiny_codec.weights}", "insecure_demo": False}
    assert set(sender.json()) == READY_KEYS and set(receiver.json()) - READY_KEYS == {"model", "insecure_demo"}
    # The OpenAPI schemas say so too, for the 200 and the 503 alike.
    for client in (sender_client, receiver_client):
        responses = client.get("/openapi.json").json()["paths"]["/readyz"]["get"]["responses"]
        refs = {responses[code]["content"]["application/json"]["schema"]["$ref"] for code in ("200", "503")}
        (ref,) = refs
        schema = client.get("/openapi.json").json()["components"]["schemas"][ref.rsplit("/", 1)[1]]
        assert READY_KEYS <= set(schema["required"])


@pytest.mark.slow
def test_sender_not_ready_says_which_check_failed_and_what_to_do(sender_client, tmp_path):
    svc = sender_client.app.state.services
    # Another process holds the outbox's write lock (as a second writer or a stuck backup would):
    # the probe waits out sqlite's busy timeout (5 s) and fails.
    other = sqlite3.connect(tmp_path / "sender" / "outbox.sqlite3", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        r = sender_client.get("/readyz")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert r.json()["checks"] == {"model": True, "outbox": False, "encoder": True, "delivery": True}
    (reason,) = r.json()["reasons"]
    assert reason.startswith("the outbox database cannot be written") and "LATENTWIRE_SENDER_DATA_DIR" in reason
    assert str(tmp_path) not in r.text  # no paths in answers
    assert sender_client.get("/readyz").status_code == 200  # the lock is gone: ready again

    sender_client.portal.call(svc.deliverer.stop)
    r = sender_client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["delivery"] is False
    assert r.json()["reasons"] == ["the delivery worker is not running: restart the sender (its log has the error "
                                   "that stopped it)"]


def test_receiver_in_cluster_mode_checks_the_broker(receiver_settings_factory):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = receiver_settings_factory(broker_url=f"nats://127.0.0.1:{port}")
    with TestClient(create_receiver(settings)) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert r.json()["checks"] == {"model": True, "broker": False, "store": True}
    (reason,) = r.json()["reasons"]
    assert f"the NATS server at nats://127.0.0.1:{port} is unreachable" in reason and "start it" in reason


def test_v1_models_lists_the_same_entries_on_both_services(sender_client, receiver_client):
    sender, receiver = sender_client.get("/v1/models"), receiver_client.get("/v1/models")
    assert (sender.status_code, receiver.status_code) == (200, 200)
    assert set(sender.json()) == {"models", "default_quality", "modes", "default_mode"}
    assert set(receiver.json()) == {"models", "insecure_demo", "wire_version", "max_frame_bytes", "max_batch"}
    (s_entry,), (r_entry,) = sender.json()["models"], receiver.json()["models"]
    assert set(s_entry) == set(r_entry) == MODEL_KEYS
    # The same checkpoint on the same device: the entries are equal, not only alike.
    assert s_entry == r_entry
    assert (s_entry["mode"], s_entry["name"], s_entry["device"], s_entry["max_side"]) == (
        "standard", TINY_MODEL, "cpu", 4096)


@pytest.mark.parametrize("query", ["limit=abc", "limit=0"])
def test_a_bad_query_parameter_is_invalid_request_on_both_services(sender_client, receiver_client, query):
    for client in (sender_client, receiver_client):
        r = client.get(f"/v1/images?{query}")
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "InvalidRequest" and "limit" in r.json()["message"]


def test_unknown_paths_and_methods_say_what_to_do_on_both_services(sender_client, receiver_client):
    for service, client in (("sender", sender_client), ("receiver", receiver_client)):
        r = client.get("/v1/nothing")
        assert r.status_code == 404 and r.json() == {
            "error": "NotFound", "message": f"no such endpoint /v1/nothing: see /docs for the {service}'s API"}
        r = client.delete("/v1/images")
        allowed = {"sender": "GET, POST", "receiver": "GET"}[service]
        assert r.status_code == 405 and r.headers["allow"] == allowed
        assert r.json() == {"error": "MethodNotAllowed", "message": f"DELETE is not allowed on /v1/images, which "
                            f"takes {allowed}: see /docs for the {service}'s API"}
    # A request meant for the other service is told where to go.
    r = sender_client.post("/v1/frames", content=b"\x80", headers={"Content-Type": "application/msgpack"})
    assert r.status_code == 404 and "the receiver's POST /v1/frames" in r.json()["message"]
    r = receiver_client.post("/v1/images", content=b"\x89PNG", headers={"Content-Type": "image/png"})
    assert r.status_code == 405 and "the sender's /v1/images" in r.json()["message"]


def test_an_error_body_is_one_shape_on_both_services(sender_client, receiver_client):
    """The same error, the same JSON: ``shared.errors.LatentwireError.body()`` through one handler."""
    for client in (sender_client, receiver_client):
        r = client.get("/v1/images/" + "A" * 32)
        assert r.status_code == 400 and r.json() == {
            "error": "InvalidImageId", "message": "image ids are 32 lowercase hex digits: the id the sender's "
                                                  "POST /v1/images answered with (a frame's id)"}
    schemas = [c.get("/openapi.json").json()["components"]["schemas"]["ErrorBody"] for c in (sender_client,
                                                                                           receiver_client)]
    assert {"error", "message"} <= set(schemas[0]["properties"]) and set(schemas[1]["properties"]) == {"error",
                                                                                                      "message"}
