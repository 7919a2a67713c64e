"""Settings flags of ``latentwire sender`` and ``latentwire receiver``: one ``--field-name`` for each
settings field the service's cli.py names, overriding the field's env var.

A flag's help is its field's ``description``: settings.py says each thing once. The settings import
the codec, hence torch, so they are read only when ``--help`` asks; building the parser imports
nothing, and ``latentwire --help`` stays instant (this module imports no FastAPI either).
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping


def add_settings_flags(parser: argparse.ArgumentParser, flags: Mapping[str, dict], settings: str) -> None:
    """``flags``: field name -> add_argument keywords beyond the help (type, choices, action);
    ``settings``: "module:Class" of the service's settings. Make ``parser`` with ``add_help=False``:
    the -h/--help added here fills each flag's help in before it prints."""
    parser.add_argument("-h", "--help", action=_SettingsHelp, settings=settings, help="show this help and exit")
    for name, keywords in flags.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, **keywords)


def given(args: argparse.Namespace, flags: Mapping[str, dict]) -> dict:
    """The settings flags given on the command line; the other fields come from the environment."""
    return {name: getattr(args, name) for name in flags if getattr(args, name) is not None}


def env_names(settings_class, name: str) -> list[str]:
    """The env vars of field ``name``: its aliases (the shared LATENTWIRE_SECRET ...), else the
    service's prefix plus the name in capitals."""
    from pydantic import AliasChoices

    alias = settings_class.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    return [settings_class.model_config.get("env_prefix", "") + name.upper()]


class _SettingsHelp(argparse.Action):
    def __init__(self, option_strings, dest, settings: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)
        self.settings = settings

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        module, name = self.settings.split(":")
        cls = getattr(importlib.import_module(module), name)
        for action in parser._actions:
            field = cls.model_fields.get(action.dest)
            if field is not None and action.help is None:
                default = "unset" if field.default is None else field.default
                help_text = f"{field.description} (env {env_names(cls, action.dest)[0]}; default {default})"
                action.help = help_text.replace("%", "%%")  # argparse formats help with %
        parser.print_help()
        parser.exit()
