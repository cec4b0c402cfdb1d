"""The house rules of docs/architecture.md ("House rules"): packages import only the floors below them, and no
function outside the listed flag tables and faithful ports is longer than 60 lines."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOORS = [{"common"}, {"diffusion"}, {"models"}, {"loss", "imagedata"}, {"evaluations"}, {"training"},
          {"methods"}, {"preprocessing", "examples", "demo"}]
FLOOR = {pkg: level for level, pkgs in enumerate(FLOORS) for pkg in pkgs}
SCRIPTS = {p.stem for p in ROOT.glob("*.py")}
MAX_LINES = 60


def sources():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in FLOOR:
            yield rel, ast.parse(path.read_text())


def imports(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]


def test_packages_import_only_the_floors_below_them():
    upward = sorted({f"{rel} imports {top}" for rel, tree in sources() for top in imports(tree)
                     if top in SCRIPTS or (top in FLOOR and FLOOR[top] > FLOOR[rel.parts[0]])})
    assert not upward, "imports against docs/architecture.md's floors: " + "; ".join(upward)


def test_no_function_is_longer_than_the_rule_allows():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## House rules"):]
    section = section[:section.index("\n## ", 1)]
    allowed = set(re.findall(r"`([\w/]+\.py::\w+)`", section))
    long = sorted(f"{rel}::{node.name} ({node.end_lineno - node.lineno + 1} lines)"
                  for rel, tree in [*sources(), *((p.relative_to(ROOT), ast.parse(p.read_text()))
                                                   for p in sorted(ROOT.glob("*.py")))]
                  for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.end_lineno - node.lineno + 1 > MAX_LINES and f"{rel}::{node.name}" not in allowed)
    assert not long, "functions over 60 lines (split them, or list a flag table or faithful port): " + "; ".join(long)
    assert len(allowed) == 4
