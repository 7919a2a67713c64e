"""The README's command lines are real: every ``latentwire …`` line in its shell blocks parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
MODEL_CARD = README.parent / "models" / "README.md"
MAX_WORDS = 1200
MAX_MODEL_CARD_WORDS = 1500  # tables; the history lives in models/TRAINING.md


def _command_lines() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("latentwire ")]


def test_the_readme_shows_commands_and_stays_short():
    assert len(_command_lines()) >= 10
    assert len(README.read_text().split()) <= MAX_WORDS


def test_the_model_card_stays_short_and_names_the_shipped_checkpoint():
    text = MODEL_CARD.read_text()
    assert len(text.split()) <= MAX_MODEL_CARD_WORDS
    shipped = sorted(p.name for p in MODEL_CARD.parent.glob("lw-*.pt"))
    assert shipped and all(f"`{name}`" in text for name in shipped), shipped


@pytest.mark.parametrize("line", _command_lines())
def test_every_command_line_parses(line):
    from shared.tools.cli import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])

    assert callable(args.func)
