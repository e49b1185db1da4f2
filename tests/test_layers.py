"""The import contracts in pyproject.toml (`lint-imports`, run by `make test`) hold on this tree
and break on a back-edge: an upward import between layers, decode or audio importing our code,
or a cycle between the modules of a package."""

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
        ("web/launch.py", "import commands.cli", "one direction of imports"),
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


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 60
ARGUMENT_TABLES = {("commands/cli.py", "build_parser")}  # the CLI's argument table may be long


def test_no_module_over_400_lines_and_no_function_over_60():
    import ast

    too_long = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.split("/")[0] not in PACKAGES + ("scripts",):
            continue
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and (rel, node.name) not in ARGUMENT_TABLES:
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}: {node.name}() {n} lines")
    assert not too_long, too_long
