"""The Graph simulator's state and constants: demo identities, Graph's ids and limits, the
permission sets, well-known folders, the message and attachment properties Graph serves, and the
in-memory model (apps and tokens, mailboxes with folders and messages, attachments, subscriptions)
plus `_Ctx`, what a Graph handler knows about its caller.
"""

from __future__ import annotations

import base64
import bisect
import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from .helpers import _iso7, _new_id

DEMO_TENANT = "00000000-0000-0000-0000-0000000000aa"


DEMO_CLIENT_ID = "00000000-0000-0000-0000-0000000000bb"


DEMO_SECRET = "sim-secret"


DEMO_MAILBOX = "support@contoso.example"


GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"


JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


FEDERATED_AUDIENCE = "api://AzureADTokenExchange"


GRAPH_RESOURCES = {"https://graph.microsoft.com", "https://graph.microsoft.us",
                   "https://dod-graph.microsoft.us", "https://microsoftgraph.chinacloudapi.cn",
                   GRAPH_APP_ID}


ODATA_JSON = ("application/json;odata.metadata=minimal;odata.streaming=true;"
              "IEEE754Compatible=false;charset=utf-8")


MAX_SUB_MINUTES = 10080


MIN_SUB_MINUTES = 45


READ_PERMS = {"Mail.Read", "Mail.ReadWrite"}


BASIC_PERMS = READ_PERMS | {"Mail.ReadBasic", "Mail.ReadBasic.All"}


WRITE_PERMS = {"Mail.ReadWrite"}


USER_PERMS = {"User.Read.All", "User.ReadBasic.All", "Directory.Read.All",
              "Directory.ReadWrite.All", "User.ReadWrite.All"}


_DEFAULT = object()


WELL_KNOWN = {  # name -> (display name, parent well-known name, hidden)
    "msgfolderroot": ("Top of Information Store", None, False),
    "inbox": ("Inbox", "msgfolderroot", False),
    "drafts": ("Drafts", "msgfolderroot", False),
    "sentitems": ("Sent Items", "msgfolderroot", False),
    "deleteditems": ("Deleted Items", "msgfolderroot", False),
    "junkemail": ("Junk Email", "msgfolderroot", False),
    "archive": ("Archive", "msgfolderroot", False),
    "outbox": ("Outbox", "msgfolderroot", False),
    "conversationhistory": ("Conversation History", "msgfolderroot", False),
    "recoverableitemsroot": ("Recoverable Items", None, True),
    "recoverableitemsdeletions": ("Deletions", "recoverableitemsroot", True),
}


MESSAGE_PROPS = [
    "createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "receivedDateTime",
    "sentDateTime", "hasAttachments", "internetMessageId", "subject", "bodyPreview",
    "importance", "parentFolderId", "conversationId", "conversationIndex",
    "isDeliveryReceiptRequested", "isReadReceiptRequested", "isRead", "isDraft", "webLink",
    "inferenceClassification", "body", "sender", "from", "toRecipients", "ccRecipients",
    "bccRecipients", "replyTo", "flag",
]


SELECT_ONLY_PROPS = ["internetMessageHeaders", "uniqueBody", "meetingMessageType"]


MESSAGE_SELECT = {p.lower(): p for p in ["id"] + MESSAGE_PROPS + SELECT_ONLY_PROPS}


ATTACHMENT_PROPS = ["id", "lastModifiedDateTime", "name", "contentType", "size", "isInline",
                    "contentId", "contentLocation", "contentBytes"]


ATTACHMENT_SELECT = {p.lower(): p for p in ATTACHMENT_PROPS}


PATCHABLE = {"categories", "isRead", "flag", "importance", "inferenceClassification"}


DRAFT_ONLY = {"subject", "body", "toRecipients", "ccRecipients", "bccRecipients", "replyTo",
              "from", "sender", "internetMessageId", "isDeliveryReceiptRequested",
              "isReadReceiptRequested"}


# --------------------------------------------------------------------------------------------
# state


@dataclass
class _App:
    tenant_id: str
    client_id: str
    secrets: list[tuple[str, dt.datetime | None]]
    certificates: list[x509.Certificate]
    federated: list[dict[str, Any]]
    permissions: set[str]
    allowed_mailboxes: set[str] | None  # lower-cased ids/addresses; None = no policy
    sp_id: str
    display_name: str


@dataclass
class _Token:
    value: str
    app: _App
    expires_at: float  # real time
    revoked: bool = False


