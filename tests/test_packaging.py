"""What pyproject declares: every dependency is used, and the docstring examples are part of the test run."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

# distribution -> import name, where they differ
IMPORT_NAMES = {"scikit-learn": "sklearn", "psycopg2-binary": "psycopg2", "psycopg": "psycopg"}
# used without an import statement of ours, and why
INDIRECT = {
    "onnxscript": "torch.onnx's dynamo exporter, the fallback of export_onnx",
    "psycopg": "SQLAlchemy's postgresql:// driver (Optuna storages)",
    "psycopg2-binary": "SQLAlchemy's postgresql+psycopg2:// driver",
    "redis": "Optuna's JournalRedisBackend for redis:// storages",
}


def _imported_modules() -> set[str]:
    names = set()
    for path in [*(ROOT / "vitshrink").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    names.add(str(node.args[0].value).split(".")[0])
    return names


def _distribution(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)


def test_every_dependency_is_used() -> None:
    imported = _imported_modules()
    declared = [_distribution(r) for r in PYPROJECT["project"]["dependencies"]]
    unused = [d for d in declared if d not in INDIRECT
              and IMPORT_NAMES.get(d, d.replace("-", "_")) not in imported]
    assert not unused, f"declared but never imported (drop them, or say in INDIRECT why they are needed): {unused}"


def test_the_openvino_extra_is_tested_in_ci() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert {_distribution(r) for r in extras["openvino"]} <= {_distribution(r) for r in extras["dev"]}


def test_docstring_examples_run_with_the_tests() -> None:
    opts = PYPROJECT["tool"]["pytest"]["ini_options"]
    assert "--doctest-modules" in opts["addopts"].split() and "vitshrink" in opts["testpaths"]
    skipped = [str(p.relative_to(ROOT)) for p in (ROOT / "vitshrink").rglob("*.py") if "doctest: +SKIP" in p.read_text()]
    assert not skipped, f"examples that never run (make them runnable or plain prose): {skipped}"


def test_no_test_module_imports_another_or_a_conftest() -> None:
    """Shared helpers live in tests/support.py and tests/recipes.py, fixtures in conftest.py: a test
    module importing another runs (and collects) that module's tests' setup as a side effect."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[-1].startswith("test_") or n.split(".")[-1] == "conftest"]
    assert not offenders, offenders


def test_readme_recipe_is_a_valid_recipe() -> None:
    """README shows the recipe form; what it shows must parse and validate as it stands."""
    from vitshrink.spaces import Recipe

    text = (ROOT / "README.md").read_text()
    start = text.index("```toml") + len("```toml")
    recipe = Recipe.from_toml_text(text[start:text.index("```", start)])
    recipe.validate("README")
    assert recipe.sampler == "vitshrink" and recipe.space.values_of("runtime") == ["none", "dynamic_int8", "ort_int8"]
