"""The correlation id on log lines (shared/telemetry.py) without Application Insights: a job's scope
stamps every `inbox.*` record written inside it, in its text and as attributes, and nothing else."""
from __future__ import annotations

import asyncio
import logging

from shared import telemetry
from shared.domain.envelope import AutoreplyJob, MessageJob


def test_records_inside_a_job_scope_carry_its_correlation_id(caplog):
    caplog.set_level(logging.INFO, logger="inbox")
    log = logging.getLogger("inbox.test.scope")
    other = logging.getLogger("thirdparty.lib")
    job = MessageJob(mailbox_id="box-1", message_id="m-1", correlation_id="c-111")

    async def in_a_task() -> None:
        log.info("task.line value=%s", 100)

    log.info("before")
    with telemetry.job_scope(job, "process_message") as scope:
        assert telemetry.correlation_id() == "c-111" and scope.message_id == "m-1"
        log.info("plain.line n=%d", 3)
        log.info("explicit.line correlation=%s", "c-111")
        other.warning("not ours")
        asyncio.run(in_a_task())  # tasks inherit the scope
    log.info("after")
    assert telemetry.current() is None
    lines = {r.getMessage(): r for r in caplog.records}
    assert "before" in lines and "after" in lines and not hasattr(lines["after"], "correlation_id")
    assert lines["plain.line n=3 correlation=c-111"].message_id == "m-1"
    assert lines["plain.line n=3 correlation=c-111"].mailbox_id == "box-1"
    assert "explicit.line correlation=c-111" in lines  # said once, not twice
    assert "task.line value=100 correlation=c-111" in lines
    assert "not ours" in lines  # other libraries' lines are left as they are


def test_scopes_do_not_leak_between_jobs(caplog):
    caplog.set_level(logging.INFO, logger="inbox")
    log = logging.getLogger("inbox.test.leak")

    async def job(cid: str) -> None:
        with telemetry.job_scope(AutoreplyJob(mailbox_id="b", message_id=cid, ticket_id="t", ticket_number="1",
                                              correlation_id=cid), "send_autoreply"):
            await asyncio.sleep(0)
            log.info("working on=%s", cid)

    async def both() -> None:
        await asyncio.gather(job("c-a"), job("c-b"))
    asyncio.run(both())
    assert sorted(r.getMessage() for r in caplog.records if r.name == "inbox.test.leak") == [
        "working on=c-a correlation=c-a", "working on=c-b correlation=c-b"]


async def test_without_a_connection_string_telemetry_is_off_and_free():
    class Settings:
        appinsights_connection_string = ""
    assert telemetry.configure(Settings()) is False and not telemetry.enabled()

    async def call() -> int:
        return 7
    assert telemetry.timed(call, "graph", "message get") is call  # no wrapper at all
    telemetry.count(telemetry.MAILS_PROCESSED, source="webhook")
    with telemetry.span("nothing") as span:
        assert span is None


def test_operation_names_have_no_ids():
    assert telemetry.operation_name("GET", "limeobject/helpdesk/1042/") == "GET /limeobject/helpdesk/{id}/"
    assert telemetry.operation_name("PUT", "/limeobject/history/77/?x=1") == "PUT /limeobject/history/{id}/"
    assert telemetry.operation_name("GET", "query/?q=%7B%7D") == "GET /query/"
