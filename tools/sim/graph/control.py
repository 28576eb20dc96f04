"""The simulator's control API over HTTP (``/_sim/...``, no auth): the `_c_*` handlers, each a thin
wrapper of the in-process API (apps, mailboxes, folders, delivery, clock, lifecycle events,
notification log and chaos settings, throttling, token revocation).
"""

from __future__ import annotations

import base64
from typing import Any

from .helpers import _iso7
from .model import DEMO_TENANT
from ..httpbase import HttpError, Request, Response, empty_response, json_response


class _ControlMixin:
    """Handlers of the /_sim control endpoints."""

    # ---------------------------------------------------------------- control endpoints

    def _c_add_app(self, req: Request) -> Response:
        body = req.json()
        try:
            client_id = self.add_app(
                body["tenant_id"], body["client_id"], secret=body.get("secret"),
                secret_expires_at=body.get("secret_expires_at"),
                certificate_pem=body.get("certificate_pem"), federated=body.get("federated"),
                permissions=body.get("permissions", ("Mail.ReadWrite", "Mail.Read",
                                                     "User.Read.All")),
                allowed_mailboxes=body.get("allowed_mailboxes"))
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response({"client_id": client_id}, 201)

    def _c_add_mailbox(self, req: Request) -> Response:
        body = req.json()
        try:
            user_id = self.add_mailbox(body["address"], body.get("display_name"),
                                       body.get("user_id"), body.get("tenant_id", DEMO_TENANT),
                                       body.get("aliases", ()))
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response({"id": user_id, "address": body["address"]}, 201)

    def _c_list_mailboxes(self, req: Request) -> Response:
        with self._lock:
            values = [{"id": m.id, "address": m.address, "tenant_id": m.tenant_id,
                       "display_name": m.display_name,
                       "inbox_count": len(m.folders[m.well_known["inbox"]].messages)}
                      for m in self._mailboxes.values()]
        return json_response({"value": values})

    def _c_add_folder(self, req: Request) -> Response:
        body = req.json()
        try:
            folder_id = self.add_folder(body["mailbox"], body["display_name"],
                                        body.get("parent", "msgfolderroot"))
        except KeyError as exc:
            raise HttpError(400, "BadRequest", f"missing or unknown {exc}") from None
        return json_response({"id": folder_id}, 201)

    def _c_deliver(self, req: Request) -> Response:
        body = req.json()
        items: list[Any] = []
        for entry in body.get("messages") or [body]:
            if entry.get("mime_base64"):
                items.append(base64.b64decode(entry["mime_base64"]))
            elif entry.get("mime") is not None:
                items.append(entry["mime"].encode("utf-8"))
            elif entry.get("message") is not None:
                items.append(entry["message"])
            else:
                raise HttpError(400, "BadRequest", "give message, mime or mime_base64")
        try:
            ids = self.deliver_many(body["mailbox"], items, folder=body.get("folder", "Inbox"),
                                    notify=body.get("notify", True),
                                    duplicate=int(body.get("duplicate", 0)),
                                    delay_ms=float(body.get("delay_ms", 0)),
                                    received_at=body.get("received_at"))
        except KeyError as exc:
            raise HttpError(400, "BadRequest", f"missing or unknown {exc}") from None
        return json_response({"ids": ids, "id": ids[0] if ids else None}, 201)

    def _c_messages(self, req: Request) -> Response:
        try:
            values = self.messages(req.arg("mailbox") or "", req.arg("folder", "Inbox") or "Inbox")
        except KeyError as exc:
            raise HttpError(404, "NotFound", str(exc)) from None
        return json_response({"value": values})

    def _c_recoverable(self, req: Request) -> Response:
        try:
            values = self.recoverable_items(req.arg("mailbox") or "")
        except KeyError as exc:
            raise HttpError(404, "NotFound", str(exc)) from None
        return json_response({"value": values})

    def _c_clock(self, req: Request) -> Response:
        body = req.json()
        now = self.advance_clock(float(body.get("advance_seconds", 0)))
        return json_response({"now": _iso7(now), "offset_seconds": self._clock_offset})

    def _c_lifecycle(self, req: Request) -> Response:
        body = req.json()
        try:
            record = self.fire_lifecycle(body["subscription_id"], body["event"])
        except (KeyError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from None
        return json_response(record.to_dict(), 202)

    def _c_notifications(self, req: Request) -> Response:
        values = [r.to_dict() for r in self.notification_log(req.arg("kind"))]
        return json_response({"value": values, "pending": self.pending_notifications()})

    def _c_clear_notifications(self, req: Request) -> Response:
        self.clear_notifications()
        return empty_response()

    def _c_notification_settings(self, req: Request) -> Response:
        body = req.json()
        if "drop" in body:
            self.drop_notifications = body["drop"]
        if "duplicate" in body:
            self.duplicate_notifications = float(body["duplicate"])
        if "delay_ms" in body:
            self.notification_delay_ms = float(body["delay_ms"])
        if "jitter_ms" in body:
            self.notification_jitter_ms = float(body["jitter_ms"])
        if "retry_delays" in body:
            self.notification_retry_delays = [float(x) for x in body["retry_delays"]]
        if "batch_size" in body:
            self.notification_batch_size = int(body["batch_size"])
        if "seed" in body:
            self._rng.seed(body["seed"])
        return json_response({"drop": self.drop_notifications,
                              "duplicate": self.duplicate_notifications,
                              "delay_ms": self.notification_delay_ms,
                              "jitter_ms": self.notification_jitter_ms,
                              "retry_delays": self.notification_retry_delays,
                              "batch_size": self.notification_batch_size})

    def _c_post_notification(self, req: Request) -> Response:
        body = req.json()
        status, text = self.post_notification(body["url"], body.get("body", {}),
                                               body.get("headers"))
        return json_response({"status": status, "body": text})

    def _c_throttle(self, req: Request) -> Response:
        body = req.json()
        if body is None or body.get("off"):
            self.throttle(None)
        else:
            self.throttle(body.get("concurrency", 4), body.get("rate_per_s", 10000 / 600),
                          body.get("burst"), int(body.get("retry_after", 1)))
        return json_response({"enabled": self._throttle is not None})

    def _c_revoke(self, req: Request) -> Response:
        body = req.json() if req.body else {}
        return json_response({"revoked": self.revoke_tokens(body.get("client_id"))})
