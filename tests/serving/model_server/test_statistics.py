"""Dynamic batching seen from outside: concurrent V2 requests share model executions."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as grpcclient

from imgclf.export.triton import export_triton_repository
from imgclf.serving.model_server.server import ModelServer, ModelServerSettings


def test_concurrent_requests_are_batched_and_counted(tiny_bundle: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    export_triton_repository(tiny_bundle, repo, max_batch_size=8, max_queue_delay_us=200_000)
    server = ModelServer(ModelServerSettings(repository=repo, grpc_port=0, http_port=0))
    server.start()
    url = f"127.0.0.1:{server.grpc_port}"
    gate = threading.Barrier(8)

    def infer(index: int) -> int:
        pixels = np.full((1, 32, 32, 3), 0, dtype=np.uint8)
        pixels[..., index % 3] = 230
        tensor = grpcclient.InferInput("pixels", [1, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(pixels)
        with grpcclient.InferenceServerClient(url) as client:
            gate.wait()
            result = client.infer("colors", [tensor])
        return int(result.as_numpy("probabilities").argmax())

    try:
        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(infer, range(8))) == [i % 3 for i in range(8)]
        with grpcclient.InferenceServerClient(url) as client:
            stats = client.get_inference_statistics("colors").model_stats[0]
            everything = client.get_inference_statistics().model_stats
        assert stats.inference_stats.success.count == 8
        assert stats.inference_count == 8
        assert stats.execution_count < 8  # requests shared executions
        assert sum(b.batch_size * b.compute_infer.count for b in stats.batch_stats) == 8
        assert max(b.batch_size for b in stats.batch_stats) > 1
        assert [s.name for s in everything] == ["colors"]
        rest = httpx.get(f"http://127.0.0.1:{server.http_port}/v2/models/colors/stats").json()
        assert rest["model_stats"][0]["inference_count"] == "8"  # uint64 as a JSON string
    finally:
        server.stop(grace_s=0)
