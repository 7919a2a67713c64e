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
    services = doc["services"]
    assert set(services) == {"receiver", "sender"}
    for svc in services.values():
        devices = svc["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        assert "readyz" in " ".join(svc["healthcheck"]["test"])
    assert services["sender"]["depends_on"]["receiver"]["condition"] == "service_healthy"
    volumes = {v.split(":")[0] for svc in services.values() for v in svc["volumes"]}
    assert volumes == set(doc["volumes"]) == {"receiver-store", "sender-outbox"}
    # The secret comes from the environment and compose refuses to start without it.
    for svc in services.values():
        assert re.fullmatch(r"\$\{LATENTWIRE_SECRET:\?.+\}", svc["environment"]["LATENTWIRE_SECRET"])
    cpu = load("docker-compose.cpu.yml")["services"]
    assert all(cpu[s]["deploy"] is None for s in ("receiver", "sender"))


@pytest.mark.parametrize("name", FILES)
def test_every_command_parses_and_every_env_var_is_a_setting(name):
    from receiver.settings import Settings as ReceiverSettings
    from sender.settings import Settings as SenderSettings
    from shared.cli import build_parser

    prefixes = {"receiver": ("LATENTWIRE_RECEIVER_", ReceiverSettings),
                "sender": ("LATENTWIRE_SENDER_", SenderSettings)}
    base = load("docker-compose.yml")["services"]
    for svc_name, svc in load(name)["services"].items():
        command = svc.get("command", base[svc_name]["command"])
        assert command[0] == "latentwire"
        args = build_parser().parse_args(command[1:])  # SystemExit on an unknown command or flag
        assert args.command == svc_name
        prefix, settings_cls = prefixes[svc_name]
        for var in svc.get("environment", {}):
            if var in ("LATENTWIRE_SECRET", "LATENTWIRE_INSECURE_DEMO"):
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
