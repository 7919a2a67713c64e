""".dockerignore keeps the venv and the data out of the build context and keeps in everything the
Dockerfile COPYs. Patterns are matched as Docker matches them: relative to the context root, ``*``
within one path segment, ``**`` across any number, a pattern that matches a directory excludes
everything below it, and the last matching line wins (``!`` lines re-include)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def _rules() -> list[tuple[bool, re.Pattern]]:
    """(excludes, regex) per line of .dockerignore; comments and blank lines skipped."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        rules.append((not keep, _regex(line.lstrip("!").strip("/"))))
    return rules


def excluded(path: str, rules=None) -> bool:
    """Whether ``path`` (relative to the context root) stays out of the build context."""
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    result = False
    for excludes, regex in rules if rules is not None else _rules():
        if any(regex.fullmatch(p) for p in prefixes):
            result = excludes
    return result


def copied_sources() -> list[str]:
    """The source paths of every COPY in the Dockerfile (flags and the destination left out)."""
    sources = []
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = line.split(maxsplit=1)
        if words and words[0].upper() == "COPY":
            sources += [w for w in shlex.split(words[1])[:-1] if not w.startswith("--")]
    return sources


def test_the_matcher_follows_docker():
    rules = [(True, _regex("runs")), (True, _regex("**/*.pyc")), (False, _regex("runs/keep.txt"))]
    assert excluded("runs", rules) and excluded("runs/a/b.pt", rules)
    assert not excluded("models/runs", rules) and not excluded("runs-old", rules)
    assert excluded("x.pyc", rules) and excluded("sender/__pycache__/app.pyc", rules)
    assert not excluded("runs/keep.txt", rules)


def test_venv_data_and_caches_stay_out_of_the_build_context():
    for path in (".venv", ".venv/bin/python", ".data", ".data/receiver/index.sqlite3", "runs", "data",
                 ".git", "results", ".pytest_cache", "sender/__pycache__/app.cpython-311.pyc"):
        assert excluded(path), path


def test_everything_the_dockerfile_copies_is_in_the_build_context():
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "shared", "sender", "receiver", "models"} <= set(sources), sources
    for source in sources:
        top = ROOT / source
        assert top.exists(), source
        files = [top] + [p for p in top.rglob("*") if "__pycache__" not in p.parts]
        for path in files:
            assert not excluded(path.relative_to(ROOT).as_posix()), path
