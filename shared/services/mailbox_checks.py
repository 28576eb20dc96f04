"""What a mailbox's settings name, checked against the systems that must know it, when it is saved:

- autoreplies enabled: TRAML is configured, and knows the template (asked through the TRAML
  adapter's one template lookup, `template_id`, which the sender uses too);
- action 'move': the mailbox has the folder (Graph), and it is not the Inbox itself;
- routing: the CRM's helpdesk has each property, and an option property has that option (Lime
  CRM's schema, as the Lime adapter's schema check reads it; the embedded CRM takes any property).

Each refusal names the field (dotted) and the fix; a dependency that cannot be asked makes the save
fail with its named reason (traml_unreachable, graph_unreachable, lime_unreachable, ...), so
nothing is saved unchecked. Also the manage API's `options` (the allowed values, clients, TRAML
templates, CRM routing properties) and a mailbox's `folders`. The rules that need no remote
answer are in shared/domain/mailbox_rules.py.
"""
from __future__ import annotations

import logging
from typing import Any

from ..domain import mailbox_rules
from ..domain.decision import RESERVED
from ..domain.errors import InboxError, MailNotFound, PermanentError, Refusal
from ..domain.model import ACTION_MOVE, Mailbox
from .autoreply import MailRejected, TemplateNotFound

log = logging.getLogger("inbox.mailboxes")

# Lime property kinds a routing value cannot set (relations to many, files).
_NOT_ROUTABLE = ("hasmany", "hasandbelongstomany", "file")


