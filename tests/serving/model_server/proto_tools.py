"""Comparing compiled protocol descriptors (``from proto_tools import ...`` in these tests)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2


def normalised(proto: descriptor_pb2.FileDescriptorProto) -> descriptor_pb2.FileDescriptorProto:
    """``proto`` without what a ``.proto`` source need not reproduce: source info, json names,
    and the order of nested types (protoc places a map's entry type where the field is)."""
    proto.ClearField("source_code_info")
    for message in proto.message_type:
        _normalise_message(message)
    return proto


def _normalise_message(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        field.ClearField("json_name")
    for nested in message.nested_type:
        _normalise_message(nested)
    nested_types = sorted(message.nested_type, key=lambda nested: nested.name)
    del message.nested_type[:]
    message.nested_type.extend(nested_types)
