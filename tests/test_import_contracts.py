"""The import-linter contracts in pyproject.toml hold for the tree, and fail when one is broken.

Each broken case copies ``src/imgclf`` (code only) to a temporary directory, adds one module or
import that breaks a contract, and runs ``lint-imports`` on the copy, as ``make lint`` does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed")


def lint_imports(project: Path) -> subprocess.CompletedProcess[str]:
    """Run ``lint-imports`` in ``project`` (its pyproject.toml, its ``src``), as ``make lint``."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    return subprocess.run(
        [str(LINT), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"
]
CONTRACT_NAMES = {contract["id"]: contract["name"] for contract in CONTRACTS}
BREAKS = {
    # inference runs torch: the forbidden contract.
    "no-torch-in-serving": ("inference/torch_runtime.py", "import torch\n"),
    # a stage importing one above it: data -> serving breaks the layers.
    "layers": ("data/serve_hook.py", "from imgclf.serving import status\n"),
    # the report/render cycle this project once had.
    "no-cycles": ("evaluation/render.py", "from imgclf.evaluation import report\n"),
}


@pytest.mark.parametrize("contract", BREAKS)
def test_a_broken_contract_fails_lint_imports(contract: str, tmp_path: Path) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "models", "static")
    shutil.copytree(ROOT / "src" / "imgclf", src / "imgclf", ignore=ignore)
    relative, line = BREAKS[contract]
    module = src / "imgclf" / relative
    module.write_text(
        (module.read_text() if module.exists() else '"""Breaks a contract."""\n') + line
    )
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    # The real tree keeps every contract, so this also shows that the copy is what was checked.
    assert f"{CONTRACT_NAMES[contract]} BROKEN" in result.stdout.splitlines(), result.stdout


def test_design_doc_lists_the_contracted_layers() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    block = design.split("## Layers", 1)[1].split("```", 2)[1]
    documented = [line.split("  ")[0].strip() for line in block.splitlines() if line.strip()]
    layers = next(c for c in CONTRACTS if c["id"] == "layers")["layers"]
    assert documented == [layer.replace("(", "").replace(")", "") for layer in layers]