class MailboxChecks:
    def __init__(self, graph: Any, traml: Any, traml_configured: bool, crm: Any, crm_backend: str,
                 clients: dict[str, Any], registry: Any = None) -> None:
        self.graph = graph  # get_folder, list_folders, probe_mailbox
        self.traml = traml  # template_id, list_templates
        self.traml_configured = traml_configured
        self.crm = crm  # Lime: check_schema / schema_report
        self.crm_backend = crm_backend
        self.clients = clients
        self.registry = registry

    async def check(self, box: Mailbox, fields: set[str]) -> list[dict[str, Any]]:
        """Refuse (Refusal, 422) what the systems do not know; return warnings for what could not be
        checked. `fields`: what the request sets (a PATCH checks only what it changes)."""
        warnings: list[dict[str, Any]] = [{"reason": "address_only", "message": w} for w in box.warnings]
        if box.autoreply.enabled and fields & {"autoreply", "client"}:
            await self._autoreply(box)
        if mailbox_rules.choice_value(box, "action") == ACTION_MOVE and fields & {"action", "move_folder", "client"}:
            await self._folder(box)
        if "routing" in fields and mailbox_rules.routing_properties(box.routing):
            warnings.extend(await self._routing(box))
        return warnings

    # autoreplies ----------------------------------------------------------------------------------
    async def _autoreply(self, box: Mailbox) -> None:
        if not self.traml_configured:
            raise Refusal("autoreplies are enabled but TRAML is not configured: set TRAML_BASE_URL and "
                          "TRAML_API_KEY (docs/autoreply.md), or set 'autoreply.enabled' to false",
                          "traml_not_configured", field="autoreply.enabled")
        name = box.autoreply.template.strip()
        try:
            await self.traml.template_id(name, fresh=True)  # not the sender's cache: deleted since?
        except TemplateNotFound as exc:
            raise Refusal(f"'autoreply.template': {exc}; create the template in TRAML or correct the name",
                          "template_unknown", field="autoreply.template", detail={"template": name}) from None
        except MailRejected as exc:
            raise Refusal(f"TRAML refused to list its mail templates ({exc}); check TRAML_API_KEY and the API "
                          "user's rights", "traml_refused", field="autoreply.template", kind="bad_gateway",
                          detail={"status": getattr(exc, "status", None)}) from None

    # the move folder ------------------------------------------------------------------------------
    async def _folder(self, box: Mailbox) -> None:
        folder = box.move_folder.strip()
        try:
            found = await self.graph.get_folder(box.client, box.graph_user, folder)
        except MailNotFound:
            raise Refusal(f"'move_folder': the mailbox {box.address} has no folder {folder!r}; give a folder id or "
                          "a well-known name (archive, deleteditems...): GET /api/manage/clients/"
                          f"{box.client}/folders?mailbox={box.address} lists them", "folder_unknown",
                          field="move_folder", detail={"folder": folder}) from None
        inbox = await self.graph.probe_mailbox(box.client, box.graph_user)
        if found.get("id") and found.get("id") == inbox:
            raise Refusal("'move_folder' is the Inbox itself: processed mail must leave the Inbox; choose another "
                          "folder", "folder_is_inbox", field="move_folder", detail={"folder": folder})

    # routing against the CRM's schema ---------------------------------------------------------------
    async def schema(self) -> Any:
        """Lime's schema report (the adapter's cached one, read fresh when there is none yet)."""
        report = getattr(self.crm, "schema_report", None)
        if report is None:
            report = await self.crm.check_schema()
        return report

    async def _routing(self, box: Mailbox) -> list[dict[str, Any]]:
        if self.crm_backend != "lime" or not hasattr(self.crm, "check_schema"):
            return []  # the embedded CRM keeps any property
        report = await self.schema()
        helpdesk = report.properties.get("helpdesk")
        if not helpdesk:
            return [{"reason": "routing_unchecked", "field": "routing",
                     "message": "Lime CRM's schema has no helpdesk limetype: the routing properties could not be "
                                "checked (see the schema problems in the log)"}]
        for field_name, prop, value in mailbox_rules.routing_properties(box.routing):
            spec = helpdesk.get(prop)
            if spec is not None and prop.lower() in owned_by_pipeline(self.crm):
                raise Refusal(f"'{field_name}': the pipeline sets helpdesk.{prop} itself (a LIME_* setting names it); "
                              "route by another property", "routing_property_reserved", field=field_name)
            if spec is None:
                known = routable(helpdesk, owned_by_pipeline(self.crm))
                raise Refusal(f"'{field_name}': Lime CRM's helpdesk has no property {prop!r}; properties: "
                              f"{', '.join(known[:30])}{', ...' if len(known) > 30 else ''}",
                              "routing_property_unknown", field=field_name, detail={"property": prop})
            if str(spec.get("type", "")) == "option" and value not in (None, ""):
                keys = report.options("helpdesk", prop)
                if str(value) not in keys:
                    raise Refusal(f"'{field_name}': helpdesk.{prop} has no active option {value!r}; its options: "
                                  f"{', '.join(sorted(keys)) or 'none'}", "routing_value_unknown", field=field_name,
                                  detail={"property": prop, "allowed": sorted(keys)})
        return []

    # what the console offers -------------------------------------------------------------------------
    async def options(self) -> dict[str, Any]:
        """The allowed values of every mailbox choice, the Graph clients, TRAML's templates (None
        when TRAML cannot list them, with the reason) and the CRM's routing properties."""
        doc: dict[str, Any] = {
            "mailbox": {name: list(allowed) for name, allowed in mailbox_rules.CHOICES.items()},
            "defaults": dict(mailbox_rules.CHOICE_DEFAULTS),
            "clients": [{"name": c.name, "tenant_id": c.tenant_id, "credential": c.credential}
                        for c in (self.clients[n] for n in sorted(self.clients))],
            "autoreply": {"traml_configured": self.traml_configured, "templates": None},
            "crm": {"backend": self.crm_backend, "routing_properties": None},
        }
        if self.traml_configured:
            try:
                templates = await self.traml.list_templates()
                doc["autoreply"]["templates"] = sorted({str(t.get("Name", "")).strip() for t in templates} - {""})
            except InboxError as exc:
                doc["autoreply"]["error"] = {"reason": getattr(exc, "reason", "traml_failed"), "message": str(exc)}
        if self.crm_backend == "lime" and hasattr(self.crm, "check_schema"):
            try:
                report = await self.schema()
                helpdesk = report.properties.get("helpdesk") or {}
                offered = routable(helpdesk, owned_by_pipeline(self.crm))
                doc["crm"]["routing_properties"] = offered
                doc["crm"]["routing_options"] = {
                    name: sorted(report.options("helpdesk", name)) for name in offered
                    if str(helpdesk[name].get("type", "")) == "option"}
            except InboxError as exc:
                doc["crm"]["error"] = {"reason": getattr(exc, "reason", "lime_failed"), "message": str(exc)}
        return doc

    async def folders(self, client: str, mailbox_ref: str) -> dict[str, Any]:
        """The mail folders of a mailbox (registered, or an address about to be) for the move-folder
        choice: [{id, path, display_name}]."""
        if client not in self.clients:
            raise Refusal(f"no Graph client named {client!r} (configured: {', '.join(sorted(self.clients)) or 'none'})",
                          "not_found", field="client", kind="not_found")
        ref = (mailbox_ref or "").strip()
        if not ref:
            raise Refusal("'mailbox' is required: the address or id of the mailbox whose folders to list",
                          "invalid_parameter", field="mailbox", kind="bad_request")
        graph_user = ""
        if self.registry is not None:
            for b in await self.registry.list():
                if ref.lower() in (b.id.lower(), b.address.lower()):
                    graph_user = b.graph_user
                    break
        if not graph_user:
            if "@" not in ref:
                raise Refusal(f"no mailbox {ref!r} is registered; give its address", "not_found", field="mailbox",
                              kind="not_found")
            graph_user = ref
        try:
            folders = await self.graph.list_folders(client, graph_user)
        except MailNotFound:
            raise Refusal(f"Graph knows no mailbox {ref!r} for client {client!r}", "mailbox_not_found",
                          field="mailbox", kind="not_found") from None
        except PermanentError as exc:
            if type(exc).__name__ == "GraphAccessDenied":
                raise Refusal(f"client {client!r} may not read the folders of {ref!r}: {exc}", "mailbox_unreachable",
                              field="mailbox") from None
            raise
        return {"client": client, "mailbox": ref, "folders": folders}


def routable(helpdesk: dict[str, dict[str, Any]], owned: set[str] = frozenset()) -> list[str]:
    """Helpdesk properties a routing value may set: not the pipeline's own (RESERVED, and what the
    LIME_* settings name), not relations to many."""
    return sorted(name for name, spec in helpdesk.items()
                  if name.lower() not in RESERVED and name.lower() not in owned
                  and str(spec.get("type", "")) not in _NOT_ROUTABLE)


def owned_by_pipeline(crm: Any) -> set[str]:
    """The helpdesk properties the Lime adapter writes itself, by their configured names."""
    names = getattr(crm, "names", None)
    return {str(getattr(names, attr, "") or "").lower() for attr in
            ("helpdesk_number", "helpdesk_status", "key_property", "message_ids")} - {""}
