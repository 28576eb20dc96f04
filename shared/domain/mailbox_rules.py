"""The rules a mailbox's settings must follow: one validator for the manage API (which refuses a
save that breaks them, 422 with the field) and the processor (which refuses to process mail for a
mailbox that breaks them, Failed with the same sentence). Pure: no I/O.

What needs a remote answer (does TRAML know the template? does the mailbox have that folder? does
the CRM's helpdesk have that routing property?) is asked by shared/services/mailbox_checks.py,
which reports through the same `Violation`.

CHOICES is the one list of the allowed values of every per-mailbox choice; the manage API's
`GET options`, the validator and the processor read it. Adding a choice (a field of Mailbox whose
value is one of a few words) is one line here plus the field on the dataclass.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import policy
from .decision import RESERVED, SCALARS
from .matching import DEFAULT_SENDER_ID_BEHAVIOUR, SENDER_ID_BEHAVIOURS
from .model import ACTION_DELETE, ACTION_MOVE, STORE_ORIGINAL_MODES, STORE_ORIGINAL_NONE, Mailbox
from .threading import CLOSED_TICKET_POLICIES, NEW_AFTER_DAYS, REOPEN

CHOICES: dict[str, tuple[str, ...]] = {
    "action": (ACTION_DELETE, ACTION_MOVE),
    "closed_ticket_policy": CLOSED_TICKET_POLICIES,
    "sender_id_behaviour": tuple(SENDER_ID_BEHAVIOURS),
    "store_original": STORE_ORIGINAL_MODES,
}
# What an empty value means for a choice (older rows may hold '').
CHOICE_DEFAULTS: dict[str, str] = {
    "action": ACTION_DELETE,
    "closed_ticket_policy": REOPEN,
    "sender_id_behaviour": DEFAULT_SENDER_ID_BEHAVIOUR,
    "store_original": STORE_ORIGINAL_NONE,
}
MAX_CLOSED_TICKET_DAYS = 3650
MAX_FOLDER_LENGTH = 512

# Areas: what breaks when a rule is broken. Processing rules fail every mail of the mailbox; autoreply
# rules stop its autoreplies (mail still becomes tickets).
PROCESSING = "processing"
AUTOREPLY = "autoreply"


@dataclass(frozen=True)
class Violation:
    """One broken rule: the field at fault (dotted for nested ones), a snake_case reason, a sentence
    naming the field and the fix, and what the field may hold when that is a short list."""
    field: str
    reason: str
    message: str
    area: str = PROCESSING
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "reason": self.reason, "message": self.message, "area": self.area,
                **({"detail": self.detail} if self.detail else {})}


class MailboxRuleError(ValueError):
    """A mailbox breaks the rules; `violations` lists every broken one, the message names the first."""

    def __init__(self, violations: list[Violation]) -> None:
        super().__init__(violations[0].message if violations else "the mailbox breaks a rule")
        self.violations = violations


def choice_value(box: Mailbox, name: str) -> str:
    value = getattr(box, name, "")
    return value if value not in (None, "") else CHOICE_DEFAULTS.get(name, "")


def choice_violation(name: str, value: Any, stored: bool = True) -> Violation | None:
    """The violation of a value for the choice `name`, or None when it is allowed. `stored`: an empty
    value (a row older than the field) means the default; a request must name a value."""
    allowed = CHOICES[name]
    if stored and value in (None, "") and name in CHOICE_DEFAULTS:
        return None
    if isinstance(value, str) and value in allowed:
        return None
    folded = [a for a in allowed if isinstance(value, str) and a.casefold() == value.strip().casefold()]
    hint = f" (did you mean {folded[0]!r}?)" if folded else ""
    return Violation(name, "invalid_choice",
                     f"'{name}' is {value!r}{hint}: it must be one of {', '.join(allowed)}",
                     detail={"allowed": list(allowed), "value": value})


def violations(box: Mailbox, areas: tuple[str, ...] = (PROCESSING, AUTOREPLY)) -> list[Violation]:
    """Every rule `box` breaks, in the order a form shows its fields."""
    out: list[Violation] = []
    if PROCESSING in areas:
        for name in CHOICES:
            broken = choice_violation(name, getattr(box, name, None))
            if broken:
                out.append(broken)
        days = box.closed_ticket_days
        if not isinstance(days, int) or isinstance(days, bool) or not 0 <= days <= MAX_CLOSED_TICKET_DAYS:
            out.append(Violation("closed_ticket_days", "invalid_value",
                                 f"'closed_ticket_days' must be a whole number from 0 to {MAX_CLOSED_TICKET_DAYS}"))
        elif choice_value(box, "closed_ticket_policy") == NEW_AFTER_DAYS and days < 1:
            out.append(Violation("closed_ticket_days", "closed_ticket_days_required",
                                 "'closed_ticket_days' must be 1 or more with closed_ticket_policy "
                                 "'new_after_days': set how many days after its closure a follow-up opens a new "
                                 "ticket"))
        folder = box.move_folder or ""
        if not isinstance(folder, str) or len(folder) > MAX_FOLDER_LENGTH:
            out.append(Violation("move_folder", "invalid_value",
                                 "'move_folder' must be a folder id or a well-known folder name "
                                 f"(at most {MAX_FOLDER_LENGTH} characters)"))
        elif choice_value(box, "action") == ACTION_MOVE and not folder.strip():
            out.append(Violation("move_folder", "move_folder_required",
                                 "'move_folder' is required when 'action' is 'move': choose the folder processed "
                                 "mail is moved to (GET /api/manage/clients/{name}/folders lists them)"))
        out.extend(routing_violations(box.routing))
    if AUTOREPLY in areas:
        auto = box.autoreply
        if auto.enabled and not (auto.template or "").strip():
            out.append(Violation("autoreply.template", "autoreply_template_required",
                                 "'autoreply.template' is required when autoreplies are enabled: name the TRAML "
                                 "mail template to send (or set 'autoreply.enabled' to false)", area=AUTOREPLY))
    return out


def routing_properties(routing: Any) -> list[tuple[str, str, Any]]:
    """(field, CRM property, value) of every property the routing sets, for the CRM schema check."""
    if not isinstance(routing, dict):
        return []
    out: list[tuple[str, str, Any]] = []
    values = routing.get("values") or {}
    if isinstance(values, dict):
        out.extend((f"routing.values.{k}", str(k), v) for k, v in values.items())
    by = routing.get("by_recipient") or {}
    if isinstance(by, dict):
        for address, extra in by.items():
            if isinstance(extra, dict):
                out.extend((f"routing.by_recipient.{address}.{k}", str(k), v) for k, v in extra.items())
    return out


def routing_violations(routing: Any) -> list[Violation]:
    """The routing's shape (policy.routing_problems), and each property it sets: a CRM property the
    pipeline owns (title, status, ...) or a value that is not a plain string, number or boolean."""
    shape = policy.routing_problems(routing)
    if shape:
        return [Violation("routing", "invalid_routing", f"'routing': {problem}") for problem in shape]
    out: list[Violation] = []
    for field_name, prop, value in routing_properties(routing):
        if prop.lower() in RESERVED:
            out.append(Violation(field_name, "routing_property_reserved",
                                 f"'{field_name}': the pipeline sets '{prop}' itself; route by another property "
                                 "(e.g. helpdesktype)"))
        elif not isinstance(value, SCALARS) or (isinstance(value, str) and len(value) > 4000):
            out.append(Violation(field_name, "invalid_value",
                                 f"'{field_name}' must be a string (up to 4,000 characters), number, boolean or "
                                 "null"))
    return out


def check_processable(box: Mailbox) -> None:
    """Raises MailboxRuleError when mail for `box` cannot be processed as its settings say (the
    processor's check before any CRM write)."""
    broken = violations(box, (PROCESSING,))
    if broken:
        raise MailboxRuleError(broken)
