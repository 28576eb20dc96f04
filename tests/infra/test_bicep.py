"""infra/ parses and declares what it must (issue 7).

Every check is a function returning a list of problems, run once on the real files and once on a
deliberately bad snippet, so a check that cannot fail is itself a failing test.
"""
from __future__ import annotations

import json
import re

import pytest

from tests.infra import (
    HOST_JSON,
    INFRA,
    MAIN_BICEP,
    CLI_PARAMETERS,
    MAIN_PARAMETERS,
    ROOT,
    BicepFile,
    bicep_files,
    find_properties,
    module_call_params,
    string_value,
    text,
    walk,
)

QUEUES = ("inbox-messages", "inbox-autoreplies", "inbox-lifecycle", "inbox-recovery")
TABLES = ("mailboxes", "subscriptions", "ledger", "synclog", "recoverytasks", "ratelimits", "crmperson",
          "crmcompany", "crmhelpdesk", "crmhistory", "crmdocument", "crmcounter")
CONTAINERS = ("crm-files",)
ROLES = {  # built-in role name -> role definition id
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
}
REQUIRED_TYPES = (
    "Microsoft.Web/sites",
    "Microsoft.Web/serverfarms",
    "Microsoft.Storage/storageAccounts",
    "Microsoft.Storage/storageAccounts/queueServices",
    "Microsoft.Storage/storageAccounts/queueServices/queues",
    "Microsoft.Storage/storageAccounts/tableServices",
    "Microsoft.Storage/storageAccounts/tableServices/tables",
    "Microsoft.Storage/storageAccounts/blobServices/containers",
    "Microsoft.ManagedIdentity/userAssignedIdentities",
    "Microsoft.Authorization/roleAssignments",
    "Microsoft.KeyVault/vaults",
    "Microsoft.Insights/components",
    "Microsoft.OperationalInsights/workspaces",
)
SENSITIVE = re.compile(r"key|secret|password|connection", re.IGNORECASE)


@pytest.fixture(scope="module")
def files() -> list[BicepFile]:
    found = bicep_files()
    assert MAIN_BICEP.exists() and len(found) > 1, "infra/main.bicep and its modules are missing"
    return found


def by_name(files: list[BicepFile], relative: str) -> BicepFile:
    return next(f for f in files if f.label == f"infra/{relative}")


def snippet(source: str) -> list[BicepFile]:
    return [BicepFile.from_source(source)]


# --- checks -----------------------------------------------------------------------------------

def check_syntax(files: list[BicepFile]) -> list[str]:
    return [f"{f.label}:{e}" for f in files for e in f.errors()]


def check_param_descriptions(files: list[BicepFile]) -> list[str]:
    return [f"{f.label}:{p.line} param {p.name} has no @description"
            for f in files for p in f.params().values() if "description" not in p.decorators]


def check_no_list_functions(files: list[BicepFile]) -> list[str]:
    """No listKeys( (nor any list*() resource function) in source or in the syntax tree."""
    problems = []
    for f in files:
        if re.search(r"listKeys\s*\(", f.source, re.IGNORECASE):
            problems.append(f"{f.label}: listKeys( in source")
        for node in walk(f.root):
            if node.type == "call_expression":
                fn = node.child_by_field_name("function")
                name = text(fn).rsplit(".", 1)[-1]
                if re.fullmatch(r"list[A-Z]\w*|list", name):
                    problems.append(f"{f.label}:{node.start_point[0] + 1} calls {name}()")
    return problems


def check_outputs_not_sensitive(files: list[BicepFile]) -> list[str]:
    problems = []
    for f in files:
        for out in f.outputs().values():
            if "secure" in out.decorators:
                problems.append(f"{f.label}: output {out.name} is @secure (outputs must hold no secrets)")
            if SENSITIVE.search(out.name) or SENSITIVE.search(text(out.value)):
                problems.append(f"{f.label}: output {out.name} = {text(out.value)!r} mentions key/secret/"
                                "password/connection")
    return problems


def check_resource_types(files: list[BicepFile], required=REQUIRED_TYPES) -> list[str]:
    declared = {t for f in files for t, _ in f.resources()}
    return [f"no resource of type {t}" for t in required if t not in declared]


