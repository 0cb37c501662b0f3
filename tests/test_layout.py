"""Size limits of the source tree (issue #24): no file under src/ over 450 lines, no function over 70.

Sizes are measured with ``ast``: a file's lines, a function's from its ``def`` to its last line (methods
and nested functions included, decorators not).
"""
import ast
from pathlib import Path


SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 70


def oversized(source: str, *, max_file: int = MAX_FILE_LINES, max_function: int = MAX_FUNCTION_LINES) -> list:
    """``("file", lines)`` if ``source`` is over ``max_file`` lines, then ``(function name, lines)`` of
    every function over ``max_function``."""
    out = []
    n = len(source.splitlines())
    if n > max_file:
        out.append(("file", n))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > max_function:
                out.append((node.name, length))
    return out


def tree_sizes() -> dict:
    """``{(path relative to src/, name): lines}`` of everything over the limits under src/."""
    return {(p.relative_to(SRC).as_posix(), name): n
            for p in sorted(SRC.rglob("*.py")) for name, n in oversized(p.read_text(encoding="utf-8"))}


def test_the_measure_finds_long_files_and_functions():
    body = "".join(f"    x{i} = {i}\n" for i in range(70))
    source = f"def long():\n{body}\n\nclass C:\n    @property\n    def short(self):\n        return 1\n"
    assert oversized(source) == [("long", 71)]
    assert oversized(source.replace("    x69 = 69\n", "")) == []
    assert oversized(source, max_file=70) == [("file", len(source.splitlines())), ("long", 71)]
    nested = "def outer():\n    def inner():\n" + "".join(f"        y{i} = {i}\n" for i in range(70)) + "    return inner\n"
    assert [name for name, _ in oversized(nested)] == ["outer", "inner"]


def test_no_file_or_function_over_the_limits():
    found = tree_sizes()
    over = dict(found)
    assert not over, "over the limits (file 450 lines, function 70): " + ", ".join(
        f"{path}: {name} {n} lines" for (path, name), n in sorted(over.items()))
