"""Each setting is described once, in its field (issue 23): every field has a description, an
entry in .env.example and either a flag or a place in its CLI's ENV_ONLY list; .env.example and the
flags name nothing that is not a field; and ``--help`` shows each flag's field description."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

import receiver.cli
import sender.cli
from receiver.settings import Settings as ReceiverSettings
from sender.settings import Settings as SenderSettings
from shared.service.flags import env_names
from shared.tools.cli import build_parser

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
SERVICES = [("sender", SenderSettings, sender.cli), ("receiver", ReceiverSettings, receiver.cli)]
# Flags of the commands that are not settings.
NOT_SETTINGS = {"sender": {"log_level"}, "receiver": set()}


def _env_example_names() -> set[str]:
    """Every LATENTWIRE_* variable .env.example sets or shows commented out."""
    return set(re.findall(r"^#?\s*(LATENTWIRE_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), flags=re.MULTILINE))


def _options(command: str) -> dict[str, str]:
    """dest -> the first option string of each flag of ``latentwire <command>``, help excepted."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest: a.option_strings[0] for a in sub.choices[command]._actions
            if a.option_strings and a.dest not in ("help", argparse.SUPPRESS)}


@pytest.mark.parametrize("service, settings, cli", SERVICES, ids=[s[0] for s in SERVICES])
def test_every_field_has_a_description(service, settings, cli):
    missing = [name for name, field in settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"{service} settings without a description: {missing}"


@pytest.mark.parametrize("service, settings, cli", SERVICES, ids=[s[0] for s in SERVICES])
def test_env_example_names_every_field(service, settings, cli):
    names = _env_example_names()
    missing = [name for name in settings.model_fields if not set(env_names(settings, name)) & names]
    assert not missing, f".env.example lacks {service} settings: {missing}"


def test_env_example_names_no_unknown_variable():
    known = {env for _, settings, _ in SERVICES for name in settings.model_fields for env in env_names(settings, name)}
    assert _env_example_names() - known == set()


@pytest.mark.parametrize("service, settings, cli", SERVICES, ids=[s[0] for s in SERVICES])
def test_every_field_has_a_flag_or_is_env_only_and_every_flag_is_a_field(service, settings, cli):
    fields, flags, env_only = set(settings.model_fields), set(cli.FLAGS), set(cli.ENV_ONLY)
    assert not flags & env_only, "a field is both a flag and env-only"
    assert flags | env_only == fields, f"neither flag nor env-only: {fields - flags - env_only}; " \
                                       f"not fields: {(flags | env_only) - fields}"
    options = _options(service)
    assert set(options) - NOT_SETTINGS[service] == flags
    assert all(options[name] == "--" + name.replace("_", "-") for name in flags)
    assert "secret" in env_only  # never on a command line: ps shows those to every user


@pytest.mark.parametrize("service, settings, cli", SERVICES, ids=[s[0] for s in SERVICES])
def test_help_of_each_flag_is_its_field_description(service, settings, cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([service, "--help"])
    assert exit_info.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at hyphens too
    for name in cli.FLAGS:
        described = "".join(f"{settings.model_fields[name].description} (env {env_names(settings, name)[0]};".split())
        assert described in text, name
