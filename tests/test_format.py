"""`make lint` (run by `make test`, so by CI) checks the tree with `ruff check` and `ruff format
--check` under pyproject.toml's settings: the tree passes both, and a module written against the
format or lint rules fails them."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ruff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=cwd, capture_output=True, text=True)


def test_make_lint_runs_both_ruff_checks():
    recipe = (ROOT / "Makefile").read_text().split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "ruff check ." in recipe and "ruff format --check ." in recipe, recipe


def test_the_tree_is_formatted_and_lint_clean():
    for args in (("check", "."), ("format", "--check", ".")):
        out = ruff(*args, cwd=ROOT)
        assert out.returncode == 0, out.stdout + out.stderr


def test_a_module_against_the_rules_fails(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "decode").mkdir()
    module = tmp_path / "decode" / "verify.py"
    shutil.copy(ROOT / "decode" / "verify.py", module)
    assert ruff("format", "--check", ".", cwd=tmp_path).returncode == 0
    assert ruff("check", ".", cwd=tmp_path).returncode == 0

    module.write_text(module.read_text() + "\nSCALE = {'a':1,\n  'b' : 2}\n")
    out = ruff("format", "--check", ".", cwd=tmp_path)
    assert out.returncode == 1 and "decode/verify.py" in out.stdout, out.stdout + out.stderr

    module.write_text(module.read_text() + "\nimport os\n")
    out = ruff("check", ".", cwd=tmp_path)
    assert out.returncode == 1 and "F401" in out.stdout, out.stdout + out.stderr  # an unused import
