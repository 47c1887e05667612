"""The package's parts import one another in one direction only (issue 18, docs/architecture.md).

A *part* is a top-level module or subpackage of `diptych` (`editor`, `sampler`, `shapes`, `train`, ...; the
package's own `__init__` is the part `diptych`). Every import counts: module-level, function-level (lazy),
under `if TYPE_CHECKING:`, relative or absolute, and `importlib.import_module("diptych....")` with a
literal name. The graph is read from the source with `ast`, so nothing is imported.

Checked: no two parts import each other, no longer cycle either, and the layers below point one way (a part
imports only parts of its own layer or of lower ones). A new top-level module must be placed in `LAYERS`.

Run as a script to print the graph's two-way pairs and layer violations with the file:line of each import:

    python tests/test_layers.py
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "diptych"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

#: Lowest first. A part may import parts of its own layer and of the layers before it, never after it.
LAYERS: list[tuple[str, frozenset[str]]] = [
    # import nothing of diptych but `errors`
    ("foundation", frozenset({"errors", "files", "hub", "cli_options", "devices", "specs"})),
    # images, layout, prompts, text encoders, the sampling loop, adapters, checkpoints, Emu Edit's
    # conditioning (task embeddings, task predictor, thresholding), the locator (mask="auto"), the built-in
    # ShapesEdit world and models
    (
        "core",
        frozenset(
            {
                "images",
                "canvas",
                "prompts",
                "encoders",
                "sampler",
                "locator",
                "adapters",
                "checkpoints",
                "conditioning",
                "metrics",
                "parquet",
                "speed",
                "shapes_core",
            }
        ),
    ),
    # the one loader (`loading`), the Editor and what it offers through its API: early filtering (judges,
    # tournaments) and multi-turn sessions; `scaling` and `session` take the editor as an argument and never import it
    ("editor", frozenset({"loading", "scaling", "session", "editor"})),
    # built on the Editor: training, evaluation, serving, Emu Edit's data generation and task inversion, the
    # ShapesEdit lab (training loops, bench, experiments), the offline test pipelines
    ("applications", frozenset({"train", "eval", "serve", "emu", "shapes", "testing"})),
    # the command line and the package's lazy top-level names (`from diptych import Editor`)
    ("entry points", frozenset({"cli", PACKAGE})),
]

#: (importer part, imported part) -> ["src/diptych/x.py:12", ...]
Edges = dict[tuple[str, str], list[str]]


def package_parts(root: Path = SRC) -> set[str]:
    """The top-level modules and subpackages of the package at `root`, and the package itself."""
    parts = {root.name}
    for path in root.iterdir():
        if path.suffix == ".py" and path.stem != "__init__":
            parts.add(path.stem)
        elif path.is_dir() and (path / "__init__.py").is_file():
            parts.add(path.name)
    return parts


def _module_name(path: Path, root: Path) -> str:
    names = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _part(dotted: str, package: str, parts: set[str]) -> str | None:
    """The part a dotted module (or `module.name`) path lands in; None outside the package."""
    names = dotted.split(".")
    if names[0] != package:
        return None
    if len(names) > 1 and names[1] in parts:
        return names[1]
    return package  # the package itself, or a name defined in its __init__


def _imported(node: ast.AST, module: str, is_package: bool, package: str, parts: set[str]) -> set[str]:
    """The parts one import statement (or `importlib.import_module("...")` call) brings in."""
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        # `from diptych import editor` imports the part `editor`; `from diptych.x import y` the part `x`
        targets = [f"{stem}.{alias.name}" for alias in node.names]
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            targets = [node.args[0].value]
    return {p for p in (_part(t, package, parts) for t in targets) if p is not None}


def import_graph(root: Path = SRC) -> Edges:
    """Every import between different parts of the package at `root`, with where it is written."""
    package, parts = root.name, package_parts(root)
    edges: Edges = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        importer = _part(module, package, parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom | ast.Call):
                continue
            for imported in _imported(node, module, path.name == "__init__.py", package, parts):
                if imported != importer:
                    edges[(importer, imported)].append(f"{path.relative_to(root.parent.parent)}:{node.lineno}")
    for where in edges.values():  # ast.walk goes breadth first: list each part's imports in file order
        where.sort(key=lambda w: (w.rpartition(":")[0], int(w.rpartition(":")[2])))
    return dict(edges)


def two_way_pairs(edges: Edges) -> list[tuple[str, str]]:
    """Pairs of parts that import each other, each once, sorted."""
    return sorted({tuple(sorted(pair)) for pair in edges if (pair[1], pair[0]) in edges})  # type: ignore[misc]


def cycles(edges: Edges) -> list[list[str]]:
    """The strongly connected components of more than one part (Tarjan), each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_violations(edges: Edges, layers: Iterable[tuple[str, Iterable[str]]] = LAYERS) -> list[str]:
    """Each import from a part to a part of a higher layer, as 'a (layer) -> b (layer): file:line'."""
    rank = {part: (i, name) for i, (name, parts) in enumerate(layers) for part in parts}
    out = []
    for (a, b), where in sorted(edges.items()):
        if a in rank and b in rank and rank[a][0] < rank[b][0]:
            out += [f"{a} ({rank[a][1]}) -> {b} ({rank[b][1]}): {w}" for w in where]
    return out


