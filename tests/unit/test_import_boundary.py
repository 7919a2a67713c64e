"""shared/ is the codec library: its modules never import the web stack, the services or the tools.

The tools (shared/tools/) and the services' common code (shared/service/) may import FastAPI and
httpx; the library beside them (shared/*.py) must stay importable without them, so that a codec
user, the trainer and the GPU scripts never pull in the services.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
FORBIDDEN = ("fastapi", "starlette", "httpx", "uvicorn", "sender", "receiver", "shared.tools", "shared.service")


def _library_modules() -> list[Path]:
    return sorted(SHARED.glob("*.py"))


def _forbidden(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in FORBIDDEN)


def _imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module an ``import`` statement in ``path`` names, at any depth (function-local too)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from shared import tools`` imports shared.tools: name both the module and module.name
            names += [(node.lineno, node.module)]
            names += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return names


def test_the_library_is_every_top_level_module_of_shared():
    names = {p.stem for p in _library_modules()}
    assert {"network", "codec", "bitstream", "wire", "images", "errors", "checkpoint", "context"} <= names


def test_no_library_module_imports_the_web_stack_the_services_or_the_tools():
    offences = [f"shared/{path.name}:{line} imports {name}"
                for path in _library_modules()
                for line, name in _imported_names(path) if _forbidden(name)]

    assert not offences, "the codec library imports what it must not:\n" + "\n".join(offences)


def test_importing_the_library_loads_none_of_them():
    modules = ", ".join(f"shared.{p.stem}" for p in _library_modules() if p.stem != "__init__")
    code = (f"import sys\nimport {modules}\n"
            f"print('\\n'.join(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=SHARED.parent, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr

    loaded = {name for name in result.stdout.split() if _forbidden(name)}
    tops = sorted(name for name in loaded if name.rpartition(".")[0] not in loaded)  # httpx, not httpx._api

    assert not tops, f"importing {modules} loaded: {', '.join(tops)}"