def check_names_declared(files: list[BicepFile]) -> list[str]:
    literals = set().union(*(f.string_literals() for f in files))
    wanted = [*QUEUES, *(f"{q}-poison" for q in QUEUES), *TABLES, *CONTAINERS]
    return [f"{name!r} is not declared in infra/" for name in wanted if name not in literals]


def _resources(files: list[BicepFile], type_: str):
    return [(f, node) for f in files for t, node in f.resources() if t == type_]


def _is_true(values) -> bool:
    return bool(values) and all(text(v) == "true" for v in values)


def check_key_vault(files: list[BicepFile]) -> list[str]:
    vaults = _resources(files, "Microsoft.KeyVault/vaults")
    if not vaults:
        return ["no Key Vault"]
    problems = []
    for f, node in vaults:
        if not _is_true(find_properties(node, "enableRbacAuthorization")):
            problems.append(f"{f.label}: Key Vault without enableRbacAuthorization: true")
        if not _is_true(find_properties(node, "enableSoftDelete")):
            problems.append(f"{f.label}: Key Vault without enableSoftDelete: true")
        if not find_properties(node, "enablePurgeProtection"):
            problems.append(f"{f.label}: Key Vault without enablePurgeProtection")
        if find_properties(node, "accessPolicies"):
            problems.append(f"{f.label}: Key Vault uses access policies instead of RBAC")
    return problems


def check_app_insights(files: list[BicepFile]) -> list[str]:
    components = _resources(files, "Microsoft.Insights/components")
    if not components:
        return ["no Application Insights component"]
    return [f"{f.label}: Application Insights without disableLocalAuth: true" for f, node in components
            if not _is_true(find_properties(node, "disableLocalAuth", case_sensitive=False))]


def check_role_assignments(files: list[BicepFile], roles=ROLES) -> list[str]:
    """Each role id is a named var with a trailing comment naming the role, used by an assignment
    whose name is guid(<scope>.id, <principal>, <role>)."""
    problems = []
    assignments = _resources(files, "Microsoft.Authorization/roleAssignments")
    if not assignments:
        return ["no role assignments"]
    used: set[str] = set()
    for f, node in assignments:
        names = find_properties(node, "name")
        call = names[0] if names else None
        fn = text(call.child_by_field_name("function")) if call is not None and call.type == "call_expression" else ""
        args = call.child_by_field_name("arguments").named_children if fn == "guid" else []
        if fn != "guid" or len(args) != 3 or not text(args[0]).endswith(".id"):
            problems.append(f"{f.label}:{node.start_point[0] + 1} role assignment name is not "
                            f"guid(scope.id, principalId, roleId): {text(call)!r}")
        used |= {text(n) for n in walk(node) if n.type == "identifier"}
    for f in files:
        variables = f.variables()
        for var in variables.values():  # arrays of role vars used as a loop source
            if var.name in used and var.value is not None and var.value.type == "array":
                used |= {text(n) for n in var.value.named_children if n.type == "identifier"}
    for role, guid in roles.items():
        declared = [(f, v) for f in files for v in f.variables().values() if string_value(v.value) == guid]
        if not declared:
            problems.append(f"role {role} ({guid}) is not a named var")
            continue
        f, var = declared[0]
        line = f.source.splitlines()[var.line - 1]
        comment = line.split("//", 1)[1] if "//" in line else ""
        if role.lower() not in comment.lower():
            problems.append(f"{f.label}:{var.line} var {var.name} lacks a trailing comment naming {role!r}")
        if var.name not in used:
            problems.append(f"role {role} (var {var.name}) is not used by any role assignment")
    return problems


