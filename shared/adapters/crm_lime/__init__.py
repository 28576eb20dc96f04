"""Lime CRM (`CRM_BACKEND=lime`): the CrmGateway over Lime's REST API (facts §1), plus the browsing
and company helpers TableCrm has, with the same business results.

Wire: httpx (async), base `LIME_CRM_URL` + `/api/v1/`, headers `x-api-key` and
`Accept: application/hal+json`, TLS verified against the system store plus `OUTBOUND_CA_BUNDLE`.
Calls: limeobject CRUD (`POST|GET|PUT limeobject/{limetype}/[{id}/]`), the query API
(`GET query/?q=<json>`) for lookups (the sender's person with its domain's persons, companies by the
sender's address, domain and website, a ticket by number), `POST file/` then a `document` limeobject
for files, `GET limetype/{name}/?_embed=properties` for the schema check.

Ids: persons, companies, history notes and documents are Lime's `_id` as a string; a ticket id is
`hd<_id>` (so `set_ticket_status("1042")`, a ticket NUMBER, can never be mistaken for an id).
`reserve_ticket_number()` is '' (Lime numbers tickets itself, e.g. the Helpdesk add-on's save hook);
the number is read from the create's answer (a GET only when the answer lacks it).

Idempotency (Lime has no unique constraints): what the inbox creates is recorded in our own Table
storage (records.py: table `ratelimits`, partition `lime`). A create claims its record (an insert:
the lock across every worker, and the proof that no earlier attempt exists), POSTs without asking
Lime, and records the created id; a record found `created` answers instead of Lime. Lime is asked
(the key query on `LIME_KEY_PROPERTY`, default `inboxkey`, which every created object carries as
the hash of its key) only when an earlier attempt's outcome is unknown: its holder died or lost
Lime's answer before recording it. The processor wraps a mail's writes in a scope (creates.py,
`mail_writes`): one record for the mail's own objects, the ticket's and person's claimed with it,
all recorded together at the end with the ticket index. Persons are keyed by their address, so
concurrent first mails of a new sender make one person. Without the key property on a limetype
(reported by check_schema) an unknown outcome cannot be resolved: a crash or timeout between
Lime's commit and our record makes a duplicate. docs/lime.md states the schema requirement.

Threading (tickets.py): our ticket index in the same partition (Message-IDs, number, person,
company, the parties) answers find_ticket_by_message_ids; Lime's Message-ID property only for
tickets from before it. Lookups are cached per worker for two minutes (lookups.py).

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
retries, LimeRejected/AmbiguousWrite), limiter.py (the client-side rate limit), records.py (our
create records and their storage), creates.py (create-once and the write scope), lookups.py (the
per-worker lookup cache), schema.py (check_schema, SchemaReport), values.py (LimeNames and value
helpers), and one LimeCrm mixin per concern: persons.py (persons and companies), tickets.py (and the
ticket index), history.py, documents.py, views.py (browsing for the manage API), maintenance.py
(retention and the privacy erase of what we keep).
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
