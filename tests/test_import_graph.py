"""No import loop in the library: module A importing B (at its top or inside a function) while B, directly
or through others, imports A. Step modules of the pipeline import no sibling step module."""

import ast
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[1] / "include"


def import_graph() -> dict[str, set[str]]:
    """kdflow module -> the kdflow modules it imports anywhere in its body (``from pkg import mod`` counts as mod)."""
    modules = {}
    for path in (INCLUDE / "kdflow").rglob("*.py"):
        name = ".".join(path.relative_to(INCLUDE).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name and not name.startswith(f"{t}.")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_loop_in_the_library():
    assert cycles(import_graph()) == []


def test_the_loop_finder_finds_the_loop_issue_16_removed():
    """setup_steps.question_bank imported teacher_steps, whose steps imported setup_steps back."""
    graph = {"kdflow.pipeline.setup_steps": {"kdflow.pipeline.teacher_steps"},
             "kdflow.pipeline.teacher_steps": {"kdflow.pipeline.setup_steps"}}
    assert cycles(graph) == [["kdflow.pipeline.setup_steps", "kdflow.pipeline.teacher_steps",
                              "kdflow.pipeline.setup_steps"]]


def test_step_modules_import_no_sibling_step_module():
    graph = import_graph()
    steps = {name for name in graph if name.startswith("kdflow.pipeline.") and name.endswith("_steps")}
    assert {name: graph[name] & steps for name in steps if graph[name] & steps} == {}
