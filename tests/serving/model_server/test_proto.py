"""The checked-in protocol definitions compile to exactly the descriptors of the stubs we use."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import descriptor_pb2
from proto_tools import normalised
from tritonclient.grpc import model_config_pb2, service_pb2

import imgclf.serving.model_server

protoc = pytest.importorskip("grpc_tools.protoc")

PROTO_DIR = Path(imgclf.serving.model_server.__file__).parent / "proto"


@pytest.mark.parametrize(
    ("filename", "module"),
    [("grpc_service.proto", service_pb2), ("model_config.proto", model_config_pb2)],
)
def test_checked_in_proto_matches_the_stubs(
    tmp_path: Path, filename: str, module: ModuleType
) -> None:
    out = tmp_path / "descriptors.pb"
    code = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", str(PROTO_DIR / filename)]
    )
    assert code == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    shipped = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
    assert normalised(compiled) == normalised(shipped)
