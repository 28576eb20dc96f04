"""vnetEnabled, both values, on both hosting plans: what main.bicep deploys and how Storage, Key
Vault, the network and the function app are set, decided by evaluating the Bicep conditions with
tests/infra's small evaluator (literals, parameters, ?:, !, ==, &&, ||, empty()).

- false: no VNet, no private endpoint; Storage and Key Vault keep their public endpoints
  (Entra-only access), as before vnetEnabled existed.
- true: a VNet with an app subnet (delegated per plan, NAT gateway for outbound) and a private
  endpoint subnet; private endpoints for blob, queue, table (+ file on Premium) and Key Vault with
  their privatelink DNS zones; Storage and Key Vault deny public network access; the app is
  integrated into the app subnet.
"""
from __future__ import annotations

import pytest

from tests.infra import (
    INFRA,
    UNKNOWN,
    BicepFile,
    deployed,
    evaluate,
    find_properties,
    module_call_params,
    string_value,
    text,
    walk,
)

CASES = [(vnet, plan) for vnet in (False, True) for plan in ("flex", "premium")]
IDS = [f"vnetEnabled={str(v).lower()}-{p}" for v, p in CASES]


@pytest.fixture(scope="module")
def infra() -> dict[str, BicepFile]:
    return {str(p.relative_to(INFRA)): BicepFile.load(p) for p in INFRA.rglob("*.bicep")}


def chosen(node, f: BicepFile, env: dict) -> str:
    """The source text of the branch a top-level `cond ? a : b` takes (the whole text otherwise)."""
    if node.type == "ternary_expression":
        condition, yes, no = node.named_children
        value = evaluate(condition, f, env)
        assert value is not UNKNOWN, f"cannot decide {text(condition)!r}"
        return chosen(yes if value else no, f, env)
    return text(node)


def account_problems(f: BicepFile, resource_type: str, private: bool) -> list[str]:
    """The account/vault of `f`, evaluated with privateNetworkOnly = private."""
    env = {"privateNetworkOnly": private}
    wanted = {"publicNetworkAccess": "Disabled" if private else "Enabled",
              "defaultAction": "Deny" if private else "Allow"}
    problems = []
    resources = [n for t, n in f.resources() if t == resource_type]
    if not resources:
        return [f"no {resource_type}"]
    for node in resources:
        for key, expected in wanted.items():
            values = [evaluate(v, f, env) for v in find_properties(node, key)]
            if values != [expected]:
                problems.append(f"{resource_type}: {key} is {values}, want {expected!r} (private={private})")
    return problems


def main_problems(main: BicepFile, vnet: bool, plan: str) -> list[str]:
    env = {"vnetEnabled": vnet, "hostingPlan": plan}
    modules = main.modules()
    problems = []
    for name in ("network", "privateEndpoints"):
        if name not in modules:
            problems.append(f"main.bicep has no module {name}")
        elif deployed(modules[name].node, main, env) is not vnet:
            problems.append(f"module {name} deployed={deployed(modules[name].node, main, env)} with vnetEnabled={vnet}")
    for name in ("storage", "vault", "functionApp"):
        passed = module_call_params(modules[name]) if name in modules else {}
        if evaluate(passed.get("privateNetworkOnly"), main, env) is not vnet:
            problems.append(f"module {name} gets privateNetworkOnly={text(passed.get('privateNetworkOnly'))!r}")
    app = module_call_params(modules["functionApp"])
    subnet = chosen(app["subnetId"], main, env)
    if vnet and subnet != "network.outputs.appSubnetId":
        problems.append(f"the app is integrated into {subnet!r}, not the VNet's app subnet")
    if not vnet and subnet != "subnetId":
        problems.append(f"without vnetEnabled the app's subnet is {subnet!r}, not the subnetId parameter")
    depends = find_properties(modules["functionApp"].node, "dependsOn")
    if not depends or "privateEndpoints" not in {text(n) for n in walk(depends[0]) if n.type == "identifier"}:
        problems.append("the function app does not wait for the private endpoints")
    if vnet:
        services = evaluate(module_call_params(modules["privateEndpoints"]).get("storageServices"), main, env)
        want = ["blob", "queue", "table"] + (["file"] if plan == "premium" else [])
        if services != want:
            problems.append(f"storage private endpoints for {services}, want {want}")
    return problems


@pytest.mark.parametrize("vnet, plan", CASES, ids=IDS)
def test_main_deploys_the_network_only_with_vnet_enabled(infra, vnet, plan):
    assert not main_problems(infra["main.bicep"], vnet, plan)


@pytest.mark.parametrize("vnet", [False, True], ids=["false", "true"])
def test_storage_and_key_vault_deny_public_access_only_with_vnet_enabled(infra, vnet):
    assert not account_problems(infra["app/storage.bicep"], "Microsoft.Storage/storageAccounts", vnet)
    assert not account_problems(infra["app/keyvault.bicep"], "Microsoft.KeyVault/vaults", vnet)