@dataclass
class _Att:
    id: str
    odata_type: str
    name: str
    content_type: str
    data: bytes
    is_inline: bool
    content_id: str | None
    content_location: str | None
    last_modified: str
    _b64: str | None = None

    def size_hint(self) -> int:
        return len(self.data)

    @property
    def b64(self) -> str:
        if self._b64 is None:
            self._b64 = base64.b64encode(self.data).decode("ascii")
        return self._b64


class _Msg:
    __slots__ = ("imm_id", "rest_id", "folder_id", "props", "attachments", "ts", "seq", "raw",
                 "odata_type")

    def __init__(self, imm_id: str, rest_id: str, folder_id: str, props: dict[str, Any],
                 attachments: list[_Att], ts: float, seq: int, raw: bytes | None,
                 odata_type: str) -> None:
        self.imm_id = imm_id
        self.rest_id = rest_id
        self.folder_id = folder_id
        self.props = props
        self.attachments = attachments
        self.ts = ts
        self.seq = seq
        self.raw = raw
        self.odata_type = odata_type

    @property
    def key(self) -> tuple[float, int, str]:
        return (self.ts, self.seq, self.imm_id)


class _Folder:
    def __init__(self, folder_id: str, display_name: str, parent_id: str | None,
                 well_known: str | None, hidden: bool) -> None:
        self.id = folder_id
        self.display_name = display_name
        self.parent_id = parent_id
        self.well_known = well_known
        self.hidden = hidden
        self.messages: dict[str, _Msg] = {}
        self.index: list[tuple[float, int, str]] = []  # sorted by receivedDateTime, seq
        self.unread = 0
        self.children: list[str] = []

    def add(self, msg: _Msg) -> None:
        self.messages[msg.imm_id] = msg
        key = msg.key
        if not self.index or self.index[-1] <= key:
            self.index.append(key)
        else:
            bisect.insort(self.index, key)
        if not msg.props.get("isRead"):
            self.unread += 1

    def remove(self, msg: _Msg) -> None:
        if self.messages.pop(msg.imm_id, None) is None:
            return
        key = msg.key
        pos = bisect.bisect_left(self.index, key)
        if pos < len(self.index) and self.index[pos] == key:
            del self.index[pos]
        if not msg.props.get("isRead"):
            self.unread -= 1


class _Mailbox:
    def __init__(self, user_id: str, tenant_id: str, address: str, display_name: str) -> None:
        self.id = user_id
        self.tenant_id = tenant_id
        self.address = address
        self.display_name = display_name
        self.aliases: set[str] = {address.lower()}
        self.folders: dict[str, _Folder] = {}
        self.well_known: dict[str, str] = {}
        self.ids: dict[str, _Msg] = {}  # immutable id and current REST id -> message
        for name, (display, parent, hidden) in WELL_KNOWN.items():
            folder_id = _new_id("AAMkAGFo", 30)
            parent_id = self.well_known.get(parent) if parent else None
            folder = _Folder(folder_id, display, parent_id, name, hidden)
            self.folders[folder_id] = folder
            self.well_known[name] = folder_id
            if parent_id:
                self.folders[parent_id].children.append(folder_id)

    def folder(self, ref: str) -> _Folder | None:
        folder_id = self.well_known.get(ref.lower(), ref)
        return self.folders.get(folder_id)

    def is_deleted(self, msg: _Msg) -> bool:
        return msg.folder_id == self.well_known["recoverableitemsdeletions"]


@dataclass
class _Sub:
    id: str
    app: _App
    resource: str
    user_id: str
    folder_id: str | None
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    expiration: dt.datetime
    client_state: str | None
    tls: str
    immutable: bool
    include_resource_data: bool = False

    def json(self) -> dict[str, Any]:
        return {
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "applicationId": self.app.client_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state,
            "notificationUrl": self.notification_url,
            "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": _iso7(self.expiration),
            "creatorId": self.app.sp_id,
            "includeResourceData": self.include_resource_data,
            "latestSupportedTlsVersion": self.tls,
            "encryptionCertificate": None,
            "encryptionCertificateId": None,
            "notificationUrlAppId": None,
        }


# --------------------------------------------------------------------------------------------
# the request context of a Graph handler


class _Ctx:
    """What a Graph mailbox handler knows: the caller's app and the target mailbox."""

    __slots__ = ("app", "mbx", "immutable", "prefs")

    def __init__(self, app: _App, mbx: _Mailbox | None, immutable: bool,
                 prefs: dict[str, str]) -> None:
        self.app = app
        self.mbx = mbx
        self.immutable = immutable
        self.prefs = prefs
