"""The shape of the code the project promises: small classes, no test hooks in production, a self-explaining repo."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = sorted((ROOT / "cmaes_inproc").glob("*.py")) + sorted((ROOT / "nanochat").glob("*.py"))
MAX_METHODS = 12


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_class_has_more_than_a_dozen_methods(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
            assert len(methods) <= MAX_METHODS, f"{node.name} has {len(methods)} methods"


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_production_code_has_no_test_hooks(path):
    text = path.read_text().lower()
    for hook in ("inject", "oom_hook", "kill_after", "cmaes_inproc_test"):
        assert hook not in text, f"{path.name} mentions {hook}"


def test_the_repository_explains_itself():
    """No file points to a design document outside the repository; the model's equations live in nanochat/MODEL.md."""
    assert "presynaptic" in (ROOT / "nanochat" / "MODEL.md").read_text()
    files = [p for p in ROOT.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".toml")
             and p.name != "test_structure.py"
             and not any(part.startswith(".") or part in ("build", "venv") for part in p.relative_to(ROOT).parts)]
    for path in files:
        text = path.read_text()
        assert not re.search(r"SPEC\.md|\.\./shared|\(SPEC[:)]", text), f"{path.relative_to(ROOT)} points outside"
