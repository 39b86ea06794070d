"""The package's shape: imports point one way (lab -> evaluation -> gan -> shared base), no module imports
itself through others, and no module or stage script grows past its size limit."""

from __future__ import annotations

from import_graph import PACKAGE, ROOT, graph, package_modules

# The layers, lowest first: a module may import its own layer and the ones below it, never one above.
LAYERS = ("base", "gan", "evaluation", "lab")
MAX_MODULE_LINES = 500
MAX_STAGE_LINES = 90


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else "base"  # mnistgan.gan.step -> gan; mnistgan.config -> base


def test_every_module_belongs_to_a_layer():
    assert {layer(m) for m in package_modules()} == set(LAYERS)
    assert sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(LAYERS[1:])


def test_imports_point_down_only():
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(
        f"{m} imports {dep} ({layer(m)} -> {layer(dep)})"
        for m, deps in graph().items()
        for dep in deps
        if rank[layer(dep)] > rank[layer(m)]
    )
    assert upward == []


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each import circle found by a depth-first walk, as the path that closes it."""
    found, state, path = [], {}, []  # state: 1 = on the current path, 2 = done

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_circle():
    # lazy imports and imports under TYPE_CHECKING count: a circle hidden in a function is still a circle
    assert cycles(graph()) == []


def test_module_and_stage_sizes():
    big = {m: n for m, p in package_modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert big == {}, f"modules over {MAX_MODULE_LINES} lines"
    stages = {
        p.name: n for p in (ROOT / "stages").glob("*.py") if (n := len(p.read_text().splitlines())) > MAX_STAGE_LINES
    }
    assert stages == {}, f"stage scripts over {MAX_STAGE_LINES} lines"
