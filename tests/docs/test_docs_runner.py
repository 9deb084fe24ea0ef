"""The docs runner itself: annotations, shared shell state, failures and background commands."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from docs_runner import BashSession, extract_blocks

DOC = """# Title

```bash
export GREETING=hello
cd sub
```

<!-- docs-test: expect: hello world -->
```bash
echo "$GREETING world" > out.txt
cat out.txt
false   # a command that fails
```

<!-- docs-test: skip: needs something; really -->
```bash
rm -rf /
```

<!-- docs-test: background: python3 -m http.server; ready: http://127.0.0.1:{port}/out.txt -->
```bash
python3 -m http.server --bind 127.0.0.1 {port}
```

<!-- docs-test: expect: "never printed" -->
```python
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:{port}/out.txt").read().decode())
```

```json
{{"not": "run"}}
```
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_blocks_annotations_and_outcomes(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "doc.md").write_text(DOC.format(port=port))
    (tmp_path / "sub").mkdir()
    blocks = extract_blocks(tmp_path / "doc.md", "doc.md")
    assert [b.language for b in blocks] == ["bash", "bash", "bash", "bash", "python"]
    assert blocks[2].skip == "needs something; really"
    assert blocks[3].background == ["python3 -m http.server"]
    assert blocks[1].key == 'echo "$GREETING world" > out.txt'

    logs = tmp_path / "logs"
    logs.mkdir()
    session = BashSession(tmp_path, {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}, logs)
    try:
        outcomes = [session.run(b) for b in blocks if b.skip is None]
    finally:
        session.close()
    setup, echo, server, python = outcomes
    assert setup.ok, setup
    assert "hello world" in echo.output  # variables and cwd carry over between blocks
    assert echo.failed_commands == ["false"]
    assert not echo.ok
    assert server.ok, server
    assert "hello world" in python.output  # the background server served the file
    assert python.problems == ["output lacks '\"never printed\"'"]


def test_unknown_option_and_reasonless_skip_are_refused(tmp_path: Path) -> None:
    for annotation in ("<!-- docs-test: sometimes -->", "<!-- docs-test: skip: -->"):
        (tmp_path / "doc.md").write_text(f"{annotation}\n```bash\ntrue\n```\n")
        with pytest.raises(ValueError, match=r"doc\.md:2"):
            extract_blocks(tmp_path / "doc.md", "doc.md")