@pytest.mark.parametrize("vnet, plan", CASES, ids=IDS)
def test_the_function_app_mounts_premiums_content_share_through_the_vnet(infra, vnet, plan):
    app = infra["app/function-app.bicep"]
    (site,) = [n for t, n in app.resources() if t == "Microsoft.Web/sites"]
    (value,) = find_properties(site, "vnetContentShareEnabled")
    assert evaluate(value, app, {"privateNetworkOnly": vnet, "hostingPlan": plan}) is (vnet and plan == "premium")


@pytest.mark.parametrize("plan, delegation", [("flex", "Microsoft.App/environments"),
                                              ("premium", "Microsoft.Web/serverFarms")])
def test_the_network_has_a_delegated_app_subnet_with_nat_and_a_private_endpoint_subnet(infra, plan, delegation):
    net = infra["app/network.bicep"]
    (vnet,) = [n for t, n in net.resources() if t == "Microsoft.Network/virtualNetworks"]
    subnets = {evaluate(find_properties(s, "name")[0], net, {}): s
               for s in find_properties(vnet, "subnets")[0].named_children if s.type == "object"}
    assert set(subnets) == {"app", "private-endpoints"}
    services = [evaluate(v, net, {"hostingPlan": plan}) for v in find_properties(subnets["app"], "serviceName")]
    assert services == [delegation]
    assert find_properties(subnets["app"], "natGateway")
    assert [evaluate(v, net, {}) for s in subnets.values() for v in find_properties(s, "defaultOutboundAccess")] \
        == [False, False]
    assert {t for t, _ in net.resources()} >= {"Microsoft.Network/natGateways", "Microsoft.Network/publicIPAddresses"}


def test_private_endpoints_cover_storage_services_and_the_vault_with_dns_zones(infra):
    pe = infra["app/private-endpoints.bicep"]
    endpoints = [n for t, n in pe.resources() if t == "Microsoft.Network/privateEndpoints"]
    groups = sorted(text(v) for n in endpoints for g in find_properties(n, "groupIds") for v in g.named_children)
    assert groups == ["'vault'", "service"]  # a loop over storageServices, and the vault
    (loop,) = [n for n in endpoints if "for service in storageServices" in text(n)]
    assert "storage.id" in text(find_properties(loop, "privateLinkServiceId")[0])
    zones = [n for t, n in pe.resources() if t == "Microsoft.Network/privateDnsZones"]
    assert len(zones) == 2 and "privatelink.${service}" in text(zones[0]) or "privatelink.${service}" in text(zones[1])
    kinds = {t for t, _ in pe.resources()}
    assert {"Microsoft.Network/privateDnsZones/virtualNetworkLinks",
            "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"} <= kinds
    assert string_value(pe.params()["storageServices"].default.named_children[0]) == "blob"


# --- the checks can fail ------------------------------------------------------------------------

def test_the_checks_find_an_always_public_account_and_an_unconditional_network():
    public = BicepFile.from_source(
        "param privateNetworkOnly bool = false\n"
        "resource s 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'x'\n  properties: {\n"
        "    publicNetworkAccess: 'Enabled'\n    networkAcls: {\n      defaultAction: 'Allow'\n    }\n  }\n}\n")
    assert not account_problems(public, "Microsoft.Storage/storageAccounts", False)
    assert len(account_problems(public, "Microsoft.Storage/storageAccounts", True)) == 2
    main = BicepFile.from_source(
        "param vnetEnabled bool = false\nparam subnetId string = ''\n"
        "module network 'n.bicep' = {\n  name: 'n'\n}\n"
        "module privateEndpoints 'p.bicep' = if (vnetEnabled) {\n  name: 'p'\n}\n"
        "module storage 's.bicep' = {\n  name: 's'\n  params: {\n    privateNetworkOnly: false\n  }\n}\n"
        "module vault 'v.bicep' = {\n  name: 'v'\n  params: {\n    privateNetworkOnly: vnetEnabled\n  }\n}\n"
        "module functionApp 'f.bicep' = {\n  name: 'f'\n  params: {\n    privateNetworkOnly: vnetEnabled\n"
        "    subnetId: subnetId\n  }\n}\n")
    problems = main_problems(main, True, "flex")
    assert any("module network deployed=True with vnetEnabled=False" in p for p in main_problems(main, False, "flex"))
    assert any("storage gets privateNetworkOnly" in p for p in problems)
    assert any("not the VNet's app subnet" in p for p in problems)
    assert any("does not wait for the private endpoints" in p for p in problems)


def test_the_evaluator_says_unknown_rather_than_guessing():
    f = BicepFile.from_source("param a bool = true\nparam b string = 'x'\nvar c = !a ? other.outputs.id : b\n"
                              "var d = !a || empty(b)\nvar e = other.outputs.id == 'x'\n")
    assert evaluate(f.variables()["c"].value, f) == "x"
    assert evaluate(f.variables()["c"].value, f, {"a": False}) is UNKNOWN
    assert evaluate(f.variables()["d"].value, f) is False
    assert evaluate(f.variables()["d"].value, f, {"b": ""}) is True
    assert evaluate(f.variables()["e"].value, f) is UNKNOWN
