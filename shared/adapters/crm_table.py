"""The embedded CRM (`CRM_BACKEND=table`): persons, companies, helpdesk tickets, history notes and
documents in Azure Table storage, bodies and files in Blob storage. For evaluation, demos and tests;
production talks to Lime CRM. It mirrors Lime's helpdesk model (title 128, status option keys
`started`/`done`/`parked`, history types `receivedemail`/`sentemail`/`comment`, person firstname 32 /
lastname 50 / name 83) but stores notes of any length.

Owns: tables `{prefix}person`, `{prefix}company`, `{prefix}helpdesk`, `{prefix}history`,
`{prefix}document`, `{prefix}counter` and blob container `container` (the default prefix gives the
contract names `crmperson` ... `crmcounter` and `crm-files`).
I/O: Azure Table and Blob storage through `StorageAccount`'s aio clients; nothing else.

Keys (Table keys may not hold `/ \\ # ?`: emails, Message-IDs and idempotency keys are hashed):

    crmperson    person / <person id>              person id = "pe" + sha256(normalized email)[:24]
    crmcompany   company / <company id>            company id = "co" + sha256(key or name)[:24]
                 _domain / sha256(domain)[:32]     -> company_id (first company for a domain wins)
                 _cx-email-<h> / <company id>      companies by email (h = sha256(value)[:32]),
                 _cx-edom-<h> / <company id>       by email domain (the `domain` given, or the
                 _cx-web-<h> / <company id>        email's), by website domain: sender matching
    crmperson    _px-dom-<h> / <person id>         -> company_id: persons by email domain
    crmhelpdesk  ticket / <999999999999 - number>  the ticket (newest first in a partition scan);
                                                   ticket id = "hd" + number, so both are point reads
                 _key / sha256(key)[:32]           -> number: the idempotency commitment
                 _msgid / sha256(message id)[:32]  -> ticket_id, number (first ticket wins)
    crmhistory   <ticket id> / <UTC date>-<id>     one partition per ticket, in date order;
                                                   history id = "hi" + sha256(key)[:24]
                 _id / <history id>                -> partition and row: the idempotency commitment
    crmdocument  <ticket id> / <document id>       document id = "do" + sha256(key)[:24]
                 _id / <document id>               -> partition and blob: the idempotency commitment
    crmcounter   counter / helpdesk                next_number, ETag-guarded (first number 1001)

Blobs: history/<ticket id>/<history id>.txt (long notes), tickets/<ticket id>/<key hash>-description.txt
and -values.json (long ones), documents/<ticket id>/<document id>/<safe file name> (every file).

Every idempotent create writes its commitment row first (create_entity; a conflict means "someone
with this key got here first: read it"), then the blobs, then the data row; a retry after a crash
between any two writes finds the commitment and completes what is missing. Text longer than
INLINE_TEXT_MAX characters (notes, descriptions) goes to a blob named on the row.

Storage errors leave as TransientError (network, 5xx, 429) or PermanentError (other 4xx), naming
the cause's class, never a connection string. Caller mistakes (unknown status or history type,
a key missing) are ValueError.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import random
import re
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Mapping, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError, ResourceExistsError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError,
)
from azure.data.tables import UpdateMode

from ..domain.errors import PermanentError, TransientError
from ..domain.matching import website_domain
from ..domain.model import DocumentDraft, HistoryDraft, PersonRef, TicketDraft, TicketRef
from .storage_clients import StorageAccount

# Limits (Lime's where it has them) -----------------------------------------------------------
TITLE_MAX = 128
FIRSTNAME_MAX = 32
LASTNAME_MAX = 50
PERSON_NAME_MAX = 83
COMPANY_NAME_MAX = 200
FILENAME_MAX = 255
INLINE_TEXT_MAX = 16_000  # chars; a Table string holds 32K UTF-16 units, a char may take two
MESSAGE_IDS_JSON_MAX = 16_000  # on the ticket row; the _msgid index holds every one
MAX_DOCUMENT_BYTES = 100 * 1024 * 1024  # Lime's S3 file store
FIRST_TICKET_NUMBER = 1001
NO_SUBJECT = "(no subject)"

STATUSES = ("started", "done", "parked")
HISTORY_TYPES = ("receivedemail", "sentemail", "comment")

_NUMBER_CEILING = 999_999_999_999
_NO_TICKET = "_noticket"
_COUNTER_ATTEMPTS = 200
_UPDATE_ATTEMPTS = 50

T = TypeVar("T")


# Pure helpers, shared with tests/fakes_crm.py so the fake names things the same way ----------------
def key_hash(value: str, length: int = 32) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:length]


def require_key(key: str) -> str:
    if not key or not key.strip():
        raise ValueError("an idempotency key is required")
    return key


def normalize_email(address: str) -> str:
    email = (address or "").strip().strip("<>").strip().lower()
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise ValueError(f"not an email address: {address!r}")
    return email


def normalize_domain(domain: str) -> str:
    return (domain or "").strip().lower().lstrip("@").rstrip(".")


def normalize_message_id(message_id: str) -> str:
    return (message_id or "").strip().strip("<>").strip().lower()


def person_id_for(address: str) -> str:
    return "pe" + key_hash(normalize_email(address), 24)


def company_id_for(name: str, key: str = "") -> str:
    basis = f"key|{key}" if key else f"name|{' '.join(name.lower().split())}"
    return "co" + key_hash(basis, 24)


def history_id_for(key: str) -> str:
    return "hi" + key_hash(require_key(key), 24)


def document_id_for(key: str) -> str:
    return "do" + key_hash(require_key(key), 24)


def ticket_id_for(number: str) -> str:
    return "hd" + number


def check_number(number: str) -> str:
    number = str(number).strip()
    if not number.isdigit() or int(number) > _NUMBER_CEILING:
        raise ValueError(f"ticket number must be digits (at most 12): {number!r}")
    return str(int(number))


def number_of(ticket_id_or_number: str) -> str | None:
    """'hd1042' or '1042' -> '1042'; anything else -> None."""
    ref = str(ticket_id_or_number or "").strip()
    if ref.startswith("hd"):
        ref = ref[2:]
    return str(int(ref)) if ref.isdigit() and int(ref) <= _NUMBER_CEILING else None


def check_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"unknown helpdesk status {status!r}: expected one of {', '.join(STATUSES)}")
    return status


def check_history_type(kind: str) -> str:
    if kind not in HISTORY_TYPES:
        raise ValueError(f"unknown history type {kind!r}: expected one of {', '.join(HISTORY_TYPES)}")
    return kind


def clip_title(title: str) -> str:
    text = " ".join((title or "").split())
    return text[:TITLE_MAX] if text else NO_SUBJECT


def split_name(name: str, email: str) -> tuple[str, str, str]:
    """(firstname, lastname, name) from a display name; the address's local part when there is none.

    'Doe, Jane' -> Jane / Doe; 'Jane van Doe' -> Jane / van Doe. Clipped to Lime's lengths."""
    text = " ".join((name or "").replace('"', " ").split()).strip(" '")
    if "@" in text:  # a display name that is an address says nothing about the person
        text = ""
    if not text:
        local = email.split("@", 1)[0] or email
        return local[:FIRSTNAME_MAX], "", local[:PERSON_NAME_MAX]
    if "," in text:
        last, _, first = (part.strip() for part in text.partition(","))
        if not first:
            first, last = last, ""
        full = f"{first} {last}".strip()
    else:
        first, _, last = text.partition(" ")
        full = text
    return first[:FIRSTNAME_MAX], last.strip()[:LASTNAME_MAX], full[:PERSON_NAME_MAX]


