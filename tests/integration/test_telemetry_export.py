"""APPLICATIONINSIGHTS_CONNECTION_STRING: traces, logs and metrics through the real Azure Monitor
OpenTelemetry distribution, to an ingestion endpoint on loopback that records what it is sent.

The app runs in a child process (the distribution configures process-wide providers and handlers,
once per worker): one mail through the real MessageProcessor and the Lime CRM adapter against the
Lime simulator, which answers one 429. The envelopes must carry the mail's correlation id on its
request span, its dependency spans and its log lines, and the metrics must include mails received
and processed, CRM call durations and the 429.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORRELATION = "corr-telemetry-0001"

CHILD = textwrap.dedent('''
    import asyncio, json, logging, os, sys
    from datetime import timedelta
    sys.path.insert(0, os.environ["APP_ROOT"])
    from shared import telemetry
    from shared.adapters.crm_lime import LimeCrm
    from shared.config import Settings
    from shared.domain.envelope import MessageJob
    from shared.domain.mail import Address, InboundMail
    from shared.domain.model import Mailbox
    from shared.services.process import MessageProcessor, ProcessDeps
    from tests.fakes import FakeClock, FakeLedger, FakeMail, FakeQueue, FakeRegistry
    from tools.sim.lime import LimeSim

    settings = Settings.from_env({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "s" * 20,
        "PUBLIC_BASE_URL": "https://x.example",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": os.environ["TEST_CONNECTION_STRING"]})
    assert telemetry.configure(settings), telemetry._state.error
    assert telemetry.configure(settings)  # once per worker: a second call changes nothing
    logging.getLogger("inbox").setLevel(logging.INFO)

    async def nosleep(seconds):
        pass

    async def main():
        sim = LimeSim().start()
        sim.faults.add(429, method="GET", path_regex="query", retry_after=0)
        crm = LimeCrm(sim.lime_url, sim.api_key, sleep=nosleep)
        clock = FakeClock()
        box = Mailbox(id="box-1", address="support@contoso.example", client="demo", tenant_id="t")
        mail = FakeMail()
        mail.put(box, InboundMail(
            mailbox_id=box.id, message_id="m1", internet_message_id="<m1@customer.example>",
            sender=Address("anna@customer.example", "Anna"), subject="Printer broken",
            received_at=clock.now() - timedelta(minutes=1), body_content_type="text", body="Broken.",
            parent_folder_id=FakeMail.INBOX))
        processor = MessageProcessor(ProcessDeps(registry=FakeRegistry(box), ledger=FakeLedger(clock), mail=mail,
                                                 crm=crm, queue=FakeQueue(), clock=clock))
        job = MessageJob(mailbox_id=box.id, message_id="m1", correlation_id=os.environ["TEST_CORRELATION"])
        with telemetry.job_scope(job, "process_message"):
            outcome = await processor.run(job)
        await crm.close()
        sim.stop()
        return outcome.status

    status = asyncio.run(main())
    telemetry.flush()
    print(json.dumps({"status": status}))
''')


class Ingestion:
    """An Application Insights ingestion endpoint on loopback: accepts and keeps every envelope."""

    def __init__(self) -> None:
        self.envelopes: list[dict] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                items = []
                if self.path.startswith("/v2.1/track"):
                    try:
                        items = json.loads(body)
                    except ValueError:
                        items = []
                    with owner.lock:
                        owner.envelopes.extend(i for i in items if isinstance(i, dict))
                answer = json.dumps({"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def of(self, kind: str) -> list[dict]:
        with self.lock:
            return [e for e in self.envelopes if e.get("name") == f"Microsoft.ApplicationInsights.{kind}"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ingestion():
    server = Ingestion()
    yield server
    server.close()


def test_traces_logs_and_metrics_reach_application_insights_with_the_correlation_id(ingestion, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    env.update({
        "APP_ROOT": str(ROOT), "TEST_CORRELATION": CORRELATION,
        "TEST_CONNECTION_STRING": f"InstrumentationKey=00000000-0000-0000-0000-000000000009;"
                                  f"IngestionEndpoint={ingestion.url};LiveEndpoint={ingestion.url}",
        # loopback only: no statsbeat, no remote configuration, no VM metadata probe
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true", "FUNCTIONS_WORKER_RUNTIME": "python",
        "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
        # keep every span (the distribution's default rate-limited sampler may drop the first ones)
        "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "TMPDIR": str(tmp_path),  # the exporter's offline storage stays this test's own
    })
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"status": "processed"}

    def metric_names() -> set[str]:
        return {m.get("name") for e in ingestion.of("Metric") for m in e["data"]["baseData"].get("metrics", [])}
    deadline = time.monotonic() + 30
    wanted = {"inbox.mails.received", "inbox.mails.processed", "inbox.crm.duration", "inbox.throttled"}
    while not (wanted <= metric_names() and ingestion.of("Request") and ingestion.of("Message")) \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wanted <= metric_names(), metric_names()
    throttled = [e["data"]["baseData"] for e in ingestion.of("Metric")
                 if e["data"]["baseData"]["metrics"][0]["name"] == "inbox.throttled"]
    assert throttled[0]["properties"]["service"] == "crm" and throttled[0]["metrics"][0]["value"] == 1

    [request] = [e for e in ingestion.of("Request") if e["data"]["baseData"]["name"] == "process_message"]
    assert request["data"]["baseData"]["properties"]["inbox.correlation_id"] == CORRELATION
    operation = request["tags"]["ai.operation.id"]
    crm_calls = [e for e in ingestion.of("RemoteDependency") if e["data"]["baseData"]["name"].startswith("crm ")]
    assert crm_calls and all(e["tags"]["ai.operation.id"] == operation for e in crm_calls)
    assert {e["data"]["baseData"]["properties"]["inbox.correlation_id"] for e in crm_calls} == {CORRELATION}
    assert any(e["data"]["baseData"]["name"] == "crm GET /query/" for e in crm_calls)

    lines = [e["data"]["baseData"] for e in ingestion.of("Message")]
    processed = [line for line in lines if line["message"].startswith("process.processed")]
    assert processed and f"correlation={CORRELATION}" in processed[0]["message"]
    assert processed[0]["properties"]["correlation_id"] == CORRELATION
    assert processed[0]["properties"]["message_id"] == "m1"
