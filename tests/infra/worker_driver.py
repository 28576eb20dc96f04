"""Drives Microsoft's Python worker library (azure-functions-runtime, Python >= 3.13) the way the
host's proxy worker does: WorkerInitRequest (which indexes function_app), FunctionsMetadataRequest,
then one FunctionLoadRequest per function. Prints one JSON document with what the library answered.

Run by tests/infra/test_worker_indexing.py with .venv-worker's interpreter:
    python worker_driver.py <function app directory>

The host's gRPC message classes (`protos`) are not part of the library: the proxy worker passes
them in with each request, generated from the host's FunctionRpc.proto, and no PyPI package ships
them for Python >= 3.13. `Messages` below stands in for them: each message class keeps the fields
it was built with, and the enum values the library compares against are the proto's numbers
(BindingInfo.Direction in=0, out=1, inout=2; DataType undefined=0; StatusResult.Status Failure=0,
Success=1). Everything else (importing function_app, reading its decorators, checking every
binding against its parameter's type, building the function registry) is the library's own code.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
from types import SimpleNamespace


class Message:
    """A protobuf message stand-in: keyword fields kept as attributes, unknown fields None."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __getattr__(self, name):  # only for fields never set
        if name.startswith("__"):
            raise AttributeError(name)
        return None


class StatusResult(Message):
    Failure, Success, Cancelled = 0, 1, 2


class BindingInfo(Message):
    in_, out, inout = 0, 1, 2
    undefined, string, binary, stream = 0, 1, 2, 3


class Messages:
    """The `protos` namespace the library reads message classes from."""
    StatusResult = StatusResult
    BindingInfo = BindingInfo

    def __getattr__(self, name):
        return type(name, (Message,), {})


def request(**payload):
    return SimpleNamespace(request=SimpleNamespace(**payload), properties={"host": "127.0.0.1", "protos": MESSAGES})


MESSAGES = Messages()


async def main(app_dir: str) -> dict:
    sys.path.insert(0, app_dir)
    os.chdir(app_dir)
    import azure_functions_runtime as runtime
    from azure_functions_runtime import handle_event

    init = await runtime.worker_init_request(request(worker_init_request=SimpleNamespace(
        capabilities={}, function_app_directory=app_dir)))
    report = {"init_status": init.result.status, "init_error": getattr(init.result.exception, "message", None),
              "capabilities": dict(init.capabilities or {})}
    if init.result.status != StatusResult.Success:
        return report
    metadata = await runtime.functions_metadata_request(request())
    functions = list(metadata.function_metadata_results or [])
    report["indexed"] = sorted(f.name for f in functions)
    report["bindings"] = {f.name: sorted(b.type for b in (f.bindings or {}).values()) for f in functions}
    loaded = []
    for f in functions:
        answer = await runtime.function_load_request(request(function_load_request=SimpleNamespace(
            function_id=f.function_id)))
        info = handle_event._functions.get_function(f.function_id)
        if answer.result.status == StatusResult.Success and info is not None and info.name == f.name:
            loaded.append(f.name)
    report["loaded"] = sorted(loaded)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(os.path.abspath(sys.argv[1])))))
