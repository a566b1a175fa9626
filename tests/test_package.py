"""The package's modules import one another without a cycle.

Why a test: a cycle is easy to hide behind an import inside a function, and then a module can
only be imported in one order. The graph counts module-level and function-level imports alike,
so hiding one no longer passes.
"""

import ast

from tests.conftest import REPO

PACKAGE = REPO / "workflow/scripts/fusion_dag"


def imported_modules(tree: ast.Module, modules: set) -> set:
    """The package modules a parsed module imports anywhere in its body (``fusion_dag.x`` or
    ``from fusion_dag import x``)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("fusion_dag.")}
    return found & modules


def import_graph() -> dict:
    """Module -> the package modules it imports, for every module of the package."""
    paths = {path.stem: path for path in PACKAGE.glob("*.py") if path.stem != "__init__"}
    return {
        name: imported_modules(ast.parse(path.read_text()), set(paths)) - {name}
        for name, path in paths.items()
    }


def find_cycle(graph: dict) -> list | None:
    """One cycle of ``graph`` as the modules along it, first repeated at the end; None if none."""
    done, path = set(), []

    def visit(node):
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for child in sorted(graph[node]):
            cycle = visit(child)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_the_import_graph_is_read_from_every_module():
    graph = import_graph()
    assert {"image", "branch", "features", "fusion"} <= set(graph)
    assert {"branch", "features"} <= graph["image"]


def test_find_cycle_names_the_modules_of_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_the_package_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "fusion_dag imports in a cycle: " + " -> ".join(cycle)


def test_the_modules_snakemake_reads_at_start_import_no_statistics_or_tensorflow():
    """rules/common.smk imports package modules at every Snakemake start, and on a cluster in
    every job: scikit-learn, SciPy or TensorFlow there would add seconds to each."""
    import re
    import subprocess
    import sys

    common = (REPO / "workflow/rules/common.smk").read_text()
    modules = sorted(set(re.findall(r"^from fusion_dag(?:\.(\w+))? import (\w+)", common, re.M)))
    names = [f"fusion_dag.{module or name}" for module, name in modules]
    assert "fusion_dag.plan" in names and "fusion_dag.folds" in names
    heavy = ["sklearn", "scipy", "tensorflow", "keras", "matplotlib"]
    script = "; ".join(
        [*(f"import {name}" for name in names), f"print([m for m in {heavy} if m in sys.modules])"]
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import sys; {script}"],
        capture_output=True,
        text=True,
        cwd=REPO / "workflow/scripts",
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
