"""The package's imports run one way: no module imports itself back through others, and the library
never reaches up into the entry points (`splitcomp.tasks`) or the scripts (`experiments`).

Imports are read with `ast`, so imports inside functions count too: a cycle hidden behind a
function-level import is still a cycle a newcomer has to untangle.
"""

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "splitcomp"
ENTRY_POINTS = ("splitcomp.tasks", "experiments")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE_ROOT.rglob("*.py"))}


def imported_names(path: Path, name: str) -> list[str]:
    """Every dotted name a module imports, relative imports resolved; `from a import b` yields `a.b`
    (whether that is a module or a name inside module `a` is decided by `resolve`)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.extend(f"{base}.{alias.name}" for alias in node.names)
    return names


def resolve(imported: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of `imported` that is a package module or names an entry point."""
    parts = imported.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in modules:
            return prefix
    if imported.startswith(ENTRY_POINTS):
        return imported
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules (and entry-point names) it imports."""
    modules = package_modules()
    graph = {}
    for name, path in modules.items():
        targets = {resolve(imported, modules) for imported in imported_names(path, name)}
        graph[name] = targets - {None, name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_walker_sees_function_level_imports_and_cycles(tmp_path):
    source = "def late():\n    from splitcomp.sim import simulate\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    assert "splitcomp.sim.simulate" in imported_names(path, "splitcomp.mod")
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(cycle) for cycle in cycles)


def test_library_never_imports_entry_points():
    graph = import_graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not module.startswith("splitcomp.tasks")
        for target in targets
        if target.startswith(ENTRY_POINTS)
    )
    assert not upward, "library modules importing entry points: " + ", ".join(upward)


# The rooms of the package, lowest first, as README's "Layout" lists them: a room imports only rooms
# before it. A new room goes into this list (and the README) where its imports put it.
ROOMS = ("errors", "files", "redact", "configs", "records", "scenario", "link", "split", "workload", "profile",
         "policy", "loop", "sim", "runtime", "track", "fleet", "build", "experiment", "tasks")


def room(module: str) -> str:
    return module.split(".")[1] if module.count(".") >= 1 else module


def test_rooms_import_only_rooms_below_them():
    graph = import_graph()
    rooms = {room(module) for module in graph if module != "splitcomp"}
    assert rooms <= set(ROOMS), f"rooms missing from ROOMS (and README's Layout): {sorted(rooms - set(ROOMS))}"
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if module != "splitcomp"
        for target in targets
        if target.startswith("splitcomp.") and ROOMS.index(room(target)) > ROOMS.index(room(module))
    )
    assert not upward, "imports up the floors: " + ", ".join(upward)
