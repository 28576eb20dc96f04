"""The ticket decision for one mail, and the narrow API a processing extension changes it through.

The processor decides, before any CRM write, what the mail does to the helpdesk (`Decision`): open a
new ticket, follow up an open one, reopen a closed one, open a successor of a closed one, or only add
a note (automatic mail on a ticket). A processing extension (PROCESSING_EXTENSION, docs/extensions.md)
receives the mail, that decision and a `DecisionChange`, and may set values and the title of a ticket
the mail creates, force a new ticket, reopen the closed ticket, or skip the mail with a reason.
`resolve()` turns the decision and the change into the final outcome the processor records on the
ledger row (`data.plan`) before it writes anything, so a redelivery finishes that outcome without
asking the extension again. Pure: performs no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from .model import TicketRef

# What the mail does to the helpdesk (the ledger's data.action uses the same words).
NEW = "new"  # opens a ticket
SUCCESSOR = "successor"  # opens a ticket that follows up a closed one (linked to it)
FOLLOW_UP = "follow-up"  # added to an open ticket
REOPENED = "reopened"  # added to a closed ticket, which it reopens
HISTORY_ONLY = "history-only"  # automatic mail kept on its ticket; the status is left alone
SKIP = "skip"  # no CRM write; the mail is actioned and Skipped with the reason
CREATES = (NEW, SUCCESSOR)
ACTIONS = (NEW, SUCCESSOR, FOLLOW_UP, REOPENED, HISTORY_ONLY)

# Ticket properties the pipeline owns: set through set_title(), or not at all.
RESERVED = frozenset({"title", "person", "company", "email", "description", "startdate", "enddate", "status",
                      "number", "id", "_id", "helpdesknumber", "helpdeskstatus", "inboxkey", "inboxmessageids"})
MAX_VALUES = 50
MAX_VALUE_CHARS = 4000
MAX_NAME_CHARS = 100
MAX_TITLE_CHARS = 1000
MAX_REASON_CHARS = 300
SCALARS = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Decision:
    """What the default policy decided for the mail (read-only)."""
    action: str  # NEW | SUCCESSOR | FOLLOW_UP | REOPENED | HISTORY_ONLY
    ticket: TicketRef | None  # the existing ticket the mail belongs to (threading), or None
    mailbox: str  # the monitored mailbox that received the mail (its address)
    mailbox_id: str
    automated: str = ""  # why the mail counts as automatic (auto-reply, bulk...), '' for human mail
    threaded_by: str = ""  # how `ticket` was found: references | subject-tag | bounce-original | ''
    person_id: str = ""  # the sender's person in the CRM ('' until it is created for a new sender)
    company_id: str = ""
    sender_level: str = ""  # the sender_id_behaviour level that matched the company (a..e) or ''
    title: str = ""  # the title a new ticket gets
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))  # from the mailbox routing

    @property
    def creates_ticket(self) -> bool:
        return self.action in CREATES

    @property
    def ticket_closed(self) -> bool:
        return self.ticket is not None and self.ticket.status == "done"


class DecisionChange:
    """The extension's handle on the decision. Misuse raises ValueError or TypeError at once (and the
    mail fails with that message). Of new_ticket(), reopen() and skip(), the last call wins."""

    def __init__(self, decision: Decision) -> None:
        self._decision = decision
        self._values: dict[str, Any] = {}
        self._title = ""
        self._wish = ""  # NEW | REOPENED | SKIP | ''
        self._reason = ""

    # setters ----------------------------------------------------------------------------------
    def set(self, name: str, value: Any) -> None:
        """A property value of the ticket the mail creates (e.g. "helpdesktype"; in Lime a relation
        takes the related record's id). Ignored when the mail creates no ticket."""
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
            raise ValueError(f"set(): a property name is a non-empty string of at most {MAX_NAME_CHARS} characters")
        name = name.strip()
        if name.lower() in RESERVED:
            hint = "; use set_title()" if name.lower() == "title" else ""
            raise ValueError(f"set(): {name!r} is set by the pipeline and cannot be changed here{hint}")
        if not isinstance(value, SCALARS):
            raise TypeError(f"set({name!r}): the value must be a string, number, boolean or None, "
                            f"not {type(value).__name__}")
        if isinstance(value, str) and len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"set({name!r}): the value is longer than {MAX_VALUE_CHARS} characters")
        if name not in self._values and len(self._values) >= MAX_VALUES:
            raise ValueError(f"set(): at most {MAX_VALUES} properties")
        self._values[name] = value

    def set_values(self, values: Mapping[str, Any]) -> None:
        for name, value in dict(values).items():
            self.set(name, value)

    def set_title(self, title: str) -> None:
        """The title of the ticket the mail creates (cut to TITLE_MAX_CHARS like any title)."""
        if not isinstance(title, str) or not title.strip():
            raise ValueError("set_title(): the title must be a non-empty string")
        self._title = " ".join(title.split())[:MAX_TITLE_CHARS]

    def new_ticket(self, reason: str = "") -> None:
        """Open a new ticket instead of adding the mail to the ticket it belongs to. After a closed
        ticket the new one follows it up (linked; further mails to the closed ticket join it), as the
        `new` closed-ticket policy does; after an open one it is linked to it."""
        self._wish, self._reason = NEW, _reason(reason)

    def reopen(self, reason: str = "") -> None:
        """Add the mail to the closed ticket it belongs to and reopen it (no effect on an open one)."""
        if self._decision.ticket is None:
            raise ValueError("reopen(): the mail belongs to no existing ticket (decision.ticket is None)")
        self._wish, self._reason = REOPENED, _reason(reason)

    def skip(self, reason: str) -> None:
        """Write nothing to the CRM: the mail gets the mailbox action and is Skipped with `reason`."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError("skip(): a reason is required (it is shown on the mail's ledger row)")
        self._wish, self._reason = SKIP, _reason(reason)

    # read back ------------------------------------------------------------------------------
    @property
    def changed(self) -> bool:
        return bool(self._values or self._title or self._wish)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self._wish:
            out["asked"] = {NEW: "new_ticket", REOPENED: "reopen", SKIP: "skip"}[self._wish]
        if self._reason:
            out["reason"] = self._reason
        if self._values:
            out["values"] = dict(self._values)
        if self._title:
            out["title"] = self._title
        return out


def _reason(reason: Any) -> str:
    if not isinstance(reason, str):
        raise TypeError("the reason must be a string")
    return " ".join(reason.split())[:MAX_REASON_CHARS]


@dataclass(frozen=True)
class Outcome:
    """The final decision: recorded before the CRM writes, carried out by the processor."""
    action: str  # one of ACTIONS, or SKIP
    forced_new: bool = False  # NEW although the mail belongs to an open ticket (created under the mail's key)
    values: Mapping[str, Any] = field(default_factory=dict)  # of the ticket it creates
    title: str = ""  # of the ticket it creates; '' keeps the default
    skip_reason: str = ""
    ignored: tuple[str, ...] = ()  # what the extension set that this outcome does not use


def resolve(decision: Decision, change: DecisionChange | None) -> Outcome:
    if change is None or not change.changed:
        return Outcome(decision.action, values=dict(decision.values) if decision.creates_ticket else {})
    wish, ticket = change._wish, decision.ticket
    if wish == SKIP:
        return Outcome(SKIP, skip_reason=f"skipped by the processing extension: {change._reason}")
    action, forced = decision.action, False
    if wish == NEW and ticket is not None:
        if decision.ticket_closed:
            action = SUCCESSOR
        else:
            action, forced = NEW, True
    elif wish == REOPENED and decision.ticket_closed:
        action = REOPENED
    creates = action in CREATES
    ignored = tuple(n for n, used in (("values", not change._values or creates), ("title", not change._title or creates))
                    if not used)
    return Outcome(action, forced_new=forced,
                   values={**decision.values, **change._values} if creates else {},
                   title=change._title if creates else "", ignored=ignored)