def safe_filename(filename: str) -> str:
    base = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "file"
    if len(base) > 100:
        stem, dot, ext = base.rpartition(".")
        base = (stem[:90] + dot + ext[:9]) if dot and len(ext) <= 9 else base[:100]
    return base


def merge_message_ids(existing: Iterable[str], new: Iterable[str]) -> list[str]:
    """Normalized, de-duplicated, in order; capped so the JSON fits a Table property."""
    out: list[str] = []
    seen: set[str] = set()
    size = 2
    for raw in [*existing, *new]:
        mid = normalize_message_id(raw)[:998]
        if not mid or mid in seen:
            continue
        size += len(mid) + 4
        if size > MESSAGE_IDS_JSON_MAX:
            break
        seen.add(mid)
        out.append(mid)
    return out


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def sortable_time(value: datetime) -> str:
    return utc(value).strftime("%Y%m%dT%H%M%S%fZ")


def ticket_row_key(number: str) -> str:
    return f"{_NUMBER_CEILING - int(number):012d}"


def iso(value: Any) -> str | None:
    return utc(value).isoformat() if isinstance(value, datetime) else (value or None)


def ticket_ref(row: Mapping[str, Any]) -> TicketRef:
    end = row.get("enddate")
    closed_at = utc(end) if isinstance(end, datetime) and row.get("status") == "done" else None
    parties = row.get("parties")  # absent on tickets from before parties were recorded: unknown
    return TicketRef(id=row["id"], number=row["number"], status=row.get("status", ""),
                     person_id=row.get("person_id", ""), company_id=row.get("company_id", ""),
                     title=row.get("title", ""), closed_at=closed_at,
                     parties=tuple(json.loads(parties)) if parties else None,
                     person_address=str(row.get("email") or "").strip().lower() if parties else "")


