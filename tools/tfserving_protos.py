"""Regenerate the checked-in TF Serving protocol definitions (developer tool, not shipped).

``tensorflow-serving-api`` and ``tensorflow`` ship compiled descriptors, not ``.proto`` sources.
This script writes the ``.proto`` files of TF Serving's ``PredictionService`` and ``ModelService``
(and every TensorFlow file they import) from those descriptors, as the V2 definitions were
regenerated from ``tritonclient``'s, then compiles them into the descriptor set the model server
loads::

    # in an environment with tensorflow-serving-api (e.g. make test-tfserving's .venv-tfserving)
    python tools/tfserving_protos.py write
    # in the development environment (grpcio-tools)
    python tools/tfserving_protos.py compile

Comments of the upstream files are not part of the descriptors. The tests check that the
definitions compile to the checked-in descriptor set and that it matches the official stubs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2

PROTO_DIR = Path(__file__).resolve().parents[1] / "src/imgclf/serving/model_server/proto"
ROOT = PROTO_DIR / "tfserving"
DESCRIPTOR_SET = PROTO_DIR / "tfserving.binpb"
SERVICES = ("tensorflow_serving/apis/prediction_service.proto",
            "tensorflow_serving/apis/model_service.proto")  # fmt: skip

_SCALARS = {
    1: "double", 2: "float", 3: "int64", 4: "uint64", 5: "int32", 6: "fixed64", 7: "fixed32",
    8: "bool", 9: "string", 12: "bytes", 13: "uint32", 15: "sfixed32", 16: "sfixed64",
    17: "sint32", 18: "sint64",
}  # fmt: skip


def _value(value: Any, field: Any) -> str:
    if field.enum_type is not None:
        return str(field.enum_type.values_by_number[value].name)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)


def _options(options: Any, skip: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    return [
        (field.name, _value(value, field))
        for field, value in options.ListFields()
        if field.name not in skip
    ]


def _type_name(field: Any) -> str:
    if field.type in (11, 14):  # message, enum: fully qualified
        return "." + (field.message_type or field.enum_type).full_name
    return _SCALARS[field.type]


def _field(field: Any, proto3: bool, indent: str) -> str:
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        kind = f"map<{_type_name(key)}, {_type_name(value)}>"
    elif field.containing_oneof is not None and not _proto3_optional(field):
        kind = _type_name(field)  # a member of a real oneof has no label
    else:
        kind = _label(field, proto3) + _type_name(field)
    opts = _options(field.GetOptions())
    suffix = " [" + ", ".join(f"{k} = {v}" for k, v in opts) + "]" if opts else ""
    return f"{indent}{kind} {field.name} = {field.number}{suffix};\n"


def _label(field: Any, proto3: bool) -> str:
    if field.is_repeated:
        return "repeated "
    if field.is_required:
        return "required "
    return "optional " if not proto3 or _proto3_optional(field) else ""


def _proto3_optional(field: Any) -> bool:
    oneof = field.containing_oneof
    return oneof is not None and oneof.name == "_" + field.name and len(oneof.fields) == 1


def _enum(enum: Any, indent: str) -> str:
    text = f"{indent}enum {enum.name} {{\n"
    text += "".join(f"{indent}  option {k} = {v};\n" for k, v in _options(enum.GetOptions()))
    for value in enum.values:
        opts = _options(value.GetOptions())
        suffix = " [" + ", ".join(f"{k} = {v}" for k, v in opts) + "]" if opts else ""
        text += f"{indent}  {value.name} = {value.number}{suffix};\n"
    proto = descriptor_pb2.EnumDescriptorProto()
    enum.CopyToProto(proto)
    ranges = [  # inclusive ends, unlike a message's
        str(r.start) if r.end == r.start else f"{r.start} to {r.end}" for r in proto.reserved_range
    ]
    if ranges:
        text += f"{indent}  reserved {', '.join(ranges)};\n"
    return text + f"{indent}}}\n"


def _message(message: Any, proto3: bool, indent: str) -> str:
    text = f"{indent}message {message.name} {{\n"
    inner = indent + "  "
    text += "".join(f"{inner}option {k} = {v};\n" for k, v in _options(message.GetOptions()))
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            text += _message(nested, proto3, inner)
    text += "".join(_enum(enum, inner) for enum in message.enum_types)
    real_oneofs = {o.name for o in message.oneofs if not _synthetic(o)}
    done: set[str] = set()
    for field in message.fields:
        oneof = field.containing_oneof
        if oneof is not None and oneof.name in real_oneofs:
            if oneof.name not in done:
                done.add(oneof.name)
                text += f"{inner}oneof {oneof.name} {{\n"
                text += "".join(_field(f, proto3, inner + "  ") for f in oneof.fields)
                text += f"{inner}}}\n"
            continue
        text += _field(field, proto3, inner)
    return text + _reserved(message, inner) + f"{indent}}}\n"


def _synthetic(oneof: Any) -> bool:
    return len(oneof.fields) == 1 and _proto3_optional(oneof.fields[0])


def _reserved(message: Any, indent: str) -> str:
    proto = descriptor_pb2.DescriptorProto()
    message.CopyToProto(proto)
    text = ""
    ranges = [
        str(r.start) if r.end == r.start + 1 else f"{r.start} to {r.end - 1}"
        for r in proto.reserved_range
    ]
    if ranges:
        text += f"{indent}reserved {', '.join(ranges)};\n"
    if proto.reserved_name:
        text += f"{indent}reserved {', '.join(repr(n) for n in proto.reserved_name)};\n"
    return text


def proto_source(file: Any) -> str:
    """The ``.proto`` text of a compiled file descriptor (without the upstream comments)."""
    compiled = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(compiled)
    syntax = compiled.syntax or "proto2"
    proto3 = syntax == "proto3"
    text = (
        "// Regenerated by tools/tfserving_protos.py from the compiled descriptors shipped in the\n"
        "// tensorflow-serving-api / tensorflow packages (Apache License 2.0); comments of the\n"
        "// upstream file are not part of the descriptors.\n\n"
        f'syntax = "{syntax}";\n\npackage {file.package};\n\n'
    )
    public = set(compiled.public_dependency)
    text += "".join(
        f'import {"public " if i in public else ""}"{dep}";\n'
        for i, dep in enumerate(compiled.dependency)
    )
    text += "\n" + "".join(f"option {k} = {v};\n" for k, v in _options(file.GetOptions()))
    text += "".join("\n" + _enum(enum, "") for enum in file.enum_types_by_name.values())
    text += "".join("\n" + _message(m, proto3, "") for m in file.message_types_by_name.values())
    for service in file.services_by_name.values():
        text += f"\nservice {service.name} {{\n"
        for method in service.methods:
            text += (
                f"  rpc {method.name}(.{method.input_type.full_name}) "
                f"returns (.{method.output_type.full_name});\n"
            )
        text += "}\n"
    return text


def write() -> None:
    """Write every file the two services need, in import order, under :data:`ROOT`."""
    from google.protobuf import descriptor_pool

    pool = descriptor_pool.Default()
    import tensorflow_serving.apis.model_service_pb2
    import tensorflow_serving.apis.prediction_service_pb2  # noqa: F401

    written: set[str] = set()

    def visit(file: Any) -> None:
        if file.name in written or file.name.startswith("google/protobuf/"):
            return
        written.add(file.name)
        for dep in file.dependencies:
            visit(dep)
        path = ROOT / file.name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(proto_source(file), encoding="utf-8")

    for name in SERVICES:
        visit(pool.FindFileByName(name))
    print(f"wrote {len(written)} files under {ROOT}")


def compile_set() -> None:
    """Compile the services and their imports into :data:`DESCRIPTOR_SET` with protoc."""
    command = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", "--include_imports",
        f"--descriptor_set_out={DESCRIPTOR_SET}", *(str(ROOT / name) for name in SERVICES),
    ]  # fmt: skip
    subprocess.run(command, check=True)
    print(f"wrote {DESCRIPTOR_SET}")


def main() -> None:
    """``write`` the .proto files or ``compile`` them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("step", choices=["write", "compile"])
    args = parser.parse_args()
    write() if args.step == "write" else compile_set()


if __name__ == "__main__":
    main()
