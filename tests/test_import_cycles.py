"""No import cycles among the modules of ``trio_chatruns``, type-only ones included.

STYLE.md: "no import cycles (not even type-only ones)". The checker in
``tools/import_cycles.py`` reads every import statement with ``ast`` (so imports
under ``if TYPE_CHECKING:`` and relative imports count) and reports each
strongly connected component of the import graph.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _load_checker() -> ModuleType:
    path = ROOT / "tools" / "import_cycles.py"
    spec = importlib.util.spec_from_file_location("_import_cycles", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_no_import_cycles_in_package() -> None:
    checker = _load_checker()
    graph = checker.import_graph(ROOT / "src" / "trio_chatruns")
    assert "trio_chatruns.server.app" in graph
    assert checker.find_cycles(graph) == []


def test_checker_sees_type_only_and_relative_imports(tmp_path: Path) -> None:
    checker = _load_checker()
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import thing\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import other\n"
    )
    (package / "c.py").write_text("from . import a\n")
    graph = checker.import_graph(package)
    assert graph["pkg.c"] == {"pkg.a"}
    assert checker.find_cycles(graph) == [["pkg.a", "pkg.b"]]
