"""The product never imports the simulators: nothing under gateway/ but the demo imports devices/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {Path("gateway/demo.py")}


def _imported_modules(source: str) -> set[str]:
    """Every module an ``import`` or ``from ... import`` names, at any depth (also inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
        elif (  # importlib.import_module("devices...") spelled out
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


def _product_modules() -> list[Path]:
    return sorted(p.relative_to(ROOT) for p in (ROOT / "gateway").rglob("*.py"))


def test_the_scan_sees_the_demo_import() -> None:
    """The checker itself works: the demo does import the simulators."""
    assert any(m.split(".")[0] == "devices" for m in _imported_modules((ROOT / "gateway/demo.py").read_text()))
    assert _imported_modules("def f():\n    from devices.gt06 import frames\n") == {"devices.gt06"}
    assert _imported_modules("import devices.common as c\n") == {"devices.common"}


@pytest.mark.parametrize("path", _product_modules(), ids=str)
def test_no_product_module_imports_devices(path: Path) -> None:
    if path in ALLOWED:
        return
    imported = _imported_modules((ROOT / path).read_text())
    assert not {m for m in imported if m == "devices" or m.startswith("devices.")}, path


def test_the_service_imports_neither_the_demo_nor_its_brokers() -> None:
    """``gateway run`` (worker, supervisor, CLI) never loads the demo, the simulators or the private Mosquitto."""
    import subprocess
    import sys

    code = ("import sys, gateway.cli, gateway.service.worker, gateway.service.supervisor; "
            "print(sorted(m for m in sys.modules if m.startswith(('gateway.mosquitto', 'gateway.demo', 'devices'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
