"""Telemetry the Functions way: the worker owns the invocation's trace context.

With host.json `telemetryMode: OpenTelemetry` the host traces each invocation, and with
PYTHON_ENABLE_OPENTELEMETRY=true the Python worker, before calling the function, extracts the
invocation's W3C trace context (traceparent/tracestate from the host) with OpenTelemetry's
TraceContextTextMapPropagator and attaches it (azure_functions_runtime/otel.py
configure_opentelemetry; the 3.11 worker does the same). The child process below does exactly that
and then runs a queue job through `job_scope`, as functions/mail_processor.py does, against the
real Azure Monitor distribution and an ingestion endpoint on loopback:

- the job's request span is a child of the host's invocation span (same operation id, parent id
  the host's span id), and so are its dependency spans and `inbox.*` log lines;
- the correlation id is still on the request, on each dependency and on each log line.

A second child shows that an SDK set up before the app (as the worker does with
PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY) is used, not configured a second time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.test_telemetry_export import ROOT, Ingestion

CORRELATION = "corr-worker-ctx-0001"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
HOST_SPAN_ID = "00f067aa0ba902b7"

CHILD = textwrap.dedent('''
    import asyncio, json, logging, os, sys
    sys.path.insert(0, os.environ["APP_ROOT"])
    from shared import telemetry
    from shared.config import Settings
    from shared.domain.envelope import MessageJob

    if os.environ.get("TEST_PRESET_SDK"):
        # what the worker does with PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: the distribution first
        from azure.monitor.opentelemetry import configure_azure_monitor
        configure_azure_monitor(connection_string=os.environ["TEST_CONNECTION_STRING"], logger_name="inbox")
    from opentelemetry import trace
    preset = trace.get_tracer_provider()

    settings = Settings.from_env({
        "AzureWebJobsStorage": "UseDevelopmentStorage=true", "CLIENT_STATE_KEYS": "1:" + "s" * 20,
        "PUBLIC_BASE_URL": "https://x.example",
        "APPLICATIONINSIGHTS_CONNECTION_STRING": os.environ["TEST_CONNECTION_STRING"]})
    assert telemetry.configure(settings), telemetry._state.error
    same_provider = trace.get_tracer_provider() is preset
    logging.getLogger("inbox").setLevel(logging.INFO)
    log = logging.getLogger("inbox.process")

    # the worker, per invocation (azure_functions_runtime/otel.py configure_opentelemetry)
    from opentelemetry import context as context_api
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    carrier = {"traceparent": os.environ["TEST_TRACEPARENT"], "tracestate": ""}
    context_api.attach(TraceContextTextMapPropagator().extract(carrier))

    async def call_graph():
        return None

    async def invocation():
        job = MessageJob(mailbox_id="box-1", message_id="m1", correlation_id=os.environ["TEST_CORRELATION"])
        with telemetry.job_scope(job, "process_message"):
            log.info("process.fetched message_id=m1")
            await telemetry.timed(call_graph, "graph", "GET users/{id}/messages/{id}")()
            log.info("process.processed message_id=m1")

    asyncio.run(invocation())
    telemetry.flush()
    print(json.dumps({"same_provider": same_provider}))
''')


def run_child(ingestion: Ingestion, tmp_path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPLICATIONINSIGHTS_", "OTEL_"))}
    env.update({
        "APP_ROOT": str(ROOT), "TEST_CORRELATION": CORRELATION,
        "TEST_TRACEPARENT": f"00-{TRACE_ID}-{HOST_SPAN_ID}-01",
        "TEST_CONNECTION_STRING": f"InstrumentationKey=00000000-0000-0000-0000-000000000009;"
                                  f"IngestionEndpoint={ingestion.url};LiveEndpoint={ingestion.url}",
        "APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED": "true",
        "APPLICATIONINSIGHTS_SDKSTATS_DISABLED": "true", "FUNCTIONS_WORKER_RUNTIME": "python",
        "PYTHON_ENABLE_OPENTELEMETRY": "true", "OTEL_EXPERIMENTAL_RESOURCE_DETECTORS": "azure_app_service",
        "OTEL_TRACES_SAMPLER": "microsoft.fixed_percentage", "OTEL_TRACES_SAMPLER_ARG": "1.0",
        "TMPDIR": str(tmp_path), **extra,
    })
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    deadline = time.monotonic() + 30
    while not (ingestion.of("Request") and len(ingestion.of("Message")) >= 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    return result


@pytest.fixture
def ingestion():
    server = Ingestion()
    yield server
    server.close()


def test_the_jobs_spans_and_log_lines_join_the_hosts_invocation_trace(ingestion, tmp_path):
    run_child(ingestion, tmp_path)
    [request] = [e for e in ingestion.of("Request") if e["data"]["baseData"]["name"] == "process_message"]
    assert request["tags"]["ai.operation.id"] == TRACE_ID
    assert request["tags"]["ai.operation.parentId"] == HOST_SPAN_ID
    assert request["data"]["baseData"]["properties"]["inbox.correlation_id"] == CORRELATION

    [graph] = [e for e in ingestion.of("RemoteDependency") if e["data"]["baseData"]["name"].startswith("graph ")]
    assert graph["tags"]["ai.operation.id"] == TRACE_ID
    assert graph["tags"]["ai.operation.parentId"] == request["data"]["baseData"]["id"]
    assert graph["data"]["baseData"]["properties"]["inbox.correlation_id"] == CORRELATION

    lines = [e for e in ingestion.of("Message") if e["data"]["baseData"]["message"].startswith("process.")]
    assert len(lines) == 2
    for line in lines:
        assert line["tags"]["ai.operation.id"] == TRACE_ID
        assert f"correlation={CORRELATION}" in line["data"]["baseData"]["message"]
        assert line["data"]["baseData"]["properties"]["correlation_id"] == CORRELATION


def test_an_sdk_the_worker_set_up_is_used_not_configured_again(ingestion, tmp_path):
    result = run_child(ingestion, tmp_path, TEST_PRESET_SDK="1")
    assert result["same_provider"] is True
    # a second configure_azure_monitor would try to replace the global providers (refused, with this
    # warning) and start a second set of exporters
    assert "Overriding of current" not in result["stderr"], result["stderr"][-2000:]
    requests = [e for e in ingestion.of("Request") if e["data"]["baseData"]["name"] == "process_message"]
    assert len(requests) == 1  # one exporter pipeline: not sent twice
    processed = [e for e in ingestion.of("Message") if e["data"]["baseData"]["message"].startswith("process.processed")]
    assert len(processed) == 1, [e["data"]["baseData"]["message"] for e in processed]  # one log handler
    assert requests[0]["tags"]["ai.operation.id"] == TRACE_ID
