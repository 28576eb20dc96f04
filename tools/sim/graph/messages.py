"""Messages and attachments of the simulated Graph: $select and $expand (attachments, and the
extended property PidTagMessageSize), the JSON of a message or attachment, Prefer (ImmutableId,
text or HTML bodies, odata.maxpagesize), list with $filter, $orderby and paging, PATCH / DELETE /
move / permanentDelete, attachments and their $value, and a message's MIME (GET .../$value): the
bytes it was delivered as, or a rendering of one delivered as JSON.
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import re
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Iterable
from urllib.parse import quote

from .helpers import (
    _b64url, _b64url_decode, _ci_get, _iso, _new_id, _split_top, html_to_text, parse_datetime, text_to_html,
)
from .model import (
    ATTACHMENT_PROPS, ATTACHMENT_SELECT, DRAFT_ONLY, MESSAGE_PROPS, MESSAGE_SELECT, PATCHABLE, _Att,
    _Ctx, _Folder, _Mailbox, _Msg,
)
from .query import _in_range, _int_arg, _next_link, _parse_filter
from ..httpbase import HttpError, Request, Response, empty_response, json_dumps, stream_bytes


def _convert_body(body: dict[str, Any], wanted: str | None) -> dict[str, Any]:
    kind = (body.get("contentType") or "text").lower()
    if wanted is None or wanted == kind:
        return {"contentType": kind, "content": body.get("content") or ""}
    if wanted == "text":
        return {"contentType": "text", "content": html_to_text(body.get("content") or "")}
    return {"contentType": "html", "content": text_to_html(body.get("content") or "")}


def _validate_patch(changes: dict[str, Any]) -> None:
    def fail(name: str) -> HttpError:
        return HttpError(400, "RequestBodyRead", f"Invalid value for property '{name}'.")
    if "categories" in changes:
        cats = changes["categories"]
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise fail("categories")
    if "isRead" in changes and not isinstance(changes["isRead"], bool):
        raise fail("isRead")
    if "flag" in changes:
        flag = changes["flag"]
        if not isinstance(flag, dict) or _ci_get(flag, "flagStatus", "notFlagged") not in (
                "notFlagged", "flagged", "complete"):
            raise fail("flag")
    if "importance" in changes and changes["importance"] not in ("low", "normal", "high"):
        raise fail("importance")
    if "inferenceClassification" in changes and changes["inferenceClassification"] not in (
            "focused", "other"):
        raise fail("inferenceClassification")


def _build_mime(props: dict[str, Any], atts: list[_Att]) -> bytes:
    """A MIME rendering of a message that was delivered as JSON (for GET .../$value), as Exchange
    makes one: its internet headers as they came, the addresses, subject, date and Message-ID from
    its properties where the headers lack them, the body, then every attachment (base64)."""
    msg = EmailMessage()

    def addr(rec: dict[str, Any] | None) -> str:
        email_address = (rec or {}).get("emailAddress") or {}
        name, address = email_address.get("name"), email_address.get("address", "")
        return f'"{name}" <{address}>' if name and name != address else address

    skip = {"content-type", "content-transfer-encoding", "mime-version"}
    have = set()
    for header in props.get("internetMessageHeaders") or []:
        name = str(header.get("name", ""))
        if name.lower() in skip:
            continue
        try:
            msg[name] = str(header.get("value", ""))
            have.add(name.lower())
        except (ValueError, TypeError):
            continue
    if "from" not in have and props.get("from"):
        msg["From"] = addr(props["from"])
    if "to" not in have and props.get("toRecipients"):
        msg["To"] = ", ".join(addr(r) for r in props["toRecipients"])
    if "subject" not in have:
        msg["Subject"] = props.get("subject") or ""
    if "cc" not in have and props.get("ccRecipients"):
        msg["Cc"] = ", ".join(addr(r) for r in props["ccRecipients"])
    if "reply-to" not in have and props.get("replyTo"):
        msg["Reply-To"] = ", ".join(addr(r) for r in props["replyTo"])
    if "date" not in have and props.get("sentDateTime"):
        msg["Date"] = format_datetime(parse_datetime(props["sentDateTime"]))
    if "message-id" not in have and props.get("internetMessageId"):
        msg["Message-ID"] = props["internetMessageId"]
    body = props.get("body") or {}
    subtype = "html" if (body.get("contentType") or "").lower() == "html" else "plain"
    msg.set_content(body.get("content") or "", subtype=subtype)
    for att in atts:
        maintype, _, sub = att.content_type.partition("/")
        if att.odata_type == "#microsoft.graph.itemAttachment":
            msg.add_attachment(att.data, maintype="application", subtype="octet-stream",
                               filename=att.name + ".eml")
            continue
        msg.add_attachment(att.data, maintype=maintype or "application",
                           subtype=sub or "octet-stream", filename=att.name,
                           disposition="inline" if att.is_inline else "attachment",
                           cid=f"<{att.content_id}>" if att.content_id else None)
    return msg.as_bytes()


class _MessagesMixin:
    """The message and attachment endpoints."""

    # ---------------------------------------------------------------- messages

    def _parse_select(self, req: Request) -> list[str] | None:
        select = req.arg("$select", ignore_case=True)
        if not select:
            return None
        out = []
        for name in select.split(","):
            name = name.strip()
            if not name:
                continue
            canonical = MESSAGE_SELECT.get(name.lower())
            if canonical is None:
                raise HttpError(400, "RequestBroker--ParseUri",
                                f"Could not find a property named '{name}' on type "
                                "'microsoft.graph.message'.")
            if canonical != "id" and canonical not in out:
                out.append(canonical)
        return out

    @staticmethod
    def _parse_att_select(text: str | None) -> list[str] | None:
        if not text:
            return None
        out = []
        for name in text.split(","):
            canonical = ATTACHMENT_SELECT.get(name.strip().lower())
            if canonical is None:
                raise HttpError(400, "RequestBroker--ParseUri",
                                f"Could not find a property named '{name.strip()}' on type "
                                "'microsoft.graph.attachment'.")
            out.append(canonical)
        return out

    def _parse_expand(self, req: Request) -> tuple[bool, list[str] | None]:
        expand = req.arg("$expand", ignore_case=True)
        if not expand:
            return False, None
        want, att_select = False, None
        for item in _split_top(expand):
            if re.match(r"\s*singleValueExtendedProperties\b", item, re.I):
                continue  # _parse_extended() reads it
            m = re.fullmatch(r"\s*attachments\s*(?:\((.*)\))?\s*", item, re.I | re.S)
            if not m:
                raise HttpError(400, "BadRequest",
                                f"Parsing OData Select and Expand failed: Could not find a "
                                f"property named '{item}' on type 'microsoft.graph.message'.")
            want = True
            if m.group(1):
                for opt in m.group(1).split(";"):
                    key, _, value = opt.partition("=")
                    if key.strip().lower() == "$select":
                        att_select = self._parse_att_select(value)
        return want, att_select

    @staticmethod
    def _parse_extended(req: Request) -> list[tuple[str, int]]:
        """`$expand=singleValueExtendedProperties($filter=id eq 'Integer 0x0E08')`: the (type, tag)
        of each tagged MAPI property asked for ('or' of several ids). Graph accepts the expansion
        only with such a filter on the id."""
        expand = req.arg("$expand", ignore_case=True) or ""
        out: list[tuple[str, int]] = []
        for item in _split_top(expand):
            m = re.fullmatch(r"\s*singleValueExtendedProperties\s*(?:\((.*)\))?\s*", item, re.I | re.S)
            if not m:
                continue
            filt = re.fullmatch(r"\s*\$filter\s*=\s*(.+?)\s*", m.group(1) or "", re.I | re.S)
            ids = re.findall(r"id\s+eq\s+'([^']*)'", filt.group(1), re.I) if filt else []
            if not ids:
                raise HttpError(400, "ErrorInvalidUrlQuery",
                                "An extended property can only be expanded with a $filter on its id "
                                "(id eq 'Integer 0x0E08').")
            for pid in ids:
                tm = re.fullmatch(r"(\w+)\s+0x([0-9a-f]{1,4})", pid.strip(), re.I)
                if not tm:
                    raise HttpError(400, "ErrorInvalidExtendedPropertyValue",
                                    f"The extended property id '{pid}' is not valid.")
                out.append((tm.group(1).capitalize(), int(tm.group(2), 16)))
        return out

    @staticmethod
    def _extended_json(msg: _Msg, wanted: list[tuple[str, int]]) -> list[dict[str, str]]:
        """The values of the MAPI properties the simulator knows: PidTagMessageSize (0x0E08) as
        Integer or Long, the store's size of the mail: its headers, body and attachments as stored
        (binary, not MIME's base64), so it is less than the size of the `$value` MIME."""
        out = []
        for kind, tag in wanted:
            if tag == 0x0E08 and kind in ("Integer", "Long"):
                props = msg.props
                headers = sum(len(str(h.get("name", ""))) + len(str(h.get("value", ""))) + 4
                              for h in props.get("internetMessageHeaders") or ())
                body = len(str((props.get("body") or {}).get("content") or "").encode("utf-8"))
                size = headers + body + sum(a.size_hint() for a in msg.attachments)
                out.append({"id": f"{kind} 0x{tag:x}", "value": str(size)})
        return out

    def _att_json(self, att: _Att, select: list[str] | None = None) -> dict[str, Any]:
        is_file = att.odata_type == "#microsoft.graph.fileAttachment"
        data: dict[str, Any] = {"@odata.type": att.odata_type}
        if is_file:
            data["@odata.mediaContentType"] = att.content_type
        values = {"id": att.id, "lastModifiedDateTime": att.last_modified, "name": att.name,
                  "contentType": att.content_type, "size": att.size_hint(),
                  "isInline": att.is_inline}
        if is_file:
            values.update(contentId=att.content_id, contentLocation=att.content_location)
        for key in (select or ATTACHMENT_PROPS):
            if key == "contentBytes":
                if is_file:
                    data["contentBytes"] = att.b64
            elif key in values:
                data[key] = values[key]
        data.setdefault("id", att.id)
        return data

    def _msg_json(self, msg: _Msg, select: list[str] | None, expand: bool,
                  att_select: list[str] | None, immutable: bool, body_type: str | None,
                  extended: list[tuple[str, int]] | None = None) -> dict[str, Any]:
        props = msg.props
        data: dict[str, Any] = {"@odata.etag": f'W/"{props["changeKey"]}"',
                                "id": msg.imm_id if immutable else msg.rest_id}
        if msg.odata_type != "#microsoft.graph.message":
            data = {"@odata.type": msg.odata_type, **data}
        for name in (select or MESSAGE_PROPS):
            if name == "parentFolderId":
                data[name] = msg.folder_id
            elif name == "webLink":
                data[name] = ("https://outlook.office365.com/owa/?ItemID=" + quote(msg.rest_id)
                              + "&exvsurl=1&viewmodel=ReadMessageItem")
            elif name in ("body", "uniqueBody"):
                data[name] = _convert_body(props["body"], body_type)
            else:
                data[name] = props.get(name)
        if expand:
            data["attachments"] = [self._att_json(a, att_select) for a in msg.attachments]
        if extended:
            values = self._extended_json(msg, extended)
            if values:  # Graph leaves the collection out when the item has none of them
                data["singleValueExtendedProperties"] = values
        return data

    def _body_pref(self, ctx: _Ctx) -> tuple[str | None, list[str]]:
        wanted = ctx.prefs.get("outlook.body-content-type", "").lower()
        applied = []
        if ctx.immutable:
            applied.append('IdType="ImmutableId"')
        if wanted in ("text", "html"):
            applied.append(f'outlook.body-content-type="{wanted}"')
            return wanted, applied
        return None, applied

    def _h_get_message(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_select(req)
        expand, att_select = self._parse_expand(req)
        extended = self._parse_extended(req)
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            data = self._msg_json(msg, select, expand, att_select, ctx.immutable, body_type, extended)
        return self._odata(data, prefs_applied=applied)

    def _h_message_mime(self, req: Request, ctx: _Ctx) -> Response:
        """GET .../messages/{id}/$value: the MIME exactly as delivered (a mail delivered as MIME), or
        built from the message's properties and attachments (one delivered as JSON). Graph answers
        it as text/plain; a large one goes out in chunks, as the attachments' $value does."""
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            raw = msg.raw
            snapshot = None if raw is not None else (dict(msg.props), list(msg.attachments))
        if raw is None and snapshot is not None:
            raw = _build_mime(*snapshot)
        assert raw is not None
        if len(raw) > 256 * 1024:
            return Response(200, stream_bytes(raw), {"Content-Type": "text/plain"}, length=len(raw))
        return Response(200, raw, {"Content-Type": "text/plain"})

    def _h_list_messages(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        select = self._parse_select(req)
        expand, att_select = self._parse_expand(req)
        extended = self._parse_extended(req)
        body_type, applied = self._body_pref(ctx)
        if req.arg("$search", ignore_case=True):
            raise HttpError(400, "ErrorInvalidUrlQuery", "$search is not simulated.")
        lo, hi, post, filter_fields = _parse_filter(req.arg("$filter", ignore_case=True))
        orderby = (req.arg("$orderby", ignore_case=True) or "").strip()
        desc = True
        if orderby:
            m = re.fullmatch(r"receivedDateTime(?:\s+(asc|desc))?", orderby, re.I)
            if not m:
                raise HttpError(400, "ErrorInvalidProperty",
                                f"The property '{orderby}' does not support sorting.")
            desc = (m.group(1) or "asc").lower() == "desc"
            if filter_fields and filter_fields[0] != "receiveddatetime":
                raise HttpError(400, "InefficientFilter",
                                "The restriction or sort order is too complex for this "
                                "operation.")
        page_size = _int_arg(req, "$top", 10, 1, 1000)
        maxpage = ctx.prefs.get("odata.maxpagesize")
        if maxpage and maxpage.isdigit():
            page_size = max(1, min(int(maxpage), 1000))
            applied.append(f"odata.maxpagesize={page_size}")
        skip = _int_arg(req, "$skip", 0, 0, 10 ** 9)
        cursor = None
        token = req.arg("$skiptoken", ignore_case=True)
        if token:
            try:
                ts, seq = json.loads(_b64url_decode(token))
                cursor = (float(ts), int(seq))
            except (ValueError, TypeError):
                raise HttpError(400, "ErrorInvalidUrlQuery", "Invalid $skiptoken.") from None
        want_count = (req.arg("$count", "", ignore_case=True) or "").lower() == "true"
        with self._lock:
            folder = self._folder_ref(mbx, req)
            if folder is not None:
                index = folder.index
                folders = {folder.id: folder}
                lo_i = bisect.bisect_left(index, (lo[0], -1)) if lo else 0
                if lo and not lo[1]:  # gt
                    lo_i = bisect.bisect_right(index, (lo[0], math.inf))
                hi_i = bisect.bisect_right(index, (hi[0], math.inf)) if hi else len(index)
                if hi and not hi[1]:  # lt
                    hi_i = bisect.bisect_left(index, (hi[0], -1))
                if cursor is not None:
                    if desc:
                        hi_i = min(hi_i, bisect.bisect_left(index, cursor))
                    else:
                        lo_i = max(lo_i, bisect.bisect_right(index, (cursor[0], cursor[1],
                                                                     "\U0010ffff")))
                keys: Iterable[tuple[float, int, str]] = (
                    (index[k] for k in range(hi_i - 1, lo_i - 1, -1)) if desc
                    else (index[k] for k in range(lo_i, hi_i)))
                total = max(0, hi_i - lo_i)
            else:
                folders = {f.id: f for f in mbx.folders.values()
                           if not f.hidden and f.well_known != "recoverableitemsroot"}
                merged = heapq.merge(*[f.index for f in folders.values()], reverse=False)
                allkeys = [k for k in merged if _in_range(k[0], lo, hi)]
                if cursor is not None:
                    allkeys = [k for k in allkeys if ((k[0], k[1]) < cursor if desc
                                                      else (k[0], k[1]) > cursor)]
                total = len(allkeys)
                keys = reversed(allkeys) if desc else iter(allkeys)
            page: list[_Msg] = []
            skipped = 0
            more = False
            for key in keys:
                msg = mbx.ids[key[2]]
                if post and not all(pred(msg) for pred in post):
                    continue
                if skipped < skip:
                    skipped += 1
                    continue
                if len(page) == page_size:
                    more = True
                    break
                page.append(msg)
            values = [self._msg_json(m, select, expand, att_select, ctx.immutable, body_type, extended)
                      for m in page]
        data: dict[str, Any] = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#"
                                f"users('{mbx.id}')/messages"}
        if want_count:
            data["@odata.count"] = total if not post else None
        data["value"] = values
        if more and page:
            last = page[-1]
            token = _b64url(json_dumps([last.ts, last.seq]))
            data["@odata.nextLink"] = _next_link(req, {"$skiptoken": token}, drop=("$skip",))
        return self._odata(data, prefs_applied=applied)

    def _h_patch_message(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        if not isinstance(body, dict):
            raise HttpError(400, "RequestBodyRead", "Expected a JSON object.")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key.startswith("@odata"):
                continue
            canonical = MESSAGE_SELECT.get(key.lower())
            if canonical is None:
                raise HttpError(400, "RequestBodyRead",
                                f"The property '{key}' does not exist on type "
                                "'microsoft.graph.message'. Make sure to only use property names "
                                "that are defined by the type or mark the type as open type.")
            changes[canonical] = value
        _validate_patch(changes)
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            if not msg.props.get("isDraft"):
                bad = sorted(set(changes) & DRAFT_ONLY)
                if bad:
                    raise HttpError(400, "ErrorInvalidPropertyUpdateSentMessage",
                                    "Update operation cannot be performed on a sent message for "
                                    f"property '{bad[0]}'.")
            folder = mbx.folders[msg.folder_id]
            props = dict(msg.props)
            was_read = bool(props.get("isRead"))
            for key, value in changes.items():
                if key not in PATCHABLE and key not in DRAFT_ONLY:
                    raise HttpError(400, "ErrorInvalidPropertySet",
                                    f"The property '{key}' cannot be updated.")
                props[key] = list(value) if isinstance(value, list) else value
            if bool(props.get("isRead")) != was_read:
                folder.unread += -1 if props.get("isRead") else 1
            props["changeKey"] = _new_id("CQAAABYAAA", 15)
            props["lastModifiedDateTime"] = _iso(self.now())
            msg.props = props
            data = self._msg_json(msg, None, False, None, ctx.immutable, body_type)
            self._notify_change(mbx, msg.folder_id, "updated", [msg])
        return self._odata(data, prefs_applied=applied)

    def _h_delete_message(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            if mbx.is_deleted(msg):
                self._purge(mbx, msg)
            else:
                self._move(mbx, msg, mbx.folders[mbx.well_known["recoverableitemsdeletions"]])
        return empty_response(204)

    def _h_permanent_delete(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            old_folder = msg.folder_id
            self._purge(mbx, msg)
            self._notify_change(mbx, old_folder, "deleted", [msg])
        return empty_response(204)

    def _purge(self, mbx: _Mailbox, msg: _Msg) -> None:
        mbx.folders[msg.folder_id].remove(msg)
        mbx.ids.pop(msg.imm_id, None)
        mbx.ids.pop(msg.rest_id, None)

    def _move(self, mbx: _Mailbox, msg: _Msg, dest: _Folder) -> None:
        source = msg.folder_id
        mbx.folders[source].remove(msg)
        self._notify_change(mbx, source, "deleted", [msg])
        mbx.ids.pop(msg.rest_id, None)
        msg.rest_id = _new_id("AAMkAGI2TG93AAA")  # the REST id changes on move; immutable not
        mbx.ids[msg.rest_id] = msg
        props = dict(msg.props)
        props["changeKey"] = _new_id("CQAAABYAAA", 15)
        props["lastModifiedDateTime"] = _iso(self.now())
        msg.props = props
        msg.folder_id = dest.id
        dest.add(msg)
        self._notify_change(mbx, dest.id, "created", [msg])

    def _h_move_message(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        dest_ref = _ci_get(body, "destinationId") if isinstance(body, dict) else None
        if not isinstance(dest_ref, str) or not dest_ref:
            raise HttpError(400, "ErrorInvalidParameter",
                            "The value of the parameter 'DestinationId' is empty.")
        body_type, applied = self._body_pref(ctx)
        with self._lock:
            mbx = ctx.mbx
            assert mbx is not None
            msg = self._find_msg(mbx, req)
            dest = mbx.folder(dest_ref)
            if dest is None:
                raise HttpError(404, "ErrorItemNotFound",
                                "The specified object was not found in the store.")
            self._move(mbx, msg, dest)
            data = self._msg_json(msg, None, False, None, ctx.immutable, body_type)
        return self._odata(data, 201, prefs_applied=applied)

    # ---------------------------------------------------------------- attachments

    def _find_att(self, msg: _Msg, att_id: str) -> _Att:
        for att in msg.attachments:
            if att.id == att_id:
                return att
        raise HttpError(404, "ErrorItemNotFound",
                        "The specified object was not found in the store.")

    def _h_list_attachments(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_att_select(req.arg("$select", ignore_case=True))
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            atts = list(msg.attachments)
            msg_id = msg.imm_id if ctx.immutable else msg.rest_id
        values = [self._att_json(a, select) for a in atts]
        user_id = ctx.mbx.id if ctx.mbx else ""
        return self._odata({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#"
                            f"users('{user_id}')/messages('{msg_id}')/attachments",
                            "value": values})

    def _h_get_attachment(self, req: Request, ctx: _Ctx) -> Response:
        select = self._parse_att_select(req.arg("$select", ignore_case=True))
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            att = self._find_att(msg, req.params["att"])
        return self._odata(self._att_json(att, select))

    def _h_attachment_value(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            msg = self._find_msg(ctx.mbx, req)  # type: ignore[arg-type]
            att = self._find_att(msg, req.params["att"])
        data = att.data
        ctype = "text/plain" if att.odata_type == "#microsoft.graph.itemAttachment" \
            else att.content_type
        if len(data) > 256 * 1024:
            return Response(200, stream_bytes(data), {"Content-Type": ctype}, length=len(data))
        return Response(200, data, {"Content-Type": ctype})
