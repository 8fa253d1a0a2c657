"""The package boundaries of docs/design.md hold: no package imports against their direction."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {
    "config": set(),
    "wallet": {"config"},
    "connectors": {"config"},
    "orders": {"wallet", "config"},
    "bot": {"config", "wallet", "connectors", "orders"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_downward(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path) & set(ALLOWED):
            if name != package and name not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not bad, "imports against the direction in docs/design.md:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_says_what_it_owns(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and "Owns:" in doc and "import" in doc


def test_checker_catches_a_wrong_import(tmp_path: Path) -> None:
    rogue = tmp_path / "rogue.py"
    rogue.write_text("from orders.engine import apply\nimport bot.cli\n")
    assert {"orders", "bot"} <= _imports(rogue)
