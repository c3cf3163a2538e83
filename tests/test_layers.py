"""The package's import graph: no circles, and the core knows nothing of training, evaluation, the CLI or frameworks.

Imports are read from the source (``ast``), lazy imports inside functions included; imports under
``if TYPE_CHECKING:`` are annotations only and are left out.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "native_retriever"

CORE = {
    "errors",
    "compat",
    "checks",
    "models",
    "conversation",
    "states",
    "generation",
    "heads",
    "capture",
    "teacher",
    "embedder",
    "index",
    "files",
    "documents",
    "protocols",
    "extras",
    "bm25",
}
# What the core may never import: the package's upper layers and the optional frameworks and tools.
UPPER = ("training", "evaluation", "cli", "bench_latency", "benchmarks", "integrations", "latent", "agent", "data")
THIRD_PARTY = ("langchain", "langchain_core", "langgraph", "llama_index", "ranx", "peft", "matplotlib")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return isinstance(test, ast.Name | ast.Attribute) and ast.unparse(test).endswith("TYPE_CHECKING")


def imports(path: Path, name: str | None = None) -> set[str]:
    """Absolute names of every module ``path`` (module ``name``) imports at run time."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # `from . import x` imports the submodule x
                if (PACKAGE.parent / (target + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                    found.add(f"{target}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_import_graph_has_no_circles() -> None:
    graph = package_graph()
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import circle: {' -> '.join(error.args[1])}")


def test_core_modules_import_no_upper_layer_or_framework() -> None:
    offences = []
    for name in sorted(CORE):
        path = PACKAGE / f"{name}.py"
        assert path.exists(), f"core module {name} is gone: update CORE in this test"
        for target in sorted(imports(path)):
            first = target.split(".")[0]
            inside = target.removeprefix("native_retriever.").split(".")[0] if first == "native_retriever" else None
            if (inside in UPPER) or first in THIRD_PARTY:
                offences.append(f"native_retriever.{name} imports {target}")
    assert not offences, "\n".join(offences)


def test_latent_inference_does_not_import_latent_training() -> None:
    for name in ("config", "embedder", "encoder"):
        found = imports(PACKAGE / "latent" / f"{name}.py")
        assert not {m for m in found if m.startswith(("native_retriever.latent.training", "native_retriever.training"))}


def test_the_walk_sees_lazy_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from .evaluation import x\n"
        "def f():\n    from .training import y\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(source)
    found = imports(path, "native_retriever.probe")
    assert "native_retriever.training" in found and "native_retriever.evaluation" not in found
