"""Every app setting in one place.

`SETTINGS` is the registry: name, default, whether it is a secret, and where it must be declared
(local.settings.example.json, Bicep).  `Settings.from_env()` reads them once, validates them and
fails fast with one message naming everything that is missing or malformed.  The parity test
(tests/infra/test_settings_parity.py) diffs this registry against local.settings.example.json and
infra/.  Performs no I/O beyond reading the environment (and, for CA bundles, checking the file).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Mapping

# Public queue and table names (design.md "Public contracts"); not settings on purpose.
QUEUE_MESSAGES = "inbox-messages"
QUEUE_AUTOREPLIES = "inbox-autoreplies"
QUEUE_LIFECYCLE = "inbox-lifecycle"

MICROSOFT_AUTHORITY_HOSTS = (
    "login.microsoftonline.com",
    "login.microsoftonline.us",
    "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
)


class ConfigError(ValueError):
    """Raised when settings are missing or malformed; the message names every problem."""


NOTE_FORMATS = ("html", "text")
INLINE_MODES = ("referenced", "all", "none")


@dataclass(frozen=True)
class MailRules:
    """How a mail becomes CRM objects (NOTE_*, TITLE_MAX_CHARS, ATTACHMENT*, FREE_MAIL_DOMAINS)."""
    note_format: str = "html"
    note_max_chars: int = 4000
    title_max_chars: int = 128
    attachment_max_bytes: int = 50 * 1024 * 1024
    attachments_inline: str = "referenced"
    free_mail_domains: tuple[str, ...] = ()
    # Hosts only our own sending systems put in Message-IDs (OWN_MESSAGE_ID_HOSTS): such mail is ours.
    own_message_id_hosts: tuple[str, ...] = ()


def _mail_rules(env: Mapping[str, str], problems: list[str]) -> MailRules:
    note_format = (env.get("NOTE_FORMAT") or "html").strip().lower()
    if note_format not in NOTE_FORMATS:
        problems.append(f"NOTE_FORMAT must be one of {', '.join(NOTE_FORMATS)}, got {note_format!r}")
        note_format = "html"
    inline = (env.get("ATTACHMENTS_INLINE") or "referenced").strip().lower()
    if inline not in INLINE_MODES:
        problems.append(f"ATTACHMENTS_INLINE must be one of {', '.join(INLINE_MODES)}, got {inline!r}")
        inline = "referenced"
    domains = tuple(d.strip().lower().lstrip("@") for d in (env.get("FREE_MAIL_DOMAINS") or "").split(",")
                    if d.strip())
    bad = [d for d in domains if "." not in d or " " in d]
    if bad:
        problems.append(f"FREE_MAIL_DOMAINS holds something that is not a domain: {', '.join(bad)}")
    hosts = tuple(h.strip().lower().lstrip("@").rstrip(".")
                  for h in (env.get("OWN_MESSAGE_ID_HOSTS") or "").split(",") if h.strip())
    bad = [h for h in hosts if "." not in h or not re.fullmatch(r"[a-z0-9.-]+", h)]
    if bad:
        problems.append(f"OWN_MESSAGE_ID_HOSTS holds something that is not a host name: {', '.join(bad)}")
    shared = [h for h in hosts if h not in bad and _shared_message_id_host(h)]
    if shared:
        problems.append(f"OWN_MESSAGE_ID_HOSTS names {', '.join(shared)}: Exchange Online, Gmail and the like put "
                        "such hosts in every customer's Message-IDs, so every mail would count as ours; name only "
                        "hosts our own sending systems use")
    return MailRules(
        note_format=note_format,
        note_max_chars=_int(env, "NOTE_MAX_CHARS", problems, minimum=500),
        title_max_chars=_int(env, "TITLE_MAX_CHARS", problems, minimum=20),
        attachment_max_bytes=_int(env, "ATTACHMENT_MAX_BYTES", problems, minimum=1),
        attachments_inline=inline,
        free_mail_domains=domains,
        own_message_id_hosts=hosts,
    )


# Hosts in the Message-IDs of mail that every tenant or user of a big provider sends (Exchange Online
# writes <...@XXXPR01MB1234.eurprd01.prod.outlook.com>, Gmail <...@mail.gmail.com>): never "ours".
SHARED_MESSAGE_ID_HOSTS = ("outlook.com", "office365.com", "microsoft.com", "exchangelabs.com", "gmail.com",
                           "google.com", "googlemail.com", "hotmail.com", "yahoo.com", "icloud.com", "me.com")


def _shared_message_id_host(host: str) -> bool:
    return any(host == h or host.endswith("." + h) for h in SHARED_MESSAGE_ID_HOSTS)


@dataclass(frozen=True)
class SettingSpec:
    name: str
    default: str | None = None
    secret: bool = False
    # "app": read by the code and declared in Bicep and local.settings.example.json;
    # "local": local development only (not in Bicep); "host": read by the Functions host
    # through a %NAME% binding expression.
    scope: str = "app"
    description: str = ""


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("AzureWebJobsStorage", None, True, "app",
                "Storage connection: Azurite locally, identity-based (AzureWebJobsStorage__*) in Azure."),
    SettingSpec("GRAPH_CLIENTS", "{}", False, "app",
                'JSON {name: {tenant_id, client_id, credential: secret|certificate|managed_identity|'
                'federated_file, secret_expires?}}.'),
    SettingSpec("GRAPH_BASE_URL", "https://graph.microsoft.com/v1.0", False, "app",
                "Graph endpoint (national clouds, simulator)."),
    SettingSpec("GRAPH_AUTHORITY_HOST", "https://login.microsoftonline.com", False, "app",
                "Entra authority host (national clouds, simulator)."),
    SettingSpec("OUTBOUND_CA_BUNDLE", "", False, "app",
                "PEM file of extra CA certificates trusted for outbound HTTPS (on-premise CRM, simulator)."),
    SettingSpec("PUBLIC_BASE_URL", None, False, "app",
                "HTTPS base URL Graph calls back on, e.g. https://<app>.azurewebsites.net."),
    SettingSpec("WEBHOOK_KEY", "", True, "app",
                "Function key appended as ?code= to the notification and lifecycle URLs."),
    SettingSpec("CLIENT_STATE_KEYS", None, True, "app",
                "Versioned HMAC keys 'n:secret[,n:secret]'; the highest version signs."),
    SettingSpec("CRM_BACKEND", "table", False, "app", "'table' (embedded CRM) or 'lime'."),
    SettingSpec("LIME_CRM_URL", "", False, "app", "Lime CRM base URL, https://<host>/<database>."),
    SettingSpec("LIME_CRM_API_KEY", "", True, "app", "Lime CRM API key (x-api-key)."),
    SettingSpec("TRAML_BASE_URL", "", False, "app",
                "https://app.bwz.se/bedrock/<account>/api; required when a mailbox has autoreplies."),
    SettingSpec("TRAML_API_KEY", "", True, "app", "Lime Marketing (TRAML) API key."),
    SettingSpec("SWEEP_GRACE_SECONDS", "300", False, "app",
                "Mail younger than this is left to its notification (Graph latency reaches 3 minutes)."),
    SettingSpec("FAILED_RETRY_MAX_AGE_HOURS", "24", False, "app",
                "The sweep retries Failed mail younger than this."),
    SettingSpec("SYNC_HISTORY_LENGTH", "50", False, "app", "Sync log entries kept per Graph client."),
    SettingSpec("CUSTOM_SELECT", "", False, "app",
                "Extra Graph message properties to fetch, comma-separated; passed to the mail model."),
    SettingSpec("LEDGER_RETENTION_DAYS", "90", False, "app", "Ledger rows, tasks and logs older than this are purged."),
    SettingSpec("GRAPH_MAILBOX_CONCURRENCY", "4", False, "app",
                "Concurrent Graph requests per mailbox in one worker (Graph allows 4 per app and mailbox)."),
    SettingSpec("RENEW_SCHEDULE", "0 */30 * * * *", False, "host", "NCRONTAB of renew_subscriptions."),
    SettingSpec("SWEEP_SCHEDULE", "0 */10 * * * *", False, "host", "NCRONTAB of sweep_inbox."),
    SettingSpec("NOTE_FORMAT", "html", False, "app",
                "History note of a mail: 'html' (sanitised) or 'text' (better for Lime's desktop client)."),
    SettingSpec("NOTE_MAX_CHARS", "4000", False, "app",
                "Longest history note (Lime: 4,000); a longer mail is cut and kept whole as a document."),
    SettingSpec("TITLE_MAX_CHARS", "128", False, "app",
                "Longest ticket title (Lime: 128); a longer subject is cut and kept whole as a document."),
    SettingSpec("ATTACHMENT_MAX_BYTES", "52428800", False, "app",
                "Per-file limit: larger attachments are skipped by their metadata, never downloaded."),
    SettingSpec("ATTACHMENTS_INLINE", "referenced", False, "app",
                "Inline parts stored as documents: 'referenced' (shown in the body), 'all' or 'none'."),
    SettingSpec("FREE_MAIL_DOMAINS", "", False, "app",
                "Extra free-mail domains (comma-separated) that never match a company by domain."),
    SettingSpec("OWN_MESSAGE_ID_HOSTS", "", False, "app",
                "Hosts (comma-separated) only our own sending systems put in Message-IDs (e.g. the transactional "
                "mail service's): mail with such a Message-ID is ours and never opens a ticket."),
    SettingSpec("SWEEP_MAX_PER_RUN", "500", False, "app",
                "Jobs one sweep run enqueues per mailbox at most (~5 Graph requests each, of Graph's "
                "10,000 per 10 minutes per mailbox)."),
    SettingSpec("PURGE_SCHEDULE", "0 30 3 * * *", False, "host",
                "NCRONTAB of purge_retention (LEDGER_RETENTION_DAYS)."),
    SettingSpec("AUTOREPLY_LIMIT_COUNT", "10", False, "app",
                "At most this many autoreplies to one recipient per window (loop and abuse guard; 1-500)."),
    SettingSpec("AUTOREPLY_LIMIT_WINDOW_MINUTES", "180", False, "app",
                "The sliding window of AUTOREPLY_LIMIT_COUNT, in minutes."),
    # Lime CRM (CRM_BACKEND=lime): names in the customer's helpdesk model, the seed's by default (docs/lime.md).
    SettingSpec("LIME_PROP_HELPDESK_NUMBER", "helpdesknumber", False, "app",
                "Lime helpdesk property holding the ticket number (set by the solution on save)."),
    SettingSpec("LIME_PROP_HELPDESK_STATUS", "helpdeskstatus", False, "app", "Lime helpdesk status option property."),
    SettingSpec("LIME_STATUS_STARTED", "started", False, "app", "Option key of an open (new or reopened) ticket."),
    SettingSpec("LIME_STATUS_DONE", "done", False, "app", "Option key of a closed ticket."),
    SettingSpec("LIME_STATUS_PARKED", "parked", False, "app", "Option key of a parked ticket."),
    SettingSpec("LIME_HISTORY_TYPE_RECEIVED", "receivedemail", False, "app",
                "history.type option key of a received mail."),
    SettingSpec("LIME_HISTORY_TYPE_SENT", "sentemail", False, "app", "history.type option key of a sent autoreply."),
    SettingSpec("LIME_HISTORY_TYPE_COMMENT", "comment", False, "app", "history.type option key of a comment."),
    SettingSpec("LIME_KEY_PROPERTY", "inboxkey", False, "app",
                "Text property (40+ characters) on helpdesk, history, document and company holding the "
                "idempotency key; empty or missing: creates are not idempotent (docs/lime.md)."),
    SettingSpec("LIME_PROP_MESSAGE_IDS", "inboxmessageids", False, "app",
                "Text property on helpdesk holding the tickets' Message-IDs for threading; empty: subject tag only."),
    SettingSpec("LIME_PROP_COMPANY_WEBSITE", "www", False, "app",
                "Company property with the web site, matched against sender domains; empty: not used."),
    SettingSpec("LIME_PROP_COMPANY_EMAIL", "email", False, "app",
                "Company property with an e-mail address, matched against sender domains; empty: not used."),
    SettingSpec("LIME_RATE_LIMIT_REQUESTS", "3000", False, "app",
                "Lime requests per window and worker (Lime Cloud allows 3000 per 5 minutes per IP); 0: no limit."),
    SettingSpec("LIME_RATE_LIMIT_WINDOW_SECONDS", "300", False, "app", "The window of LIME_RATE_LIMIT_REQUESTS."),
    # Customisation and observability (docs/extensions.md; README "One trace per mail").
    SettingSpec("PROCESSING_EXTENSION", "", False, "app",
                "'package.module:function' shipped with the app, called with (mail, decision, change) before the "
                "CRM writes; empty: the default policy only."),
    SettingSpec("APPLICATIONINSIGHTS_CONNECTION_STRING", "", False, "app",
                "Application Insights connection string; set: traces, logs and metrics are exported through the "
                "Azure Monitor OpenTelemetry distribution."),
    SettingSpec("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "", False, "app",
                "'Authorization=AAD;ClientId=<managed identity client id>': export with an Entra token."),
)

_SPEC = {s.name: s for s in SETTINGS}
# Settings whose name carries a part chosen by the operator.
SETTING_PATTERNS = (re.compile(r"^GRAPH_CLIENT_SECRET_[A-Z0-9_]+$"), re.compile(r"^GRAPH_CLIENT_CERT_[A-Z0-9_]+$"))


@dataclass(frozen=True)
class GraphClientConfig:
    name: str
    tenant_id: str
    client_id: str
    credential: str  # secret | certificate | managed_identity | federated_file
    secret_setting: str = ""
    certificate_setting: str = ""
    secret_expires: str = ""  # ISO date, optional: status warns 30 days ahead
    managed_identity_client_id: str = ""
    federated_token_file: str = ""

    @staticmethod
    def env_suffix(name: str) -> str:
        return re.sub(r"[^A-Z0-9]", "_", name.upper())


CREDENTIAL_KINDS = ("secret", "certificate", "managed_identity", "federated_file")


def _parse_clients(raw: str, problems: list[str]) -> dict[str, GraphClientConfig]:
    try:
        data = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        problems.append(f"GRAPH_CLIENTS is not valid JSON ({exc.msg} at position {exc.pos})")
        return {}
    if not isinstance(data, dict):
        problems.append("GRAPH_CLIENTS must be a JSON object {name: {tenant_id, client_id, credential}}")
        return {}
    clients: dict[str, GraphClientConfig] = {}
    for name, spec in data.items():
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", name) or not isinstance(spec, dict):
            problems.append(f"GRAPH_CLIENTS[{name!r}]: name must be 1-63 letters, digits, '-' or '_' "
                            "and its value an object")
            continue
        missing = [k for k in ("tenant_id", "client_id") if not spec.get(k)]
        if missing:
            problems.append(f"GRAPH_CLIENTS[{name!r}] is missing {', '.join(missing)}")
            continue
        kind = spec.get("credential", "secret")
        if kind not in CREDENTIAL_KINDS:
            problems.append(f"GRAPH_CLIENTS[{name!r}].credential must be one of {', '.join(CREDENTIAL_KINDS)}")
            continue
        suffix = GraphClientConfig.env_suffix(name)
        clients[name] = GraphClientConfig(
            name=name,
            tenant_id=str(spec["tenant_id"]),
            client_id=str(spec["client_id"]),
            credential=kind,
            secret_setting=f"GRAPH_CLIENT_SECRET_{suffix}",
            certificate_setting=f"GRAPH_CLIENT_CERT_{suffix}",
            secret_expires=str(spec.get("secret_expires", "")),
            managed_identity_client_id=str(spec.get("managed_identity_client_id", "")),
            federated_token_file=str(spec.get("federated_token_file", "")),
        )
    return clients


def parse_client_state_keys(raw: str) -> dict[int, bytes]:
    """'1:secret,2:secret' -> {1: b'secret', 2: b'secret'}. Raises ConfigError without echoing secrets."""
    keys: dict[int, bytes] = {}
    for i, part in enumerate(p.strip() for p in (raw or "").split(",")):
        if not part:
            continue
        version, sep, secret = part.partition(":")
        if not sep or not version.strip().isdigit() or len(secret.strip()) < 16:
            raise ConfigError(
                f"CLIENT_STATE_KEYS entry {i + 1} must look like '<version>:<secret of 16+ characters>'")
        keys[int(version)] = secret.strip().encode()
    if not keys:
        raise ConfigError("CLIENT_STATE_KEYS must hold at least one '<version>:<secret>' key")
    return keys


EXTENSION_SPEC = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def ca_bundle_problem(path: str) -> str:
    """Why the CA bundle at `path` cannot be used ('' when it can): missing, unreadable, or no PEM
    certificate in it. Reads the file; names the path, never its content."""
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        return f"OUTBOUND_CA_BUNDLE names {path!r}, which does not exist or is not readable"
    import ssl
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError, OSError) as exc:
        return f"OUTBOUND_CA_BUNDLE {path!r} is not a PEM bundle of CA certificates ({type(exc).__name__})"
    return ""


def _int(env: Mapping[str, str], name: str, problems: list[str], minimum: int = 0) -> int:
    raw = env.get(name) or _SPEC[name].default or "0"
    try:
        value = int(raw)
    except ValueError:
        problems.append(f"{name} must be an integer, got {raw!r}")
        return int(_SPEC[name].default or 0)
    if value < minimum:
        problems.append(f"{name} must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    storage_connection: str
    graph_clients: dict[str, GraphClientConfig]
    graph_base_url: str
    graph_authority_host: str
    ca_bundle: str
    public_base_url: str
    webhook_key: str
    client_state_keys: dict[int, bytes] = field(repr=False)
    crm_backend: str
    lime_url: str
    lime_api_key: str = field(repr=False)
    traml_base_url: str
    traml_api_key: str = field(repr=False)
    sweep_grace_seconds: int
    failed_retry_max_age_hours: int
    sync_history_length: int
    custom_select: tuple[str, ...]
    ledger_retention_days: int
    graph_mailbox_concurrency: int
    mail_rules: MailRules
    env: Mapping[str, str] = field(repr=False, compare=False)
    sweep_max_per_run: int = 500
    processing_extension: str = ""
    appinsights_connection_string: str = field(default="", repr=False)
    appinsights_authentication_string: str = field(default="", repr=False)

    @property
    def authority_is_microsoft(self) -> bool:
        host = re.sub(r"^https?://", "", self.graph_authority_host).split("/")[0].lower()
        return host in MICROSOFT_AUTHORITY_HOSTS

    def secret(self, name: str) -> str:
        """A secret setting by name ('' when unset). Kept out of repr and logs."""
        return self.env.get(name, "")

    def __repr__(self) -> str:  # never print secrets, even by accident
        return f"Settings(crm_backend={self.crm_backend!r}, clients={sorted(self.graph_clients)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        problems: list[str] = []

        storage = env.get("AzureWebJobsStorage", "")
        if not storage and not any(k.startswith("AzureWebJobsStorage__") for k in env):
            problems.append("AzureWebJobsStorage is not set (a connection string, or AzureWebJobsStorage__* "
                            "identity settings)")
        try:
            keys = parse_client_state_keys(env.get("CLIENT_STATE_KEYS", ""))
        except ConfigError as exc:
            problems.append(str(exc))
            keys = {}
        clients = _parse_clients(env.get("GRAPH_CLIENTS", "{}"), problems)
        backend = env.get("CRM_BACKEND", "table") or "table"
        if backend not in ("table", "lime"):
            problems.append(f"CRM_BACKEND must be 'table' or 'lime', got {backend!r}")
        if backend == "lime":
            for name in ("LIME_CRM_URL", "LIME_CRM_API_KEY"):
                if not env.get(name):
                    problems.append(f"{name} is required when CRM_BACKEND=lime")
        ca_bundle = env.get("OUTBOUND_CA_BUNDLE", "")
        if ca_bundle and ca_bundle_problem(ca_bundle):
            problems.append(ca_bundle_problem(ca_bundle))
        extension = (env.get("PROCESSING_EXTENSION") or "").strip()
        if extension and not EXTENSION_SPEC.match(extension):
            problems.append(f"PROCESSING_EXTENSION must look like 'package.module:function', got {extension!r}")
        settings = cls(
            storage_connection=storage,
            graph_clients=clients,
            graph_base_url=(env.get("GRAPH_BASE_URL") or _SPEC["GRAPH_BASE_URL"].default or "").rstrip("/"),
            graph_authority_host=(env.get("GRAPH_AUTHORITY_HOST")
                                  or _SPEC["GRAPH_AUTHORITY_HOST"].default or "").rstrip("/"),
            ca_bundle=ca_bundle,
            public_base_url=(env.get("PUBLIC_BASE_URL") or "").rstrip("/"),
            webhook_key=env.get("WEBHOOK_KEY", ""),
            client_state_keys=keys,
            crm_backend=backend,
            lime_url=(env.get("LIME_CRM_URL") or "").rstrip("/"),
            lime_api_key=env.get("LIME_CRM_API_KEY", ""),
            traml_base_url=(env.get("TRAML_BASE_URL") or "").rstrip("/"),
            traml_api_key=env.get("TRAML_API_KEY", ""),
            sweep_grace_seconds=_int(env, "SWEEP_GRACE_SECONDS", problems),
            failed_retry_max_age_hours=_int(env, "FAILED_RETRY_MAX_AGE_HOURS", problems),
            sync_history_length=_int(env, "SYNC_HISTORY_LENGTH", problems, minimum=1),
            custom_select=tuple(s.strip() for s in env.get("CUSTOM_SELECT", "").split(",") if s.strip()),
            ledger_retention_days=_int(env, "LEDGER_RETENTION_DAYS", problems, minimum=1),
            graph_mailbox_concurrency=_int(env, "GRAPH_MAILBOX_CONCURRENCY", problems, minimum=1),
            mail_rules=_mail_rules(env, problems),
            env=env,
            sweep_max_per_run=_int(env, "SWEEP_MAX_PER_RUN", problems, minimum=1),
            processing_extension=extension,
            appinsights_connection_string=(env.get("APPLICATIONINSIGHTS_CONNECTION_STRING") or "").strip(),
            appinsights_authentication_string=(env.get("APPLICATIONINSIGHTS_AUTHENTICATION_STRING") or "").strip(),
        )
        if problems:
            raise ConfigError("Invalid settings: " + "; ".join(problems))
        return settings
