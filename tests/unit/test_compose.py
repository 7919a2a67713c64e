"""docker-compose.yml: valid against the compose specification, and every command and env var real.

No Docker engine runs in CI, so the file is proven two ways: by the compose-spec JSON schema
(from ../shared/schemas, present in CI; skipped with a reason where absent) and, without any
schema, by parsing each service's command with our own CLI parser and each LATENTWIRE_* variable
against the settings classes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
FILES = ["docker-compose.yml", "docker-compose.cpu.yml"]


class _ComposeLoader(yaml.SafeLoader):
    """Compose's ``!reset`` / ``!override`` tags (override files) read as plain values."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: None)
_ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: loader.construct_mapping(node) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode)
    else loader.construct_scalar(node),
)


def load(name: str) -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=_ComposeLoader)


@pytest.mark.parametrize("name", FILES)
def test_compose_file_matches_the_compose_spec_schema(name):
    if not SCHEMA.is_file():
        pytest.skip(f"compose-spec schema not found at {SCHEMA} (it ships beside the checkout in CI)")
    import jsonschema

    jsonschema.validate(load(name), json.loads(SCHEMA.read_text()))


def test_both_services_gpu_reservations_healthchecks_and_ordering():
    doc = load("docker-compose.yml")
    services = {name: svc for name, svc in doc["services"].items() if "profiles" not in svc}
    assert set(services) == {"receiver", "sender"}
    for svc in services.values():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "readyz" in " ".join(svc["healthcheck"]["test"])
    assert services["sender"]["depends_on"]["receiver"]["condition"] == "service_healthy"
    volumes = {v.split(":")[0] for svc in services.values() for v in svc["volumes"]}
    assert volumes == {"receiver-store", "sender-outbox"}
    # The secret comes from the environment and compose refuses to start without it.
    from shared.wire import MIN_SECRET_CHARS

    for svc in services.values():
        assert re.fullmatch(r"\$\{LATENTWIRE_SECRET:\?.+\}", svc["environment"]["LATENTWIRE_SECRET"])
        assert f"{MIN_SECRET_CHARS}+ characters" in svc["environment"]["LATENTWIRE_SECRET"]  # the app's own rule
    cpu = load("docker-compose.cpu.yml")["services"]
    assert all(cpu[s]["deploy"] is None for s in ("receiver", "sender"))


def test_cluster_profile_has_the_engines_three_workers_and_a_broker_sender():
    doc = load("docker-compose.yml")
    cluster = {name: svc for name, svc in doc["services"].items() if svc.get("profiles") == ["cluster"]}
    assert set(cluster) == {"nats", "postgres", "seaweedfs", "cluster-receiver", "cluster-sender"}
    workers = cluster["cluster-receiver"]
    assert workers["deploy"]["replicas"] == 3
    env = workers["environment"]
    assert env["LATENTWIRE_RECEIVER_BROKER_URL"] == "nats://nats:4222"
    assert env["LATENTWIRE_RECEIVER_DATABASE_URL"].startswith("postgresql://") and "@postgres:5432/" in env[
        "LATENTWIRE_RECEIVER_DATABASE_URL"]
    assert env["LATENTWIRE_RECEIVER_BLOB_URL"] == "s3://latentwire"
    assert env["LATENTWIRE_RECEIVER_BLOB_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert "--broker-url" in cluster["cluster-sender"]["command"]
    nats_conf = doc["configs"]["nats-conf"]["content"]
    assert "jetstream" in nats_conf and "max_payload: 8MB" in nats_conf  # frames above NATS's 1 MB default
    # every engine keeps its data in a named volume
    for name in ("nats", "postgres", "seaweedfs"):
        assert any(v.split(":")[0] in doc["volumes"] for v in cluster[name]["volumes"])


@pytest.mark.parametrize("name", FILES)
def test_every_command_parses_and_every_env_var_is_a_setting(name):
    from receiver.settings import Settings as ReceiverSettings
    from sender.settings import Settings as SenderSettings
    from shared.tools.cli import build_parser

    prefixes = {"receiver": ("LATENTWIRE_RECEIVER_", ReceiverSettings),
                "sender": ("LATENTWIRE_SENDER_", SenderSettings)}
    base = load("docker-compose.yml")["services"]
    for svc_name, svc in load(name)["services"].items():
        if svc_name in ("nats", "postgres", "seaweedfs"):  # the engines' own images
            continue
        command = svc.get("command", base[svc_name]["command"])
        assert command[0] == "latentwire"
        args = build_parser().parse_args(command[1:])  # SystemExit on an unknown command or flag
        service = svc_name.removeprefix("cluster-")
        assert args.command == service
        prefix, settings_cls = prefixes[service]
        for var in svc.get("environment", {}):
            if var in ("LATENTWIRE_SECRET", "LATENTWIRE_INSECURE_DEMO", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                continue
            assert var.startswith(prefix), f"{svc_name}: {var} is not a {prefix}* setting"
            field = var[len(prefix):].lower()
            assert field in settings_cls.model_fields, f"{svc_name}: {var} names no setting"


def test_env_example_lists_only_real_settings():
    from receiver.settings import Settings as ReceiverSettings
    from sender.settings import Settings as SenderSettings

    names = re.findall(r"^#?\s*(LATENTWIRE_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M)
    assert "LATENTWIRE_SECRET" in names
    fields = {**{f"LATENTWIRE_RECEIVER_{f.upper()}": f for f in ReceiverSettings.model_fields},
              **{f"LATENTWIRE_SENDER_{f.upper()}": f for f in SenderSettings.model_fields}}
    for n in names:
        if n not in ("LATENTWIRE_SECRET", "LATENTWIRE_INSECURE_DEMO"):
            assert n in fields, f".env.example documents {n}, which no service reads"