MAX_PARTIES = 200  # addresses kept per ticket


def party_list(*groups: Iterable[str]) -> list[str]:
    """Lower-case addresses, first seen first, at most MAX_PARTIES (the newest kept)."""
    out = list(dict.fromkeys(a.strip().lower() for g in groups for a in g if a and "@" in a))
    return out[-MAX_PARTIES:]


def ticket_summary(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "number": row["number"], "title": row.get("title", ""), "status": row.get("status", ""),
        "person_id": row.get("person_id", ""), "company_id": row.get("company_id", ""),
        "email": row.get("email", ""), "linked_ticket_id": row.get("linked_ticket_id", ""),
        "startdate": iso(row.get("startdate")), "enddate": iso(row.get("enddate")),
        "created": iso(row.get("created")), "updated": iso(row.get("updated")),
    }


def ticket_view(row: Mapping[str, Any], description: str, values_json: str) -> dict[str, Any]:
    return {**ticket_summary(row), "description": description,
            "values": json.loads(values_json or "{}"),
            "message_ids": json.loads(row.get("message_ids") or "[]")}


def person_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k, "") for k in ("id", "email", "name", "firstname", "lastname", "company_id")} | {
        "created": iso(row.get("created")), "updated": iso(row.get("updated"))}


def company_view(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: row.get(k, "") for k in ("id", "name", "domain", "email", "website")} | {
        "created": iso(row.get("created"))}


COMPANY_MATCHES = ("email", "email_domain", "website")
DOCUMENT_URL_PREFIX = "/api/manage/documents/"


def company_index_values(domain: str = "", email: str = "", website: str = "") -> list[tuple[str, str]]:
    """(match, normalized value) pairs a company is found by: its email, its email's domain (or the
    `domain` given), its website's domain."""
    out: list[tuple[str, str]] = []
    mail = (email or "").strip().lower()
    if mail and "@" in mail:
        out.append(("email", mail))
    dom = normalize_domain(domain or "") or (mail.rpartition("@")[2] if "@" in mail else "")
    if dom:
        out.append(("email_domain", dom))
    web = website_domain(website)
    if web:
        out.append(("website", web))
    return out


def check_company_match(match: str) -> str:
    if match not in COMPANY_MATCHES:
        raise ValueError(f"unknown company match {match!r}: expected one of {', '.join(COMPANY_MATCHES)}")
    return match


def _index_pk(match: str, value: str) -> str:
    short = {"email": "email", "email_domain": "edom", "website": "web"}[match]
    return f"_cx-{short}-{key_hash(value.strip().lower())}"


def _person_domain_pk(domain: str) -> str:
    return f"_px-dom-{key_hash(normalize_domain(domain))}"


def email_domain_of(address: str) -> str:
    return normalize_email(address).rpartition("@")[2]


def history_view(row: Mapping[str, Any], note: str) -> dict[str, Any]:
    return {k: row.get(k, "") for k in ("id", "ticket_id", "person_id", "company_id", "type")} | {
        "date": iso(row.get("date")), "note": note, "message_ids": json.loads(row.get("message_ids") or "[]"),
        "created": iso(row.get("created"))}


def document_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A document's metadata and `url`, where the manage API serves its file for download."""
    return {k: row.get(k, "") for k in ("id", "ticket_id", "filename", "content_type", "comment")} | {
        "size": int(row.get("size") or 0), "created": iso(row.get("created")),
        "url": DOCUMENT_URL_PREFIX + str(row.get("id") or "")}


# Storage errors -> domain errors ---------------------------------------------------------------
def translate_storage_error(exc: BaseException, operation: str) -> BaseException:
    """TransientError for network trouble, 5xx and 429; PermanentError for the other HTTP errors."""
    name = type(exc).__name__
    if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
        return TransientError(f"embedded CRM {operation}: {name}")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code
        code = getattr(exc, "error_code", None) or ""
        detail = f"embedded CRM {operation}: {name} (status {status}{', ' + code if code else ''})"
        if status is None or status >= 500 or status == 429:
            retry_after = None
            headers = getattr(exc.response, "headers", None) or {}
            try:
                retry_after = float(headers.get("Retry-After")) if headers.get("Retry-After") else None
            except (TypeError, ValueError):
                retry_after = None
            return TransientError(detail, retry_after=retry_after)
        if code == "TableNotFound" or (status == 404 and "ContainerNotFound" in code):
            detail += ": call TableCrm.ensure() first"
        return PermanentError(detail)
    return exc


def _storage_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except (ServiceRequestError, ServiceResponseError, HttpResponseError) as exc:
            raise translate_storage_error(exc, fn.__name__) from exc
    return wrapper


def _is_precondition_failed(exc: HttpResponseError) -> bool:
    return exc.status_code == 412


