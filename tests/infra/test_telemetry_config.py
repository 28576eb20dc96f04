"""Telemetry configuration the Functions way (host.json and the app settings in infra/).

- host.json `telemetryMode: OpenTelemetry`: the host traces each invocation with OpenTelemetry.
- PYTHON_ENABLE_OPENTELEMETRY=true (hostAppSettings): the worker attaches that trace context before
  calling the function (tests/integration/test_telemetry_worker_context.py shows what follows).
- host.json's logging keeps successful invocations: `Host.Results` (the category behind the
  requests table in Application Insights) and `Function` log at Information or below, and sampling
  never drops requests or exceptions.
"""
from __future__ import annotations

import json

from tests.infra import HOST_JSON, app_settings, bicep_files

LEVELS = ["Trace", "Debug", "Information", "Warning", "Error", "Critical", "None"]


def host_json_problems(host: dict) -> list[str]:
    problems = []
    if host.get("telemetryMode") != "OpenTelemetry":
        problems.append(f"telemetryMode is {host.get('telemetryMode')!r}, not 'OpenTelemetry'")
    levels = (host.get("logging") or {}).get("logLevel") or {}
    default = levels.get("default", "Information")
    for category in ("Host.Results", "Function"):
        level = levels.get(category, default)
        if LEVELS.index(level) > LEVELS.index("Information"):
            problems.append(f"logLevel {category} is {level}: successful invocations would be dropped")
    sampling = ((host.get("logging") or {}).get("applicationInsights") or {}).get("samplingSettings") or {}
    if sampling.get("isEnabled", True):
        excluded = {t.strip() for t in str(sampling.get("excludedTypes", "")).split(";")}
        if not {"Request", "Exception"} <= excluded:
            problems.append(f"sampling may drop requests or exceptions (excludedTypes {sorted(excluded)})")
    return problems


def test_host_json_traces_with_opentelemetry_and_keeps_successful_invocations():
    assert not host_json_problems(json.loads(HOST_JSON.read_text(encoding="utf-8")))


def test_the_worker_owns_the_trace_context_in_azure():
    settings = {s.name: s.value for s in app_settings(bicep_files())}
    assert settings["PYTHON_ENABLE_OPENTELEMETRY"] == "'true'"
    # the app configures the distribution itself (with the identity's Entra token); the worker's own
    # distribution switch stays off so that nothing is set up twice
    assert "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY" not in settings


def test_the_check_finds_dropped_invocations():
    old = {"logging": {"logLevel": {"default": "Information", "Host.Results": "Error"},
                       "applicationInsights": {"samplingSettings": {"isEnabled": True, "excludedTypes": "Exception"}}}}
    problems = host_json_problems(old)
    assert any("telemetryMode" in p for p in problems)
    assert any("Host.Results is Error" in p for p in problems)
    assert any("sampling may drop" in p for p in problems)
