"""Lime CRM REST API simulator for local development, tests and benchmarks.

Serves the subset of ../shared/facts/lime-crm-and-traml.md §1 that shared/adapters/crm_lime/ uses,
under ``/<database>/api/v1`` (so ``LIME_CRM_URL`` is ``<url>/<database>``, as on Lime Cloud):

* ``GET /`` (the credential check), ``GET limetype/`` (``?_embed=limetypes.properties``) and
  ``GET limetype/{name}/`` (``?_embed=properties``): ``{name, localname, _embedded: {properties:
  [{name, localname, type, required, length, options: [{key, text, inactive}], _links:
  {related_type: {name}}}]}}``.
* ``POST|GET|PUT|DELETE limeobject/{limetype}/[{id}/]``: HAL+JSON objects with ``_id``,
  ``_timestamp``, ``_descriptive``, ``_createduser``, ``_updateduser``, ``_createdtime`` and
  ``_links`` (self, limetype, ``relation_<hasmany>``); option values as ``{id, key, text}``,
  belongs-to relations as integer ids. ``GET limeobject/{limetype}/?prop=value&_limit=&_sort=``
  lists (HAL ``_embedded.limeobjects``, ``_links.next``); ``GET limeobject/{t}/{id}/{relation}/``
  lists a has-many relation. PUT is partial (only the given properties change).
* ``GET query/?q=<json>``: ``{limetype, responseFormat: {object: {...}}, filter, orderBy, limit,
  offset}`` with the operators ``AND OR = ! > < >= <= IN =? ?`` (``?`` = contains, ``=?`` = begins
  with; strings compare case-insensitively, like SQL Server's default collation) and belongs-to
  traversal in ``responseFormat`` (``{"person": {"_id": "", "email": ""}}``); ``{"objects": [...]}``.
  Options come back as their key in query results (as objects they come back as ``{id, key, text}``).
* ``POST file/`` (raw bytes, ``Content-Disposition: ;filename*="UTF-8''<name>"``, ``Content-Type``)
  -> file metadata; ``GET file/{id}/`` and ``GET file/{id}/contents/``. A ``document`` limeobject
  refers to a file by id in its ``file`` property.

Enforced like Lime does: the ``x-api-key`` header (401), unknown limetypes and properties, string
lengths (title 128, note 4,000, firstname 32, ...), required properties, option keys (inactive ones
refused), property types, that a belongs-to id exists and that has-many relations are not written,
all as 400 with ``{"error": ..., "message": ...}``. Lime has NO unique constraints: two creates
with the same values make two objects (which is why the adapter locks). The helpdesk number is
assigned on create (a save hook, like the Lime Helpdesk add-on), from 1001. Object ids come from one
counter from 1001 (seeded helpdesk types use 1, 2, 3).

Faults, latency and the request log come from httpbase (``sim.faults.add(503, path_regex=...)``);
``sim.lose_responses(method, path_regex, count)`` commits a write and then drops the connection
without an answer (a crash or timeout between Lime's commit and our reading the answer).
``sim.rate_limit = (3000, 300)`` answers 429 with Retry-After beyond N requests per window and IP.
The request log never holds the API key. ``sim.calls`` lists the API requests the handlers answered,
recorded before the answer goes out (count calls with it: the base's log is written after the answer);
``sim.counts()`` gives them by kind (tests/integration/test_call_budgets.py asserts the per-mail
budgets with it).

Start it with ``LimeSim().start()`` or ``python -m tools.sim.lime --port 0`` (prints its URLs).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Iterator
from urllib.parse import quote, unquote, urlencode

from .httpbase import HttpError, Request, Response, SimServer, json_response

__all__ = ["LimeSim", "DEMO_API_KEY", "DEMO_DATABASE", "core_schema", "prop"]

DEMO_API_KEY = "sim-lime-key"
DEMO_DATABASE = "demo"
HAL_JSON = "application/hal+json; charset=utf-8"
STRING_TYPES = ("string", "text", "link", "phone")
FIRST_NUMBER = 1001
FIRST_ID = 1001


def prop(name: str, type_: str, length: int | None = None, *, required: bool = False,
         options: list[str] | None = None, related: str | None = None, localname: str = "",
         inactive_options: tuple[str, ...] = ()) -> dict[str, Any]:
    """One property as the limetype API describes it."""
    spec: dict[str, Any] = {"name": name, "localname": localname or name, "type": type_, "required": required,
                            "length": length}
    if type_ == "option":
        spec["options"] = [{"key": k, "text": k.capitalize(), "inactive": k in inactive_options, "id": 550000 + i}
                           for i, k in enumerate(options or [])]
    if related:
        spec["_links"] = {"related_type": {"name": related}}
    return spec


def core_schema() -> dict[str, list[dict[str, Any]]]:
    """Lime's core helpdesk model (facts §1.11) with the seed's names (`helpdesknumber`,
    `helpdeskstatus` started/done/parked), a company `email` (Lime Inbox matches senders on it),
    and what the inbox needs (docs/lime.md): a text key property `inboxkey` on every limetype the
    inbox creates and `inboxmessageids` on helpdesk."""
    return {
        "coworker": [prop("name", "string", 128, required=True), prop("email", "link", 100)],
        "company": [
            prop("name", "string", 200, required=True), prop("phone", "phone", 32), prop("www", "link", 100),
            prop("email", "link", 100),
            prop("registrationno", "string", 32), prop("coworker", "belongsto", related="coworker"),
            prop("buyingstatus", "option", options=["notinterested", "prospect", "active", "inactive"]),
            prop("person", "hasmany", related="person"), prop("helpdesk", "hasmany", related="helpdesk"),
            prop("history", "hasmany", related="history"), prop("document", "hasmany", related="document"),
            prop("inboxkey", "string", 64),
        ],
        "person": [
            prop("firstname", "string", 32, required=True), prop("lastname", "string", 50),
            prop("name", "string", 83), prop("email", "link", 100), prop("phone", "phone", 32),
            prop("mobilephone", "phone", 32), prop("company", "belongsto", related="company"),
            prop("inactive", "yesno"), prop("helpdesk", "hasmany", related="helpdesk"),
            prop("history", "hasmany", related="history"), prop("document", "hasmany", related="document"),
        ],
        "helpdesktype": [prop("name", "string", 32, required=True), prop("inactive", "yesno"),
                         prop("helpdesk", "hasmany", related="helpdesk")],
        "helpdesk": [
            prop("title", "string", 128, required=True), prop("description", "text", 1024),
            prop("company", "belongsto", related="company"), prop("person", "belongsto", related="person"),
            prop("coworker", "belongsto", related="coworker"),
            prop("helpdesktype", "belongsto", related="helpdesktype"), prop("email", "link", 100),
            prop("startdate", "time"), prop("enddate", "time"), prop("nextactiondate", "time"),
            prop("helpdesknumber", "integer", localname="Number"),
            prop("helpdeskstatus", "option", options=["started", "done", "parked"]),
            prop("sortfield", "string", 32),
            prop("document", "hasmany", related="document"), prop("history", "hasmany", related="history"),
            prop("inboxkey", "string", 64), prop("inboxmessageids", "text", 4000),
        ],
        "history": [
            prop("date", "time", required=True),
            prop("type", "option", required=True, options=["comment", "customervisit", "talkedto", "salescall",
                                                           "sentemail", "receivedemail", "noanswer"]),
            prop("note", "text", 4000, required=True),
            prop("helpdesk", "belongsto", related="helpdesk"), prop("person", "belongsto", related="person"),
            prop("company", "belongsto", related="company"), prop("coworker", "belongsto", related="coworker"),
            prop("document", "belongsto", related="document"), prop("inboxkey", "string", 64),
        ],
        "document": [
            prop("document", "file", required=True), prop("comment", "string", 512),
            prop("type", "option", options=["email", "tender", "agreement", "other"]),
            prop("helpdesk", "belongsto", related="helpdesk"), prop("person", "belongsto", related="person"),
            prop("company", "belongsto", related="company"), prop("coworker", "belongsto", related="coworker"),
            prop("inboxkey", "string", 64),
        ],
    }


DESCRIPTIVE = {"company": "name", "person": "name", "helpdesk": "title", "helpdesktype": "name",
               "history": "note", "document": "comment", "coworker": "name"}
SEED_HELPDESKTYPES = {1: "Support", 2: "Invoice", 3: "Sales"}


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _parse_time(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 string")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc).isoformat()


class _Invalid(Exception):
    pass


class LimeSim(SimServer):
    name = "lime"
    log_headers = ("content-type", "accept", "user-agent", "content-disposition")  # never x-api-key

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, database: str = DEMO_DATABASE,
                 api_key: str = DEMO_API_KEY, tls: bool = False, latency_ms: float = 0,
                 schema: dict[str, list[dict[str, Any]]] | None = None, auto_number: bool = True,
                 max_file_bytes: int = 100 * 1024 * 1024) -> None:
        super().__init__(host, port, tls=tls, latency_ms=latency_ms)
        self.database = database
        self.api_key = api_key
        self.auto_number = auto_number
        self.max_file_bytes = max_file_bytes
        self.rate_limit: tuple[int, float] | None = None
        self._lock = threading.RLock()
        self.schema: dict[str, list[dict[str, Any]]] = copy.deepcopy(schema) if schema else core_schema()
        self._ids = itertools.count(FIRST_ID)
        self._numbers = itertools.count(FIRST_NUMBER)
        self._file_ids = itertools.count(9001)
        self.data: dict[str, dict[int, dict[str, Any]]] = {lt: {} for lt in self.schema}
        # (limetype, property) -> casefolded value -> ids: built on the first `=` query on a text
        # property, then kept up to date, so a key lookup does not scan every object (benchmarks
        # store thousands); the filter is still applied to what the index returns
        self._indexes: dict[tuple[str, str], dict[str, set[int]]] = {}
        self.files: dict[int, dict[str, Any]] = {}
        self._lose: list[dict[str, Any]] = []
        self._hits: dict[str, deque[float]] = {}
        self.calls: list[dict[str, Any]] = []
        if "helpdesktype" in self.schema:
            for oid, name in SEED_HELPDESKTYPES.items():
                self.data["helpdesktype"][oid] = self._stamp("helpdesktype", oid, {"name": name, "inactive": False})
        base = "/" + re.escape(database) + r"/api/v1"
        self.base_path = f"/{database}/api/v1"
        self.route("GET", base + r"/?", self._root)
        self.route("GET", base + r"/limetype/?", self._limetypes)
        self.route("GET", base + r"/limetype/(?P<lt>[A-Za-z0-9_]+)/?", self._limetype)
        self.route("GET", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/?", self._list)
        self.route("POST", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/?", self._create)
        self.route("GET", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/(?P<id>-?\d+)/?", self._get)
        self.route("PUT", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/(?P<id>-?\d+)/?", self._update)
        self.route("DELETE", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/(?P<id>-?\d+)/?", self._delete)
        self.route("GET", base + r"/limeobject/(?P<lt>[A-Za-z0-9_]+)/(?P<id>-?\d+)/(?P<rel>[A-Za-z0-9_]+)/?",
                   self._related)
        self.route("GET", base + r"/query/?", self._query)
        self.route("POST", base + r"/file/?", self._file_upload)
        self.route("GET", base + r"/file/(?P<id>\d+)/?", self._file_meta)
        self.route("GET", base + r"/file/(?P<id>\d+)/contents/?", self._file_contents)
        self.route("GET", r"/_sim/lime/objects/(?P<lt>[A-Za-z0-9_]+)",
                   lambda r: json_response({"value": self.objects(r.params["lt"])}))

    # ---- in-process control ----------------------------------------------------------------------
    @property
    def lime_url(self) -> str:
        """What LIME_CRM_URL should be set to."""
        return f"{self.url}/{self.database}"

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "lime_crm_url": self.lime_url, "database": self.database,
                "api_key": self.api_key}

    def objects(self, limetype: str) -> list[dict[str, Any]]:
        """The stored objects of a limetype (raw values: options as keys), in id order."""
        with self._lock:
            return [copy.deepcopy(o) for _, o in sorted(self.data.get(limetype, {}).items())]

    def create(self, limetype: str, values: dict[str, Any]) -> dict[str, Any]:
        """Create an object directly (validated like POST); returns the stored raw object."""
        with self._lock:
            return copy.deepcopy(self._insert(limetype, values))

    def counts(self, since: int = 0) -> dict[str, int]:
        """API requests answered since `calls[since]`, by kind: "METHOD path" with ids as {id}
        (`GET query/`, `POST limeobject/helpdesk/`, `GET limeobject/helpdesk/{id}/`, ...)."""
        with self._lock:
            calls = list(self.calls[since:])
        out: dict[str, int] = {}
        for call in calls:
            path = call["path"].split("/api/v1/", 1)[-1]
            shaped = re.sub(r"(^|/)-?[0-9]+(?=/|$)", r"\1{id}", path)
            kind = f"{call['method']} {shaped}"
            out[kind] = out.get(kind, 0) + 1
        return out

    def file_bytes(self, file_id: int) -> bytes:
        return self.files[int(file_id)]["data"]

    def property(self, limetype: str, name: str) -> dict[str, Any] | None:
        return next((p for p in self.schema.get(limetype, []) if p["name"] == name), None)

    def remove_property(self, limetype: str, name: str) -> None:
        """Take a property out of the schema (a customer solution without it)."""
        with self._lock:
            self.schema[limetype] = [p for p in self.schema[limetype] if p["name"] != name]
            for obj in self.data[limetype].values():
                obj.pop(name, None)
            self._indexes.clear()

    def add_property(self, limetype: str, spec: dict[str, Any]) -> None:
        with self._lock:
            self.schema[limetype] = [p for p in self.schema[limetype] if p["name"] != spec["name"]] + [spec]
            self._indexes.clear()

    def lose_responses(self, method: str, path_regex: str, count: int = 1) -> None:
        """The next `count` successful matching requests are committed, then the connection drops."""
        with self._lock:
            self._lose.append({"method": method.upper(), "rx": re.compile(path_regex, re.IGNORECASE),
                               "count": count})

    def reset(self) -> None:
        with self._lock:
            self.data = {lt: {} for lt in self.schema}
            self._indexes.clear()
            self.files.clear()
            self._ids = itertools.count(FIRST_ID)
            self._numbers = itertools.count(FIRST_NUMBER)
            self._lose.clear()
            self._hits.clear()
            self.calls.clear()
        self.faults.clear()
        self.requests.clear()

    # ---- plumbing ---------------------------------------------------------------------------------
    def error_body(self, status: int, code: str, message: str) -> Any:
        return {"error": code, "message": message, "code": status}

    def _dispatch(self, req: Request) -> Response:
        if req.path.startswith("/_sim/"):
            return super()._dispatch(req)
        resp = self._rate_limited(req)
        if resp is None and (req.header("x-api-key") or "") != self.api_key:
            resp = self.error_response(HttpError(401, "Unauthorized", "Invalid or missing API key."))
        if resp is None:
            resp = super()._dispatch(req)
        lost = 200 <= resp.status < 300 and self._take_lost(req)
        self._record(req, resp.status, lost)
        if lost:
            req.log["lost"] = True
            return Response(resp.status, _dropped(), resp.headers)
        return resp

    def _record(self, req: Request, status: int, lost: bool) -> None:
        """`calls`: every API request the handlers answered, recorded before the answer is sent (the
        base's request log is written after it, so a client can see an answer before its log entry).
        Injected faults answer without reaching the handlers and are only in `requests`."""
        headers = {name: ", ".join(req.headers.get_all(name)) for name in self.log_headers if req.headers.get(name)}
        with self._lock:
            self.calls.append({"method": req.method, "path": req.path, "query": req.query_string, "status": status,
                               "headers": headers, "lost": lost})

    def _rate_limited(self, req: Request) -> Response | None:
        if not self.rate_limit:
            return None
        limit, window = self.rate_limit
        now = time.monotonic()
        with self._lock:
            hits = self._hits.setdefault(req.client_address[0], deque())
            while hits and hits[0] <= now - window:
                hits.popleft()
            if len(hits) >= limit:
                wait = max(1, int(hits[0] + window - now + 0.999))
                return self.error_response(HttpError(429, "TooManyRequests", "Rate limit exceeded.",
                                                     headers={"Retry-After": str(wait)}))
            hits.append(now)
        return None

    def _take_lost(self, req: Request) -> bool:
        with self._lock:
            for rule in self._lose:
                if rule["count"] and rule["method"] == req.method and rule["rx"].search(req.path):
                    rule["count"] -= 1
                    return True
        return False

    def _type(self, limetype: str) -> list[dict[str, Any]]:
        props = self.schema.get(limetype)
        if props is None:
            raise HttpError(404, "NotFound", f"Limetype '{limetype}' does not exist.")
        return props

    def _props(self, limetype: str) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self._type(limetype)}

    def _link(self, req: Request, path: str) -> dict[str, str]:
        return {"href": f"{req.base_url}{self.base_path}/{path}"}

    def _stamp(self, limetype: str, oid: int, values: dict[str, Any]) -> dict[str, Any]:
        now = _now_iso()
        obj = {"_id": oid, "_createdtime": now, "_timestamp": now, "_createduser": 1, "_updateduser": 1}
        for p in self.schema[limetype]:
            if p["type"] not in ("hasmany", "hasandbelongstomany"):
                obj[p["name"]] = _default(p)
        obj.update(values)
        return obj

    # ---- validation -------------------------------------------------------------------------------
    def _coerce(self, limetype: str, spec: dict[str, Any], value: Any) -> Any:
        name, kind = spec["name"], spec["type"]
        where = f"'{limetype}.{name}'"
        if value is None:
            if kind in STRING_TYPES:
                return ""
            return None
        if kind in STRING_TYPES:
            if not isinstance(value, str):
                raise _Invalid(f"Property {where} expects a string.")
            length = spec.get("length")
            if length and len(value) > length:
                raise _Invalid(f"Value for {where} is too long ({len(value)} characters, the maximum is {length}).")
            return value
        if kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid(f"Property {where} expects an integer.")
            return value
        if kind == "decimal":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _Invalid(f"Property {where} expects a number.")
            return value
        if kind == "yesno":
            if not isinstance(value, bool):
                raise _Invalid(f"Property {where} expects true or false.")
            return value
        if kind in ("time", "date"):
            try:
                return _parse_time(value)
            except ValueError:
                raise _Invalid(f"Property {where} expects an ISO 8601 time, got {value!r}.") from None
        if kind == "option":
            key = value.get("key") if isinstance(value, dict) else value
            for option in spec.get("options", []):
                if key == option["key"] or (isinstance(key, int) and key == option.get("id")):
                    if option.get("inactive"):
                        raise _Invalid(f"Option '{option['key']}' of {where} is inactive.")
                    return option["key"]
            keys = ", ".join(o["key"] for o in spec.get("options", []))
            raise _Invalid(f"'{key}' is not a valid option for {where}. Valid options: {keys}.")
        if kind == "belongsto":
            related = spec["_links"]["related_type"]["name"]
            if isinstance(value, bool) or not isinstance(value, int):
                raise _Invalid(f"Property {where} expects the integer id of a {related}.")
            if value not in self.data.get(related, {}):
                raise _Invalid(f"Property {where}: there is no {related} with id {value}.")
            return value
        if kind == "file":
            if isinstance(value, bool) or not isinstance(value, int) or value not in self.files:
                raise _Invalid(f"Property {where}: there is no file with id {value!r}.")
            return value
        if kind in ("hasmany", "hasandbelongstomany"):
            raise _Invalid(f"Property {where} is a {kind} relation and cannot be written.")
        raise _Invalid(f"Property {where} of type {kind} cannot be written.")

    def _validate(self, limetype: str, body: Any, current: dict[str, Any] | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise HttpError(400, "BadRequest", "The request body must be a JSON object of property values.")
        props = self._props(limetype)
        values: dict[str, Any] = {}
        try:
            for name, value in body.items():
                if name.startswith("_"):
                    raise _Invalid(f"'{name}' is a system property and cannot be written.")
                spec = props.get(name)
                if spec is None:
                    raise _Invalid(f"Limetype '{limetype}' has no property '{name}'.")
                values[name] = self._coerce(limetype, spec, value)
            merged = {**(current or {}), **values}
            for spec in props.values():
                if spec.get("required") and spec["type"] not in ("hasmany",) and merged.get(spec["name"]) in (None, ""):
                    raise _Invalid(f"Property '{limetype}.{spec['name']}' is required.")
        except _Invalid as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return values

    def _insert(self, limetype: str, body: Any) -> dict[str, Any]:
        props = self._props(limetype)
        values = self._validate(limetype, body, None)
        if limetype == "helpdesk" and self.auto_number and "helpdesknumber" in props \
                and values.get("helpdesknumber") in (None, 0):
            values["helpdesknumber"] = next(self._numbers)
        if limetype == "person" and "name" in props and not values.get("name"):
            values["name"] = f"{values.get('firstname', '')} {values.get('lastname', '')}".strip()[:83]
        oid = next(self._ids)
        obj = self._stamp(limetype, oid, values)
        self.data[limetype][oid] = obj
        self._index(limetype, obj, add=True)
        return obj

    # ---- representation ---------------------------------------------------------------------------
    def _hal(self, req: Request, limetype: str, obj: dict[str, Any]) -> dict[str, Any]:
        props = self._props(limetype)
        out: dict[str, Any] = {}
        for key, value in obj.items():
            spec = props.get(key)
            if spec is not None and spec["type"] == "option" and value is not None:
                option = next((o for o in spec.get("options", []) if o["key"] == value), None)
                out[key] = {"id": option.get("id") if option else None, "key": value,
                            "text": option["text"] if option else value}
            else:
                out[key] = value
        desc = DESCRIPTIVE.get(limetype)
        out["_descriptive"] = str(obj.get(desc) or obj["_id"]) if desc else str(obj["_id"])
        oid = obj["_id"]
        links: dict[str, Any] = {"self": self._link(req, f"limeobject/{limetype}/{oid}/"),
                                 "limetype": self._link(req, f"limetype/{limetype}/")}
        for spec in props.values():
            if spec["type"] == "hasmany":
                links[f"relation_{spec['name']}"] = self._link(req, f"limeobject/{limetype}/{oid}/{spec['name']}/")
                links[f"new_{spec['name']}"] = self._link(req, f"limeobject/{limetype}/{oid}/{spec['name']}/new/")
        out["_links"] = links
        return out

    def _hal_response(self, payload: Any, status: int = 200) -> Response:
        return json_response(payload, status, content_type=HAL_JSON)

    # ---- handlers: metadata ---------------------------------------------------------------------------
    def _root(self, req: Request) -> Response:
        return self._hal_response({"_links": {"limetype": self._link(req, "limetype/"),
                                              "limeobject": self._link(req, "limeobject/"),
                                              "query": self._link(req, "query/"),
                                              "file": self._link(req, "file/")}})

    def _limetype_doc(self, req: Request, limetype: str, embed: bool) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": limetype, "localname": limetype.capitalize(),
                               "_links": {"self": self._link(req, f"limetype/{limetype}/")}}
        if embed:
            doc["_embedded"] = {"properties": copy.deepcopy(self._type(limetype))}
        return doc

    def _limetypes(self, req: Request) -> Response:
        embed = "properties" in (req.arg("_embed") or "")
        with self._lock:
            items = [self._limetype_doc(req, lt, embed) for lt in self.schema]
        return self._hal_response({"_embedded": {"limetypes": items}, "_links": {"self": self._link(req, "limetype/")}})

    def _limetype(self, req: Request) -> Response:
        embed = "properties" in (req.arg("_embed") or "")
        with self._lock:
            return self._hal_response(self._limetype_doc(req, req.params["lt"], embed))

    # ---- handlers: limeobjects -------------------------------------------------------------------------
    def _object(self, limetype: str, oid: str) -> dict[str, Any]:
        self._type(limetype)
        obj = self.data[limetype].get(int(oid))
        if obj is None:
            raise HttpError(404, "NotFound", f"No {limetype} with id {oid}.")
        return obj

    def _create(self, req: Request) -> Response:
        limetype = req.params["lt"]
        body = req.json()
        with self._lock:
            obj = self._insert(limetype, body)
            return self._hal_response(self._hal(req, limetype, obj), 201)

    def _get(self, req: Request) -> Response:
        with self._lock:
            obj = self._object(req.params["lt"], req.params["id"])
            return self._hal_response(self._hal(req, req.params["lt"], obj))

    def _update(self, req: Request) -> Response:
        limetype = req.params["lt"]
        body = req.json()
        with self._lock:
            obj = self._object(limetype, req.params["id"])
            values = self._validate(limetype, body, obj)
            self._index(limetype, obj, add=False)
            obj.update(values)
            self._index(limetype, obj, add=True)
            if limetype == "person" and "name" in self._props(limetype) and ({"firstname", "lastname"} & set(values)):
                obj["name"] = f"{obj.get('firstname', '')} {obj.get('lastname', '')}".strip()[:83]
            obj["_timestamp"] = _now_iso()
            return self._hal_response(self._hal(req, limetype, obj))

    def _delete(self, req: Request) -> Response:
        with self._lock:
            obj = self._object(req.params["lt"], req.params["id"])
            self._index(req.params["lt"], obj, add=False)
            del self.data[req.params["lt"]][obj["_id"]]
        return Response(204)

    def _page(self, req: Request, limetype: str, rows: list[dict[str, Any]], path: str) -> Response:
        try:
            limit = max(1, min(int(req.arg("_limit", "50") or 50), 500))
            offset = max(0, int(req.arg("_offset", "0") or 0))
        except ValueError:
            raise HttpError(400, "BadRequest", "_limit and _offset must be integers.") from None
        page = rows[offset:offset + limit]
        links: dict[str, Any] = {"self": {"href": f"{req.base_url}{req.raw_path}?{req.query_string}"}}
        if offset + limit < len(rows):
            query = {k: v[0] for k, v in req.query.items()}
            query.update(_offset=str(offset + limit), _limit=str(limit))
            links["next"] = {"href": f"{req.base_url}{self.base_path}/{path}?{urlencode(query)}"}
        return self._hal_response({"_embedded": {"limeobjects": [self._hal(req, limetype, o) for o in page]},
                                   "_links": links})

    def _list(self, req: Request) -> Response:
        limetype = req.params["lt"]
        with self._lock:
            props = self._props(limetype)
            rows = list(self.data[limetype].values())
            for key, values in req.query.items():
                if key.startswith("_"):
                    continue
                if key not in props and key != "_id":
                    raise HttpError(400, "BadRequest", f"Limetype '{limetype}' has no property '{key}'.")
                rows = [o for o in rows if _equal(o.get(key), values[0])]
            sort = req.arg("_sort") or "_id"
            desc = sort.startswith("-")
            rows.sort(key=lambda o: _sort_key(o.get(sort.lstrip("-"))), reverse=desc)
            return self._page(req, limetype, rows, f"limeobject/{limetype}/")

    def _related(self, req: Request) -> Response:
        limetype, rel = req.params["lt"], req.params["rel"]
        with self._lock:
            obj = self._object(limetype, req.params["id"])
            spec = self._props(limetype).get(rel)
            if spec is None or spec["type"] != "hasmany":
                raise HttpError(404, "NotFound", f"'{limetype}' has no has-many relation '{rel}'.")
            related = spec["_links"]["related_type"]["name"]
            back = next((p["name"] for p in self._type(related) if p["type"] == "belongsto"
                         and p["_links"]["related_type"]["name"] == limetype), None)
            rows = [o for o in self.data[related].values() if back and o.get(back) == obj["_id"]]
            rows.sort(key=lambda o: o["_id"])
            return self._page(req, related, rows, f"limeobject/{limetype}/{obj['_id']}/{rel}/")

    # ---- handlers: query API ---------------------------------------------------------------------------
    def _query(self, req: Request) -> Response:
        raw = req.arg("q")
        if not raw:
            raise HttpError(400, "BadRequest", "Missing query parameter 'q'.")
        try:
            q = json.loads(raw)
        except ValueError as exc:
            raise HttpError(400, "BadRequest", f"'q' is not valid JSON: {exc}") from None
        if not isinstance(q, dict) or not isinstance(q.get("limetype"), str):
            raise HttpError(400, "BadRequest", "The query needs a 'limetype'.")
        limetype = q["limetype"]
        fmt = ((q.get("responseFormat") or {}).get("object"))
        if not isinstance(fmt, dict) or not fmt:
            raise HttpError(400, "BadRequest", "responseFormat.object must name the properties to return.")
        try:
            limit = int(q.get("limit", 1000))
            offset = int(q.get("offset", 0))
        except (TypeError, ValueError):
            raise HttpError(400, "BadRequest", "limit and offset must be integers.") from None
        with self._lock:
            if limetype not in self.schema:
                raise HttpError(400, "BadRequest", f"Limetype '{limetype}' does not exist.")
            try:
                self._check_format(limetype, fmt)
                rows = [o for o in self._candidates(limetype, q.get("filter"))
                        if q.get("filter") is None or self._match(limetype, o, q["filter"])]
                for order in reversed(q.get("orderBy") or [{"_id": "ASC"}]):
                    if not isinstance(order, dict) or len(order) != 1:
                        raise _Invalid("orderBy items look like {\"property\": \"ASC\"|\"DESC\"}.")
                    (key, direction), = order.items()
                    if key != "_id" and key not in self._props(limetype):
                        raise _Invalid(f"Limetype '{limetype}' has no property '{key}'.")
                    rows.sort(key=lambda o, k=key: _sort_key(o.get(k)), reverse=str(direction).upper() == "DESC")
            except _Invalid as exc:
                raise HttpError(400, "BadRequest", str(exc)) from None
            objects = [self._shape(limetype, o, fmt) for o in rows[offset:offset + max(0, limit)]]
        return json_response({"objects": objects})

    def _candidates(self, limetype: str, flt: Any) -> list[dict[str, Any]]:
        """The objects a filter can match: all, or those an equality index on one of its clauses
        (a text property `=` a string, alone or in an AND) names (lock held)."""
        objects = self.data[limetype]
        clauses = [flt] if isinstance(flt, dict) and str(flt.get("op", "")).upper() != "AND" else (
            flt.get("exp") if isinstance(flt, dict) and isinstance(flt.get("exp"), list) else [])
        props = self._props(limetype)
        for clause in clauses:
            if not (isinstance(clause, dict) and clause.get("op") == "=" and isinstance(clause.get("exp"), str)
                    and isinstance(clause.get("key"), str)
                    and (props.get(clause["key"]) or {}).get("type") in STRING_TYPES):
                continue
            index = self._indexes.get((limetype, clause["key"]))
            if index is None:
                index = self._indexes[(limetype, clause["key"])] = {}
                for obj in objects.values():
                    value = obj.get(clause["key"])
                    if value is not None:
                        index.setdefault(str(value).casefold(), set()).add(obj["_id"])
            ids = index.get(clause["exp"].casefold(), ())
            if not ids and objects:
                self._match(limetype, next(iter(objects.values())), flt)  # a bad filter still answers 400
            return [objects[i] for i in sorted(ids) if i in objects]
        return list(objects.values())

    def _index(self, limetype: str, obj: dict[str, Any], add: bool) -> None:
        """Keep the equality indexes of `limetype` in step with one object being added or removed."""
        for (lt, prop), index in self._indexes.items():
            value = obj.get(prop) if lt == limetype else None
            if value is None:
                continue
            if add:
                index.setdefault(str(value).casefold(), set()).add(obj["_id"])
            else:
                index.get(str(value).casefold(), set()).discard(obj["_id"])

    def _check_format(self, limetype: str, fmt: dict[str, Any]) -> None:
        props = self._props(limetype)
        for key, sub in fmt.items():
            if key.startswith("_"):
                if key not in ("_id", "_timestamp", "_createdtime", "_descriptive"):
                    raise _Invalid(f"Unknown system property '{key}'.")
                continue
            spec = props.get(key)
            if spec is None:
                raise _Invalid(f"Limetype '{limetype}' has no property '{key}'.")
            if spec["type"] in ("hasmany", "hasandbelongstomany"):
                raise _Invalid(f"'{limetype}.{key}' is a {spec['type']} relation, "
                               "which responseFormat does not support.")
            if isinstance(sub, dict) and sub:
                if spec["type"] != "belongsto":
                    raise _Invalid(f"'{limetype}.{key}' is not a relation.")
                self._check_format(spec["_links"]["related_type"]["name"], sub)

    def _shape(self, limetype: str, obj: dict[str, Any], fmt: dict[str, Any]) -> dict[str, Any]:
        props = self._props(limetype)
        out: dict[str, Any] = {}
        for key, sub in fmt.items():
            if key == "_descriptive":
                desc = DESCRIPTIVE.get(limetype)
                out[key] = str(obj.get(desc) or obj["_id"]) if desc else str(obj["_id"])
                continue
            value = obj.get(key)
            if isinstance(sub, dict) and sub:
                related = props[key]["_links"]["related_type"]["name"]
                target = self.data[related].get(value) if value is not None else None
                out[key] = self._shape(related, target, sub) if target is not None else None
            else:
                out[key] = value
        return out

    def _value(self, limetype: str, obj: dict[str, Any], key: str) -> tuple[Any, str]:
        """The value a filter key refers to (with belongs-to traversal: 'person.email') and its type."""
        head, _, rest = key.partition(".")
        if head == "_id" and not rest:
            return obj["_id"], "integer"
        if head in ("_timestamp", "_createdtime") and not rest:
            return obj.get(head), "time"
        spec = self._props(limetype).get(head)
        if spec is None:
            raise _Invalid(f"Limetype '{limetype}' has no property '{head}'.")
        value = obj.get(head)
        if rest:
            if spec["type"] != "belongsto":
                raise _Invalid(f"'{limetype}.{head}' is not a relation.")
            related = spec["_links"]["related_type"]["name"]
            if rest == "_id":
                return value, "integer"
            target = self.data[related].get(value) if value is not None else None
            if target is None:
                self._value(related, {"_id": 0}, rest)  # still validates the key
                return None, "string"
            return self._value(related, target, rest)
        return value, spec["type"]

    def _match(self, limetype: str, obj: dict[str, Any], expr: Any) -> bool:
        if not isinstance(expr, dict) or "op" not in expr:
            raise _Invalid("A filter expression looks like {\"key\": ..., \"op\": ..., \"exp\": ...}.")
        op = str(expr["op"]).upper()
        exp = expr.get("exp")
        if op in ("AND", "OR"):
            if not isinstance(exp, list):
                raise _Invalid(f"'{op}' takes a list of expressions in 'exp'.")
            results = [self._match(limetype, obj, e) for e in exp]
            return all(results) if op == "AND" else any(results)
        if not isinstance(expr.get("key"), str):
            raise _Invalid(f"Operator '{op}' needs a 'key'.")
        value, kind = self._value(limetype, obj, expr["key"])
        if op == "=":
            return _equal(value, exp, kind)
        if op == "!":
            return not _equal(value, exp, kind)
        if op == "IN":
            if not isinstance(exp, list):
                raise _Invalid("'IN' takes a list in 'exp'.")
            return any(_equal(value, e, kind) for e in exp)
        if op in ("?", "=?"):
            if not isinstance(exp, str):
                raise _Invalid(f"'{op}' takes a string in 'exp'.")
            text = str(value or "").casefold()
            return text.startswith(exp.casefold()) if op == "=?" else exp.casefold() in text
        if op in (">", "<", ">=", "<="):
            if value is None or exp is None:
                return False
            left, right = _sort_key(value), _sort_key(exp if kind not in ("time", "date") else _parse_time(exp))
            return {">": left > right, "<": left < right, ">=": left >= right, "<=": left <= right}[op]
        raise _Invalid(f"Unknown operator '{expr['op']}'.")

    # ---- handlers: files -------------------------------------------------------------------------------
    def _file_upload(self, req: Request) -> Response:
        filename = _disposition_filename(req.header("Content-Disposition") or "")
        if not filename:
            raise HttpError(400, "BadRequest", "Content-Disposition must carry the file name (filename*=UTF-8''...).")
        if len(req.body) > self.max_file_bytes:
            raise HttpError(413, "PayloadTooLarge",
                            f"The file is {len(req.body)} bytes; the file store takes at most {self.max_file_bytes}.")
        content_type = (req.header("Content-Type") or "application/octet-stream").split(";")[0].strip()
        with self._lock:
            fid = next(self._file_ids)
            self.files[fid] = {"id": fid, "filename": filename, "size": len(req.body), "content_type": content_type,
                               "extension": filename.rsplit(".", 1)[-1].lower() if "." in filename else "",
                               "created_by": 1, "locked_by": None, "last_modified": _now_iso(), "data": req.body}
            return self._hal_response(self._file_doc(req, fid), 201)

    def _file_doc(self, req: Request, fid: int) -> dict[str, Any]:
        meta = {k: v for k, v in self.files[fid].items() if k != "data"}
        meta["_links"] = {"self": self._link(req, f"file/{fid}/"), "contents": self._link(req, f"file/{fid}/contents/")}
        return meta

    def _file_meta(self, req: Request) -> Response:
        with self._lock:
            if int(req.params["id"]) not in self.files:
                raise HttpError(404, "NotFound", f"No file with id {req.params['id']}.")
            return self._hal_response(self._file_doc(req, int(req.params["id"])))

    def _file_contents(self, req: Request) -> Response:
        with self._lock:
            meta = self.files.get(int(req.params["id"]))
            if meta is None:
                raise HttpError(404, "NotFound", f"No file with id {req.params['id']}.")
        return Response(200, meta["data"], {
            "Content-Type": meta["content_type"],
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(meta['filename'], safe='')}"})


def _dropped() -> Iterator[bytes]:
    raise ConnectionResetError("simulated: the answer was lost after the commit")
    yield b""  # pragma: no cover - makes this a generator


def _default(spec: dict[str, Any]) -> Any:
    kind = spec["type"]
    if kind in STRING_TYPES:
        return ""
    if kind == "yesno":
        return False
    return None


def _equal(value: Any, exp: Any, kind: str = "string") -> bool:
    if value is None or exp is None:
        return value is None and exp is None
    if isinstance(value, bool) or isinstance(exp, bool):
        return str(value).lower() == str(exp).lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return float(value) == float(exp)
        except (TypeError, ValueError):
            return False
    if kind in ("time", "date"):
        try:
            return _parse_time(value) == _parse_time(exp)
        except ValueError:
            return False
    if isinstance(exp, dict):
        exp = exp.get("key")
    return str(value).casefold() == str(exp).casefold()


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None or value == "":
        return (0, 0)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (1, value)
    return (2, str(value).casefold())


def _disposition_filename(header: str) -> str:
    match = re.search(r"filename\*\s*=\s*\"?UTF-8''([^\";]+)\"?", header, re.IGNORECASE)
    if match:
        return unquote(match.group(1))
    match = re.search(r'filename\s*=\s*"([^"]*)"', header, re.IGNORECASE) or \
        re.search(r"filename\s*=\s*([^;]+)", header, re.IGNORECASE)
    return match.group(1).strip() if match else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.sim.lime", description="Lime CRM REST API simulator")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LIME_SIM_PORT", "0")))
    parser.add_argument("--database", default=os.environ.get("LIME_SIM_DATABASE", DEMO_DATABASE))
    parser.add_argument("--api-key", default=os.environ.get("LIME_SIM_API_KEY", DEMO_API_KEY))
    parser.add_argument("--tls", action="store_true", help="also answer HTTPS (test CA) on the same port")
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--rate-limit", type=int, default=0,
                        help="requests per 5 minutes and client IP before 429 (Lime Cloud: 3000); 0: off")
    args = parser.parse_args(argv)
    sim = LimeSim(args.host, args.port, database=args.database, api_key=args.api_key, tls=args.tls,
                  latency_ms=args.latency_ms)
    if args.rate_limit:
        sim.rate_limit = (args.rate_limit, 300.0)
    sim.start()
    print(json.dumps(sim.info()), flush=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
