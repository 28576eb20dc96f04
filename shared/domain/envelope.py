"""Queue message envelopes: small, versioned JSON, never the raw Graph body, never a secret.

Writers always write the newest version; readers accept every version still in flight
(`READABLE_VERSIONS`).  The base64 transport encoding is the storage adapter's business.
Performs no I/O.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from .errors import MalformedEnvelope

VERSION = 1
READABLE_VERSIONS = (1,)
MAX_ENVELOPE_BYTES = 16_000


def new_correlation_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class MessageJob:
    """Process one mail of one mailbox. Born at the webhook, the sweep or a recovery."""
    mailbox_id: str
    message_id: str
    tenant_id: str = ""
    subscription_id: str = ""
    source: str = "webhook"  # webhook | sweep | recovery
    correlation_id: str = field(default_factory=new_correlation_id)
    attempt: int = 0  # re-enqueues after transient failures (domain/retry.py); the queue's dequeue count is separate
    recovery_task: str = ""
    not_before: str = ""  # ISO time on the app's clock before which a re-enqueued job does not run
    kind: str = "message"


@dataclass(frozen=True)
class AutoreplyJob:
    """Send the autoreply for one new ticket (at most once per ticket)."""
    mailbox_id: str
    message_id: str
    ticket_id: str
    ticket_number: str
    correlation_id: str = field(default_factory=new_correlation_id)
    attempt: int = 0
    not_before: str = ""
    kind: str = "autoreply"


@dataclass(frozen=True)
class LifecycleJob:
    subscription_id: str
    tenant_id: str
    lifecycle_event: str
    mailbox_id: str = ""
    correlation_id: str = field(default_factory=new_correlation_id)
    attempt: int = 0
    kind: str = "lifecycle"


Job = MessageJob | AutoreplyJob | LifecycleJob
_KINDS: dict[str, type] = {"message": MessageJob, "autoreply": AutoreplyJob, "lifecycle": LifecycleJob}
T = TypeVar("T", MessageJob, AutoreplyJob, LifecycleJob)


def encode(job: Job) -> str:
    doc = {"v": VERSION, **asdict(job)}
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
    if len(text) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelope("envelope too large")
    return text


def decode(text: str | bytes, expect: type[T]) -> T:
    """Parse an envelope of the expected kind; MalformedEnvelope (permanent) otherwise."""
    try:
        doc: Any = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested past the parser's limit
        raise MalformedEnvelope("queue message is not JSON") from None
    if not isinstance(doc, dict):
        raise MalformedEnvelope("queue message is not a JSON object")
    version = doc.pop("v", None)
    if version not in READABLE_VERSIONS:
        raise MalformedEnvelope(f"unsupported envelope version {version!r}")
    cls = _KINDS.get(doc.get("kind", ""))
    if cls is not expect:
        raise MalformedEnvelope(f"expected a {expect.__name__} envelope, got kind {doc.get('kind')!r}")
    names = {f.name for f in fields(cls)}
    try:
        return cls(**{k: v for k, v in doc.items() if k in names})  # type: ignore[return-value]
    except TypeError as exc:
        raise MalformedEnvelope(f"envelope misses a field: {exc}") from None


def with_attempt(job: T, attempt: int, not_before: str = "") -> T:
    """The job re-enqueued: its attempt count, and (message and autoreply jobs) when it may run again."""
    extra = {"not_before": not_before} if any(f.name == "not_before" for f in fields(job)) else {}
    return type(job)(**{**asdict(job), "attempt": attempt, **extra})  # type: ignore[return-value]
