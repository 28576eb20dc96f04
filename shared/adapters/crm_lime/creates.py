"""Creating a Lime object exactly once (a LimeCrm mixin), proven by our own create records
(records.py) instead of a query to Lime before every create.

`_create_once(limetype, body, key, find)`: the object for `key`, created when no attempt ever made
it. Lime is asked (`find`, the key query) only when an earlier attempt's outcome is unknown: it
died or lost Lime's answer between the POST and the record. An answer lost during this attempt is
resolved the same way, by asking Lime, never by POSTing blindly.

A write scope (`mail_writes(key)`, opened by the processor around one mail's CRM writes and by the
autoreply sender around its note) makes that cheaper still:

* one record for the mail (`key`) covers every object whose key derives from it (`key`,
  `key|...`, `key#...`: the note, the attachments' documents, the long texts): one claim for all
  of them, which also keeps the same mail in two mailboxes from writing twice;
* objects keyed otherwise (the ticket by its thread key, the sender's person) have records of
  their own, claimed in the same transaction as the mail's when they come first;
* what was created is recorded when the scope ends, in one transaction with the ticket index rows
  (tickets.py); an error records what is known (so the retry asks Lime about nothing it knows),
  a crash records nothing (the retry asks Lime about the objects of that mail);
* `sole=True` (the autoreply's first send, under its own claim row): the caller guarantees that
  nobody else writes under `key` and no earlier attempt did, so no record is needed at all.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Mapping

from .records import DONE, NEW, UNKNOWN, Claim, CreateRecords, RecordConflict, new_owner
from .transport import AmbiguousWrite
from ...domain.errors import TransientError

log = logging.getLogger("inbox.crm.lime")

# A person's record is trusted this long after it was written; later the person is looked up again
# (it may have been merged or deleted in Lime since).
PERSON_RECORD_TRUSTED = timedelta(minutes=5)

Find = Callable[[], Awaitable[dict[str, Any] | None]]


def derives_from(key: str, scope_key: str) -> bool:
    return key == scope_key or key.startswith(scope_key + "|") or key.startswith(scope_key + "#")


@dataclass
class WriteScope:
    key: str
    owner: str
    sole: bool = False
    claim: Claim | None = None  # the mail's record, once claimed
    known: dict[str, str] = field(default_factory=dict)  # "limetype|key" -> Lime id: created under `key`
    trusted: bool = True  # `known` lists everything created under `key` (no answer was lost)
    created: list[tuple[Claim, str, dict[str, Any]]] = field(default_factory=list)  # other records, created
    held: dict[str, Claim] = field(default_factory=dict)  # other records claimed, not yet created
    ambiguous: set[str] = field(default_factory=set)  # record names whose POST may have been committed
    rows: list[tuple[Any, ...]] = field(default_factory=list)  # index ops to write at the end
    tickets: dict[str, dict[str, Any]] = field(default_factory=dict)  # ticket id -> its index row, as read

    def covers(self, key: str) -> bool:
        return derives_from(key, self.key)


class _KeyedCreates:
    """Create-once on Lime, over `self._records` (CreateRecords)."""

    _records: CreateRecords
    _scope_var: contextvars.ContextVar[WriteScope | None]

    def _scope(self) -> WriteScope | None:
        return self._scope_var.get()

    @contextlib.asynccontextmanager
    async def mail_writes(self, key: str, owner: str = "", sole: bool = False) -> AsyncIterator[None]:
        """A write scope for one mail (see the module docstring). `owner` names the writer in the
        records (the mail copy: mailbox and message). A record it left behind in an invocation
        that died is taken over when its lease runs out, like anyone's: the ledger's lease ending
        does not prove that invocation is gone (a slow one, a moved clock), and two writers of one
        mail's objects would make them twice."""
        scope = WriteScope(key=key, owner=owner or new_owner(), sole=sole)
        token = self._scope_var.set(scope)
        try:
            yield
        except Exception:
            try:
                await self._settle(scope, failed=True)
            except Exception as exc:  # noqa: BLE001 - the leases end anyway; never mask the real error
                log.warning("lime.records-unsettled error=%s", type(exc).__name__)
            raise
        else:
            await self._settle(scope, failed=False)
        finally:
            self._scope_var.reset(token)

    async def flush_writes(self) -> None:
        """Record the scope's finished creates now (before a long upload), so that other mails
        waiting for those records need not wait for this one to end."""
        scope = self._scope()
        if scope is not None and (scope.created or scope.rows):
            ops = [self._records.created_row(c, oid, extra) for c, oid, extra in scope.created] + scope.rows
            scope.created, scope.rows = [], []
            await self._records.write(ops)

    async def _settle(self, scope: WriteScope, failed: bool) -> None:
        r = self._records
        ops: list[tuple[Any, ...]] = []
        if scope.claim is not None and scope.claim.held:
            state = {"objects": scope.known, "trusted": scope.trusted}
            ops.append(r.released_row(scope.claim, state) if failed else r.created_row(scope.claim, "", state))
        ops += [r.created_row(c, oid, extra) for c, oid, extra in scope.created]
        for name, claim in scope.held.items():
            ops.append(r.released_row(claim, {} if name in scope.ambiguous else None))
        ops += scope.rows
        if ops:
            await r.write(ops)

    # claims ---------------------------------------------------------------------------------------
    async def _claim(self, name: str, scope: WriteScope | None) -> Claim:
        """A record of its own for `name`; in a scope, claimed with the mail's record when that is
        not claimed yet (one transaction)."""
        owner = scope.owner if scope else new_owner()
        if scope is not None and scope.claim is None and not scope.sole:
            mine, theirs = await self._records.claim([f"mail|{scope.key}", name], owner)
            self._take_scope_claim(scope, mine)
            return theirs
        (claim,) = await self._records.claim([name], owner)
        return claim

    async def _scope_claim(self, scope: WriteScope) -> Claim:
        if scope.claim is None:
            (claim,) = await self._records.claim([f"mail|{scope.key}"], scope.owner)
            self._take_scope_claim(scope, claim)
        assert scope.claim is not None
        return scope.claim

    @staticmethod
    def _take_scope_claim(scope: WriteScope, claim: Claim) -> None:
        scope.claim = claim
        state = claim.extra or {}
        scope.known.update({str(k): str(v) for k, v in (state.get("objects") or {}).items()})
        if claim.outcome == UNKNOWN:
            # taken over: trust its list only when that attempt said it was complete
            scope.trusted = bool(state.get("trusted")) and "objects" in state

    # create once ----------------------------------------------------------------------------------
    async def _create_once(self, limetype: str, body: dict[str, Any], key: str | None, find: Find | None,
                           *, name: str | None = None, fresh: Callable[[Claim], bool] | None = None,
                           extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                           external: bool = False, absent: bool = False,
                           prepare: Callable[[], Awaitable[None]] | None = None) -> tuple[dict[str, Any], bool]:
        """(object, created): the `limetype` object for `key`, created once.

        `find` is the key query (None when the limetype has no key property: Lime cannot be
        asked, so an unknown outcome is created again). `name` names the record (default
        `limetype|key`). `fresh(claim)` says whether a DONE record is still to be trusted
        (persons); `extra(obj)` what to keep in the record besides the id; `prepare()` runs once
        before the object is POSTed (a file upload, a long note's document). `external`: objects of
        this kind are made outside the inbox too (persons, companies), so a claim that finds no
        record still asks Lime, unless `absent`: the caller saw Lime without it a moment ago (the
        sender's lookup). An object that comes from a record is `{"_id": id, "_record": True}` plus
        what `extra` kept."""
        scope = self._scope()
        if key is None:
            if prepare is not None:
                await prepare()
            return await self._post(limetype, body), True
        record = name or f"{limetype}|{key}"
        if scope is not None and scope.covers(key):
            if scope.sole:  # no record: the caller is the only writer and no earlier attempt wrote it
                # (an answer lost after Lime's commit is still resolved by asking, never by a second POST)
                return await self._create_held(limetype, body, Claim(record, NEW, scope.owner), find, False, scope,
                                               record, prepare)
            claim = await self._scope_claim(scope)
            known_as = f"{limetype}|{key}"
            if known_as in scope.known:
                oid = scope.known[known_as]
                return {"_id": int(oid) if oid.isdigit() else oid, "_record": True}, False
            if claim.held:
                ask = claim.outcome == UNKNOWN and not scope.trusted
                obj, created = await self._create_held(limetype, body, claim, find, ask, scope, f"mail|{scope.key}",
                                                       prepare)
                scope.known[known_as] = str(obj["_id"])
                return obj, created
            # the mail's objects were all written by an earlier attempt or copy, and this one is not
            # among them (another mailbox's copy decided otherwise): under a record of its own
        claim = await self._claim(record, scope)
        if claim.outcome == DONE:
            if fresh is None or fresh(claim):
                return {"_id": int(claim.oid) if claim.oid.isdigit() else claim.oid, "_record": True,
                        **claim.extra}, False
            claim = await self._reopen(claim)
        ask = claim.outcome == UNKNOWN or (external and not absent)  # an unknown outcome is always asked
        held = scope if scope is not None else WriteScope(key="", owner=claim.owner)
        held.held[record] = claim
        try:
            obj, created = await self._create_held(limetype, body, claim, find, ask, held, record, prepare)
        except Exception:
            if scope is None:  # in a scope, _settle gives it up (a crash leaves it to its lease)
                await self._records.write([self._records.released_row(
                    claim, {} if record in held.ambiguous else None)])
            raise
        kept = extra(obj) if extra else {}
        held.held.pop(record, None)
        if scope is None:
            await self._records.write([self._records.created_row(claim, str(obj["_id"]), kept)])
        else:
            scope.created.append((claim, str(obj["_id"]), kept))
        return obj, created

    async def _reopen(self, claim: Claim) -> Claim:
        """A DONE record no longer trusted (the object may be gone): held again, If-Match, as an
        unknown outcome."""
        r = self._records
        row = r.creating_row(claim.name, claim.owner, claim.extra)
        try:
            etags = await r.table.submit([("replace", row, claim.etag)])
        except RecordConflict:
            raise TransientError("Lime CRM: a create record changed meanwhile; try again", retry_after=1) from None
        return Claim(claim.name, UNKNOWN, claim.owner, etag=etags.get(row["RowKey"], ""), expires=row["expires"],
                     extra=claim.extra)

    async def _create_held(self, limetype: str, body: dict[str, Any], claim: Claim, find: Find | None, ask: bool,
                           scope: WriteScope, record: str,
                           prepare: Callable[[], Awaitable[None]] | None = None) -> tuple[dict[str, Any], bool]:
        """Under a held claim: ask Lime first when `ask` (an earlier outcome is unknown), then POST.
        An answer lost after Lime's commit is resolved by asking; without a key property (no
        `find`) it cannot be, and the error says a retry may create the object twice."""
        if ask and find is not None:
            found = await find()
            if found is not None:
                return found, False
        if prepare is not None:
            await prepare()
        last: AmbiguousWrite | None = None
        for attempt in range(3):
            await self._records.check(claim)
            try:
                return await self._post(limetype, body), True
            except AmbiguousWrite as exc:
                last = exc
                scope.ambiguous.add(record)
                if record.startswith("mail|"):
                    scope.trusted = False
                log.info("lime.ambiguous-create limetype=%s attempt=%s error=%s", limetype, attempt + 1, exc)
                if find is None:
                    raise TransientError(f"{exc} (without the key property {limetype}."
                                         f"{self.names.key_property or '-'} a retry may create it twice)",
                                         retry_after=exc.retry_after) from None
                wait = exc.retry_after if exc.retry_after is not None else self._backoff * (attempt + 1)
                if wait > self._max_wait:
                    break
                await self._sleep(wait)
                found = await find()
                if found is not None:
                    return found, False
        assert last is not None
        raise TransientError(str(last), retry_after=last.retry_after)

    async def _post(self, limetype: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", f"limeobject/{limetype}/", json=body, write=True)

    async def _find_key(self, limetype: str, kv: str,
                        fields: Iterable[str] | Mapping[str, Any]) -> dict[str, Any] | None:
        rows = await self._query(limetype, fields, {"key": self.names.key_property, "op": "=", "exp": kv})
        return rows[0] if rows else None
