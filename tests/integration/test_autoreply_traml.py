"""Autoreplies end to end on the real adapters: a real Azurite (ledger, claim rows, rate limits, the
embedded CRM), the TRAML simulator over HTTP (tools/sim/traml.py) and the TRAML client.

Mail reaches the ledger through the real MessageProcessor (Graph is the in-memory FakeMail here: the
Graph path has its own integration tests), so the autoreply reads exactly what process.py stored.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from datetime import timedelta

import azure.functions as func
import httpx
import pytest

from shared.adapters.autoreply_state import TableAutoreplyStore, TableRateLimiter
from shared.adapters.crm_table import TableCrm
from shared.adapters.ledger_table import TableLedger
from shared.adapters.storage_clients import StorageAccount
from shared.adapters.traml import TramlClient
from shared.config import QUEUE_AUTOREPLIES
from shared.domain import envelope, retry
from shared.domain.envelope import AutoreplyJob, MessageJob, with_attempt
from shared.domain.errors import TransientError
from shared.domain.mail import Address, InboundMail
from shared.domain.model import PROCESSED, AutoreplySettings, Mailbox
from shared.services.autoreply import (
    CLAIM_SECONDS, AutoreplyDeps, AutoreplyRecord, AutoreplyService, TemplateNotFound,
)
from shared.services.process import MessageProcessor, ProcessDeps
from tests.fakes import FakeClock, FakeMail, FakeQueue, FakeRegistry
from tools.sim.traml import DEMO_API_KEY, TramlSim

OURS = "support@ours.example"
TEMPLATE = "Helpdesk autoreply"
HTML = "<p>Hi $$sendername$$,</p><p>ticket <b>$$helpdesknumber$$</b>: $$title$$ ($$signature$$)</p>"
TEXT = "Hi $$sendername$$, ticket $$helpdesknumber$$: $$title$$"


class Crash(BaseException):
    pass


@pytest.fixture(scope="module")
def sim():
    server = TramlSim().start()
    yield server
    server.stop()


@pytest.fixture
def traml_sim(sim):
    sim.faults.clear()
    sim.requests.clear()
    sim.clear_sent()
    sim.reject_headers = set()
    sim.templates.clear()
    sim.sending_domains.clear()
    sim.add_template(TEMPLATE, HTML, TEXT)
    sim.add_template("Newsletter", "<p>news</p>")
    sim.add_sending_domain("ours.example")
    return sim


@pytest.fixture
async def account(azurite_connection):
    account = StorageAccount(azurite_connection, {})
    yield account
    await account.close()


class World:
    def __init__(self, account: StorageAccount, sim: TramlSim, unique: str, limit: int = 10,
                 address: str = OURS, template: str = TEMPLATE, timeout: float = 5.0) -> None:
        self.sim = sim
        self.clock = FakeClock()
        self.box = Mailbox(id=f"box-{unique}", address=address, client="demo", tenant_id="t",
                           autoreply=AutoreplySettings(enabled=True, template=template, from_name="Ours Support",
                                                       merge_codes={"signature": "The Support Team"}))
        self.tables = (f"ledger{unique}", f"ratelimits{unique}")
        self.ledger = TableLedger(account, self.clock, table=self.tables[0])
        self.store = TableAutoreplyStore(account, self.clock, table=self.tables[0])
        self.limiter = TableRateLimiter(account, limit, 180, table=self.tables[1])
        self.crm = TableCrm(account, prefix=f"crm{unique}", container=f"crm-{unique}", clock=self.clock.now)
        self.mail, self.queue, self.registry = FakeMail(), FakeQueue(), FakeRegistry(self.box)
        self.traml = TramlClient(sim.api_url, DEMO_API_KEY, backoff=0.01, timeout=timeout)
        self.processor = MessageProcessor(ProcessDeps(
            registry=self.registry, ledger=self.ledger, mail=self.mail, crm=self.crm, queue=self.queue,
            clock=self.clock, own_addresses=self._own))
        self.service = AutoreplyService(AutoreplyDeps(
            registry=self.registry, ledger=self.ledger, crm=self.crm, queue=self.queue, clock=self.clock,
            traml=self.traml, store=self.store, limiter=self.limiter, limit_description=f"{limit} per 180 minutes"))
        self._account = account
        self._n = 0

    async def _own(self) -> frozenset[str]:
        return frozenset({self.box.address})

    async def ensure(self) -> "World":
        await self._account.ensure_tables(*self.tables)
        await self.crm.ensure()
        return self

    def deliver(self, sender: str = "anna@customer.example", name: str = "Anna Andersson",
                subject: str = "Printer broken") -> MessageJob:
        self._n += 1
        mail = InboundMail(
            mailbox_id=self.box.id, message_id=f"AAMk-{self._n}",
            internet_message_id=f"<m{self._n}.x@customer.example>",
            sender=Address(sender, name), subject=subject, received_at=self.clock.now() - timedelta(minutes=2),
            body_content_type="text", body="Hello", parent_folder_id=FakeMail.INBOX)
        self.mail.put(self.box, mail)
        return MessageJob(mailbox_id=self.box.id, message_id=mail.message_id, tenant_id="t")

    def jobs(self) -> list[AutoreplyJob]:
        out = [envelope.decode(t, AutoreplyJob) for q, t, _ in self.queue.sent if q == QUEUE_AUTOREPLIES]
        self.queue.sent.clear()
        return out

    async def new_ticket(self, **kw) -> AutoreplyJob:
        outcome = await self.processor.run(self.deliver(**kw))
        assert outcome.status == PROCESSED
        [job] = self.jobs()
        return job

    async def close(self) -> None:
        await self.traml.close()


@pytest.fixture
async def world(account, traml_sim, unique):
    w = await World(account, traml_sim, unique).ensure()
    yield w
    await w.close()


def sends(sim: TramlSim) -> int:
    return sim.requests.count(method="POST", path_regex="sendtemplate")


# ---- the happy path ---------------------------------------------------------------------------------
async def test_new_ticket_gets_one_autoreply_with_the_right_wire_fields(world):
    job = await world.new_ticket(subject="RE: Printer <broken> & jammed")
    assert (await world.service.send(job)).status == "sent"
    assert (await world.service.send(job)).status == "already-sent"  # a redelivery
    [sent] = world.sim.sent_mail()
    body = sent["Body"]
    assert body["FromEmail"] == OURS and body["FromName"] == "Ours Support"
    assert body["RecipientEmail"] == "anna@customer.example" and body["RecipientName"] == "Anna Andersson"
    assert body["Subject"] == "Printer <broken> & jammed [1001]" and body["TemplateId"] == sent["TemplateId"]
    assert body["ExcludeTotaloptouts"] is True and body["ExcludePreviousBounce"] is True
    assert body["ExternalId"] == f"inbox-autoreply-{job.ticket_id}"
    assert body["Headers"] == {"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All",
                               "In-Reply-To": "<m1.x@customer.example>", "References": "<m1.x@customer.example>"}
    assert sent["Html"] == ("<p>Hi Anna Andersson,</p><p>ticket <b>1001</b>: Printer &lt;broken&gt; &amp; jammed "
                            "(The Support Team)</p>")
    assert sent["Text"] == "Hi Anna Andersson, ticket 1001: Printer <broken> & jammed"
    detail = await world.crm.ticket_detail("1001")
    [note] = [h for h in detail["history"] if h["type"] == "sentemail"]
    assert "[1001]" in note["note"]
    [row] = await world.store.list("sent")
    assert row.ticket_id == job.ticket_id and row.transaction_id == str(sent["TransactionMailId"])
    assert sends(world.sim) == 1


async def test_traml_503_twice_then_200_sends_once(world):
    job = await world.new_ticket()
    world.sim.faults.add(503, method="POST", path_regex="sendtemplate", count=2)
    assert (await world.service.send(job)).status == "sent"
    assert len(world.sim.sent_mail()) == 1 and sends(world.sim) == 3
    assert [e["status"] for e in world.sim.requests.entries(path_regex="sendtemplate")] == [503, 503, 200]


async def test_traml_down_through_the_retries_ends_failed_and_can_be_resent(world):
    job = await world.new_ticket()
    world.sim.faults.add(503, method="POST", path_regex="sendtemplate", count=-1)
    for attempt in range(1, 4):  # each 503: the job waits in the queue with a growing delay
        assert (await world.service.send(job)).status == "requeued"
        assert (await world.store.get(job.ticket_id)).status == "retrying"
        [job] = world.jobs()
        assert job.attempt == attempt
        world.service.d.clock.advance(retry.CAP_SECONDS)
    job = with_attempt(job, retry.ATTEMPTS)  # ... until the schedule is spent (hours later): the queue's turn
    with pytest.raises(TransientError):
        await world.service.send(job)
    outcome = await world.service.record_poisoned(job, 5)  # autoreply_failed
    assert outcome.status == "failed" and "503" in outcome.reason
    [row] = await world.service.list_autoreplies("failed")
    assert row["ticket_number"] == "1001" and "503" in row["last_error"]
    assert world.sim.sent_mail() == []
    world.sim.faults.clear()
    await world.service.resend(job.ticket_id)
    [again] = world.jobs()
    assert (await world.service.send(again)).status == "sent" and len(world.sim.sent_mail()) == 1
    assert await world.service.list_autoreplies("failed") == []


# ---- at most once -------------------------------------------------------------------------------------
async def test_crash_after_send_before_the_flag_is_not_resent_but_listed_uncertain(world):
    job = await world.new_ticket()
    save = world.store.save

    async def dying_save(record: AutoreplyRecord):
        if record.status == "sent":
            raise Crash("the worker died after TRAML queued the mail")
        return await save(record)
    world.store.save = dying_save
    with pytest.raises(Crash):
        await world.service.send(job)
    world.store.save = save
    assert len(world.sim.sent_mail()) == 1
    world.clock.advance(CLAIM_SECONDS + 1)  # the queue redelivers after the claim expired
    assert (await world.service.send(job)).status == "uncertain"
    assert (await world.service.send(job)).status == "already-uncertain"
    assert len(world.sim.sent_mail()) == 1 and sends(world.sim) == 1
    [row] = await world.service.list_autoreplies("uncertain")
    assert row["ticket_id"] == job.ticket_id and row["recipient"] == "anna@customer.example"
    await world.service.resend(job.ticket_id)  # the admin decides
    [again] = world.jobs()
    assert (await world.service.send(again)).status == "sent" and len(world.sim.sent_mail()) == 2
    assert await world.service.list_autoreplies("uncertain") == []
    assert [r["ticket_id"] for r in await world.service.list_autoreplies("sent")] == [job.ticket_id]


async def test_no_answer_from_traml_is_uncertain_even_though_it_queued_the_mail(account, traml_sim, unique):
    w = await World(account, traml_sim, unique, timeout=0.4).ensure()
    try:
        job = await w.new_ticket()
        traml_sim.answer_late(1.2)
        assert (await w.service.send(job)).status == "uncertain"
        assert len(traml_sim.sent_mail()) == 1  # TRAML did queue it: retrying would have sent two
        assert (await w.service.send(job)).status == "already-uncertain" and len(traml_sim.sent_mail()) == 1
    finally:
        await w.close()


async def test_concurrent_duplicate_jobs_send_once(world):
    job = await world.new_ticket()
    outcomes = await asyncio.gather(*(world.service.send(job) for _ in range(6)))
    statuses = sorted(o.status for o in outcomes)
    assert statuses.count("sent") == 1 and set(statuses) <= {"sent", "requeued", "already-sent"}
    assert len(world.sim.sent_mail()) == 1


# ---- limits -------------------------------------------------------------------------------------------
async def test_fifty_mails_from_one_address_in_an_hour_capped_at_the_limit(world):
    jobs = []
    for i in range(50):
        world.clock.advance(60)
        outcome = await world.processor.run(world.deliver(subject=f"Question {i}"))
        assert outcome.status == PROCESSED
        jobs += world.jobs()
    assert len(jobs) == 50 and len(await world.crm.list_tickets(limit=100)) == 50
    random.shuffle(jobs)
    outcomes = await asyncio.gather(*(world.service.send(j) for j in jobs))  # many workers at once
    assert [o.status for o in outcomes].count("sent") == 10
    assert len(world.sim.sent_mail()) == 10
    skipped = await world.service.list_autoreplies("skipped", limit=500)
    assert len(skipped) == 40 and all("rate limit" in r["reason"] for r in skipped)
    another = await world.new_ticket(sender="bob@customer.example", name="Bob")  # others are not affected
    assert (await world.service.send(another)).status == "sent"


# ---- failures -----------------------------------------------------------------------------------------
async def test_traml_4xx_is_failed_with_traml_message(account, traml_sim, unique):
    w = await World(account, traml_sim, unique, address="support@unverified.example").ensure()
    try:
        job = await w.new_ticket()
        outcome = await w.service.send(job)
        assert outcome.status == "failed"
        [row] = await w.service.list_autoreplies("failed")
        assert "TRAML 400: The request is invalid." in row["last_error"]
        assert "'unverified.example' is not a verified sending domain" in row["last_error"]
        assert traml_sim.sent_mail() == [] and len(await w.crm.list_tickets()) == 1
    finally:
        await w.close()


async def test_missing_template_is_a_clear_error_naming_it(account, traml_sim, unique):
    w = await World(account, traml_sim, unique, template="Autosvar support").ensure()
    try:
        job = await w.new_ticket()
        outcome = await w.service.send(job)
        assert outcome.status == "failed"
        assert "no mail template named 'Autosvar support'" in outcome.reason and TEMPLATE in outcome.reason
        assert sends(traml_sim) == 0
    finally:
        await w.close()


async def test_rejected_threading_headers_are_dropped_and_logged_once(world, caplog):
    world.sim.reject_headers = {"In-Reply-To", "References"}
    caplog.set_level(logging.WARNING, logger="inbox.autoreply")
    for subject in ("One", "Two"):
        assert (await world.service.send(await world.new_ticket(subject=subject))).status == "sent"
    mails = world.sim.sent_mail()
    assert len(mails) == 2
    assert all(m["Headers"] == {"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"} for m in mails)
    warnings = [r.getMessage() for r in caplog.records if "header-rejected" in r.getMessage()]
    assert len(warnings) == 2 and {w.split()[1] for w in warnings} == {"header=In-Reply-To", "header=References"}
    assert DEMO_API_KEY not in caplog.text


# ---- privacy and retention --------------------------------------------------------------------------
async def test_erase_scrubs_the_address_and_purge_forgets_old_rows(world):
    world.sim.faults.add(400, method="POST", path_regex="sendtemplate", count=1, body={
        "Message": "The request is invalid.",
        "ErrorDetails": [{"Context": "RecipientEmail", "Message": "'anna@customer.example' bounced before"}]})
    failed = await world.new_ticket()
    assert (await world.service.send(failed)).status == "failed"
    sent = await world.new_ticket(subject="Second")
    assert (await world.service.send(sent)).status == "sent"
    other = await world.new_ticket(sender="bob@customer.example", name="Bob")
    assert (await world.service.send(other)).status == "sent"
    assert await world.store.erase_address("Anna@Customer.example") == 2
    assert await world.limiter.erase_address("anna@customer.example") == 1
    rows = [await world.store.get(j.ticket_id) for j in (failed, sent, other)]
    assert [r.status for r in rows] == ["failed", "sent", "sent"]  # verdicts stay: nothing is resent
    assert rows[0].recipient == rows[1].recipient == "" and rows[2].recipient == "bob@customer.example"
    assert "anna@customer.example" not in str([r.view() for r in rows[:2]])
    assert (await world.service.send(sent)).status == "already-sent" and len(world.sim.sent_mail()) == 2
    # retention: rows older than the cutoff go, index rows with them; stale limiter rows too
    assert await world.store.purge(world.clock.now() - timedelta(days=1)) == 0
    assert await world.store.purge(world.clock.now() + timedelta(days=1)) == 3
    assert await world.service.list_autoreplies("sent") == [] and await world.store.get(sent.ticket_id) is None
    assert await world.limiter.purge(world.clock.now()) == 0
    assert await world.limiter.purge(world.clock.now() + timedelta(hours=4)) == 1  # bob's


# ---- the template, by its name -----------------------------------------------------------------------
async def test_a_template_is_found_by_its_name_and_cached(traml_sim):
    """`GET mailtemplate/name/{name}`: one small request, cached; only a miss reads the whole list
    (a name differing in case still matches one template; an unknown one names those there are)."""
    client = TramlClient(traml_sim.api_url, DEMO_API_KEY)
    other = traml_sim.add_template("Support/EN: svar", "<p>x</p>")
    try:
        async def paths(n: int) -> list[str]:  # the sim logs a request just after answering it
            for _ in range(200):
                if len(traml_sim.requests.entries()) >= n:
                    break
                await asyncio.sleep(0.01)
            return [e["path"].split("/api/", 1)[1] for e in traml_sim.requests.entries()]
        wanted = next(t for t, v in traml_sim.templates.items() if v["Name"] == TEMPLATE)
        assert await client.template_id(TEMPLATE) == wanted
        assert await client.template_id(TEMPLATE) == wanted  # cached
        assert await paths(1) == ["mailtemplate/name/Helpdesk autoreply"]
        assert await client.template_id("Support/EN: svar") == other  # a name with a slash
        assert (await paths(2))[-1] == "mailtemplate/name/Support/EN: svar"
        traml_sim.requests.clear()
        assert await client.template_id("helpdesk AUTOREPLY") == wanted
        assert await paths(2) == ["mailtemplate/name/helpdesk AUTOREPLY", "mailtemplate"]
        with pytest.raises(TemplateNotFound, match=r"no mail template named 'Nope' .*'Helpdesk autoreply'"):
            await client.template_id("Nope")
        client.forget_template(TEMPLATE)  # TRAML said the id is gone: asked again
        traml_sim.requests.clear()
        assert await client.template_id(TEMPLATE) == wanted
        assert await paths(1) == ["mailtemplate/name/Helpdesk autoreply"]
    finally:
        await client.close()
        traml_sim.remove_template("Support/EN: svar")


async def test_the_simulator_finds_a_template_by_its_exact_name(traml_sim):
    async with httpx.AsyncClient(base_url=traml_sim.api_url + "/", headers={"apikey": DEMO_API_KEY}) as http:
        found = await http.get("mailtemplate/name/Helpdesk%20autoreply")
        assert found.status_code == 200 and found.json()["Name"] == TEMPLATE
        assert set(found.json()) == {"Id", "HtmlLayoutId", "TextLayoutId", "CreatedByUserId", "Name", "Description",
                                     "CreationDate", "ModifiedDate"}
        missing = await http.get("mailtemplate/name/helpdesk%20autoreply")  # exact: case matters
        assert missing.status_code == 404 and "does not exist" in missing.json()["Message"]
        assert (await http.get("mailtemplate/name/x", headers={"apikey": "wrong"})).status_code == 401


# ---- the simulator holds clients to TRAML's contract ---------------------------------------------------
async def test_simulator_accepts_only_documented_fields_and_the_api_key(traml_sim):
    async with httpx.AsyncClient(base_url=traml_sim.api_url + "/") as http:
        assert (await http.get("mailtemplate")).status_code == 401
        ok = {"TemplateId": next(iter(traml_sim.templates)), "RecipientEmail": "a@b.example",
              "FromEmail": OURS}
        bad = await http.post("transactionmail/sendtemplate", headers={"apikey": DEMO_API_KEY},
                              json={**ok, "ExcludeTotalOptouts": True, "MergeCodes": {"x": "y"}})
        assert bad.status_code == 400
        details = {d["Context"]: d["Message"] for d in bad.json()["ErrorDetails"]}
        assert "ExcludeTotaloptouts" in details["ExcludeTotalOptouts"] and "MergeCodes" in details
        missing = await http.post("transactionmail/sendtemplate", headers={"apikey": DEMO_API_KEY},
                                  json={"TemplateId": 999999, "FromEmail": "x"})
        contexts = {d["Context"] for d in missing.json()["ErrorDetails"]}
        assert missing.status_code == 400 and {"RecipientEmail", "FromEmail"} <= contexts
        good = await http.post("transactionmail/sendtemplate", headers={"apikey": DEMO_API_KEY}, json=ok)
        assert good.status_code == 200 and good.json()["ExcludeTotalOptouts"] is False
        listed = (await http.get(traml_sim.url + "/_sim/traml/sent")).json()["value"]
        assert len(listed) == 1 and listed[0]["RecipientEmail"] == "a@b.example"
    assert all(DEMO_API_KEY not in str(e) for e in traml_sim.requests.entries())


# ---- the functions, wired by bootstrap -----------------------------------------------------------------
@contextlib.asynccontextmanager
async def wired_functions(azurite_connection, traml_sim, unique, monkeypatch, mails: int):
    """The app's functions wired by bootstrap (Azurite, the TRAML simulator, an in-memory CRM and
    mailbox), `mails` new mails made tickets: (services, functions by name, queue, autoreply job bodies)."""
    import function_app
    from shared import bootstrap
    from shared.config import Settings
    from tests.fakes_crm import InMemoryCrm
    env = {"AzureWebJobsStorage": azurite_connection, "CLIENT_STATE_KEYS": "1:" + "k" * 24,
           "TRAML_BASE_URL": traml_sim.api_url, "TRAML_API_KEY": DEMO_API_KEY, "AUTOREPLY_LIMIT_COUNT": "5"}
    clock, mail, queue = FakeClock(), FakeMail(), FakeQueue()
    crm = InMemoryCrm(clock.now)
    crm.next_number = random.randint(10 ** 6, 10 ** 9)  # the default tables may outlive this run
    svc = bootstrap.build_services(Settings.from_env(env), graph=mail, crm=crm, clock=clock)
    svc.queue = svc.processor.d.queue = queue
    monkeypatch.setattr(bootstrap, "_current", svc)
    svc.loop = asyncio.get_running_loop()
    await svc.ready()
    box = Mailbox(id=f"box-{unique}", address=OURS, client="demo", tenant_id="t",
                  autoreply=AutoreplySettings(enabled=True, template=TEMPLATE))
    await svc.registry.save(box)
    fns = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
    function_app.app.functions_bindings = {}  # get_functions() may be called again elsewhere
    try:
        bodies = []
        for i in range(mails):
            mail.put(box, InboundMail(
                mailbox_id=box.id, message_id=f"fn-{i}", internet_message_id=f"<fn{i}.{unique}@customer.example>",
                sender=Address(f"c{i}.{unique}@customer.example", "C"), subject=f"Case {i}",
                received_at=clock.now() - timedelta(minutes=1), body_content_type="text", body="x",
                parent_folder_id=FakeMail.INBOX))
            await svc.processor.run(MessageJob(mailbox_id=box.id, message_id=f"fn-{i}", tenant_id="t"))
            [(_, text, _)] = queue.sent
            queue.sent.clear()
            bodies.append(text.encode())
        yield svc, fns, queue, bodies
    finally:
        await svc.autoreplies.d.traml.close()
        await svc.account.close()


def post(path: str, ticket: str, body: bytes = b"") -> func.HttpRequest:
    return func.HttpRequest("POST", path, route_params={"ticket_id": ticket}, body=body)


async def listed(fns, status: str, ticket: str) -> list[dict]:
    resp = await fns["manage_autoreplies"](func.HttpRequest("GET", "/api/manage/autoreplies",
                                                            params={"status": status, "limit": "500"}, body=b""))
    assert resp.status_code == 200
    return [r for r in envelope_json(resp)["autoreplies"] if r["ticket_id"] == ticket]


async def test_functions_send_fail_list_and_resend(azurite_connection, traml_sim, unique, monkeypatch):
    async with wired_functions(azurite_connection, traml_sim, unique, monkeypatch, 2) as (svc, fns, queue, bodies):
        box_id = f"box-{unique}"
        await fns["send_autoreply"](func.QueueMessage(id="q1", body=bodies[0]))
        traml_sim.faults.add(400, method="POST", path_regex="sendtemplate", count=-1,
                             body={"Message": "Recipient is on the total opt-out list", "ErrorDetails": []})
        await fns["send_autoreply"](func.QueueMessage(id="q2", body=bodies[1]))
        await fns["autoreply_failed"](func.QueueMessage(id="q3", body=b"not json"))
        listed = await fns["manage_autoreplies"](func.HttpRequest(
            "GET", "/api/manage/autoreplies", params={"status": "failed"}, body=b""))
        failed = [r for r in envelope_json(listed)["autoreplies"] if r["mailbox_id"] == box_id]
        assert listed.status_code == 200 and len(failed) == 1 and "opt-out" in failed[0]["last_error"]
        sent = envelope_json(await fns["manage_autoreplies"](func.HttpRequest(
            "GET", "/api/manage/autoreplies", params={"status": "sent"}, body=b"")))["autoreplies"]
        assert [r["mailbox_id"] for r in sent].count(box_id) == 1
        bad = await fns["manage_autoreplies"](func.HttpRequest("GET", "/api/manage/autoreplies",
                                                               params={"status": "all"}, body=b""))
        assert bad.status_code == 400
        traml_sim.faults.clear()
        ticket = failed[0]["ticket_id"]
        resent = await fns["manage_autoreply_resend"](func.HttpRequest(
            "POST", f"/api/manage/autoreplies/{ticket}/resend", route_params={"ticket_id": ticket}, body=b""))
        assert resent.status_code == 202
        [(_, text, _)] = queue.sent
        await fns["send_autoreply"](func.QueueMessage(id="q4", body=text.encode()))
        again = await fns["manage_autoreply_resend"](func.HttpRequest(
            "POST", f"/api/manage/autoreplies/{ticket}/resend", route_params={"ticket_id": ticket}, body=b""))
        assert again.status_code == 409
        missing = await fns["manage_autoreply_resend"](func.HttpRequest(
            "POST", "/api/manage/autoreplies/nope/resend", route_params={"ticket_id": "nope"}, body=b""))
        assert missing.status_code == 404
        assert len(traml_sim.sent_mail()) == 2


async def test_functions_dismiss_settles_an_uncertain_or_failed_autoreply(azurite_connection, traml_sim, unique,
                                                                          monkeypatch):
    """An admin who checked TRAML's log settles an uncertain (or failed) autoreply without sending it:
    it leaves the status's warnings and the lists, a redelivered job does not send it, and it can
    still be resent. Anything else is refused with its reason and changes nothing."""
    async with wired_functions(azurite_connection, traml_sim, unique, monkeypatch, 3) as (svc, fns, queue, bodies):
        traml_sim.faults.add(504, method="POST", path_regex="sendtemplate", count=1)  # the gateway gave up
        await fns["send_autoreply"](func.QueueMessage(id="u", body=bodies[0]))
        traml_sim.faults.add(400, method="POST", path_regex="sendtemplate", count=1,
                             body={"Message": "Recipient is on the total opt-out list", "ErrorDetails": []})
        await fns["send_autoreply"](func.QueueMessage(id="f", body=bodies[1]))
        await fns["send_autoreply"](func.QueueMessage(id="s", body=bodies[2]))
        jobs = [envelope.decode(b, AutoreplyJob) for b in bodies]
        uncertain, failed, sent = (j.ticket_id for j in jobs)
        assert [r["status"] for r in await listed(fns, "uncertain", uncertain)] == ["uncertain"]
        assert [r["status"] for r in await listed(fns, "failed", failed)] == ["failed"]
        sends = len(traml_sim.sent_mail())

        async def warnings() -> set[str]:
            doc = envelope_json(await fns["manage_status"](func.HttpRequest("GET", "/api/manage/status", body=b"")))
            return {w["reason"] for w in doc["warnings"] if uncertain in str(w) or failed in str(w)
                    or w["reason"].startswith("autoreplies_")}

        before = await warnings()
        assert {"autoreplies_uncertain", "autoreplies_failed"} <= before

        # refused: not JSON, a note that is no string or too long, a sent one, an unknown ticket
        path = f"/api/manage/autoreplies/{uncertain}/dismiss"
        for body, reason, field in ((b"{", "invalid_json", None), (b'{"note": 5}', "invalid_parameter", "note"),
                                    (json.dumps({"note": "x" * 501}).encode(), "invalid_parameter", "note")):
            resp = await fns["manage_autoreply_dismiss"](post(path, uncertain, body))
            doc = envelope_json(resp)
            assert resp.status_code == 400 and doc["reason"] == reason and doc.get("field") == field, doc
        resp = await fns["manage_autoreply_dismiss"](post(f"/api/manage/autoreplies/{sent}/dismiss", sent))
        assert resp.status_code == 409 and envelope_json(resp)["reason"] == "dismiss_refused"
        assert "sent" in envelope_json(resp)["error"]
        resp = await fns["manage_autoreply_dismiss"](post("/api/manage/autoreplies/nope/dismiss", "nope"))
        assert resp.status_code == 404
        assert [r["status"] for r in await listed(fns, "uncertain", uncertain)] == ["uncertain"]  # unchanged

        note = "TRAML's log shows it was delivered  at 10:02"
        resp = await fns["manage_autoreply_dismiss"](post(path, uncertain, json.dumps({"note": note}).encode()))
        doc = envelope_json(resp)
        assert resp.status_code == 200 and doc["status"] == "dismissed"
        assert doc["reason"] == "dismissed by an admin: TRAML's log shows it was delivered at 10:02"
        assert doc["trace"][-1]["event"] == "dismissed" and doc["trace"][-1]["was"] == "uncertain"
        resp = await fns["manage_autoreply_dismiss"](post(f"/api/manage/autoreplies/{failed}/dismiss", failed))
        assert resp.status_code == 200 and envelope_json(resp)["reason"] == "dismissed by an admin"

        assert await listed(fns, "uncertain", uncertain) == [] and await listed(fns, "failed", failed) == []
        assert {r["ticket_id"] for r in await listed(fns, "dismissed", uncertain)} == {uncertain}
        assert not {"autoreplies_uncertain", "autoreplies_failed"} & await warnings()
        again = await fns["manage_autoreply_dismiss"](post(path, uncertain))
        assert again.status_code == 409  # dismissed already

        # the queue delivers the first job again: nothing is sent by itself
        await fns["send_autoreply"](func.QueueMessage(id="u2", body=bodies[0]))
        assert len(traml_sim.sent_mail()) == sends
        # the admin changes their mind: a dismissed autoreply can be resent, once
        queue.sent.clear()
        resp = await fns["manage_autoreply_resend"](post(f"/api/manage/autoreplies/{failed}/resend", failed))
        assert resp.status_code == 202
        [(_, text, _)] = queue.sent
        await fns["send_autoreply"](func.QueueMessage(id="r", body=text.encode()))
        assert len(traml_sim.sent_mail()) == sends + 1
        assert [r["status"] for r in await listed(fns, "sent", failed)] == ["sent"]


def envelope_json(resp: func.HttpResponse) -> dict:
    import json
    return json.loads(resp.get_body())
