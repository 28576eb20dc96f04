"""The Lime simulator's equality index answers `=` queries exactly as a scan would (tools/sim/lime.py)."""
from __future__ import annotations

import json
import random

import httpx
import pytest

from tools.sim.lime import DEMO_API_KEY, LimeSim


@pytest.fixture(scope="module")
def sim():
    server = LimeSim().start()
    yield server
    server.stop()


def query(client: httpx.Client, flt: dict) -> httpx.Response:
    q = {"limetype": "person", "responseFormat": {"object": {"_id": "", "email": ""}}, "filter": flt,
         "limit": 100, "offset": 0}
    return client.get("query/", params={"q": json.dumps(q)})


def test_equality_queries_match_a_scan_through_creates_updates_and_deletes(sim):
    sim.reset()
    rng = random.Random(8)
    client = httpx.Client(base_url=sim.lime_url + "/api/v1", headers={"x-api-key": DEMO_API_KEY})
    emails = [f"user{i % 7}@Example.com" for i in range(40)]
    ids = [sim.create("person", {"firstname": "A", "lastname": str(i), "email": e})["_id"]
           for i, e in enumerate(emails)]
    assert query(client, {"key": "email", "op": "=", "exp": "user1@example.com"}).status_code == 200  # index built
    for _ in range(30):
        oid = rng.choice(ids)
        if rng.random() < 0.3:
            assert client.delete(f"limeobject/person/{oid}/").status_code in (204, 404)
        else:
            new = f"USER{rng.randrange(7)}@example.com"
            assert client.put(f"limeobject/person/{oid}/", json={"email": new}).status_code in (200, 404)
        ids.append(sim.create("person", {"firstname": "B", "lastname": "x", "email": rng.choice(emails)})["_id"])
    for k in range(7):
        wanted = f"user{k}@example.com"
        got = [o["_id"] for o in query(client, {"key": "email", "op": "=", "exp": wanted.upper()}).json()["objects"]]
        scanned = [o["_id"] for o in sim.objects("person") if str(o.get("email")).casefold() == wanted]
        assert got == scanned
        both = {"op": "AND", "exp": [{"key": "email", "op": "=", "exp": wanted}, {"key": "firstname", "op": "=", "exp": "B"}]}
        got = [o["_id"] for o in query(client, both).json()["objects"]]
        assert got == [o["_id"] for o in sim.objects("person")
                       if str(o.get("email")).casefold() == wanted and o.get("firstname") == "B"]
    assert query(client, {"key": "email", "op": "=", "exp": "nobody@example.com"}).json()["objects"] == []
    bad = {"op": "AND", "exp": [{"key": "email", "op": "=", "exp": "nobody@example.com"},
                                {"key": "nosuchproperty", "op": "=", "exp": "x"}]}
    assert query(client, bad).status_code == 400
    client.close()
