"""The package layout: imports point one way (_entry/__main__ -> cli -> experiments/benchmarks -> presets/tasks ->
text/images/video -> training -> thinking -> models -> ops -> config/noise/media -> errors), no import cycle among
modules even counting imports inside functions, and no module over 400 lines. Read from the source with `ast`,
nothing imported."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

SRC = ROOT / "src"
LAYERS = [                        # lowest first; a component may import only components of lower layers
    {"errors"},
    {"config", "noise", "media"},
    {"ops"},
    {"models"},
    {"thinking"},
    {"training"},
    {"text", "images", "video"},  # modalities: none imports another
    {"presets", "tasks"},
    {"experiments", "benchmarks"},
    {"cli"},
    {"_entry"},
    {"__main__"},
]
RANK = {component: i for i, layer in enumerate(LAYERS) for component in layer}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the ebt package (packages by their __init__)."""
    out = {}
    for path in sorted((SRC / "ebt").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The ebt modules that `name` imports anywhere in its file (top level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative import: climb from this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from a import b` imports module a.b when it exists, else a name of module a
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in candidates:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target.startswith("ebt") and target != name:
                found.add(target)
    return found


def component(name: str) -> str:
    """ebt.text.models -> text; ebt.thinking -> thinking; ebt (the package itself) -> ''."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


GRAPH = {name: imported(name, path, modules()) for name, path in modules().items()}


def test_every_component_has_a_layer():
    missing = {component(m) for m in GRAPH} - set(RANK) - {""}
    assert not missing, f"place these packages/modules in LAYERS: {sorted(missing)}"


def test_imports_point_down():
    wrong = []
    for name, targets in GRAPH.items():
        src = component(name)
        for target in targets:
            dst = component(target)
            if src and dst and src != dst and RANK[dst] >= RANK[src]:
                wrong.append(f"{name} -> {target}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    """Depth-first search for an edge back into the current path; the package's own __init__ (lazy names only)
    is left out."""
    graph = {m: {t for t in ts if t != "ebt"} for m, ts in GRAPH.items() if m != "ebt"}
    done: set[str] = set()
    cycles = []

    def visit(path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt in path:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(path + [nxt])
        done.add(path[-1])

    for node in sorted(graph):
        if node not in done:
            visit([node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_nothing_imports_the_cli():
    users = [m for m, ts in GRAPH.items() if any(t.startswith("ebt.cli") for t in ts) and component(m) != "cli"]
    assert users == ["ebt._entry"]


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_are_short(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines: split it at a natural seam"


def test_the_check_sees_hidden_imports(tmp_path):
    """An import inside a function counts (a lazy import hides a cycle, it does not remove it)."""
    f = tmp_path / "m.py"
    f.write_text("def later():\n    from ebt.cli import main\n    return main\n")
    assert imported("ebt.training.loop", f, modules()) == {"ebt.cli"}
