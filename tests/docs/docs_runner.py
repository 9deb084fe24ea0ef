"""Run the shell and Python blocks of a markdown document the way a reader would.

Blocks are the fenced ```` ```bash ```` and ```` ```python ```` blocks of a document. A block may be
preceded by an annotation, an HTML comment invisible on the rendered page but visible in the
source, whose options are separated by ``;``::

    <!-- docs-test: skip: needs an AWS account -->
    <!-- docs-test: background: docker run; ready: http://127.0.0.1:9000/ -->
    <!-- docs-test: background: docker run; alternatives; ready: http://127.0.0.1:8000/health -->
    <!-- docs-test: expect: "class" -->

- ``skip: REASON``: the block cannot run here (the whole annotation; the tests keep the list of
  such blocks exact).
- ``background: PREFIX | PREFIX``: commands starting with a prefix are long-running (a server, a
  container in the foreground); they are started in the background, as in a second terminal,
  and stopped when the document ends.
- ``ready: URL URL``: after starting the n-th background command, wait until the n-th URL (the
  last one for the rest) answers with a status below 500; ``grpc://host:port`` waits for a KServe
  V2 server to be ready.
- ``alternatives``: each background command replaces the one before (same port, other options).
- ``ctrl-c``: the reader stops the background commands before this block.
- ``expect: TEXT``: the block's output must contain TEXT, quotes included (repeatable).
- ``timeout: SECONDS``: for the block, or for each readiness wait (default 300).

Every block of a document runs in one bash session, in order, so variables and files carry over
as they would for a reader; a failing command is recorded (bash's ERR trap), not fatal, so later
blocks still run.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

RUN_LANGUAGES = ("bash", "python")
_FENCE = re.compile(r"^```(\w*)\s*$")
_ANNOTATION = re.compile(r"^<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
DEFAULT_TIMEOUT_S = 300.0


@dataclass
class Block:
    """One fenced code block and its annotation."""

    document: str
    line: int
    language: str
    code: str
    skip: str | None = None
    background: list[str] = field(default_factory=list)
    ready: list[str] = field(default_factory=list)
    alternatives: bool = False
    ctrl_c: bool = False
    expect: list[str] = field(default_factory=list)
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def key(self) -> str:
        """The block's first command, without its comment: a name that survives edits elsewhere."""
        for line in self.code.splitlines():
            if line.strip() and not line.strip().startswith("#"):
                return re.sub(r"\s+#\s.*$", "", line.strip()).removesuffix("\\").strip()
        return self.code.strip()

    def where(self) -> str:
        """``document:line`` of the opening fence."""
        return f"{self.document}:{self.line}"


def parse_annotation(text: str, block: Block) -> None:
    """Apply the options of a ``docs-test:`` annotation to ``block``."""
    if text.startswith("skip:"):  # the reason is the rest, semicolons included
        block.skip = text.removeprefix("skip:").strip()
        if not block.skip:
            raise ValueError(f"{block.where()}: skip needs a reason")
        return
    for option in filter(None, (part.strip() for part in text.split(";"))):
        name, _, value = option.partition(":")
        name, value = name.strip(), value.strip()
        if name == "background":
            block.background = [p.strip() for p in value.split("|") if p.strip()]
        elif name == "ready":
            block.ready = value.split()
        elif name == "alternatives":
            block.alternatives = True
        elif name == "ctrl-c":
            block.ctrl_c = True
        elif name == "expect":
            block.expect.append(value)
        elif name == "timeout":
            block.timeout_s = float(value)
        else:
            raise ValueError(f"{block.where()}: unknown docs-test option {name!r}")


