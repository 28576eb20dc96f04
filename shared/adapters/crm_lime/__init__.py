"""Lime CRM (`CRM_BACKEND=lime`): the CrmGateway over Lime's REST API (facts §1), plus the browsing
and company helpers TableCrm has, with the same business results.

Wire: httpx (async), base `LIME_CRM_URL` + `/api/v1/`, headers `x-api-key` and
`Accept: application/hal+json`, TLS verified against the system store plus `OUTBOUND_CA_BUNDLE`.
Calls: limeobject CRUD (`POST|GET|PUT limeobject/{limetype}/[{id}/]`), the query API
(`GET query/?q=<json>`) for every lookup (person by email, helpdesk by number, by idempotency key, by
Message-ID), `POST file/` then a `document` limeobject for files, `GET limetype/{name}/?_embed=properties`
for the schema check.

Ids: persons, companies, history notes and documents are Lime's `_id` as a string; a ticket id is
`hd<_id>` (so `set_ticket_status("1042")`, a ticket NUMBER, can never be mistaken for an id).
`reserve_ticket_number()` is '' (Lime numbers tickets itself, e.g. the Helpdesk add-on's save hook);
the number is read from the created object.

Idempotency (Lime has no unique constraints): every object the inbox creates carries the hash of its
idempotency key in a text property (`LIME_KEY_PROPERTY`, default `inboxkey`, on helpdesk, history,
document and company). A create holds a lock on (limetype, key), queries the key, and POSTs only when
nothing has it; an answer lost after Lime's commit is resolved by querying the key again. Persons are
keyed by their e-mail address under the same lock, so concurrent first mails of a new sender make one
person. The lock is an ETag-guarded row in the Azure Table `ratelimits` (partition `limelock`, row =
hash of the name) holding an expiry; a crashed holder's row is taken over once it expired
(TableKeyLock), behind an in-process asyncio lock per name. Without the key property on a limetype
(reported by check_schema) creates of that limetype are NOT idempotent: a crash or timeout between
Lime's commit and the ledger record, or the same mail in two monitored mailboxes at once, can make a
duplicate. docs/lime.md states the schema requirement.

Limits (read from the schema, Lime's core lengths as fallback): titles are clipped to 128; a note
longer than `note` (4,000) is cut, marked, and its full text stored as a document on the ticket,
linked from the note; a description likewise; an empty note becomes "(no text)" (Lime requires one).

Errors: 429 and 5xx and network failures are retried here while the wait is short (Retry-After
honoured up to `max_wait`), then raised as TransientError(retry_after). A POST create is never
blindly repeated: an ambiguous failure (500/502/504, no answer) is resolved by the key query. Other
4xx are PermanentError with Lime's message (401/403 name the API key setting, never the key). A
client-side sliding-window limiter keeps this worker under LIME_RATE_LIMIT_REQUESTS per
LIME_RATE_LIMIT_WINDOW_SECONDS (Lime Cloud: 3,000 per 5 minutes per IP); a long wait is raised as
TransientError(retry_after) instead of blocking.

Files: gateway.py (LimeCrm: construction, the API key and its httpx client), transport.py (requests,
retries, LimeRejected/AmbiguousWrite), limiter.py (the client-side rate limit), locks.py (key locks
and create-once), schema.py (check_schema, SchemaReport), values.py (LimeNames and value helpers),
and one LimeCrm mixin per concern: persons.py (persons and companies), tickets.py, history.py,
documents.py, views.py (browsing for the manage API).
"""
from __future__ import annotations

from .gateway import LimeCrm
from .limiter import SlidingWindowLimiter
from .creates import WriteScope
from .lookups import LOOKUP_TTL, SenderLookups
from .records import Claim, CreateRecords, MemoryRecordTable, RecordConflict, RecordTable, TableRecordTable
from .schema import (
    DEFAULT_LENGTHS, KEYED, LIMETYPES, SCHEMA_TTL_BAD, SCHEMA_TTL_OK, STRING_TYPES, SchemaReport,
)
from .transport import API_PREFIX, LIME_CONNECTIONS, USER_AGENT, AmbiguousWrite, LimeRejected
from .values import (
    KEY_VALUE_LENGTH, NO_TEXT, QUERY_URL_MAX, LimeNames, fit_message_ids, parse_message_ids, ticket_id_of,
    truncate_note,
)

__all__ = [
    "API_PREFIX", "DEFAULT_LENGTHS", "KEYED", "KEY_VALUE_LENGTH", "LIMETYPES", "LIME_CONNECTIONS", "LOOKUP_TTL",
    "NO_TEXT", "QUERY_URL_MAX", "SCHEMA_TTL_BAD", "SCHEMA_TTL_OK", "STRING_TYPES", "USER_AGENT", "AmbiguousWrite",
    "Claim", "CreateRecords", "LimeCrm", "LimeNames", "LimeRejected", "MemoryRecordTable", "RecordConflict",
    "RecordTable", "SchemaReport", "SenderLookups", "SlidingWindowLimiter", "TableRecordTable", "WriteScope",
    "fit_message_ids", "parse_message_ids", "ticket_id_of", "truncate_note",
]
