"""domain/mailbox_rules.py: the one list of allowed values and the rules both the manage API and
the processor apply to a mailbox's settings."""
from __future__ import annotations

from dataclasses import replace

import pytest

from shared.domain import mailbox_rules as rules
from shared.domain.matching import SENDER_ID_BEHAVIOURS
from shared.domain.model import AutoreplySettings, Mailbox
from shared.domain.threading import CLOSED_TICKET_POLICIES

GOOD = Mailbox(id="m", address="support@ours.example", client="c", tenant_id="t")


def test_the_choices_are_the_processors_own_constants():
    assert rules.CHOICES["sender_id_behaviour"] == tuple(SENDER_ID_BEHAVIOURS)
    assert rules.CHOICES["closed_ticket_policy"] == CLOSED_TICKET_POLICIES
    assert rules.CHOICES["action"] == ("delete", "move")
    assert set(rules.CHOICE_DEFAULTS) <= set(rules.CHOICES)


def test_a_good_mailbox_and_empty_choices_break_no_rule():
    assert rules.violations(GOOD) == []
    assert rules.violations(replace(GOOD, sender_id_behaviour="", closed_ticket_policy="", action="")) == []


@pytest.mark.parametrize("changes, field, reason", [
    ({"sender_id_behaviour": "exact"}, "sender_id_behaviour", "invalid_choice"),
    ({"sender_id_behaviour": 3}, "sender_id_behaviour", "invalid_choice"),
    ({"closed_ticket_policy": "close"}, "closed_ticket_policy", "invalid_choice"),
    ({"closed_ticket_policy": "new_after_days"}, "closed_ticket_days", "closed_ticket_days_required"),
    ({"closed_ticket_days": -1}, "closed_ticket_days", "invalid_value"),
    ({"closed_ticket_days": True}, "closed_ticket_days", "invalid_value"),
    ({"action": "move", "move_folder": "  "}, "move_folder", "move_folder_required"),
    ({"move_folder": "x" * 513}, "move_folder", "invalid_value"),
    ({"autoreply": AutoreplySettings(enabled=True)}, "autoreply.template", "autoreply_template_required"),
    ({"routing": {"values": {"Status": "done"}}}, "routing.values.Status", "routing_property_reserved"),
    ({"routing": {"by_recipient": {"a@x.se": {"type": {"nested": 1}}}}}, "routing.by_recipient.a@x.se.type",
     "invalid_value"),
    ({"routing": ["values"]}, "routing", "invalid_routing"),
])
def test_each_rule_names_its_field(changes, field, reason):
    [broken] = rules.violations(replace(GOOD, **changes))
    assert (broken.field, broken.reason) == (field, reason) and field.split(".")[0] in broken.message


def test_a_near_miss_gets_a_suggestion_and_the_allowed_values():
    [broken] = rules.violations(replace(GOOD, sender_id_behaviour="personemailexact"))
    assert "did you mean 'PersonEmailExact'" in broken.message
    assert broken.detail["allowed"] == list(SENDER_ID_BEHAVIOURS)


def test_the_processor_checks_processing_rules_only():
    rules.check_processable(replace(GOOD, autoreply=AutoreplySettings(enabled=True)))  # autoreplies only
    with pytest.raises(rules.MailboxRuleError, match="'action' is 'shred'") as err:
        rules.check_processable(replace(GOOD, sender_id_behaviour="exact", action="shred"))
    assert [v.field for v in err.value.violations] == ["action", "sender_id_behaviour"]
