"""CloudFormation templates in tests: cfn-lint in a subprocess, and templates decoded its way."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    """Run cfn-lint (the dev extra's) on ``path``; offline, with its bundled resource specs."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cfnlint.runner import main; sys.exit(main())",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def load_template(path: Path) -> dict[str, Any]:
    """The template as cfn-lint reads it (short-form intrinsics such as ``!Ref`` as dicts)."""
    from cfnlint.decode import decode

    template, problems = decode(str(path))
    assert not problems, problems
    return template  # type: ignore[no-any-return]
