"""The project's layout rules that no other test would notice breaking (issue 16, item 6):

- one command line, ``python -m kdflow <group> <command>``: every group module is registered by name in
  ``kdflow.cli.GROUPS`` (a group module that fails to import fails the command line), none has a ``main``
  of its own, and every command's handler is ``func(args, config)``;
- tests share data through the ``tests/fixtures_*.py`` modules, never by importing another test module;
- under ``make test``'s two pytest-xdist workers, every test that uses the Celery topology is in one work unit
  (one topology per worker process, and two at once would only compete for the 2 cores).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KDFLOW = REPO / "include" / "kdflow"
GROUP_NAMES = ["run", "config", "report", "teacher", "student", "gold", "export", "serve", "track"]


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(KDFLOW.parent).with_suffix("").parts)


def _top_level_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}


def _runs_as_main(path: Path) -> bool:
    """Whether the module has an ``if __name__ == "__main__":`` block."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test):
            return True
    return False


def test_python_m_kdflow_lists_every_group():
    done = subprocess.run([sys.executable, "-m", "kdflow", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "{" + ",".join(GROUP_NAMES) + "}" in done.stdout


def _library_modules() -> list[Path]:
    return sorted(p for p in KDFLOW.rglob("*.py") if "__pycache__" not in p.parts)


def _group_modules() -> set[str]:
    """Modules of include/kdflow with a ``register(subparsers)``: the groups of ``python -m kdflow``."""
    return {_module_name(p) for p in _library_modules() if "register" in _top_level_functions(p)}


def test_every_group_module_is_registered_by_name():
    from kdflow import cli

    assert _group_modules() == {module.__name__ for module in cli.GROUPS}
    assert {"kdflow.teacher.cli", "kdflow.student.cli", "kdflow.gold_cli"} <= _group_modules()


def test_no_library_module_has_a_command_line_of_its_own():
    """Neither a group module (no ``main``) nor any other library module (no ``__main__`` block) parses a
    command line alone; ``kdflow.cli`` (with ``kdflow/__main__.py``) and the benchmarks, a separate package
    of tools (``python -m kdflow.bench``), excepted."""
    groups = _group_modules()
    standalone = [_module_name(p) for p in _library_modules()
                  if _runs_as_main(p) or (_module_name(p) in groups and "main" in _top_level_functions(p))]
    assert [name for name in standalone if name != "kdflow.cli" and not name.startswith("kdflow.bench.")] == []


def test_every_command_handler_takes_args_and_config():
    """Dispatch is explicit: ``main`` calls ``func(args, config)`` for every command, no signature counting."""
    from kdflow import cli

    def leaves(parser: argparse.ArgumentParser, path: tuple[str, ...]):
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield path, parser.get_default("func")
        for action in subs:
            for name, child in action.choices.items():
                yield from leaves(child, (*path, name))

    commands = dict(leaves(cli.build_parser(), ()))
    assert {path[0] for path in commands} == set(GROUP_NAMES)
    assert {("student", "answer"), ("student", "train"), ("gold", "check"), ("teacher", "questions")} <= set(commands)
    for path, func in commands.items():
        assert callable(func), path
        inspect.signature(func).bind("args", "config")  # TypeError if it is not func(args, config)
    assert "inspect" not in (KDFLOW / "cli.py").read_text(encoding="utf-8")


def test_a_group_module_that_fails_to_import_fails_the_command_line():
    """No group is skipped silently: with ``kdflow.gold_cli`` unimportable, ``python -m kdflow --help`` fails."""
    code = ("import runpy, sys; sys.modules['kdflow.gold_cli'] = None; sys.argv = ['kdflow', '--help']; "
            "runpy.run_module('kdflow', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, (done.returncode, done.stdout[-500:])
    assert "gold_cli" in done.stderr


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            found.append((node.lineno, base))
            if not node.module:  # from . import test_x
                found += [(node.lineno, "." + alias.name) for alias in node.names]
    return found


def test_no_test_module_imports_another_test_module():
    """Shared test data lives in tests/fixtures_*.py; a test module importing a test module runs (or
    collects) that module's tests twice and hides where the data comes from."""
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for lineno, module in _imported_modules(path):
            if any(part.startswith("test_") for part in module.lstrip(".").split(".")):
                offenders.append(f"{path.relative_to(REPO)}:{lineno}: imports {module}")
    assert offenders == []


COLLECT_FIXTURES = """
def pytest_collection_finish(session):
    for item in session.items:
        print("FIXTURES", item.nodeid, " ".join(item.fixturenames))
"""


def test_every_test_using_the_celery_topology_is_in_one_xdist_work_unit(tmp_path):
    from conftest import TOPOLOGY_FIXTURE, work_unit

    (tmp_path / "print_fixtures.py").write_text(COLLECT_FIXTURES)
    path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "print_fixtures", "-p",
                           "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": path})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tests = dict(line.split(" ", 2)[1:] for line in done.stdout.splitlines() if line.startswith("FIXTURES "))
    assert len(tests) > 400, len(tests)
    using = {nodeid.split("::")[0] for nodeid, fixtures in tests.items() if TOPOLOGY_FIXTURE in fixtures.split()}
    assert len(using) >= 5, using  # the deployment modules
    for nodeid in tests:  # every other module is a unit of its own: its module fixtures are set up once
        module = nodeid.split("::")[0]
        assert work_unit(nodeid) == (TOPOLOGY_FIXTURE if module in using else module), nodeid