def check_modules_resolve(files: list[BicepFile]) -> list[str]:
    """Module and import paths exist; module calls pass only declared params and every required one."""
    problems = []
    for f in files:
        base = f.path.parent if f.path else INFRA
        for node in walk(f.root):
            if node.type == "import_functionality":
                target = base / (string_value(node.named_children[-1]) or "")
                if not target.is_file():
                    problems.append(f"{f.label}: import from missing {target.name}")
                    continue
                if "*" in text(node):
                    continue  # import * as alias
                exported = {d.name for d in BicepFile.load(target).declarations() if "export" in d.decorators}
                for ident in node.named_children[:-1]:
                    if ident.type == "identifier" and text(ident) not in exported:
                        problems.append(f"{f.label}: imports {text(ident)} which {target.name} does not @export()")
        for module in f.modules().values():
            path = string_value(module.node.named_children[1])
            target = base / (path or "")
            if not path or not target.is_file():
                problems.append(f"{f.label}: module {module.name} points to missing {path!r}")
                continue
            declared = BicepFile.load(target).params()
            passed = module_call_params(module)
            for name in passed.keys() - declared.keys():
                problems.append(f"{f.label}: module {module.name} passes unknown param {name}")
            for name, param in declared.items():
                if param.default is None and name not in passed:
                    problems.append(f"{f.label}: module {module.name} omits required param {name}")
    return problems


AZD_REFERENCE = re.compile(r"^\$\{([A-Z][A-Z0-9_]*)(?:=([^}]*))?\}$")


