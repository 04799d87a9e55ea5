"""containerd's snapshots API, its wire schema built at run time.

No .proto file and no generated code: the messages of containerd's
api/services/snapshots/v1/snapshots.proto and api/types/mount.proto are described here as
FileDescriptorProtos, with the same package, names and field numbers, so they encode exactly
as protoc's output does (proto3: the wire carries only field numbers and types).  They live
in a private descriptor pool, so another containerd client loaded into the same process
cannot clash with them.  Needs grpcio and protobuf (`pip install 'layerstore[containerd]'`).

SERVICE is the full service name; METHODS maps each RPC to (request class, response class,
server streaming).  Messages are plain protobuf classes: M["Info"](name=..., kind=...).
"""

from __future__ import annotations

try:
    import grpc
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from google.protobuf import empty_pb2, field_mask_pb2, timestamp_pb2
except ImportError as exc:     # pragma: no cover - the extra is not installed
    from ..errors import LayerstoreError
    raise LayerstoreError(
        "the containerd snapshotter needs grpcio and protobuf: "
        "pip install 'layerstore[containerd]'") from exc

SERVICE = "containerd.services.snapshots.v1.Snapshots"
PACKAGE = "containerd.services.snapshots.v1"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _INT64, _MESSAGE, _ENUM = _F.TYPE_STRING, _F.TYPE_INT64, _F.TYPE_MESSAGE, _F.TYPE_ENUM
_REPEATED = _F.LABEL_REPEATED

# message -> [(name, number, type, type name or None, repeated)], as in snapshots.proto
# (containerd main @301026e5; v1.6.20 is the same on the wire, without Commit's parent).
_LABELS = ("labels", _MESSAGE, ".LABELS", True)
_SNAPSHOT_MESSAGES = {
    "PrepareSnapshotRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING),
                               ("parent", 3, _STRING), ("labels", 4) + _LABELS[1:]],
    "PrepareSnapshotResponse": [("mounts", 1, _MESSAGE, ".containerd.types.Mount", True)],
    "ViewSnapshotRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING),
                            ("parent", 3, _STRING), ("labels", 4) + _LABELS[1:]],
    "ViewSnapshotResponse": [("mounts", 1, _MESSAGE, ".containerd.types.Mount", True)],
    "MountsRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING)],
    "MountsResponse": [("mounts", 1, _MESSAGE, ".containerd.types.Mount", True)],
    "RemoveSnapshotRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING)],
    "CommitSnapshotRequest": [("snapshotter", 1, _STRING), ("name", 2, _STRING),
                              ("key", 3, _STRING), ("labels", 4) + _LABELS[1:],
                              ("parent", 5, _STRING)],
    "StatSnapshotRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING)],
    "Info": [("name", 1, _STRING), ("parent", 2, _STRING),
             ("kind", 3, _ENUM, f".{PACKAGE}.Kind", False),
             ("created_at", 4, _MESSAGE, ".google.protobuf.Timestamp", False),
             ("updated_at", 5, _MESSAGE, ".google.protobuf.Timestamp", False),
             ("labels", 6) + _LABELS[1:]],
    "StatSnapshotResponse": [("info", 1, _MESSAGE, f".{PACKAGE}.Info", False)],
    "UpdateSnapshotRequest": [("snapshotter", 1, _STRING),
                              ("info", 2, _MESSAGE, f".{PACKAGE}.Info", False),
                              ("update_mask", 3, _MESSAGE, ".google.protobuf.FieldMask", False)],
    "UpdateSnapshotResponse": [("info", 1, _MESSAGE, f".{PACKAGE}.Info", False)],
    "ListSnapshotsRequest": [("snapshotter", 1, _STRING), ("filters", 2, _STRING, None, True)],
    "ListSnapshotsResponse": [("info", 1, _MESSAGE, f".{PACKAGE}.Info", True)],
    "UsageRequest": [("snapshotter", 1, _STRING), ("key", 2, _STRING)],
    "UsageResponse": [("size", 1, _INT64), ("inodes", 2, _INT64)],
    "CleanupRequest": [("snapshotter", 1, _STRING)],
}
KINDS = {"UNKNOWN": 0, "VIEW": 1, "ACTIVE": 2, "COMMITTED": 3}

