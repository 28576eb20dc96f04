"""Mailboxes and folders of the simulated Graph, and delivering mail into them: the mailbox and
folder registration API, delivery of Graph JSON or raw MIME (message ids, conversation ids,
attachments) with its change notifications, the in-process inspection API, folder and message
lookup for the handlers, and the /users and /mailFolders endpoints.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
import re
import uuid
from typing import Any, Iterable

from .helpers import _b64url, _ci_get, _iso, _new_id, _preview, _recipient, parse_datetime
from .model import DEMO_TENANT, MESSAGE_SELECT, _Att, _Ctx, _Folder, _Mailbox, _Msg
from .notifications import NotificationRecord
from .query import _int_arg, _next_link
from ..httpbase import HttpError, Request, Response
from ..mime2graph import mime_to_graph_message


class _MailboxesMixin:
    """Mailboxes, folders, delivery and inspection; GET /users, the mailFolders endpoints."""

    def add_mailbox(self, address: str, display_name: str | None = None,
                    user_id: str | None = None, tenant_id: str = DEMO_TENANT,
                    aliases: Iterable[str] = ()) -> str:
        """Create a user with a mailbox; returns its object id (a GUID)."""
        user_id = (user_id or str(uuid.uuid4())).lower()
        with self._lock:
            if address.lower() in self._by_address:
                raise ValueError(f"mailbox {address} exists")
            self._tenants.add(tenant_id.lower())
            mbx = _Mailbox(user_id, tenant_id.lower(), address,
                           display_name or address.split("@")[0])
            mbx.aliases.update(a.lower() for a in aliases)
            self._mailboxes[user_id] = mbx
            for alias in mbx.aliases:
                self._by_address[alias] = user_id
            self._subs_by_user.setdefault(user_id, set())
        return user_id

    def add_folder(self, mailbox: str, display_name: str, parent: str = "msgfolderroot") -> str:
        """Create a mail folder (e.g. a per-mailbox 'Processed' folder); returns its id."""
        with self._lock:
            mbx = self._mbx(mailbox)
            parent_folder = mbx.folder(parent)
            if parent_folder is None:
                raise KeyError(parent)
            return self._create_folder(mbx, parent_folder, display_name).id

    def folder_id(self, mailbox: str, folder: str) -> str:
        with self._lock:
            found = self._mbx(mailbox).folder(folder)
            if found is None:
                raise KeyError(folder)
            return found.id

    def _mbx(self, ref: str) -> _Mailbox:
        mbx = self._resolve_mailbox(ref)
        if mbx is None:
            raise KeyError(f"no mailbox {ref}")
        return mbx

    def _resolve_mailbox(self, ref: str, tenant_id: str | None = None) -> _Mailbox | None:
        ref = ref.strip()
        low = ref.lower()
        if low.startswith("aad-upn:"):
            low = low[8:]
        mbx = self._mailboxes.get(low)
        if mbx is None:
            user_id = self._by_address.get(low)
            mbx = self._mailboxes.get(user_id) if user_id else None
        if mbx is not None and tenant_id is not None and mbx.tenant_id != tenant_id:
            return None
        return mbx

    # ================================================================ delivering mail

    def deliver(self, mailbox: str, message: dict[str, Any] | bytes | str,
                folder: str = "Inbox", notify: bool = True, duplicate: int = 0,
                delay_ms: float = 0, received_at: Any = None) -> str:
        """Store a message (Graph JSON dict or raw MIME bytes) and notify subscribers.

        Returns the message's immutable id. The change notification is POSTed on a background
        thread (``duplicate`` extra copies, after ``delay_ms``).
        """
        return self.deliver_many(mailbox, [message], folder=folder, notify=notify,
                                 duplicate=duplicate, delay_ms=delay_ms,
                                 received_at=received_at)[0]

    def deliver_many(self, mailbox: str, messages: Iterable[dict[str, Any] | bytes | str],
                     folder: str = "Inbox", notify: bool = True, duplicate: int = 0,
                     delay_ms: float = 0, received_at: Any = None) -> list[str]:
        """Store several messages; their notifications go out batched (per webhook URL)."""
        prepared = [self._prepare(m) for m in messages]
        with self._lock:
            mbx = self._mbx(mailbox)
            target = mbx.folder(folder)
            if target is None:
                raise KeyError(f"no folder {folder} in {mailbox}")
            stored = []
            for props, atts, raw, odata_type in prepared:
                when = parse_datetime(received_at) if received_at is not None else self.now()
                stored.append(self._store(mbx, target, props, atts, raw, odata_type, when))
            if notify:
                self._notify_change(mbx, target.id, "created", stored, duplicate=duplicate,
                                    delay_ms=delay_ms)
        return [m.imm_id for m in stored]

    def notify_created(self, mailbox: str, message_ids: Iterable[str], duplicate: int = 0,
                       delay_ms: float = 0) -> list[NotificationRecord]:
        """Send the `created` change notifications of messages delivered with ``notify=False``
        (a test sets up its plans for a message before anyone is told of it). Returns the
        notification records (``dropped`` says which the simulator's chaos swallowed)."""
        with self._lock:
            mbx = self._mbx(mailbox)
            by_folder: dict[str, list[_Msg]] = {}
            for mid in message_ids:
                msg = mbx.ids.get(mid)
                if msg is None:
                    raise KeyError(f"no message {mid} in {mailbox}")
                by_folder.setdefault(msg.folder_id, []).append(msg)
            records: list[NotificationRecord] = []
            for folder_id, msgs in by_folder.items():
                records += self._notify_change(mbx, folder_id, "created", msgs, duplicate=duplicate,
                                               delay_ms=delay_ms)
            return records

    def _prepare(self, message: dict[str, Any] | bytes | str
                 ) -> tuple[dict[str, Any], list[dict[str, Any]], bytes | None, str]:
        raw = None
        if isinstance(message, str):
            message = message.encode("utf-8")
        if isinstance(message, (bytes, bytearray)):
            raw = bytes(message)
            data = mime_to_graph_message(raw)
        else:
            data = dict(message)
        odata_type = data.pop("@odata.type", None) or "#microsoft.graph.message"
        atts = list(data.pop("attachments", None) or [])
        props: dict[str, Any] = {}
        for key, value in data.items():
            canonical = MESSAGE_SELECT.get(key.lower(), key)
            props[canonical] = value
        if props.get("from") is not None:
            props["from"] = _recipient(props["from"])
        if props.get("sender") is not None:
            props["sender"] = _recipient(props["sender"])
        props.setdefault("from", {"emailAddress": {"name": "sender@example.com",
                                                   "address": "sender@example.com"}})
        if props.get("sender") is None:
            props["sender"] = props["from"]
        for name in ("toRecipients", "ccRecipients", "bccRecipients", "replyTo"):
            value = props.get(name) or []
            if isinstance(value, (str, dict)):
                value = [value]
            props[name] = [_recipient(v) for v in value]
        body = props.get("body")
        if body is None:
            body = {"contentType": "text", "content": ""}
        elif isinstance(body, str):
            kind = "html" if re.search(r"<(html|body|div|p|br|table)\b", body, re.I) else "text"
            body = {"contentType": kind, "content": body}
        else:
            body = {"contentType": (body.get("contentType") or "text").lower(),
                    "content": body.get("content") or ""}
        props["body"] = body
        headers = props.get("internetMessageHeaders") or []
        if isinstance(headers, dict):
            headers = [{"name": k, "value": v} for k, v in headers.items()]
        props["internetMessageHeaders"] = [
            h if isinstance(h, dict) else {"name": h[0], "value": h[1]} for h in headers]
        props.setdefault("subject", "")
        props.setdefault("importance", "normal")
        props.setdefault("isReadReceiptRequested", False)
        props.setdefault("isDeliveryReceiptRequested", False)
        return props, atts, raw, odata_type

    def _store(self, mbx: _Mailbox, folder: _Folder, props: dict[str, Any],
               atts: list[dict[str, Any]], raw: bytes | None, odata_type: str,
               when: dt.datetime) -> _Msg:
        now_s = _iso(self.now())
        props = dict(props)
        if not props.get("internetMessageId") and self.generate_missing_message_id:
            generated = f"<{uuid.uuid4().hex.upper()}@sim.prod.outlook.example>"
            props["internetMessageId"] = generated
            props["internetMessageHeaders"] = list(props["internetMessageHeaders"]) + [
                {"name": "Message-ID", "value": generated}]
        attachments = []
        for att in atts:
            attachments.append(self._make_attachment(att, now_s))
        props.setdefault("hasAttachments", any(not a.is_inline for a in attachments))
        props["receivedDateTime"] = _iso(when)
        props.setdefault("sentDateTime", props["receivedDateTime"])
        props.setdefault("createdDateTime", props["receivedDateTime"])
        props["lastModifiedDateTime"] = now_s
        props["changeKey"] = _new_id("CQAAABYAAA", 15)
        props.setdefault("categories", [])
        props.setdefault("isRead", False)
        props.setdefault("isDraft", False)
        props.setdefault("inferenceClassification", "focused")
        props.setdefault("flag", {"flagStatus": "notFlagged"})
        props["bodyPreview"] = props.get("bodyPreview") or _preview(props["body"])
        if not props.get("conversationId"):
            root = self._conversation_root(props)
            props["conversationId"] = "AAQkAG" + _b64url(hashlib.sha256(
                (mbx.id + root).encode()).digest())[:40] + "="
        props.setdefault("conversationIndex", base64.b64encode(os.urandom(22)).decode())
        msg = _Msg(_new_id("AAkALgAAAAAAHYQDEapmEc2byACqAC-EWg0A"), _new_id("AAMkAGI2TG93AAA"),
                   folder.id, props, attachments, when.timestamp(), next(self._seq), raw,
                   odata_type)
        mbx.ids[msg.imm_id] = msg
        mbx.ids[msg.rest_id] = msg
        folder.add(msg)
        return msg

    @staticmethod
    def _conversation_root(props: dict[str, Any]) -> str:
        refs = ""
        for header in props.get("internetMessageHeaders") or []:
            if str(header.get("name", "")).lower() in ("references", "in-reply-to"):
                refs = refs or str(header.get("value") or "")
        found = re.findall(r"<[^>]+>", refs)
        if found:
            return found[0]
        return props.get("internetMessageId") or uuid.uuid4().hex

    @staticmethod
    def _make_attachment(att: dict[str, Any], now_s: str) -> _Att:
        odata_type = att.get("@odata.type") or "#microsoft.graph.fileAttachment"
        if "_raw" in att:
            data = att["_raw"]
        elif att.get("content") is not None:
            data = att["content"]
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        else:
            data = base64.b64decode(att.get("contentBytes") or "")
        cid = att.get("contentId")
        if cid and cid.startswith("<") and cid.endswith(">"):
            cid = cid[1:-1]
        return _Att(id=_new_id("AAMkAGI2AttA", 30), odata_type=odata_type,
                    name=att.get("name") or "attachment", data=data,
                    content_type=att.get("contentType") or "application/octet-stream",
                    is_inline=bool(att.get("isInline", False)), content_id=cid or None,
                    content_location=att.get("contentLocation"), last_modified=now_s)

    # ================================================================ inspection API

    def get_message(self, mailbox: str, message_id: str) -> dict[str, Any] | None:
        """Full Graph JSON (immutable id, headers, attachments with contentBytes) or None."""
        with self._lock:
            msg = self._mbx(mailbox).ids.get(message_id)
            if msg is None:
                return None
            data = self._msg_json(msg, None, True, None, True, None)
            data["internetMessageHeaders"] = msg.props.get("internetMessageHeaders", [])
            data["restId"] = msg.rest_id
            return data

    def messages(self, mailbox: str, folder: str = "Inbox") -> list[dict[str, Any]]:
        """Messages of a folder (oldest first), with headers and attachment metadata."""
        with self._lock:
            mbx = self._mbx(mailbox)
            target = mbx.folder(folder)
            if target is None:
                raise KeyError(folder)
            out = []
            for key in target.index:
                msg = target.messages[key[2]]
                data = self._msg_json(msg, None, True, ["id", "name", "contentType", "size",
                                                        "isInline", "contentId"], True, None)
                data["internetMessageHeaders"] = msg.props.get("internetMessageHeaders", [])
                out.append(data)
            return out

    def recoverable_items(self, mailbox: str) -> list[dict[str, Any]]:
        """Deleted messages (Recoverable Items\\Deletions), oldest first."""
        return self.messages(mailbox, "recoverableitemsdeletions")

    def _folder_ref(self, mbx: _Mailbox, req: Request, required: bool = False) -> _Folder | None:
        ref = req.params.get("folder") or req.params.get("folderq")
        if ref is None:
            if required:
                raise HttpError(400, "ErrorInvalidIdMalformed", "Id is malformed.")
            return None
        found = mbx.folder(ref)
        if found is None:
            raise HttpError(404, "ErrorItemNotFound",
                            "The specified object was not found in the store.")
        return found

    def _find_msg(self, mbx: _Mailbox, req: Request) -> _Msg:
        folder = self._folder_ref(mbx, req)
        msg = mbx.ids.get(req.params["msg"])
        if msg is None or (folder is None and mbx.is_deleted(msg)) or (
                folder is not None and msg.folder_id != folder.id):
            raise HttpError(404, "ErrorItemNotFound",
                            "The specified object was not found in the store.")
        return msg

    # ---------------------------------------------------------------- users / folders

    def _h_get_user(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        data = {"businessPhones": [], "displayName": mbx.display_name, "givenName": None,
                "jobTitle": None, "mail": mbx.address, "mobilePhone": None,
                "officeLocation": None, "preferredLanguage": None, "surname": None,
                "userPrincipalName": mbx.address, "id": mbx.id}
        select = req.arg("$select", ignore_case=True)
        if select:
            wanted = {s.strip().lower() for s in select.split(",")}
            data = {k: v for k, v in data.items() if k.lower() in wanted or k == "id"}
        data = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
                **data}
        return self._odata(data)

    def _folder_json(self, folder: _Folder) -> dict[str, Any]:
        return {"id": folder.id, "displayName": folder.display_name,
                "parentFolderId": folder.parent_id, "childFolderCount": len(folder.children),
                "unreadItemCount": folder.unread, "totalItemCount": len(folder.messages),
                "sizeInBytes": 0, "isHidden": folder.hidden}

    def _h_list_folders(self, req: Request, ctx: _Ctx) -> Response:
        mbx = ctx.mbx
        assert mbx is not None
        include_hidden = (req.arg("includeHiddenFolders", "", ignore_case=True) or "").lower() \
            == "true"
        flt = req.arg("$filter", ignore_case=True)
        name_eq = None
        if flt:
            m = re.fullmatch(r"\s*displayName\s+eq\s+'((?:[^']|'')*)'\s*", flt, re.I)
            if not m:
                raise HttpError(400, "ErrorInvalidUrlQueryFilter",
                                "The query filter contains one or more invalid nodes.")
            name_eq = m.group(1).replace("''", "'")
        with self._lock:
            parent = self._folder_ref(mbx, req) or mbx.folders[mbx.well_known["msgfolderroot"]]
            folders = [mbx.folders[f] for f in parent.children]
            folders = [f for f in folders if include_hidden or not f.hidden]
            if name_eq is not None:
                folders = [f for f in folders if f.display_name.lower() == name_eq.lower()]
            items = [self._folder_json(f) for f in folders]
        top = _int_arg(req, "$top", 10, 1, 1000)
        skip = _int_arg(req, "$skip", 0, 0, 10 ** 9)
        page = items[skip:skip + top]
        data: dict[str, Any] = {"value": page}
        if skip + top < len(items):
            data["@odata.nextLink"] = _next_link(req, {"$skip": str(skip + top)})
        return self._odata(data)

    def _h_get_folder(self, req: Request, ctx: _Ctx) -> Response:
        with self._lock:
            folder = self._folder_ref(ctx.mbx, req, required=True)  # type: ignore[arg-type]
            data = self._folder_json(folder)  # type: ignore[arg-type]
        return self._odata(data)

    def _create_folder(self, mbx: _Mailbox, parent: _Folder, name: str) -> _Folder:
        for child in parent.children:
            if mbx.folders[child].display_name.lower() == name.lower():
                raise HttpError(409, "ErrorFolderExists",
                                "A folder with the specified name already exists.")
        folder = _Folder(_new_id("AAMkAGFo", 30), name, parent.id, None, False)
        mbx.folders[folder.id] = folder
        parent.children.append(folder.id)
        return folder

    def _h_create_folder(self, req: Request, ctx: _Ctx) -> Response:
        body = req.json()
        name = _ci_get(body, "displayName") if isinstance(body, dict) else None
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "ErrorInvalidParameter", "The value of the parameter "
                            "'DisplayName' is empty.")
        mbx = ctx.mbx
        assert mbx is not None
        with self._lock:
            parent = self._folder_ref(mbx, req) or mbx.folders[mbx.well_known["msgfolderroot"]]
            folder = self._create_folder(mbx, parent, name)
            if _ci_get(body, "isHidden"):
                folder.hidden = True
            data = self._folder_json(folder)
        return self._odata(data, 201)
