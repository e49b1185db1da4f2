"""The import contracts in pyproject.toml (`lint-imports`, run by `make test`) hold on this tree
and break on a back-edge: an upward import between layers, decode or audio importing our code,
or a cycle between the modules of a package."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("commands", "web", "voice", "decode", "audio")
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(cwd: Path) -> subprocess.CompletedProcess:
    assert LINT_IMPORTS.is_file(), "lint-imports is missing: run `make setup-test` (pip install -e .[test])"
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, capture_output=True, text=True)


def copy_tree(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "assets", "static", "data")
        )
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def test_the_tree_keeps_every_contract():
    out = lint_imports(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(
    "module, line, contract",
    [
        ("voice/turns.py", "from web.client import open_session", "one direction of imports"),
        ("web/routes.py", "import commands.cli", "one direction of imports"),
        ("decode/verify.py", "from audio.frames import SAMPLE_RATE_HZ", "decode imports nothing of ours"),
        ("audio/frames.py", "import voice.config", "audio imports nothing of ours"),
        ("commands/summary.py", "import commands.bench", "no import cycles"),
    ],
)
def test_a_back_edge_breaks_its_contract(tmp_path, module, line, contract):
    tree = copy_tree(tmp_path)
    path = tree / module
    path.write_text(path.read_text() + f"\n{line}\n")
    out = lint_imports(tree)
    assert out.returncode != 0, out.stdout
    broken = [row for row in out.stdout.splitlines() if row.endswith(" BROKEN")]
    assert any(row.startswith(contract) for row in broken), out.stdout


def _top_level_names(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(names a module defines, names it imports) at its top level, `if` blocks included."""
    defined, imported = set(), set()
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            imported.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            body.extend(node.body + node.orelse + getattr(node, "handlers", []) + getattr(node, "finalbody", []))
        elif isinstance(node, ast.ExceptHandler):
            body.extend(node.body)
    return defined, imported


def test_every_name_is_imported_from_the_module_that_defines_it():
    """No shim: `from voice.x import Name` only when voice/x.py defines Name (not re-exports it)."""
    files = [p for pkg in (*PACKAGES, "tests", "scripts") for p in (ROOT / pkg).rglob("*.py")]
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files}
    defined = {m: _top_level_names(ast.parse(p.read_text()))[0] for m, p in modules.items()}
    borrowed = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in defined:
                for alias in node.names:
                    if alias.name not in defined[node.module] and f"{node.module}.{alias.name}" not in modules:
                        borrowed.append(f"{path.relative_to(ROOT)}: {alias.name} from {node.module}")
    assert borrowed == [], "import these from where they are defined:\n" + "\n".join(borrowed)


def _module_aliases(tree: ast.Module, modules: set[str]) -> dict[str, str]:
    """Local name -> our module it stands for: `import a.b as m`, `import a.b` (a), `from a import b`."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules:
                    aliases[alias.asname] = alias.name
                elif not alias.asname and alias.name.split(".")[0] in PACKAGES:
                    aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return aliases


def _dotted(node: ast.expr) -> list[str] | None:
    """`a.b.c` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.insert(0, node.attr)
        node = node.value
    return [node.id, *parts] if isinstance(node, ast.Name) else None


def test_every_name_is_read_from_the_module_that_defines_it():
    """No shim by attribute either: `module.Name` only when that module defines Name, where Name is
    one of ours (a file that assigns `module.Name = …` patches it where it is used: allowed)."""
    files = [p for pkg in (*PACKAGES, "tests", "scripts") for p in (ROOT / pkg).rglob("*.py")]
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in files}
    modules.update({pkg: ROOT / pkg / "__init__.py" for pkg in PACKAGES})
    names = {m: _top_level_names(ast.parse(p.read_text())) for m, p in modules.items()}
    ours = set().union(*(defined for defined, _ in names.values()))
    borrowed = []
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = _module_aliases(tree, set(modules))
        patched = {
            ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
        }
        for node in ast.walk(tree):
            parts = _dotted(node) if isinstance(node, ast.Attribute) and ast.unparse(node) not in patched else None
            if not parts or parts[0] not in aliases:
                continue
            module, rest = aliases[parts[0]], parts[1:]
            while rest and f"{module}.{rest[0]}" in modules:  # descend through submodules
                module, rest = f"{module}.{rest[0]}", rest[1:]
            defined, imported = names[module]
            if rest and rest[0] in imported and rest[0] in ours and rest[0] not in defined:
                borrowed.append(f"{path.relative_to(ROOT)}: {module}.{rest[0]}")
    assert sorted(set(borrowed)) == [], "read these from where they are defined:\n" + "\n".join(sorted(set(borrowed)))
