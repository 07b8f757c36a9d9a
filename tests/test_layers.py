"""The layering rule of docs/architecture.md: ``report/`` and ``data/`` import nothing above them
(no engine, rollout, loops, analysis, cli or launch; rewards/ sits on their row), not even inside a function."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rltrain"
ABOVE = ("rltrain.engine", "rltrain.rollout", "rltrain.loops", "rltrain.analysis",
         "rltrain.cli", "rltrain.launch")


def imported(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("layer", ["report", "data"])
def test_lower_layers_import_nothing_above(layer):
    bad = [f"{p.relative_to(ROOT.parent)}: {n}" for p in sorted((ROOT / layer).rglob("*.py"))
           for n in imported(p) if n.startswith(ABOVE)]
    assert not bad, "imports from a layer above:\n" + "\n".join(bad)


def test_the_scan_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from rltrain.rollout.forward import response_logprobs\n")
    assert imported(f) == ["rltrain.rollout.forward"]
