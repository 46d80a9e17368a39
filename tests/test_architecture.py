"""The house rules of ``src/torchinn``, read from the source with :mod:`ast` (nothing is imported).

* no import circle between modules, counting imports inside functions (they run too) but not the
  ones under ``if TYPE_CHECKING:`` (they never run);
* no private name (``_x``) imported from another sub-package;
* no module over 400 lines unless its docstring gives the reason (a line starting
  ``Longer than 400 lines:``);
* the sub-packages are layers: each imports only from the ones below it (:data:`LAYERS`);
* a small top level: ``torchinn.__all__`` has at most 24 names, and every sub-package says what it
  exports in its own ``__all__``;
* test modules have unique basenames (pytest imports them by basename).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "torchinn"
MAX_LINES = 400
MAX_TOP_LEVEL = 24


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(SRC.rglob("*.py")):
        parts = ["torchinn", *f.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _runtime_imports(tree: ast.AST):
    """Every Import / ImportFrom node that can run (skipping ``if TYPE_CHECKING:`` bodies)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(name: str, path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or "") for every torchinn import of one module."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in _runtime_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "torchinn"]
            continue
        if node.level:
            base = package[:len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "torchinn":
            continue
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.append((sub, "") if sub in MODULES else (target, alias.name))
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path):
            # importing torchinn.a.b runs torchinn.a's __init__ first
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                mod = ".".join(parts[:i])
                if mod in MODULES and mod != name and not name.startswith(mod + "."):
                    graph[name].add(mod)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import circles between torchinn modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def _subpackage(module: str) -> str:
    parts = module.split(".")
    is_pkg = MODULES[module].name == "__init__.py"
    return parts[1] if len(parts) > (1 if is_pkg else 2) else ""


def test_no_private_names_across_subpackages():
    bad = []
    for name, path in MODULES.items():
        for target, imported in _imports(name, path):
            if imported.startswith("_") and not imported.startswith("__") and target in MODULES \
                    and _subpackage(target) != _subpackage(name):
                bad.append(f"{name} imports {imported} from {target}")
    assert not bad, bad


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_length(module):
    text = MODULES[module].read_text()
    lines = text.count("\n")
    doc = ast.get_docstring(ast.parse(text)) or ""
    reason = any(line.startswith("Longer than 400 lines:") for line in doc.splitlines())
    assert lines <= MAX_LINES or reason, f"{module} has {lines} lines, over {MAX_LINES}, and no reason in its docstring"


def test_small_top_level():
    import torchinn

    assert len(torchinn.__all__) <= MAX_TOP_LEVEL, sorted(torchinn.__all__)
    for name in torchinn.__all__:
        assert getattr(torchinn, name) is not None
    for module, path in MODULES.items():
        if path.name == "__init__.py" and module != "torchinn":
            tree = ast.parse(path.read_text())
            names = [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets
                     if isinstance(t, ast.Name)]
            assert "__all__" in names, f"{module} does not say what it exports (__all__)"


#: the sub-packages from the bottom up (docs/architecture.md): each imports only from those before it
LAYERS = ["", "maths", "sizing", "graph", "nn", "discrete", "model", "training", "compression", "elastic", "io", "cli"]


def test_subpackages_import_only_downwards():
    assert {_subpackage(m) for m in MODULES} == set(LAYERS)
    bad = []
    for module, targets in _graph().items():
        if module == "torchinn":  # the top level gathers the public names of every layer
            continue
        here = LAYERS.index(_subpackage(module))
        bad += [f"{module} imports {t}" for t in sorted(targets)
                if t != "torchinn" and LAYERS.index(_subpackage(t)) > here]
    assert not bad, bad


def test_test_modules_have_unique_basenames():
    # the test folders are not packages: pytest imports each test module by its basename, so two
    # test_x.py in different folders stop the collection of the whole suite ("import file mismatch")
    tests = Path(__file__).parent
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted(tests.rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(tests)} and {path.relative_to(tests)}")
        seen.setdefault(path.name, path)
    assert not clashes, "test modules with the same basename: " + "; ".join(clashes)
