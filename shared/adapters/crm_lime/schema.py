"""The schema check: what `GET limetype/{name}/?_embed=properties` says against the LIME_* settings.

SchemaReport (problems, warnings, properties; lengths and options with Lime's core defaults) and
`_SchemaChecks` (a LimeCrm mixin): check_schema, the cached report (re-read hourly, every minute
while it has problems; problems raise PermanentError) and whether a limetype has the key property.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from .values import KEY_VALUE_LENGTH
from ...domain.errors import PermanentError

log = logging.getLogger("inbox.crm.lime")


LIMETYPES = ("person", "company", "helpdesk", "history", "document")


KEYED = ("helpdesk", "history", "document", "company")  # limetypes created with an idempotency key


DEFAULT_LENGTHS = {  # Lime's core model (facts §1.11), used until the schema says otherwise
    ("helpdesk", "title"): 128, ("helpdesk", "description"): 1024, ("helpdesk", "email"): 100,
    ("history", "note"): 4000, ("person", "firstname"): 32, ("person", "lastname"): 50,
    ("person", "email"): 100, ("company", "name"): 200, ("company", "www"): 100, ("company", "email"): 100,
    ("document", "comment"): 512,
}


STRING_TYPES = ("string", "text", "link", "phone")


SCHEMA_TTL_OK = 3600.0


SCHEMA_TTL_BAD = 60.0


# Schema -----------------------------------------------------------------------------------------
@dataclass
class SchemaReport:
    """What check_schema found. `problems`: the settings name something the schema lacks (writes
    would fail); `warnings`: works, with the stated loss; `properties`: limetype -> name -> spec."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    properties: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def has(self, limetype: str, name: str) -> bool:
        return bool(name) and name in self.properties.get(limetype, {})

    def length(self, limetype: str, name: str) -> int:
        spec = self.properties.get(limetype, {}).get(name)
        if spec is not None:
            return int(spec.get("length") or 0)
        return DEFAULT_LENGTHS.get((limetype, name), 0)

    def options(self, limetype: str, name: str) -> set[str]:
        spec = self.properties.get(limetype, {}).get(name) or {}
        return {str(o.get("key")) for o in spec.get("options") or [] if not o.get("inactive")}


def _kind(spec: Mapping[str, Any] | None) -> str:
    return str((spec or {}).get("type", ""))


def _related(spec: Mapping[str, Any] | None) -> str:
    return str((((spec or {}).get("_links") or {}).get("related_type") or {}).get("name", ""))


