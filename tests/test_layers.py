"""
The layers of docs/architecture.md hold in the code: every import of a
myserver module points to an earlier layer, or to a module listed before
it in its own layer.  Function-local and C{TYPE_CHECKING} imports count.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from twisted.trial.unittest import TestCase

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def documentedOrder() -> dict[str, tuple[int, int]]:
    """
    Each module of the layer table, by its name under C{myserver.}, with
    (layer, position in the layer).
    """
    text = ARCHITECTURE.read_text()
    table = text.split("<!-- layers:", 1)[1].split("<!-- /layers -->", 1)[0]
    order: dict[str, tuple[int, int]] = {}
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]
    for layer, row in enumerate(rows):
        modules = re.findall(r"`([\w.]+)`", row.split("|")[2])
        for position, module in enumerate(modules):
            order[module] = (layer, position)
    return order


def moduleName(path: Path) -> str:
    parts = list(path.relative_to(ROOT / "myserver").with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "myserver"


def importsOf(path: Path) -> set[str]:
    """
    The myserver modules C{path} imports, by their name under C{myserver.}.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name == "myserver":
                found.add("myserver")
            elif name.startswith("myserver."):
                found.add(name.removeprefix("myserver."))
    return found


class LayerTests(TestCase):
    def test_everyModuleHasItsPlace(self) -> None:
        order = documentedOrder()
        modules = {
            moduleName(path)
            for path in (ROOT / "myserver").rglob("*.py")
            if "bench" not in path.parts
        }
        self.assertEqual(sorted(modules - order.keys()), [], "missing from the table")
        self.assertEqual(sorted(order.keys() - modules), [], "no such module")

    def test_importsPointDown(self) -> None:
        order = documentedOrder()
        wrong = []
        for path in sorted((ROOT / "myserver").rglob("*.py")):
            if "bench" in path.parts:
                for imported in importsOf(path):
                    if not imported.startswith("bench"):
                        wrong.append(f"{moduleName(path)} imports {imported}")
                continue
            module = moduleName(path)
            for imported in sorted(importsOf(path)):
                if imported.startswith("bench"):
                    wrong.append(f"{module} imports {imported}")
                elif order[imported] >= order[module]:
                    wrong.append(f"{module} imports {imported}, a later module")
        self.assertEqual(wrong, [])