# rpc -> (request, response, server-streaming)
_RPCS = {
    "Prepare": ("PrepareSnapshotRequest", "PrepareSnapshotResponse", False),
    "View": ("ViewSnapshotRequest", "ViewSnapshotResponse", False),
    "Mounts": ("MountsRequest", "MountsResponse", False),
    "Commit": ("CommitSnapshotRequest", ".google.protobuf.Empty", False),
    "Remove": ("RemoveSnapshotRequest", ".google.protobuf.Empty", False),
    "Stat": ("StatSnapshotRequest", "StatSnapshotResponse", False),
    "Update": ("UpdateSnapshotRequest", "UpdateSnapshotResponse", False),
    "List": ("ListSnapshotsRequest", "ListSnapshotsResponse", True),
    "Usage": ("UsageRequest", "UsageResponse", False),
    "Cleanup": ("CleanupRequest", ".google.protobuf.Empty", False),
}


def _field(msg, owner: str, name: str, number: int, ftype: int, type_name: str | None = None,
           repeated: bool = False) -> None:
    """Adds a field to msg (whose full name is owner)."""
    f = msg.field.add(name=name, number=number, type=ftype,
                      label=_REPEATED if repeated else _F.LABEL_OPTIONAL)
    f.json_name = "".join(p.capitalize() if i else p for i, p in enumerate(name.split("_")))
    if type_name == ".LABELS":
        # map<string, string>: a nested XxxEntry message with option map_entry
        entry = msg.nested_type.add(name="LabelsEntry")
        entry.options.map_entry = True
        _field(entry, "", "key", 1, _STRING)
        _field(entry, "", "value", 2, _STRING)
        type_name = f".{owner}.LabelsEntry"
    if type_name:
        f.type_name = type_name


def _build_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    for wkt in (empty_pb2, field_mask_pb2, timestamp_pb2):
        pool.AddSerializedFile(wkt.DESCRIPTOR.serialized_pb)

    mount = descriptor_pb2.FileDescriptorProto(name="types/mount.proto", package="containerd.types",
                                               syntax="proto3")
    m = mount.message_type.add(name="Mount")
    for name, number in (("type", 1), ("source", 2), ("target", 3)):
        _field(m, "", name, number, _STRING)
    _field(m, "", "options", 4, _STRING, None, True)
    pool.Add(mount)

    snap = descriptor_pb2.FileDescriptorProto(
        name="services/snapshots/v1/snapshots.proto", package=PACKAGE, syntax="proto3",
        dependency=["google/protobuf/empty.proto", "google/protobuf/field_mask.proto",
                    "google/protobuf/timestamp.proto", "types/mount.proto"])
    kind = snap.enum_type.add(name="Kind")
    for name, number in KINDS.items():
        kind.value.add(name=name, number=number)
    for name, fields in _SNAPSHOT_MESSAGES.items():
        msg = snap.message_type.add(name=name)
        for spec in fields:
            _field(msg, f"{PACKAGE}.{name}", *spec)
    svc = snap.service.add(name="Snapshots")
    for rpc, (req, resp, stream) in _RPCS.items():
        svc.method.add(name=rpc, input_type=req if req.startswith(".") else f".{PACKAGE}.{req}",
                       output_type=resp if resp.startswith(".") else f".{PACKAGE}.{resp}",
                       server_streaming=stream)
    pool.Add(snap)
    return pool


_POOL = _build_pool()


def _cls(full_name: str):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(full_name))


M = {name: _cls(f"{PACKAGE}.{name}") for name in _SNAPSHOT_MESSAGES}
M["Mount"] = _cls("containerd.types.Mount")
M["Empty"] = _cls("google.protobuf.Empty")
M["Timestamp"] = _cls("google.protobuf.Timestamp")


def _msg(name: str):
    return M[name.rsplit(".", 1)[-1]]


METHODS = {rpc: (_msg(req), _msg(resp), stream) for rpc, (req, resp, stream) in _RPCS.items()}


def server_handler(impl) -> "grpc.GenericRpcHandler":
    """The service's gRPC handler; impl has one method per RPC, (request, context) ->
    response (List: an iterator of responses)."""
    handlers = {}
    for rpc, (req, resp, stream) in METHODS.items():
        make = grpc.unary_stream_rpc_method_handler if stream else \
            grpc.unary_unary_rpc_method_handler
        handlers[rpc] = make(getattr(impl, rpc), request_deserializer=req.FromString,
                             response_serializer=resp.SerializeToString)
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


class Client:
    """A client of a Snapshots service (containerd's own, or a snapshotter): call(rpc,
    request, metadata) -> response (List: an iterator)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address if "://" in address else f"unix://{address}")

    def call(self, rpc: str, request, metadata=(), timeout: float = 60.0):
        req, resp, stream = METHODS[rpc]
        make = self.channel.unary_stream if stream else self.channel.unary_unary
        fn = make(f"/{SERVICE}/{rpc}", request_serializer=req.SerializeToString,
                  response_deserializer=resp.FromString)
        return fn(request, metadata=tuple(metadata), timeout=timeout)

    def close(self) -> None:
        self.channel.close()
