"""One line per invocation (what `make run` prints) and a stop that leaves no aiohttp session open."""
from __future__ import annotations

import asyncio
import gc
import warnings

import aiohttp
import httpx

from tests.devhost.conftest import b64_queue
from tools.devhost import DevHost
from tools.devhost_parts.records import InvocationRecord, queue_subject


def test_each_invocation_is_reported_with_its_outcome_and_what_it_was_about(start_host, settings):
    seen: list[InvocationRecord] = []
    host = start_host(on_invocation=seen.append, enforce_keys=False)
    resp = httpx.get(f"{host.url}/api/echo/5?code=key-that-must-not-show")
    assert resp.status_code == 200
    b64_queue(settings["AzureWebJobsStorage"], settings["WORK_QUEUE"]).send_message(
        '{"v": 1, "message_id": "AAMkAGI2-mail-1"}')
    b64_queue(settings["AzureWebJobsStorage"], settings["WORK_QUEUE"]).send_message("fail always")
    host.wait_for_invocations("work", count=4, timeout=20)   # one ok, three failed attempts

    [echo] = [r for r in seen if r.function == "echo"]
    assert echo.status == 200 and echo.subject == "GET /api/echo/5"   # the query (a key) is left out
    assert "key-that-must-not-show" not in echo.line()
    assert echo.line().split()[1:3] == ["echo", "200"] and echo.line().split()[4] == "ms"

    works = [r for r in seen if r.function == "work"]
    ok = next(r for r in works if r.ok)
    assert ok.subject == "message_id=AAMkAGI2-mail-1" and ok.line().endswith("message_id=AAMkAGI2-mail-1")
    assert " ok " in ok.line()
    failed = [r for r in works if not r.ok]
    assert len(failed) == 3 and all(r.subject == "" and "failed ValueError" in r.line() for r in failed)


def test_queue_subject_reads_only_a_json_object_naming_a_message():
    assert queue_subject(b'{"message_id": "m1", "v": 1}') == "message_id=m1"
    assert queue_subject(b"plain text") == ""
    assert queue_subject(b'{"message_id": 7}') == ""
    assert queue_subject(b'["message_id"]') == ""
    assert queue_subject(b"{not json") == ""


def test_stop_closes_the_sessions_the_app_left_open_on_its_loop(start_host):
    host: DevHost = start_host()

    async def open_session() -> aiohttp.ClientSession:
        session = aiohttp.ClientSession()   # like an Azure SDK client the app never closes
        async with session.get(f"{host.url}/api/echo/1") as resp:
            assert resp.status == 200
        return session

    session = asyncio.run_coroutine_threadsafe(open_session(), host._loop).result(10)
    assert not session.closed
    host.stop()
    assert session.closed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del session
        gc.collect()
    assert not [w for w in caught if "Unclosed" in str(w.message)], [str(w.message) for w in caught]
