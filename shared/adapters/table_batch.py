"""Entity group transactions (Azure Tables `$batch`) without the SDK's MIME machinery.

`TableClient.submit_transaction` builds and parses the multipart/mixed body with Python's `email`
package: measured in bench/pipeline.py, ~3 ms of worker CPU per transaction beyond the requests
it replaces (a batch of two rows cost 5.8 ms against 2.5 ms for two single writes), a fifth of a
worker's CPU per mail. A transaction is what keeps a mail's Storage requests few (a claim row with
its list row, our Lime records with the ticket index), so this module writes the same documented
wire format (Azure Tables REST: "Performing entity group transactions") as plain text: the
operations the app uses (insert, replace or merge with If-Match, upsert, delete with If-Match),
sent through the table client's own pipeline, so authentication, retries, the request hook
(storage_ops.py) and logging are the SDK's. Entity properties are typed by the SDK's own
serializer.

`submit(table, ops)` takes the SDK's operation tuples and returns the SDK's result (one metadata
dict with the `etag` per operation). A refused transaction writes nothing and raises what the
single-entity calls raise: ResourceExistsError (409: an insert found its row), ResourceModifiedError
(412: an If-Match failed), ResourceNotFoundError (404: a row or the table is missing; the table's
code, TableNotFound, is in the message), HttpResponseError otherwise.
"""
from __future__ import annotations

import json
import re
import uuid
from typing import Any, Sequence
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.core.rest import HttpRequest

try:  # the SDK's entity serializer (types each property as the single-entity calls do)
    from azure.data.tables._serialize import _add_entity_properties
except ImportError:  # pragma: no cover - a future SDK moved it: use the SDK's own transactions
    _add_entity_properties = None

MAX_OPERATIONS = 100
_STATUS = re.compile(r"^HTTP/1\.1 (\d{3})", re.MULTILINE)
_ETAG = re.compile(r"^ETag:\s*(.+?)\s*$", re.MULTILINE | re.IGNORECASE)
_CODE = re.compile(r'"code"\s*:\s*"([^"]*)"')
_VERBS = {"create": "POST", "update": "PUT", "upsert": "PATCH", "delete": "DELETE"}
_ERRORS = {409: ResourceExistsError, 412: ResourceModifiedError, 404: ResourceNotFoundError}


def available() -> bool:
    return _add_entity_properties is not None


def _key(value: str) -> str:
    return quote(str(value).replace("'", "''"), safe="")


def _part(op: tuple[Any, ...], base: str, content_id: int) -> str:
    kind, entity = op[0], op[1]
    options = op[2] if len(op) > 2 else {}
    mode = str(options.get("mode", "merge")).lower().rpartition(".")[2]
    headers = ["x-ms-version: 2019-02-02", "DataServiceVersion: 3.0"]
    if kind == "create":
        url, body = base, json.dumps(_add_entity_properties(entity))
        headers += ["Accept: application/json;odata=minimalmetadata", "Prefer: return-no-content"]
    else:
        url = f"{base}(PartitionKey='{_key(entity['PartitionKey'])}',RowKey='{_key(entity['RowKey'])}')"
        body = "" if kind == "delete" else json.dumps(_add_entity_properties(entity))
        headers.append("Accept: application/json")
        etag = options.get("etag")
        if etag and options.get("match_condition", MatchConditions.IfNotModified) == MatchConditions.IfNotModified:
            headers.append(f"If-Match: {etag}")
        elif kind in ("update", "delete"):
            headers.append("If-Match: *")
    method = _VERBS[kind]
    if kind == "update" and mode == "merge":
        method = "PATCH"
    elif kind == "upsert" and mode == "replace":
        method = "PUT"
    if body:
        headers += ["Content-Type: application/json", f"Content-Length: {len(body.encode('utf-8'))}"]
    return ("Content-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {content_id}\r\n\r\n{method} {url} HTTP/1.1\r\n" + "\r\n".join(headers)
            + "\r\n\r\n" + body + "\r\n")


async def submit(table: Any, ops: Sequence[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """One entity group transaction on the TableClient `table` (see the module docstring)."""
    if not available():
        return await table.submit_transaction(list(ops))
    if not ops or len(ops) > MAX_OPERATIONS:
        raise ValueError(f"a transaction takes 1 to {MAX_OPERATIONS} operations")
    host = f"{table.scheme}://{table._primary_hostname}"
    base = f"{host}/{table.table_name}"
    batch, changeset = f"batch_{uuid.uuid4()}", f"changeset_{uuid.uuid4()}"
    parts = "".join(f"--{changeset}\r\n{_part(op, base, i)}" for i, op in enumerate(ops))
    body = (f"--{batch}\r\nContent-Type: multipart/mixed; boundary={changeset}\r\n\r\n{parts}"
            f"--{changeset}--\r\n--{batch}--\r\n").encode("utf-8")
    request = HttpRequest("POST", f"{host}/$batch", content=body, headers={
        "x-ms-version": table.api_version, "DataServiceVersion": "3.0", "MaxDataServiceVersion": "3.0;NetFx",
        "Content-Type": f"multipart/mixed; boundary={batch}", "Accept": "application/json"})
    response = await table._client.send_request(request, stream=True)  # as the SDK: no content decoding
    await response.read()
    text = response.text()
    if response.status_code != 202:
        raise _ERRORS.get(response.status_code, HttpResponseError)(
            message=f"table transaction: {response.status_code} {_reason(text)}", response=response)
    answers = [p for p in re.split(r"--changesetresponse_[^\r\n]*", text) if _STATUS.search(p)]
    failed = next((p for p in answers if not 200 <= int(_STATUS.search(p).group(1)) < 300), None)
    if failed is not None:
        status = int(_STATUS.search(failed).group(1))
        message = f"table transaction refused: {status} {_reason(failed)}"
        raise _ERRORS.get(status, HttpResponseError)(message=message)
    if len(answers) != len(ops):
        raise HttpResponseError(message=f"table transaction: {len(answers)} answers to {len(ops)} operations")
    out: list[dict[str, Any]] = []
    for answer in answers:
        etag = _ETAG.search(answer)
        out.append({"etag": etag.group(1)} if etag else {})
    return out


def _reason(text: str) -> str:
    code = _CODE.search(text)
    return code.group(1) if code else " ".join(text.split())[:200]
