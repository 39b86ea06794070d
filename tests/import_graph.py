"""The package's import graph, read from the source (ast): every `import mnistgan...` and `from mnistgan...
import ...`, at the top, inside functions (lazy) and under `if TYPE_CHECKING:` alike."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "mnistgan"


def module_file(name: str) -> Path:
    """mnistgan.gan.step -> src/mnistgan/gan/step.py (a package: its __init__.py), relative to ROOT."""
    rel = Path("src", *name.split("."))
    return rel.with_suffix(".py") if (ROOT / rel.with_suffix(".py")).exists() else rel / "__init__.py"


def is_module(name: str) -> bool:
    return (ROOT / module_file(name)).exists()


def mnistgan_imports(path: Path) -> set[str]:
    """The mnistgan modules `path` imports; `from mnistgan.gan import fast` counts as mnistgan.gan.fast."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mnistgan":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                names.add(sub if is_module(sub) else node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.split(".")[0] == "mnistgan"}
    return names


def closure(script: Path) -> set[str]:
    """Every src file `script` (relative to ROOT) imports, directly or through other modules; no __init__."""
    seen, todo = set(), [script]
    while todo:
        for name in mnistgan_imports(ROOT / todo.pop()):
            f = module_file(name)
            if str(f) not in seen and (ROOT / f).exists():
                seen.add(str(f))
                todo.append(f)
    return {s for s in seen if not s.endswith("__init__.py")}


def package_modules() -> dict[str, Path]:
    """mnistgan.x.y -> its file, for every module of the package (packages' __init__ left out)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":
            out[".".join(("mnistgan", *path.relative_to(PACKAGE).with_suffix("").parts))] = path
    return out


def graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (packages themselves left out)."""
    modules = package_modules()
    return {name: {m for m in mnistgan_imports(path) if m in modules} for name, path in modules.items()}
