"""``imgclf model-server`` as users run it: a real process, stopped with SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from imgclf.cli import main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_model_server_command_exports_serves_and_stops(tiny_bundle: Path, tmp_path: Path) -> None:
    grpc_port, http_port = free_port(), free_port()
    repo = tmp_path / "repo"
    command = [
        sys.executable, "-m", "imgclf", "model-server", "--repository", str(repo),
        "--bundle", str(tiny_bundle), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--poll-interval", "0",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            banner = process.stdout.readline()
            assert f"gRPC on 127.0.0.1:{grpc_port}" in banner
            assert "models: colors" in banner
            assert (repo / "colors" / "1" / "model.onnx").is_file()
            with grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                assert client.is_server_ready()
                pixels = np.full((1, 32, 32, 3), (30, 40, 220), dtype=np.uint8)
                tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
                tensor.set_data_from_numpy(pixels)
                result = client.infer("colors", [tensor])
                assert int(result.as_numpy("probabilities").argmax()) == 2
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_missing_repository_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["model-server", "--repository", str(tmp_path / "none")])
    assert code == 2
    stderr = capsys.readouterr().err
    assert "is not a directory" in stderr
    assert "--format triton" in stderr


def test_serving_modules_do_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import imgclf.serving.model_server.server, imgclf.serving.model_server.rest\n"
        "import imgclf.serving.model_server.cli, imgclf.serving.gateway.client\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