def report(edges: Edges) -> str:
    lines = []
    for a, b in two_way_pairs(edges):
        lines.append(f"{a} <-> {b}")
        lines += [f"    {a} -> {b}  {w}" for w in edges[(a, b)]]
        lines += [f"    {b} -> {a}  {w}" for w in edges[(b, a)]]
    lines += [f"cycle: {' , '.join(c)}" for c in cycles(edges)]
    lines += [f"layer violation: {v}" for v in layer_violations(edges)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ tests
def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = _write(
        tmp_path / "fakepkg",
        {
            "__init__.py": "def __getattr__(name):\n    from . import high\n    return high\n",
            "low.py": "import os\n\n\ndef helper():\n    from .high import thing  # lazy: still an import\n",
            "high.py": "from fakepkg.low import helper\nfrom fakepkg import mid\n",
            "mid.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.deep import X\n",
            "sub/__init__.py": "",
            "sub/deep.py": (
                "import importlib\nfrom .. import low\nimport fakepkg.other_mod as m\nfrom . import other\n"
                "importlib.import_module('fakepkg.extra')\n"
            ),
            "sub/other.py": "from fakepkg import __version__\n",
            "other_mod.py": "",
            "extra.py": "",
        },
    )
    edges = import_graph(pkg)
    where = f"{tmp_path.name}/fakepkg"  # paths are shown from the folder above the package's (src/diptych/...)
    assert edges[("low", "high")] == [f"{where}/low.py:5"]
    assert edges[("high", "low")] == [f"{where}/high.py:1"]
    assert ("high", "mid") in edges and ("mid", "sub") in edges  # `from pkg import mod`; TYPE_CHECKING
    assert ("fakepkg", "high") in edges and ("sub", "fakepkg") in edges  # the package's own __init__
    assert {("sub", "low"), ("sub", "other_mod"), ("sub", "extra")} <= set(edges)  # relative, `as`, importlib
    assert ("sub", "sub") not in edges  # imports inside a part are not edges
    # the newly added lazy import low -> high is flagged, with both sides' file:line
    assert two_way_pairs(edges) == [("high", "low")]
    assert "low -> high" in report(edges) and "low.py:5" in report(edges) and "high.py:1" in report(edges)
    assert cycles(edges) == [["fakepkg", "high", "low", "mid", "sub"]]  # low -> high -> mid -> sub -> low, ...
    layers = [("bottom", {"low"}), ("middle", {"mid", "sub", "other_mod", "extra"}), ("top", {"high", "fakepkg"})]
    assert layer_violations(edges, layers) == [
        f"low (bottom) -> high (top): {where}/low.py:5",
        f"sub (middle) -> fakepkg (top): {where}/sub/other.py:1",
    ]


def test_a_longer_cycle_is_found():
    edges = {("a", "b"): ["x"], ("b", "c"): ["y"], ("c", "a"): ["z"], ("c", "d"): ["w"]}
    assert two_way_pairs(edges) == [] and cycles(edges) == [["a", "b", "c"]]


def test_the_graph_of_diptych_is_read():
    edges = import_graph()
    # a few imports that must be there: a builder that reads nothing would pass the tests below
    assert {("editor", "sampler"), ("cli", "train"), ("train", "adapters"), ("sampler", "errors")} <= set(edges)


def test_no_two_parts_import_each_other():
    edges = import_graph()
    assert two_way_pairs(edges) == [], "parts that import each other:\n" + report(edges)


def test_no_import_cycles():
    edges = import_graph()
    assert cycles(edges) == [], "import cycles between parts:\n" + report(edges)


def test_every_part_has_a_layer():
    placed = [part for _, parts in LAYERS for part in parts]
    assert len(placed) == len(set(placed)), "a part is in two layers"
    missing = package_parts() - set(placed)
    assert not missing, f"place {sorted(missing)} in a layer of tests/test_layers.py LAYERS"
    assert not set(placed) - package_parts(), "LAYERS names a part that no longer exists"


def test_layers_point_one_way():
    violations = layer_violations(import_graph())
    assert violations == [], "imports from a lower layer to a higher one:\n" + "\n".join(violations)


if __name__ == "__main__":
    graph = import_graph()
    text = report(graph)
    print(text or "no two-way imports, no cycles, no layer violations")
    sys.exit(1 if text else 0)


def test_the_architecture_doc_names_every_part():
    """docs/architecture.md describes every top-level module and subpackage (issue 18: keep it true)."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    missing = [part for part in package_parts() - {PACKAGE} if f"`{part}.py`" not in doc and f"`{part}/`" not in doc]
    assert not missing, f"describe {sorted(missing)} in docs/architecture.md"
