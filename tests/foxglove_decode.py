"""Decode Foxglove's protobuf messages in the tests, from the schema an MCAP file or a server carries."""
from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def protobuf_class(schema_name: str, schema_data: bytes) -> Any:
    """The message class of `schema_name` from a serialized FileDescriptorSet (a schema's data)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(schema_data)
    pool = descriptor_pool.DescriptorPool()
    pending = list(files.file)
    while pending:  # add each file after the files it imports
        added = [f for f in pending if all(_known(pool, dep) for dep in f.dependency)]
        if not added:
            raise ValueError(f"schema {schema_name!r}: unresolved imports in {[f.name for f in pending]}")
        for f in added:
            pool.Add(f)
            pending.remove(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema_name))


def _known(pool: descriptor_pool.DescriptorPool, name: str) -> bool:
    try:
        pool.FindFileByName(name)
        return True
    except KeyError:
        return False
