"""HTTP triggers over real HTTP: routing, query decoding, outputs, auth, limits, async loop."""
from __future__ import annotations

import concurrent.futures
import json
import socket
import textwrap

import httpx
import pytest

from tests.devhost.conftest import SAMPLE_APP, b64decode_text, drain_raw
from tools.devhost import DevHost, DevHostError


def test_route_params_and_decoded_query(devhost: DevHost):
    token = "a%2Bb%2Fc%3D%3D%20x"                  # a+b/c== x
    url = f"{devhost.url}/api/echo/42/bob?token={token}&q=hello+world&s=two%20words&e="
    r = httpx.get(url, headers={"X-Test": "yes"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-echo"] == "1"
    data = r.json()
    assert data["route_params"] == {"id": "42", "name": "bob"}
    assert data["params"] == {"token": "a+b/c== x", "q": "hello world", "s": "two words", "e": ""}
    assert data["x_test"] == "yes"
    assert data["url"].endswith(f"/api/echo/42/bob?token={token}&q=hello+world&s=two%20words&e=")

    optional = httpx.get(f"{devhost.url}/api/echo/7").json()     # {name?} left out
    assert optional["route_params"] == {"id": "7"}
    assert httpx.get(f"{devhost.url}/api/ECHO/7/").status_code == 200   # case-insensitive, trailing slash


def test_methods_and_unknown_routes(devhost: DevHost):
    r = httpx.post(f"{devhost.url}/api/echo/1", content=b"\x00\x01binary")
    assert r.status_code == 200 and r.json()["method"] == "POST"
    # A known route with a method it does not accept: 404, as the Functions host answers.
    assert httpx.delete(f"{devhost.url}/api/echo/1").status_code == 404
    assert httpx.get(f"{devhost.url}/api/nothing/here").status_code == 404
    assert httpx.get(f"{devhost.url}/api/echo").status_code == 404         # {id} is required
    status = httpx.get(f"{devhost.url}/admin/host/status")
    assert status.status_code == 200 and status.json()["state"] == "Running"


def test_str_return_and_default_auth_not_enforced(devhost: DevHost):
    r = httpx.get(f"{devhost.url}/api/secure")               # FUNCTION level, keys off like Core Tools
    assert r.status_code == 200 and r.text == "secret"
    assert r.headers["content-type"].startswith("text/plain")


def test_enforce_keys(start_host):
    host = start_host({"DEVHOST_FUNCTION_KEY": "fkey", "DEVHOST_MASTER_KEY": "mkey"}, enforce_keys=True)
    assert httpx.get(f"{host.url}/api/secure").status_code == 401
    assert httpx.get(f"{host.url}/api/secure?code=wrong").status_code == 401
    assert httpx.get(f"{host.url}/api/secure?code=fkey").status_code == 200
    assert httpx.get(f"{host.url}/api/secure", headers={"x-functions-key": "fkey"}).status_code == 200
    assert httpx.get(f"{host.url}/api/secure?code=mkey").status_code == 200      # master key works too
    assert httpx.get(f"{host.url}/api/echo/1").status_code == 200                # ANONYMOUS stays open
    assert httpx.get(f"{host.url}/admin/host/status?code=fkey").status_code == 401
    assert httpx.get(f"{host.url}/admin/host/status?code=mkey").status_code == 200


def test_enforce_keys_needs_the_key_setting(settings):
    with pytest.raises(DevHostError, match="DEVHOST_FUNCTION_KEY"):
        DevHost(SAMPLE_APP, settings, enforce_keys=True).start()


def test_queue_output_is_base64_and_lists_write_several(devhost: DevHost, settings):
    raw = settings["RAW_QUEUE"]
    body = '{"v": 1, "text": "hé + / ="}'
    assert httpx.post(f"{devhost.url}/api/enqueue", content=body.encode()).status_code == 202
    [stored] = drain_raw(settings["AzureWebJobsStorage"], raw, 1)
    assert stored != body and b64decode_text(stored) == body

    assert httpx.post(f"{devhost.url}/api/enqueue?n=3", content=b"m").status_code == 202
    stored = drain_raw(settings["AzureWebJobsStorage"], raw, 3)
    assert sorted(b64decode_text(s) for s in stored) == ["m-0", "m-1", "m-2"]


def test_failed_output_write_fails_the_request(devhost: DevHost):
    too_big = "x" * 70_000          # base64 of this exceeds the 64 KiB queue message limit
    r = httpx.post(f"{devhost.url}/api/enqueue", content=too_big.encode())
    assert r.status_code == 500
    failed = devhost.wait_for_invocations("enqueue", predicate=lambda rec: not rec.ok)
    assert failed[0].exception == "OutputBindingError"


def test_body_size_limit(start_host):
    host = start_host({"FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "1000"})
    assert httpx.post(f"{host.url}/api/echo/1", content=b"x" * 1000).status_code == 200
    assert httpx.post(f"{host.url}/api/echo/1", content=b"x" * 1001).status_code == 413


@pytest.mark.parametrize("worker_thread", [False, True], ids=["host-loop", "worker-thread"])
def test_async_functions_share_one_long_lived_loop(start_host, worker_thread: bool):
    devhost = start_host(worker_thread=worker_thread)
    with httpx.Client() as client:
        first = [client.get(f"{devhost.url}/api/loop").json() for _ in range(3)]
    assert len({r["loop"] for r in first}) == 1
    assert first[0]["thread"] == ("devhost-worker-loop" if worker_thread else "devhost-host")
    # async invocations run concurrently on that loop: each one returns only once all four are in
    # flight together (the sample function waits for that), so sequential running would fail them
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.get(f"{devhost.url}/api/loop?together=4", timeout=40), range(4)))
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert {r.json()["loop"] for r in results} == {first[0]["loop"]}


def test_keep_alive_and_one_write_per_response(devhost: DevHost):
    port = devhost.port
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(3):   # three requests on one connection
            sock.sendall(b"GET /api/echo/1 HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n\r\n")
            length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                         .split(b":")[1])
            while len(rest) < length:
                rest += sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
            assert json.loads(rest)["route_params"] == {"id": "1"}


def _write_app(path, body: str) -> None:
    (path / "function_app.py").write_text(textwrap.dedent(body))


def test_reserved_route_is_refused(tmp_path):
    _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()

        @app.route(route="admin/tools", auth_level=func.AuthLevel.ANONYMOUS)
        def tools(req):
            return "no"
    """)
    with pytest.raises(DevHostError, match="conflicts with one or more built in routes"):
        DevHost(tmp_path, {}).start()


def test_routes_are_tried_in_the_order_of_their_function_names_as_the_host_does(tmp_path):
    """The Functions host does not rank a literal segment above a parameter: it tries routes in the
    order of their functions' names (azure-functions-host#9876). A route that a parameter route of an
    earlier-named function also matches is shadowed, and a catch-all must sort last."""
    _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

        @app.route(route="items/recent", methods=["GET"])
        def b_recent(req):
            return "recent"

        @app.route(route="items/{id}", methods=["GET"])
        def a_item(req):
            return "item " + req.route_params["id"]

        @app.route(route="things/{*rest}")
        def a_things_catch_all(req):
            return "catch-all " + req.route_params.get("rest", "")

        @app.route(route="things/list", methods=["GET"])
        def b_things_list(req):
            return "list"

        @app.route(route="other/{*rest}")
        def z_other_catch_all(req):
            return "catch-all " + req.route_params.get("rest", "")

        @app.route(route="other/list", methods=["GET"])
        def b_other_list(req):
            return "list"
    """)
    host = DevHost(tmp_path, {}).start()
    try:
        assert httpx.get(f"{host.url}/api/items/recent").text == "item recent"      # a_item before b_recent
        assert httpx.get(f"{host.url}/api/things/list").text == "catch-all list"    # shadowed by a_...
        assert httpx.get(f"{host.url}/api/other/list").text == "list"               # z_... sorts last
        assert httpx.delete(f"{host.url}/api/other/list").text == "catch-all list"  # methods: next route
        assert httpx.get(f"{host.url}/api/other/a/b").text == "catch-all a/b"
    finally:
        host.stop()


def test_missing_setting_is_named(settings):
    partial = {k: v for k, v in settings.items() if k != "TICK_SCHEDULE"}
    with pytest.raises(DevHostError, match="TICK_SCHEDULE"):
        DevHost(SAMPLE_APP, partial).start()


def test_percent_expressions_resolve(devhost: DevHost, settings):
    assert devhost.functions["work"].queue_name == settings["WORK_QUEUE"]
    assert devhost.functions["work_failed"].queue_name == settings["WORK_QUEUE"] + "-poison"
    assert devhost.functions["tick"].schedule.expression == settings["TICK_SCHEDULE"]
    assert [o.queue_name for o in devhost.functions["enqueue"].outputs] == [settings["RAW_QUEUE"]]
