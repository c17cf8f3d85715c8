"""Test fixtures are imported one way (tests/fixtures/__init__.py): `from tests.fixtures import <module> as <ALIAS>`,
each module under its one alias, never through `comfyui_atelier.tests` and never in a try/except fallback."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
FIXTURES = TESTS / "fixtures"


def alias_table() -> dict[str, str]:
    """module -> alias, from the package docstring's table."""
    doc = ast.get_docstring(ast.parse((FIXTURES / "__init__.py").read_text()))
    return dict(re.findall(r"from tests\.fixtures import (\w+) as (\w+)", doc))


def fixture_imports(path: Path):
    """(line, kind, module, alias, inside a try) for every import of tests.fixtures in a file."""
    tree = ast.parse(path.read_text(), str(path))
    in_try = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for s in t.body for n in ast.walk(s)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "fixtures" in node.module.split("."):
            for a in node.names:
                yield node.lineno, node.module, a.name, a.asname, id(node) in in_try
        elif isinstance(node, ast.Import):
            for a in node.names:
                if "fixtures" in a.name.split("."):
                    yield node.lineno, a.name, None, a.asname, id(node) in in_try


def test_alias_table_covers_every_fixture_module():
    table = alias_table()
    modules = {p.stem for p in FIXTURES.glob("*.py") if p.stem != "__init__"}
    assert set(table) == modules, f"tests/fixtures/__init__.py's table lists {sorted(table)}, the package has {sorted(modules)}"
    assert len(set(table.values())) == len(table), f"two modules share an alias: {table}"


def test_every_test_file_imports_fixtures_the_one_way():
    table = alias_table()
    bad = []
    files = [p for p in TESTS.rglob("*.py") if FIXTURES not in p.parents and p.parent != FIXTURES]
    assert len(files) > 40
    seen = 0
    for f in files:
        for line, module, name, alias, in_try in fixture_imports(f):
            seen += 1
            where = f"{f.relative_to(ROOT)}:{line}"
            if module != "tests.fixtures":
                bad.append(f"{where}: imports from {module!r} (use `from tests.fixtures import <module> as <ALIAS>`)")
            elif in_try:
                bad.append(f"{where}: fixture import inside try/except (no fallback: pytest's pythonpath makes it work)")
            elif name == "link_file":
                continue
            elif name not in table:
                bad.append(f"{where}: `{name}` is not a fixture module of the table in tests/fixtures/__init__.py")
            elif alias != table[name]:
                bad.append(f"{where}: {name} imported as {alias!r}, its one alias is {table[name]!r}")
    assert seen > 20, "found almost no fixture imports: the scan is broken"
    assert not bad, "\n".join(bad)


def test_fixtures_import_under_plain_pytest_and_python_m_pytest(tmp_path):
    """The `pytest` entry point does not put the working directory on sys.path, `python -m pytest` does:
    both must resolve `tests.fixtures` to this repo's package, from the repo root."""
    probe = tmp_path / "test_probe.py"
    probe.write_text("import tests.fixtures as F\n"
                     f"def test_where():\n    assert F.__file__ == {str(FIXTURES / '__init__.py')!r}, F.__file__\n")
    pytest_exe = Path(sys.executable).with_name("pytest")
    for cmd in ([str(pytest_exe)], [sys.executable, "-m", "pytest"]):
        if not Path(cmd[0]).exists():
            continue
        r = subprocess.run(cmd + ["-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"),
                                  str(probe)], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stdout[-2000:]}{r.stderr[-2000:]}"
