"""The committed gRPC stubs: they load with the installed grpcio/protobuf, pyproject's floors
cover what they need, and they match transport/gracecall.proto."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import grpc
import pytest
from google import protobuf
from google.protobuf import descriptor_pb2

REPO = Path(__file__).resolve().parents[2]


def version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def pyproject_floors() -> dict[str, tuple[int, ...]]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    floors = {}
    for dep in deps:
        m = re.fullmatch(r"(grpcio|protobuf)>=([\d.]+)", dep.replace(" ", ""))
        if m:
            floors[m[1]] = version(m[2])
    return floors


def test_stubs_load_and_describe_the_call():
    from transport import gracecall_pb2 as pb
    from transport import gracecall_pb2_grpc as pb_grpc

    method = pb.DESCRIPTOR.services_by_name["GraceCall"].methods_by_name["Call"]
    assert method.client_streaming and method.server_streaming
    assert method.input_type.name == "Media" and method.output_type.name == "Control"
    msg = pb.Media(packet=b"\x02\x00\x00", capture_time_us=123)
    assert pb.Media.FromString(msg.SerializeToString()) == msg
    assert pb.KeyframeRequest.Reason.Value("DAMAGE") == 3
    assert hasattr(pb_grpc, "GraceCallStub") and hasattr(pb_grpc, "GraceCallServicer")


def test_pyproject_floors_cover_what_the_stubs_need():
    from transport import gracecall_pb2_grpc as pb_grpc

    floors = pyproject_floors()
    assert set(floors) == {"grpcio", "protobuf"}, "pyproject must state both floors"
    # grpcio: the stubs refuse to load on a grpcio older than the grpcio-tools that wrote them.
    assert floors["grpcio"] >= version(pb_grpc.GRPC_GENERATED_VERSION)
    # protobuf: the generated module checks the runtime against the protoc that wrote it.
    source = (REPO / "transport" / "gracecall_pb2.py").read_text()
    m = re.search(r"ValidateProtobufRuntimeVersion\(\s*[\w.]+,\s*(\d+),\s*(\d+),\s*(\d+)", source)
    assert m, "the generated module no longer states its protobuf version"
    assert floors["protobuf"] >= tuple(int(g) for g in m.groups())
    # And what is installed here satisfies the floors.
    assert version(grpc.__version__) >= floors["grpcio"]
    assert version(protobuf.__version__) >= floors["protobuf"]


def test_committed_stubs_match_the_proto(tmp_path):
    protoc = pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools not installed")
    from transport import gracecall_pb2 as pb

    out = tmp_path / "set.pb"
    rc = protoc.main(
        ["protoc", f"-I{REPO}", f"--descriptor_set_out={out}", "transport/gracecall.proto"]
    )
    assert rc == 0
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    for message in compiled.message_type:  # json names are derived; gencode leaves them out
        for field in message.field:
            field.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(pb.DESCRIPTOR.serialized_pb)
    assert compiled == committed, "transport/gracecall.proto changed: run `make proto`"


def test_stubs_import_as_package_modules():
    text = (REPO / "transport" / "gracecall_pb2_grpc.py").read_text()
    assert "from transport import gracecall_pb2" in text