class TableCrm:
    """CrmGateway on Azure Table + Blob storage, plus browsing helpers for the manage API."""

    def __init__(self, account: StorageAccount, prefix: str = "crm", container: str = "crm-files",
                 clock: Callable[[], datetime] | None = None) -> None:
        self._account = account
        self._prefix = prefix
        self._container_name = container
        self._now = clock or (lambda: datetime.now(timezone.utc))
        self._container: Any = None

    # plumbing ---------------------------------------------------------------------------------
    KINDS = ("person", "company", "helpdesk", "history", "document", "counter")

    def table_name(self, kind: str) -> str:
        return f"{self._prefix}{kind}"

    def _t(self, kind: str) -> Any:
        return self._account.table(self.table_name(kind))

    def _blobs(self) -> Any:
        if self._container is None:
            self._container = self._account.blob_service().get_container_client(self._container_name)
        return self._container

    @_storage_errors
    async def ensure(self) -> None:
        """Create the tables and the blob container (idempotent)."""
        await self._account.ensure_tables(*(self.table_name(k) for k in self.KINDS))
        await self._account.ensure_container(self._container_name)

    async def _get(self, kind: str, pk: str, rk: str) -> Any:
        try:
            return await self._t(kind).get_entity(pk, rk)
        except ResourceNotFoundError as exc:
            if (getattr(exc, "error_code", "") or "") == "TableNotFound":
                raise
            return None

    async def _create(self, kind: str, row: dict[str, Any]) -> bool:
        """Insert; False when the row already exists."""
        try:
            await self._t(kind).create_entity(row)
            return True
        except ResourceExistsError:
            return False

    async def _update(self, kind: str, pk: str, rk: str,
                      mutate: Callable[[dict[str, Any]], dict[str, Any] | None]) -> dict[str, Any] | None:
        """ETag-guarded read-modify-replace; `mutate` returns the new row or None for "no change".
        Returns the row as stored, or None when it does not exist."""
        for attempt in range(_UPDATE_ATTEMPTS):
            row = await self._get(kind, pk, rk)
            if row is None:
                return None
            new = mutate(dict(row))
            if new is None:
                return dict(row)
            try:
                await self._t(kind).update_entity(new, mode=UpdateMode.REPLACE, etag=row.metadata["etag"],
                                                  match_condition=MatchConditions.IfNotModified)
                return new
            except HttpResponseError as exc:
                if not _is_precondition_failed(exc):
                    raise
                await asyncio.sleep(random.uniform(0, min(0.002 * (attempt + 1), 0.05)))
        raise TransientError(f"embedded CRM: {kind} row kept changing under an update")

    async def _put_blob(self, name: str, data: Any, content_type: str, length: int | None = None) -> None:
        from azure.storage.blob import ContentSettings
        await self._blobs().upload_blob(name, data, length=length, overwrite=True,
                                        content_settings=ContentSettings(content_type=content_type))

    async def _read_blob(self, name: str) -> bytes | None:
        try:
            return await (await self._blobs().download_blob(name)).readall()
        except ResourceNotFoundError as exc:
            if "ContainerNotFound" in (getattr(exc, "error_code", "") or ""):
                raise
            return None

    async def _store_text(self, row: dict[str, Any], field: str, text: str, blob_name: str) -> None:
        if len(text) <= INLINE_TEXT_MAX:
            row[field] = text
            return
        await self._put_blob(blob_name, text.encode("utf-8"), "text/plain; charset=utf-8")
        row[field] = ""
        row[field + "_blob"] = blob_name
        row[field + "_length"] = len(text)

    async def _load_text(self, row: Mapping[str, Any], field: str) -> str:
        blob = row.get(field + "_blob")
        if not blob:
            return row.get(field) or ""
        data = await self._read_blob(blob)
        if data is None:
            raise PermanentError(f"embedded CRM: the blob holding {field} of {row.get('id')} is missing")
        return data.decode("utf-8")

    # persons and companies ------------------------------------------------------------------------
    @_storage_errors
    async def find_or_create_person(self, address: str, name: str, company_id: str = "") -> str:
        """The person for `address`; created with `company_id` when there is none (an existing
        person is left as it is). The id derives from the address: concurrent calls agree."""
        email = normalize_email(address)
        pid = person_id_for(email)
        if await self._get("person", "person", pid) is not None:
            return pid
        first, last, full = split_name(name, email)
        now = self._now()
        # The domain index first: a crash before the person row leaves an index row whose person the
        # retry creates; the other order would leave a person that level (e) never finds.
        await self._t("person").upsert_entity({"PartitionKey": _person_domain_pk(email.rpartition("@")[2]),
                                               "RowKey": pid, "company_id": company_id}, mode=UpdateMode.REPLACE)
        if not await self._create("person", {"PartitionKey": "person", "RowKey": pid, "id": pid, "email": email,
                                             "firstname": first, "lastname": last, "name": full,
                                             "company_id": company_id, "created": now, "updated": now}):
            # Someone created it concurrently: put the index back to what the stored person says.
            row = await self._get("person", "person", pid)
            await self._t("person").upsert_entity({"PartitionKey": _person_domain_pk(email.rpartition("@")[2]),
                                                   "RowKey": pid, "company_id": row.get("company_id", "")},
                                                  mode=UpdateMode.REPLACE)
        return pid  # created, or created concurrently by someone else: the same id either way

    @_storage_errors
    async def find_person(self, address: str) -> str | None:
        pid = person_id_for(address)
        return pid if await self._get("person", "person", pid) is not None else None

    @_storage_errors
    async def lookup_person(self, address: str) -> PersonRef | None:
        """The person whose email is `address`, with its company ('' for none)."""
        try:
            pid = person_id_for(address)
        except ValueError:
            return None
        row = await self._get("person", "person", pid)
        return PersonRef(pid, row.get("company_id", "")) if row is not None else None

    @_storage_errors
    async def find_company_ids(self, match: str, value: str, limit: int = 2) -> list[str]:
        """Companies by exact email, email domain or website domain (at most `limit`)."""
        check_company_match(match)
        norm = (value or "").strip().lower()
        if match == "website":
            norm = website_domain(norm)
        if not norm or limit <= 0:
            return []
        out: list[str] = []
        async for row in self._t("company").query_entities("PartitionKey eq @pk",
                                                            parameters={"pk": _index_pk(match, norm)},
                                                            results_per_page=limit, select=["RowKey"]):
            out.append(row["RowKey"])
            if len(out) >= limit:
                break
        return out

    @_storage_errors
    async def person_company_ids(self, domain: str, limit: int = 2) -> list[str]:
        """Distinct company ids ('' for none) of the persons at `domain`, at most `limit`."""
        dom = normalize_domain(domain)
        if not dom or limit <= 0:
            return []
        out: list[str] = []
        async for row in self._t("person").query_entities("PartitionKey eq @pk",
                                                           parameters={"pk": _person_domain_pk(dom)},
                                                           select=["company_id"]):
            cid = row.get("company_id") or ""
            if cid not in out:
                out.append(cid)
                if len(out) >= limit:
                    break
        return out

    @_storage_errors
    async def get_person(self, person_id: str) -> dict[str, Any] | None:
        row = await self._get("person", "person", person_id) if person_id else None
        return person_view(row) if row is not None else None

    @_storage_errors
    async def find_or_create_company(self, name: str, domain: str | None = None, key: str = "",
                                     email: str = "", website: str = "") -> str:
        """The company owning `domain` if there is one; else the company for `key` (or the name).

        `email` and `website` (Lime's company email and www) are what sender matching finds it by;
        the email's domain counts as the company's domain when `domain` is not given."""
        clean = " ".join((name or "").split())[:COMPANY_NAME_MAX]
        if not clean:
            raise ValueError("a company needs a name")
        dom = normalize_domain(domain or "")
        if dom:
            existing = await self.find_company_by_domain(dom)
            if existing:
                return existing
        cid = company_id_for(clean, key)
        # Index rows first, so a company row never exists without the rows that find it.
        for match, value in company_index_values(dom, email, website):
            await self._t("company").upsert_entity({"PartitionKey": _index_pk(match, value), "RowKey": cid,
                                                    "value": value[:500]}, mode=UpdateMode.REPLACE)
        if await self._get("company", "company", cid) is None:
            await self._create("company", {"PartitionKey": "company", "RowKey": cid, "id": cid, "name": clean,
                                           "domain": dom, "email": (email or "").strip().lower()[:320],
                                           "website": (website or "").strip()[:500], "created": self._now()})
        if dom and not await self._create("company", {"PartitionKey": "_domain", "RowKey": key_hash(dom),
                                                      "company_id": cid, "domain": dom}):
            return (await self._get("company", "_domain", key_hash(dom)))["company_id"]
        return cid

    @_storage_errors
    async def find_company_by_domain(self, domain: str) -> str | None:
        dom = normalize_domain(domain)
        row = await self._get("company", "_domain", key_hash(dom)) if dom else None
        return row["company_id"] if row is not None else None

    @_storage_errors
    async def get_company(self, company_id: str) -> dict[str, Any] | None:
        row = await self._get("company", "company", company_id) if company_id else None
        return company_view(row) if row is not None else None

    @_storage_errors
    async def set_person_company(self, person_id: str, company_id: str) -> None:
        if company_id and await self._get("company", "company", company_id) is None:
            raise PermanentError(f"embedded CRM: no company {company_id}")
        now = self._now()

        def mutate(row: dict[str, Any]) -> dict[str, Any] | None:
            return None if row.get("company_id") == company_id else {**row, "company_id": company_id, "updated": now}

        row = await self._update("person", "person", person_id, mutate)
        if row is None:
            raise PermanentError(f"embedded CRM: no person {person_id}")
        await self._t("person").upsert_entity({"PartitionKey": _person_domain_pk(email_domain_of(row["email"])),
                                               "RowKey": person_id, "company_id": company_id},
                                              mode=UpdateMode.REPLACE)

    # ticket numbers -----------------------------------------------------------------------------
    @_storage_errors
    async def reserve_ticket_number(self) -> str:
        """The next number from the ETag-guarded counter row: distinct and gap-free under concurrency."""
        table = self._t("counter")
        for attempt in range(_COUNTER_ATTEMPTS):
            row = await self._get("counter", "counter", "helpdesk")
            if row is None:
                if await self._create("counter", {"PartitionKey": "counter", "RowKey": "helpdesk",
                                                  "next_number": FIRST_TICKET_NUMBER + 1}):
                    return str(FIRST_TICKET_NUMBER)
                continue
            number = int(row["next_number"])
            try:
                await table.update_entity({"PartitionKey": "counter", "RowKey": "helpdesk", "next_number": number + 1},
                                          mode=UpdateMode.MERGE, etag=row.metadata["etag"],
                                          match_condition=MatchConditions.IfNotModified)
                return str(number)
            except HttpResponseError as exc:
                if not _is_precondition_failed(exc):
                    raise
            await asyncio.sleep(random.uniform(0, min(0.002 * (attempt + 1), 0.05)))
        raise TransientError("embedded CRM: the ticket counter stayed contended; try again")

    # tickets ------------------------------------------------------------------------------------
    async def _ticket_row(self, ticket_id_or_number: str) -> Any:
        number = number_of(ticket_id_or_number)
        return await self._get("helpdesk", "ticket", ticket_row_key(number)) if number else None

    @_storage_errors
    async def create_ticket(self, draft: TicketDraft, key: str) -> TicketRef:
        """Create the ticket for `key` once; later calls with the same key return it (as it is now).

        The number is `draft.number` (reserved earlier by the caller, so a retry reuses it) or a fresh
        one. Two different keys given the same number is a caller bug: PermanentError."""
        check_status(draft.status)
        kh = key_hash(require_key(key))
        commit = await self._get("helpdesk", "_key", kh)
        if commit is None:
            number = check_number(draft.number) if draft.number else await self.reserve_ticket_number()
            if await self._create("helpdesk", {"PartitionKey": "_key", "RowKey": kh, "number": number,
                                               "ticket_id": ticket_id_for(number), "created": self._now()}):
                commit = {"number": number}
            else:
                commit = await self._get("helpdesk", "_key", kh)
                if commit is None:  # released by a concurrent call that met a number collision
                    raise TransientError("embedded CRM: ticket creation raced with a failing one; try again")
        number = commit["number"]
        row = await self._ticket_row(number)
        if row is None:
            row = await self._new_ticket_row(draft, kh, number)
            if not await self._create("helpdesk", row):
                row = await self._ticket_row(number)
        if row.get("key_hash") != kh:
            try:  # release our commitment so a retry with a proper number can succeed
                await self._t("helpdesk").delete_entity("_key", kh)
            except ResourceNotFoundError:
                pass
            raise PermanentError(f"embedded CRM: ticket number {number} already belongs to another ticket")
        await self._index_message_ids(row["id"], number, draft.message_ids)
        return ticket_ref(row)

    async def _new_ticket_row(self, draft: TicketDraft, kh: str, number: str) -> dict[str, Any]:
        tid = ticket_id_for(number)
        now = self._now()
        row: dict[str, Any] = {
            "PartitionKey": "ticket", "RowKey": ticket_row_key(number), "id": tid, "number": number,
            "key_hash": kh, "title": clip_title(draft.title), "status": draft.status,
            "person_id": draft.person_id, "company_id": draft.company_id, "email": draft.email.strip(),
            "linked_ticket_id": draft.linked_ticket_id,
            "message_ids": json.dumps(merge_message_ids([], draft.message_ids)),
            "parties": json.dumps(party_list([draft.email], draft.parties)),
            "startdate": now, "created": now, "updated": now,
        }
        if draft.status == "done":
            row["enddate"] = now
        await self._store_text(row, "description", draft.description, f"tickets/{tid}/{kh[:16]}-description.txt")
        values = json.dumps(draft.values, ensure_ascii=False, sort_keys=True, default=str)
        await self._store_text(row, "values", values, f"tickets/{tid}/{kh[:16]}-values.json")
        return row

    async def _index_message_ids(self, ticket_id: str, number: str, message_ids: Iterable[str]) -> None:
        mids = {normalize_message_id(m) for m in message_ids} - {""}
        await asyncio.gather(*(self._create("helpdesk", {
            "PartitionKey": "_msgid", "RowKey": key_hash(mid), "ticket_id": ticket_id, "number": number,
            "message_id": mid[:998]}) for mid in mids))

    @_storage_errors
    async def get_ticket(self, number: str) -> TicketRef | None:
        """By number (a ticket id 'hd<number>' is accepted too), with its parties."""
        row = await self._ticket_row(number)
        return ticket_ref(row) if row is not None else None

    @_storage_errors
    async def find_ticket_by_message_ids(self, ids: list[str]) -> TicketRef | None:
        """The newest ticket holding any of the Message-IDs (compared without <> and case), or None."""
        mids = list({normalize_message_id(m) for m in ids} - {""})
        found: list[Any] = []
        for start in range(0, len(mids), 20):
            rows = await asyncio.gather(*(self._get("helpdesk", "_msgid", key_hash(m)) for m in mids[start:start + 20]))
            found += [r for r in rows if r is not None]
        for number in sorted({r["number"] for r in found}, key=int, reverse=True):
            row = await self._ticket_row(number)
            if row is not None:
                return ticket_ref(row)
        return None

    @_storage_errors
    async def add_message_ids(self, ticket_id: str, ids: list[str], parties: Iterable[str] = ()) -> None:
        """Remember follow-ups' Message-IDs, so replies to them thread onto this ticket, and their
        To/Cc as parties of the ticket (idempotent)."""
        row = await self._ticket_row(ticket_id)
        if row is None:
            raise PermanentError(f"embedded CRM: no ticket {ticket_id}")
        await self._index_message_ids(row["id"], row["number"], ids)
        now = self._now()
        parties = list(parties)

        def mutate(current: dict[str, Any]) -> dict[str, Any] | None:
            old = json.loads(current.get("message_ids") or "[]")
            merged = merge_message_ids(old, ids)
            known = json.loads(current["parties"]) if current.get("parties") else None
            # a ticket from before parties were recorded stays without (its earlier To/Cc are unknown)
            both = party_list(known, parties) if known is not None else None
            if merged == old and both == known:
                return None
            out = {**current, "message_ids": json.dumps(merged), "updated": now}
            if both is not None:
                out["parties"] = json.dumps(both)
            return out

        await self._update("helpdesk", "ticket", row["RowKey"], mutate)

    @_storage_errors
    async def set_ticket_status(self, ticket_id_or_number: str, status: str) -> TicketRef | None:
        """Close ('done'), park or reopen ('started'). None when there is no such ticket."""
        check_status(status)
        number = number_of(ticket_id_or_number)
        if number is None:
            return None
        now = self._now()

        def mutate(row: dict[str, Any]) -> dict[str, Any] | None:
            if row.get("status") == status:
                return None
            row.update(status=status, updated=now)
            if status == "done":
                row["enddate"] = now
            else:
                row.pop("enddate", None)
            return row

        row = await self._update("helpdesk", "ticket", ticket_row_key(number), mutate)
        return ticket_ref(row) if row is not None else None

    # history ------------------------------------------------------------------------------------
    async def _require_ticket(self, ticket_id: str) -> None:
        if ticket_id and await self._ticket_row(ticket_id) is None:
            raise PermanentError(f"embedded CRM: no ticket {ticket_id}")

    @_storage_errors
    async def add_history(self, draft: HistoryDraft, key: str) -> str:
        """A history note, once per key. Notes of any length (long ones live in a blob)."""
        check_history_type(draft.type)
        hid = history_id_for(key)
        commit = await self._get("history", "_id", hid)
        if commit is None:
            await self._require_ticket(draft.ticket_id)
            pk = draft.ticket_id or _NO_TICKET
            rk = f"{sortable_time(draft.date)}-{hid}"
            if await self._create("history", {"PartitionKey": "_id", "RowKey": hid, "partition": pk, "row": rk}):
                commit = {"partition": pk, "row": rk}
            else:
                commit = await self._get("history", "_id", hid)
        pk, rk = commit["partition"], commit["row"]
        if await self._get("history", pk, rk) is None:
            row: dict[str, Any] = {
                "PartitionKey": pk, "RowKey": rk, "id": hid, "ticket_id": draft.ticket_id,
                "person_id": draft.person_id, "company_id": draft.company_id, "type": draft.type,
                "date": utc(draft.date), "message_ids": json.dumps(merge_message_ids([], draft.message_ids)),
                "created": self._now(),
            }
            await self._store_text(row, "note", draft.note, f"history/{pk}/{hid}.txt")
            await self._create("history", row)
        return hid

    async def _history(self, ticket_id: str) -> list[dict[str, Any]]:
        out = []
        async for row in self._t("history").query_entities("PartitionKey eq @pk", parameters={"pk": ticket_id}):
            out.append(history_view(row, await self._load_text(row, "note")))
        return out

    # documents ----------------------------------------------------------------------------------
    @_storage_errors
    async def add_document(self, draft: DocumentDraft, data: bytes, key: str) -> str:
        """A file on a ticket, once per key; the bytes go to blob documents/<ticket>/<id>/<name>."""
        return await self._add_document(draft, data, len(data), key)

    @_storage_errors
    async def add_document_file(self, draft: DocumentDraft, file: Any, key: str) -> str:
        """As add_document, from a seekable binary file (a large attachment spooled to disk): the
        blob upload streams it instead of holding it in memory."""
        file.seek(0, 2)
        size = file.tell()
        file.seek(0)
        return await self._add_document(draft, file, size, key)

    @_storage_errors
    async def find_document(self, key: str) -> str | None:
        """The id of the document stored under `key`, None when there is none (yet): a retry asks
        before it reads a large file again (one row read)."""
        did = document_id_for(key)
        return did if await self._document_row(did) is not None else None

    def document_url(self, doc_id: str) -> str:
        """Where the manage API serves a document (what `cid:` images of HTML notes point to)."""
        return DOCUMENT_URL_PREFIX + doc_id

    async def _add_document(self, draft: DocumentDraft, data: Any, size: int, key: str) -> str:
        if size > MAX_DOCUMENT_BYTES:
            raise PermanentError(f"embedded CRM: document of {size} bytes is over the "
                                 f"{MAX_DOCUMENT_BYTES}-byte limit")
        did = document_id_for(key)
        commit = await self._get("document", "_id", did)
        if commit is None:
            await self._require_ticket(draft.ticket_id)
            pk = draft.ticket_id or _NO_TICKET
            blob = f"documents/{pk}/{did}/{safe_filename(draft.filename)}"
            if await self._create("document", {"PartitionKey": "_id", "RowKey": did, "partition": pk, "blob": blob}):
                commit = {"partition": pk, "blob": blob}
            else:
                commit = await self._get("document", "_id", did)
        pk, blob = commit["partition"], commit["blob"]
        if await self._get("document", pk, did) is None:
            content_type = draft.content_type or "application/octet-stream"
            await self._put_blob(blob, data, content_type, size)
            await self._create("document", {
                "PartitionKey": pk, "RowKey": did, "id": did, "ticket_id": draft.ticket_id,
                "filename": (draft.filename or "file")[:FILENAME_MAX], "content_type": content_type,
                "size": size, "comment": draft.comment[:4000], "blob": blob, "created": self._now(),
            })
        return did

    async def _document_row(self, doc_id: str) -> Any:
        commit = await self._get("document", "_id", doc_id) if doc_id else None
        return await self._get("document", commit["partition"], doc_id) if commit is not None else None

    @_storage_errors
    async def get_document(self, doc_id: str) -> dict[str, Any] | None:
        row = await self._document_row(doc_id)
        return document_view(row) if row is not None else None

    @_storage_errors
    async def get_document_bytes(self, doc_id: str) -> bytes | None:
        row = await self._document_row(doc_id)
        return await self._read_blob(row["blob"]) if row is not None else None

    # browsing (manage API) ----------------------------------------------------------------------------
    @_storage_errors
    async def list_tickets(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest (highest number) first."""
        out: list[dict[str, Any]] = []
        if limit <= 0:
            return out
        async for row in self._t("helpdesk").query_entities("PartitionKey eq 'ticket'",
                                                             results_per_page=min(limit, 1000)):
            out.append(ticket_summary(row))
            if len(out) >= limit:
                break
        return out

    @_storage_errors
    async def ticket_detail(self, number: str) -> dict[str, Any] | None:
        """The ticket with its person, company, history (date order, full notes) and documents."""
        row = await self._ticket_row(number)
        if row is None:
            return None
        ticket = ticket_view(row, await self._load_text(row, "description"), await self._load_text(row, "values"))
        person = await self.get_person(row.get("person_id", ""))
        company_id = row.get("company_id") or (person or {}).get("company_id", "")
        company = await self.get_company(company_id)
        history = await self._history(row["id"])
        documents = [document_view(d) async for d in
                     self._t("document").query_entities("PartitionKey eq @pk", parameters={"pk": row["id"]})]
        return {"ticket": ticket, "person": person, "company": company, "history": history, "documents": documents}