def check_parameters_file(main: BicepFile, raw: str) -> list[str]:
    """Only declared params; no literal value for a @secure() param (a Key Vault reference or an azd
    environment reference `${NAME}` is fine); @allowed values respected, an azd reference's default too."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [f"main.parameters.json is not valid JSON: {exc}"]
    params = main.params()
    problems = []
    for name, entry in data.get("parameters", {}).items():
        param = params.get(name)
        if param is None:
            problems.append(f"main.parameters.json sets {name}, which main.bicep does not declare")
            continue
        value = entry.get("value")
        azd = AZD_REFERENCE.match(value) if isinstance(value, str) else None
        if "secure" in param.decorators and "reference" not in entry and not (azd and azd.group(2) is None):
            problems.append(f"main.parameters.json holds a value for @secure() param {name}")
        allowed = param.decorator("allowed")
        if allowed is not None and "value" in entry:
            options = {text(n).strip("'") for n in walk(allowed) if n.type in ("string", "number")}
            candidate = azd.group(2) if azd else value
            if candidate is not None and str(candidate).lower() not in {o.lower() for o in options}:
                problems.append(f"main.parameters.json: {name}={value!r} is not in @allowed {sorted(options)}")
    return problems


# --- the real files ---------------------------------------------------------------------------

def test_every_bicep_file_parses_without_error_nodes(files):
    assert not check_syntax(files)


def test_every_param_has_a_description(files):
    assert not check_param_descriptions(files)


def test_no_list_keys_anywhere():
    everything = [BicepFile.load(p) for p in sorted(INFRA.rglob("*.bicep"))]
    assert not check_no_list_functions(everything)
    for path in INFRA.rglob("*"):
        if path.is_file():
            assert "listkeys(" not in path.read_text(encoding="utf-8").lower(), path


def test_no_output_mentions_keys_secrets_passwords_or_connections(files):
    assert not check_outputs_not_sensitive(files)


def test_required_resource_types_are_declared(files):
    assert not check_resource_types(files)


def test_queues_tables_and_container_are_declared(files):
    assert not check_names_declared(files)


def test_key_vault_is_in_rbac_mode_with_soft_delete(files):
    assert not check_key_vault(files)


def test_application_insights_accepts_entra_auth_only(files):
    assert not check_app_insights(files)


def test_role_assignments_cover_every_role_with_guid_names(files):
    assert not check_role_assignments(files)


def test_modules_and_imports_resolve(files):
    assert not check_modules_resolve(files)


def test_main_outputs_the_app_name_and_both_webhook_urls(files):
    outputs = by_name(files, "main.bicep").outputs()
    assert "functionAppName" in outputs
    assert text(outputs["notificationUrl"].value).endswith("/api/notifications'")
    assert text(outputs["lifecycleUrl"].value).endswith("/api/lifecycle'")
    assert "?code" not in text(outputs["notificationUrl"].value)


@pytest.mark.parametrize("parameters", [MAIN_PARAMETERS, CLI_PARAMETERS], ids=["azd", "cli"])
def test_parameters_file_is_valid_and_names_only_declared_params(files, parameters):
    assert not check_parameters_file(by_name(files, "main.bicep"), parameters.read_text(encoding="utf-8"))


def test_storage_is_keyless_on_flex(files):
    storage = by_name(files, "app/storage.bicep")
    (_, account), = [(t, n) for t, n in storage.resources() if t == "Microsoft.Storage/storageAccounts"]
    assert [text(v) for v in find_properties(account, "allowSharedKeyAccess")] == ["allowSharedKeyAccess"]
    assert text(storage.params()["allowSharedKeyAccess"].default) == "false"
    passed = module_call_params(by_name(files, "main.bicep").modules()["storage"])
    # shared key only for the Premium plan's content file share
    assert re.fullmatch(r"hostingPlan\s*==\s*'premium'", text(passed["allowSharedKeyAccess"]))


def test_function_app_is_flex_python_311_with_identity_everywhere(files):
    app = by_name(files, "app/function-app.bicep")
    sites = [n for t, n in app.resources() if t == "Microsoft.Web/sites"]
    assert len(sites) == 1
    site = sites[0]
    assert find_properties(site, "keyVaultReferenceIdentity")
    assert text(find_properties(site, "type")[0]) == "'UserAssigned'"
    config = app.variables()["flexFunctionAppConfig"].value
    runtime = find_properties(config, "runtime")[0]
    assert text(find_properties(runtime, "name")[0]) == "'python'"
    assert string_value(app.variables()[text(find_properties(runtime, "version")[0])].value) == "3.11"
    scale = find_properties(config, "scaleAndConcurrency")[0]
    assert find_properties(scale, "maximumInstanceCount") and find_properties(scale, "instanceMemoryMB")
    auth = find_properties(find_properties(config, "deployment")[0], "authentication")[0]
    assert text(find_properties(auth, "type")[0]) == "'UserAssignedIdentity'"
    tiers = {text(v) for t, n in app.resources() if t == "Microsoft.Web/serverfarms" for v in find_properties(n, "tier")}
    assert tiers == {"'FlexConsumption'", "'ElasticPremium'"}
    assert "hostingPlan" in app.params() and "hostingPlan" in by_name(files, "main.bicep").params()


def test_app_service_authentication_is_optional_and_spares_the_webhooks(files):
    main, app = by_name(files, "main.bicep"), by_name(files, "app/function-app.bicep")
    assert text(main.params()["enableAuth"].default) == "false"
    (auth,) = [n for t, n in app.resources() if t == "Microsoft.Web/sites/config"
               and "authsettingsV2" in {string_value(v) for v in find_properties(n, "name")}]
    assert "if (enableAuth)" in text(auth)
    excluded = {string_value(v) for v in walk(find_properties(auth, "excludedPaths")[0]) if v.type == "string"}
    assert excluded == {"/api/notifications", "/api/lifecycle"}


def test_instance_count_is_derived_from_graph_limit_and_host_json(files):
    main = by_name(files, "main.bicep")
    variables = main.variables()
    assert text(variables["graphConcurrentRequestsPerMailbox"].value) == "4"
    assert "loadJsonContent('../host.json')" in text(variables["hostJson"].value)
    assert "graphMailboxConcurrency" in text(variables["perInstanceMailboxConcurrency"].value)
    from shared.config import SETTINGS
    default = next(s.default for s in SETTINGS if s.name == "GRAPH_MAILBOX_CONCURRENCY")
    assert text(main.params()["graphMailboxConcurrency"].default) == default
    queues = json.loads(HOST_JSON.read_text(encoding="utf-8"))["extensions"]["queues"]
    assert isinstance(queues["batchSize"], int) and isinstance(queues["newBatchThreshold"], int)
    derived = max(1, 4 // min(int(default), queues["batchSize"] + queues["newBatchThreshold"]))
    assert derived >= 1


# --- each check can fail ----------------------------------------------------------------------

BROKEN = "resource s 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n  properties: {\n"


def test_syntax_check_finds_error_nodes():
    assert check_syntax(snippet(BROKEN))
    assert check_syntax(snippet("var a = {\n  b:\n}\n"))  # MISSING node
    assert not check_syntax(snippet("var a = {\n  b: 1\n}\n"))


def test_description_check_finds_undocumented_params():
    assert check_param_descriptions(snippet("@minValue(1)\nparam n int = 1\n"))
    assert not check_param_descriptions(snippet("@description('n')\n@minValue(1)\nparam n int = 1\n"))


def test_list_keys_check_finds_list_calls():
    assert check_no_list_functions(snippet("var c = 'AccountKey=${st.listKeys().keys[0].value}'\n"))
    assert check_no_list_functions(snippet("var s = listAccountSas(st.id, '2023-01-01', {})\n"))
    assert not check_no_list_functions(snippet("var l = length([])\n"))


def test_output_check_finds_sensitive_outputs():
    assert check_outputs_not_sensitive(snippet("output storageConnectionString string = x\n"))
    assert check_outputs_not_sensitive(snippet("output k string = appi.properties.InstrumentationKey\n"))
    assert not check_outputs_not_sensitive(snippet("output name string = site.name\n"))


def test_resource_and_name_checks_find_omissions():
    files = snippet("resource s 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'ledger'\n}\n")
    assert check_resource_types(files) and check_names_declared(files)
    existing = snippet("resource v 'Microsoft.KeyVault/vaults@2023-07-01' existing = {\n  name: 'v'\n}\n")
    assert check_resource_types(existing, required=("Microsoft.KeyVault/vaults",))


def test_key_vault_and_app_insights_checks_find_key_auth():
    vault = snippet("resource v 'Microsoft.KeyVault/vaults@2023-07-01' = {\n  name: 'v'\n  properties: {\n"
                    "    enableRbacAuthorization: false\n    accessPolicies: []\n  }\n}\n")
    assert len(check_key_vault(vault)) == 4
    appi = snippet("resource a 'Microsoft.Insights/components@2020-02-02' = {\n  name: 'a'\n  properties: {\n"
                   "    DisableLocalAuth: false\n  }\n}\n")
    assert check_app_insights(appi)


def test_role_check_finds_bad_names_missing_comments_and_unused_roles():
    bad = snippet(
        "var blobOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'\n"
        "resource r 'Microsoft.Authorization/roleAssignments@2022-04-01' = {\n"
        "  name: 'fixed-name'\n  properties: {\n    principalId: p\n  }\n}\n")
    problems = check_role_assignments(bad, roles={"Storage Blob Data Owner": ROLES["Storage Blob Data Owner"]})
    assert any("guid(" in p for p in problems)
    assert any("trailing comment" in p for p in problems)
    assert any("not used" in p for p in problems)


def test_module_check_finds_unknown_and_missing_params(tmp_path):
    (tmp_path / "m.bicep").write_text("@description('a')\nparam a string\n", encoding="utf-8")
    main = BicepFile(tmp_path / "main.bicep", "module m 'm.bicep' = {\n  name: 'm'\n  params: {\n    b: 1\n  }\n}\n"
                     "module n 'missing.bicep' = {\n  name: 'n'\n}\n")
    problems = check_modules_resolve([main])
    assert any("unknown param b" in p for p in problems)
    assert any("omits required param a" in p for p in problems)
    assert any("missing 'missing.bicep'" in p for p in problems)


def test_parameters_file_check_finds_bad_files():
    main = BicepFile.from_source("@description('p')\n@allowed([\n  'flex'\n])\nparam plan string = 'flex'\n"
                                 "@description('s')\n@secure()\nparam s string = ''\n")
    assert check_parameters_file(main, "{not json")
    assert check_parameters_file(main, '{"parameters": {"other": {"value": 1}}}')
    assert check_parameters_file(main, '{"parameters": {"s": {"value": "hunter2"}}}')
    assert check_parameters_file(main, '{"parameters": {"plan": {"value": "dedicated"}}}')
    assert not check_parameters_file(main, '{"parameters": {"plan": {"value": "flex"}}}')
    assert not check_parameters_file(main, '{"parameters": {"s": {"value": "${WEBHOOK_KEY}"}}}')  # azd env
    assert check_parameters_file(main, '{"parameters": {"s": {"value": "${WEBHOOK_KEY=hunter2}"}}}')
    assert check_parameters_file(main, '{"parameters": {"plan": {"value": "${HOSTING_PLAN=dedicated}"}}}')
    assert not check_parameters_file(main, '{"parameters": {"plan": {"value": "${HOSTING_PLAN=flex}"}}}')


def test_repository_root_is_where_infra_lives():
    assert (ROOT / "shared" / "config.py").exists() and INFRA.is_dir()
