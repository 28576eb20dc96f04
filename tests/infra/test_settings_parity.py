"""Settings parity: shared/config.py <-> local.settings.example.json <-> the Bicep app settings.

Everything is derived from the registry (`SETTINGS`, `SETTING_PATTERNS`), so a setting added to
shared/config.py fails here until it is declared in both places (or scoped "local"). The known
mappings, and nothing else, bridge the differences:

- `AzureWebJobsStorage` (a connection string locally) is identity-based in Azure:
  `AzureWebJobsStorage__credential|__clientId|__blobServiceUri|__queueServiceUri|__tableServiceUri`.
- `FUNCTIONS_WORKER_RUNTIME` is local only on Flex (functionAppConfig.runtime); Premium sets it,
  with the other platform settings of its content share, in `premiumAppSettings` only.
- `APPLICATIONINSIGHTS_*` are the platform's monitoring settings.
- `AzureWebJobs.<function>.Disabled` switches one function off.
- `GRAPH_CLIENT_SECRET_<NAME>` / `GRAPH_CLIENT_CERT_<NAME>` match `SETTING_PATTERNS`.
- `OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID` belongs to App Service Authentication (`authAppSettings`).
- `FUNCTIONS_REQUEST_BODY_SIZE_LIMIT` and `PYTHON_ENABLE_OPENTELEMETRY` are the Functions host's and
  the Python worker's own settings (`hostAppSettings`); Core Tools honours them too, so the local
  example carries them with the same values.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Iterable, Pattern

import pytest

from shared.config import SETTING_PATTERNS, SETTINGS, SettingSpec
from tests.infra import LOCAL_SETTINGS_EXAMPLE, BicepFile, BicepSetting, app_settings, bicep_files, text

STORAGE = "AzureWebJobsStorage"
STORAGE_IDENTITY_SETTINGS = {f"{STORAGE}__{s}" for s in
                             ("credential", "clientId", "blobServiceUri", "queueServiceUri", "tableServiceUri")}
DISABLED = re.compile(r"^AzureWebJobs\.[A-Za-z_][A-Za-z0-9_]*\.Disabled$")
APPINSIGHTS = re.compile(r"^APPLICATIONINSIGHTS_[A-Z_]+$")
# Platform settings allowed in Bicep only, each in the one variable that owns it.
PLATFORM_SETTINGS = {
    "FUNCTIONS_WORKER_RUNTIME": "premiumAppSettings",
    "FUNCTIONS_EXTENSION_VERSION": "premiumAppSettings",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING": "premiumAppSettings",
    "WEBSITE_CONTENTSHARE": "premiumAppSettings",
    "WEBSITE_SKIP_CONTENTSHARE_VALIDATION": "premiumAppSettings",
    "OVERRIDE_USE_MI_FIC_ASSERTION_CLIENTID": "authAppSettings",
    "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT": "hostAppSettings",
    "PYTHON_ENABLE_OPENTELEMETRY": "hostAppSettings",
}
# Host and worker settings that behave the same under Core Tools: local and Bicep values must match.
HOST_SETTINGS = tuple(name for name, owner in PLATFORM_SETTINGS.items() if owner == "hostAppSettings")
KEY_VAULT_REFERENCE = re.compile(r"keyVaultReference\(|@Microsoft\.KeyVault\(")


@dataclass
class Sources:
    settings: tuple[SettingSpec, ...]
    patterns: tuple[Pattern[str], ...]
    local: dict[str, object]  # the whole local.settings.example.json document
    bicep: list[BicepSetting]
    bicep_vars: dict[str, str] = field(default_factory=dict)  # var name -> source text of its value


def _bicep_value_is(expression: str, expected: str, variables: dict[str, str]) -> bool:
    """A Bicep app setting value (source text) equals `expected`: a string literal, or string(<int
    literal or var holding one>)."""
    expression = expression.strip()
    call = re.fullmatch(r"string\((\w+)\)", expression)
    if call:
        inner = variables.get(call.group(1), call.group(1)).strip()
        return inner == expected
    return expression == f"'{expected}'"


def matches_pattern(name: str, patterns: Iterable[Pattern[str]]) -> bool:
    return any(p.match(name) for p in patterns)


def parity_problems(src: Sources) -> list[str]:
    problems: list[str] = []
    registry = {s.name: s for s in src.settings}
    values = src.local.get("Values")
    if src.local.get("IsEncrypted") is not False or not isinstance(values, dict):
        return ["local.settings.example.json needs \"IsEncrypted\": false and a \"Values\" object"]
    for name, value in values.items():
        if not isinstance(value, str):
            problems.append(f"local: {name} must be a string (Core Tools rejects other types)")
        if "__" in name or ":" in name:
            problems.append(f"local: {name} contains '__' or ':', which local.settings.json does not allow")
    bicep: dict[str, list[BicepSetting]] = {}
    for s in src.bicep:
        bicep.setdefault(s.name, []).append(s)

    # registry -> both files
    for spec in src.settings:
        in_local, in_bicep = spec.name in values, spec.name in bicep
        if spec.scope in ("app", "host"):
            if not in_local:
                problems.append(f"{spec.name} ({spec.scope}) is missing from local.settings.example.json")
            if spec.name == STORAGE:
                missing = STORAGE_IDENTITY_SETTINGS - bicep.keys()
                if missing:
                    problems.append(f"Bicep lacks the identity-based storage settings {sorted(missing)}")
                if in_bicep:
                    problems.append(f"Bicep sets {STORAGE} itself; in Azure it must be identity-based (__*)")
            elif not in_bicep:
                problems.append(f"{spec.name} ({spec.scope}) is missing from the Bicep app settings")
        elif spec.scope == "local":
            if not in_local:
                problems.append(f"{spec.name} (local) is missing from local.settings.example.json")
            if in_bicep:
                problems.append(f"{spec.name} is scoped local but appears in the Bicep app settings")
        else:
            problems.append(f"{spec.name} has unknown scope {spec.scope!r}")
        if spec.secret and spec.name != STORAGE:
            for s in bicep.get(spec.name, []):
                if not KEY_VAULT_REFERENCE.search(s.value):
                    problems.append(f"secret {spec.name} is not a Key Vault reference in Bicep: {s.value!r}")
        if spec.scope == "host" and spec.default and in_local and values[spec.name] != spec.default:
            problems.append(f"local: {spec.name} is {values[spec.name]!r}, the registry default is {spec.default!r}")

    # host settings: the same value locally and in Azure
    for name in HOST_SETTINGS:
        in_bicep = [s.value for s in bicep.get(name, [])]
        if name not in values:
            problems.append(f"local: {name} (a host setting) is missing from local.settings.example.json")
        elif in_bicep and not all(_bicep_value_is(v, str(values[name]), src.bicep_vars) for v in in_bicep):
            problems.append(f"local: {name} is {values[name]!r}, Bicep sets {in_bicep}")

    # local -> registry or known mapping
    for name in values:
        if name in registry or name == "FUNCTIONS_WORKER_RUNTIME" or name in HOST_SETTINGS or DISABLED.match(name) \
                or APPINSIGHTS.match(name) or matches_pattern(name, src.patterns):
            continue
        problems.append(f"local: {name} is neither a registry setting nor a known mapping")
    if values.get("FUNCTIONS_WORKER_RUNTIME") != "python":
        problems.append("local: FUNCTIONS_WORKER_RUNTIME must be 'python'")

    # Bicep -> registry or known mapping
    for name, occurrences in bicep.items():
        if name in registry:
            continue  # scope checked above
        if name in STORAGE_IDENTITY_SETTINGS or APPINSIGHTS.match(name) or DISABLED.match(name):
            continue
        if matches_pattern(name, src.patterns):
            for s in occurrences:
                if not KEY_VAULT_REFERENCE.search(s.value):
                    problems.append(f"Bicep: {name} is not a Key Vault reference: {s.value!r}")
            continue
        owner = PLATFORM_SETTINGS.get(name)
        if owner is not None:
            wrong = sorted({s.variable for s in occurrences} - {owner})
            if wrong:
                problems.append(f"Bicep: {name} may only be set in {owner}, found in {wrong}")
            continue
        problems.append(f"Bicep: {name} (in {occurrences[0].variable}) is neither a registry setting nor a "
                        "known mapping")
    return problems


# --- the real files ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files() -> list[BicepFile]:
    return bicep_files()


@pytest.fixture(scope="module")
def sources(files) -> Sources:
    assert LOCAL_SETTINGS_EXAMPLE.exists(), "local.settings.example.json is missing"
    local = json.loads(LOCAL_SETTINGS_EXAMPLE.read_text(encoding="utf-8"))
    variables = {v.name: text(v.value) for f in files for v in f.variables().values()}
    return Sources(SETTINGS, SETTING_PATTERNS, local, app_settings(files), variables)


def test_settings_are_in_parity(sources):
    assert not parity_problems(sources)


def test_bicep_app_settings_are_found(sources):
    # Guards the reader itself: if the convention changed, the parity test would pass vacuously.
    names = {s.name for s in sources.bicep}
    assert STORAGE_IDENTITY_SETTINGS <= names
    assert {"RENEW_SCHEDULE", "SWEEP_SCHEDULE", "GRAPH_CLIENTS", "PUBLIC_BASE_URL"} <= names
    assert {"GRAPH_CLIENT_SECRET_X", "GRAPH_CLIENT_CERT_X"} <= names


def test_every_app_settings_variable_reaches_the_site(files, sources):
    for f in files:
        for var in f.variables().values():
            if var.name.endswith("AppSettings"):
                assert f.identifier_uses(var.name, outside=var.node) >= 1, f"{f.label}: {var.name} is never used"


def test_host_schedule_defaults_are_the_bicep_defaults(files):
    literals = set().union(*(f.string_literals() for f in files))
    for spec in SETTINGS:
        if spec.scope == "host" and spec.default:
            assert spec.default in literals, f"Bicep has no default {spec.default!r} for {spec.name}"


def test_appinsights_uses_entra_auth(sources):
    values = {s.name: s.value for s in sources.bicep}
    assert "Authorization=AAD" in values["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert "ClientId=${identityClientId}" in values["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" in values
    assert values["AzureWebJobsStorage__credential"] == "'managedidentity'"


# --- the check can fail -----------------------------------------------------------------------

def _fake(sources: Sources, **changes) -> Sources:
    return Sources(**{**sources.__dict__, **changes})


def test_a_new_registry_setting_must_be_declared_everywhere(sources):
    added = (*sources.settings, SettingSpec("NEW_TUNING", "1", False, "app"))
    problems = parity_problems(_fake(sources, settings=added))
    assert any("NEW_TUNING" in p and "local.settings" in p for p in problems)
    assert any("NEW_TUNING" in p and "Bicep" in p for p in problems)


def test_a_local_setting_must_stay_out_of_bicep(sources):
    local_only = tuple(SettingSpec(s.name, s.default, s.secret, "local") if s.name == "CUSTOM_SELECT" else s
                       for s in sources.settings)
    assert any("CUSTOM_SELECT is scoped local" in p for p in parity_problems(_fake(sources, settings=local_only)))


def test_unknown_names_are_reported_in_both_directions(sources):
    local = json.loads(json.dumps(sources.local))
    local["Values"]["STRAY_SETTING"] = "x"
    local["Values"]["AzureWebJobs.sweep_inbox.Disabled"] = "true"  # a known mapping: fine
    local["Values"]["GRAPH_CLIENT_SECRET_OTHER"] = "x"  # a pattern: fine
    bicep = [*sources.bicep, BicepSetting("ORPHAN", "'1'", "extraAppSettings", "x.bicep")]
    problems = parity_problems(_fake(sources, local=local, bicep=bicep))
    assert [p for p in problems if "STRAY_SETTING" in p or "ORPHAN" in p] == problems and len(problems) == 2


def test_storage_mapping_and_key_vault_references_are_enforced(sources):
    bicep = [s for s in sources.bicep if s.name != "AzureWebJobsStorage__clientId"]
    bicep.append(BicepSetting("AzureWebJobsStorage", "'DefaultEndpointsProtocol=https;...'", "x", "x.bicep"))
    bicep = [BicepSetting(s.name, "webhookKey", s.variable, s.file) if s.name == "WEBHOOK_KEY" else s for s in bicep]
    bicep.append(BicepSetting("FUNCTIONS_WORKER_RUNTIME", "'python'", "storageAppSettings", "x.bicep"))
    problems = parity_problems(_fake(sources, bicep=bicep))
    assert any("__clientId" in p for p in problems)
    assert any("identity-based" in p for p in problems)
    assert any("WEBHOOK_KEY is not a Key Vault reference" in p for p in problems)
    assert any("FUNCTIONS_WORKER_RUNTIME may only be set in premiumAppSettings" in p for p in problems)


def test_local_file_shape_is_enforced(sources):
    local = json.loads(json.dumps(sources.local))
    local["Values"]["SWEEP_GRACE_SECONDS"] = 300
    local["Values"]["RENEW_SCHEDULE"] = "0 */5 * * * *"
    del local["Values"]["FUNCTIONS_WORKER_RUNTIME"]
    problems = parity_problems(_fake(sources, local=local))
    assert any("must be a string" in p for p in problems)
    assert any("registry default" in p for p in problems)
    assert any("FUNCTIONS_WORKER_RUNTIME" in p for p in problems)
    assert parity_problems(_fake(sources, local={"Values": []}))


def test_host_settings_must_match_between_local_and_bicep(sources):
    local = json.loads(json.dumps(sources.local))
    local["Values"]["FUNCTIONS_REQUEST_BODY_SIZE_LIMIT"] = "104857600"
    del local["Values"]["PYTHON_ENABLE_OPENTELEMETRY"]
    problems = parity_problems(_fake(sources, local=local))
    assert any("FUNCTIONS_REQUEST_BODY_SIZE_LIMIT is '104857600'" in p for p in problems)
    assert any("PYTHON_ENABLE_OPENTELEMETRY (a host setting) is missing" in p for p in problems)
    bicep = [s for s in sources.bicep if s.name != "PYTHON_ENABLE_OPENTELEMETRY"]
    bicep.append(BicepSetting("PYTHON_ENABLE_OPENTELEMETRY", "'false'", "hostAppSettings", "x.bicep"))
    assert any("PYTHON_ENABLE_OPENTELEMETRY is 'true', Bicep sets" in p
               for p in parity_problems(_fake(sources, bicep=bicep)))