def extract_blocks(path: Path, name: str) -> list[Block]:
    """The bash and python blocks of a markdown file, annotations applied."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    annotation: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = _FENCE.match(line)
        if match is None:
            found = _ANNOTATION.match(line.strip())
            if found:
                annotation = found.group(1)
            elif line.strip():
                annotation = None
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if match.group(1) in RUN_LANGUAGES:
            block = Block(name, index + 1, match.group(1), "\n".join(lines[index + 1 : end]) + "\n")
            if annotation is not None:
                parse_annotation(annotation, block)
            blocks.append(block)
        elif annotation is not None:
            raise ValueError(
                f"{name}:{index + 1}: docs-test annotation on a {match.group(1)} block"
            )
        annotation = None
        index = end + 1
    return blocks


def logical_lines(code: str) -> list[str]:
    """Lines of shell code with backslash continuations joined (kept as written)."""
    result: list[str] = []
    current = ""
    for line in code.splitlines():
        current += line + "\n"
        if not line.endswith("\\"):
            result.append(current)
            current = ""
    if current:
        result.append(current)
    return result


@dataclass
class Outcome:
    """What running one block gave."""

    block: Block
    output: str
    failed_commands: list[str]
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.failed_commands and not self.problems


class BashSession:
    """One bash process fed block after block, as a reader's terminal would be."""

    def __init__(self, cwd: Path, env: dict[str, str], log_dir: Path) -> None:
        self.log_dir = log_dir
        self.background: list[tuple[int, str]] = []  # (process group id, command)
        self._counter = 0
        self._commands: dict[int, str] = {}
        self._addresses: set[tuple[str, int]] = set()  # host and port of every ready target
        self._process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()
        self._send("set -o pipefail -m\n")  # -m: background jobs get Ctrl-C, own groups

    def _pump(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _send(self, text: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(text)
        self._process.stdin.flush()

    def run(self, block: Block) -> Outcome:
        """Run a block; background commands are started and waited for, the rest run in order."""
        if block.ctrl_c:
            self.stop(self.background)
            self.background = []
        if block.language == "python":
            script = f"python - <<'DOCS_TEST_PYTHON'\n{block.code}DOCS_TEST_PYTHON\n"
            return self._run_steps(block, [("run", script)])
        steps: list[tuple[str, str]] = []  # ("run", shell code) | ("start", command)
        for command in logical_lines(block.code):
            stripped = command.strip()
            if block.background and any(stripped.startswith(p) for p in block.background):
                steps.append(("start", command))
            elif steps and steps[-1][0] == "run":
                steps[-1] = ("run", steps[-1][1] + command)
            else:
                steps.append(("run", command))
        return self._run_steps(block, steps)

    def _start(self, command: str) -> str:
        """Shell code starting a command as if typed into a second terminal (own process group,
        same directory), reporting its process id."""
        self._counter += 1
        script = self.log_dir / f"background-{self._counter}.sh"
        script.write_text(command, encoding="utf-8")
        log = self.log_dir / f"background-{self._counter}.log"
        self._commands[self._counter] = command.strip()
        return f'bash {script} < /dev/null > {log} 2>&1 &\necho "__DOCS_BG__ $! {self._counter}"\n'

    def _run_steps(self, block: Block, steps: list[tuple[str, str]]) -> Outcome:
        """Run the steps in order; each background start is followed by its readiness wait."""
        output: list[str] = []
        failed: list[str] = []
        problems: list[str] = []
        deadline = time.monotonic() + block.timeout_s
        started = 0
        for kind, code in steps:
            if kind == "start" and block.alternatives and self.background:
                self.stop(self.background)  # the previous alternative: Ctrl-C it first
                self.background = []
            if code.strip():
                text, errors = self._execute(
                    self._start(code) if kind == "start" else code, deadline
                )
                output.append(text)
                failed += errors
            if time.monotonic() > deadline:
                problems.append(f"timed out after {block.timeout_s:.0f} s")
                break
            if kind == "start":
                problem = self._wait_ready(block, started)
                started += 1
                if problem:
                    problems.append(problem)
                    break
        joined = "".join(output)
        for text in block.expect:
            if text not in joined:
                problems.append(f"output lacks {text!r}")
        return Outcome(block, joined, failed, problems)

    def _execute(self, piece: str, deadline: float) -> tuple[str, list[str]]:
        marker = f"__DOCS_DONE__{time.monotonic_ns()}"
        # Sourced from a file with stdin from /dev/null: a command that reads stdin cannot eat
        # the session's next lines, and variables and the directory still carry over.
        self._counter += 1
        code = self.log_dir / f"step-{self._counter}.sh"
        code.write_text(piece + "\n", encoding="utf-8")
        self._send(
            "__docs_failed=()\n"
            "trap '__docs_failed+=(\"$BASH_COMMAND\")' ERR\n"
            f"source {code} < /dev/null\n"
            "trap - ERR\n"
            'echo; printf "%s\\n" "${__docs_failed[@]}" | sed "s/^/__DOCS_ERR__ /"\n'
            f"echo {marker}\n"
        )
        output: list[str] = []
        errors: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.interrupt()
                errors.append("(timed out)")
                return "".join(output), errors
            if line is None:
                errors.append("(the shell exited)")
                return "".join(output), errors
            if line.startswith(marker):
                return "".join(output), errors
            if line.startswith("__DOCS_ERR__ "):
                command = line.removeprefix("__DOCS_ERR__ ").strip()
                if command and not command.startswith(f"source {self.log_dir}"):
                    errors.append(command)
            elif line.startswith("__DOCS_BG__ "):
                _, pid, number = line.split()
                self.background.append((int(pid), self._commands[int(number)]))
            else:
                output.append(line)

    def _wait_ready(self, block: Block, index: int) -> str | None:
        if not block.ready:
            time.sleep(2)
            return None
        target = block.ready[min(index, len(block.ready) - 1)]
        parsed = urllib.parse.urlsplit(target)
        if parsed.hostname and parsed.port:
            self._addresses.add((parsed.hostname, parsed.port))
        deadline = time.monotonic() + block.timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            pid = self.background[-1][0] if self.background else None
            if pid is not None and not _alive(pid):
                return f"background command exited before {target} was ready"
            ready, last = probe(target)
            if ready:
                return None
            time.sleep(1)
        return f"{target} not ready after {block.timeout_s:.0f} s (last: {last})"

    def interrupt(self) -> None:
        """Stop whatever the shell is running (Ctrl-C)."""
        self._process.send_signal(signal.SIGINT)

    def stop(self, processes: list[tuple[int, str]]) -> None:
        """Ctrl-C each background command (its process group), then kill what is left."""
        for pgid, _ in processes:
            _signal_group(pgid, signal.SIGINT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(p) for p, _ in processes):
            time.sleep(0.5)
        for pgid, _ in processes:
            _signal_group(pgid, signal.SIGKILL)
        # A container's published port is released a moment after its client exits.
        for address in self._addresses:
            _wait_refused(address, timeout_s=30)

    def close(self) -> None:
        """Stop the background commands and the shell (and anything it still runs)."""
        self.stop(self.background)
        self.background = []
        if self._process.poll() is None:
            try:
                self._send("exit\n")
                self._process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                _signal_group(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=10)
        self._pump_thread.join(timeout=10)
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: the shell's
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return not _is_zombie(pid)
    return waited == 0


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_refused(address: tuple[str, int], timeout_s: float) -> None:
    """Wait until nothing listens on ``address`` any more."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(address, timeout=1).close()
        except OSError:
            return
        time.sleep(0.5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def probe(target: str) -> tuple[bool, str]:
    """Whether a server answers: HTTP status below 500, or a V2 gRPC server that is ready."""
    if target.startswith("grpc://"):
        try:
            import tritonclient.grpc as triton

            client = triton.InferenceServerClient(target.removeprefix("grpc://"))
            ready = bool(client.is_server_ready(client_timeout=3))
            client.close()
        except Exception as exc:  # any failure means "not yet"
            return False, f"{type(exc).__name__}: {exc}"[:200]
        return ready, "ready" if ready else "not ready"
    import httpx

    try:
        response = httpx.get(target, timeout=3)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return response.status_code < 500, f"{response.status_code} {response.text[:200]}"
