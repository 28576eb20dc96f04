"""JSON views of entities for the manage API (no secrets, ISO times)."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..domain.model import Mailbox, SubscriptionInfo


def mailbox_view(m: Mailbox, sub: Any = None) -> dict[str, Any]:
    doc = asdict(m)
    doc.pop("etag", None)
    for k in ("start_date", "created_at"):
        doc[k] = doc[k].isoformat() if doc[k] else None
    if sub is not None:
        if isinstance(sub, SubscriptionInfo):
            doc["subscription"] = {"id": sub.id, "expiration": sub.expiration.isoformat()}
        else:
            doc["subscription"] = {"id": sub.subscription_id,
                                   "expiration": sub.expiration.isoformat() if sub.expiration else None,
                                   "status": sub.status, "last_error": sub.last_error}
    return doc