class _SchemaChecks:
    """check_schema and the cached SchemaReport every write consults."""

    # schema -------------------------------------------------------------------------------------
    async def check_schema(self) -> SchemaReport:
        """Read `limetype/{name}/?_embed=properties` for person, company, helpdesk, history and
        document, and report every configured property or option that does not exist."""
        report = SchemaReport()
        for lt in LIMETYPES:
            doc = await self._json("GET", f"limetype/{lt}/", params={"_embed": "properties"}, allow_404=True)
            if doc is None:
                report.problems.append(f"limetype '{lt}' does not exist")
                continue
            props = ((doc or {}).get("_embedded") or {}).get("properties") or []
            report.properties[lt] = {str(p.get("name")): p for p in props if isinstance(p, dict) and p.get("name")}
        if not report.properties:
            report.problems[:] = [f"LIME_CRM_URL ({self._base}) has none of the limetypes {', '.join(LIMETYPES)}: "
                                  "check the database part of the URL"]
        self._check_properties(report)
        self._report, self._report_at = report, time.monotonic()
        return report

    def _check_properties(self, report: SchemaReport) -> None:
        n = self.names
        P = report.properties

        def need(lt: str, name: str, kinds: tuple[str, ...], related: str = "", setting: str = "") -> bool:
            if lt not in P:
                return False
            spec = P[lt].get(name)
            origin = f" (set by {setting})" if setting else ""
            if spec is None:
                report.problems.append(f"{lt}.{name}{origin} does not exist")
                return False
            if _kind(spec) not in kinds:
                report.problems.append(f"{lt}.{name}{origin} is of type '{_kind(spec)}', expected {' or '.join(kinds)}")
                return False
            if related and _related(spec) and _related(spec) != related:
                report.problems.append(f"{lt}.{name} relates to '{_related(spec)}', expected '{related}'")
                return False
            return True

        text = STRING_TYPES
        need("person", "firstname", text)
        need("person", "lastname", text)
        need("person", "email", text)
        need("company", "name", text)
        need("helpdesk", "title", text)
        need("helpdesk", n.helpdesk_number, ("integer", "string", "text"), setting="LIME_PROP_HELPDESK_NUMBER")
        if need("helpdesk", n.helpdesk_status, ("option",), setting="LIME_PROP_HELPDESK_STATUS"):
            available = report.options("helpdesk", n.helpdesk_status)
            for ours, setting in (("started", "LIME_STATUS_STARTED"), ("done", "LIME_STATUS_DONE"),
                                  ("parked", "LIME_STATUS_PARKED")):
                if n.statuses[ours] not in available:
                    report.problems.append(f"helpdesk.{n.helpdesk_status} has no active option '{n.statuses[ours]}' "
                                           f"(set by {setting}); its options: {', '.join(sorted(available)) or 'none'}")
        need("helpdesk", "person", ("belongsto",), "person")
        need("helpdesk", "company", ("belongsto",), "company")
        need("history", "date", ("time", "date"))
        need("history", "note", text)
        need("history", "helpdesk", ("belongsto",), "helpdesk")
        need("history", "person", ("belongsto",), "person")
        if need("history", "type", ("option",)):
            available = report.options("history", "type")
            for ours, setting in (("receivedemail", "LIME_HISTORY_TYPE_RECEIVED"),
                                  ("sentemail", "LIME_HISTORY_TYPE_SENT"), ("comment", "LIME_HISTORY_TYPE_COMMENT")):
                if n.history_types[ours] not in available:
                    report.problems.append(f"history.type has no active option '{n.history_types[ours]}' (set by "
                                           f"{setting}); its options: {', '.join(sorted(available)) or 'none'}")
        need("document", "document", ("file",))
        need("document", "helpdesk", ("belongsto",), "helpdesk")

        # the idempotency key property on every limetype the inbox creates
        for lt in KEYED:
            if lt not in P:
                continue
            loss = ("companies are matched by name instead of by key" if lt == "company" else
                    f"an interrupted create of a {lt} cannot be resolved: a crash or timeout between Lime's create "
                    f"and our record of it makes a duplicate {'ticket' if lt == 'helpdesk' else lt} on the retry")
            if not n.key_property:
                report.warnings.append(f"LIME_KEY_PROPERTY is empty: {loss}")
                continue
            spec = P[lt].get(n.key_property)
            if spec is None:
                report.warnings.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) does not exist: {loss}")
            elif _kind(spec) not in ("string", "text"):
                report.problems.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) is of type '{_kind(spec)}'; "
                                       "it must be a text property")
            elif spec.get("length") and int(spec["length"]) < KEY_VALUE_LENGTH:
                report.problems.append(f"{lt}.{n.key_property} (LIME_KEY_PROPERTY) holds {spec['length']} "
                                       f"characters; it needs at least {KEY_VALUE_LENGTH}")
        if "helpdesk" in P:
            if not n.message_ids:
                report.warnings.append("LIME_PROP_MESSAGE_IDS is empty: replies to tickets from before the inbox "
                                       "indexed them thread by the subject tag only, not by In-Reply-To/References")
            elif n.message_ids not in P["helpdesk"]:
                report.warnings.append(f"helpdesk.{n.message_ids} (LIME_PROP_MESSAGE_IDS) does not exist: replies "
                                       "to tickets from before the inbox indexed them thread by the subject tag "
                                       "only, not by In-Reply-To/References")
            elif _kind(P["helpdesk"][n.message_ids]) not in ("string", "text"):
                report.problems.append(f"helpdesk.{n.message_ids} (LIME_PROP_MESSAGE_IDS) must be a text property")
        if "company" in P:
            for name, setting in ((n.company_website, "LIME_PROP_COMPANY_WEBSITE"),
                                  (n.company_email, "LIME_PROP_COMPANY_EMAIL")):
                if name and name not in P["company"]:
                    report.warnings.append(f"company.{name} ({setting}) does not exist: companies are not matched "
                                           "by it")
        if "history" in P and "document" not in P["history"]:
            report.warnings.append("history.document does not exist: a long note's full-text document is on the "
                                   "ticket but not linked from the note")
        # required properties the inbox never sets: creates would fail unless routing values set them
        sets = {"person": {"firstname", "lastname", "email", "name"},
                "company": {"name", n.company_website, n.key_property},
                "helpdesk": {"title", n.helpdesk_status, n.helpdesk_number, "person", "company", "email",
                             "description", "startdate", "enddate", n.key_property, n.message_ids},
                "history": {"date", "type", "note", "helpdesk", "person", "company", "document", n.key_property},
                "document": {"document", "comment", "type", "helpdesk", n.key_property}}
        for lt, props in P.items():
            for name, spec in props.items():
                if spec.get("required") and name not in sets.get(lt, set()) and _kind(spec) not in ("hasmany",):
                    report.warnings.append(f"{lt}.{name} is required and the inbox does not set it: creates fail "
                                           "unless the mailbox's routing values set it" if lt == "helpdesk" else
                                           f"{lt}.{name} is required and the inbox does not set it: creates fail")

    async def _schema(self) -> SchemaReport:
        """The cached schema report (re-checked hourly, every minute while it has problems)."""
        age = time.monotonic() - self._report_at
        report = self._report
        if report is not None and age < (SCHEMA_TTL_OK if report.ok else SCHEMA_TTL_BAD):
            return self._raise_problems(report)
        if self._schema_lock is None:
            self._schema_lock = asyncio.Lock()
        async with self._schema_lock:
            if self._report is None or time.monotonic() - self._report_at >= (
                    SCHEMA_TTL_OK if self._report.ok else SCHEMA_TTL_BAD):
                fresh = await self.check_schema()
                for warning in fresh.warnings:
                    log.warning("lime.schema %s", warning)
                for problem in fresh.problems:
                    log.error("lime.schema %s", problem)
        assert self._report is not None
        return self._raise_problems(self._report)

    @staticmethod
    def _raise_problems(report: SchemaReport) -> SchemaReport:
        if report.problems:
            raise PermanentError("Lime CRM schema does not match the LIME_* settings: " + "; ".join(report.problems))
        return report

    @property
    def schema_report(self) -> SchemaReport | None:
        """The last schema check (None before the first call to Lime)."""
        return self._report

    def _keyed(self, report: SchemaReport, limetype: str) -> bool:
        return report.has(limetype, self.names.key_property)
