"""azure.yaml for the Azure Developer CLI: `azd up` provisions infra/main.bicep with
infra/main.parameters.json (azd's environment values) and deploys this folder as the function app.

azd itself cannot run here (no installer reaches this machine, no Azure login); this checks what
azd reads: azure.yaml's shape (YAML read with the tools venv's PyYAML, which the app venv does not
carry), that the Bicep module and parameters it points at exist, that every parameter fed exists
in main.bicep, that the hooks exist, and that every environment value the parameters use is either
set by azd itself or documented in docs/deploy.md.
"""
from __future__ import annotations

import json
import re
import subprocess

from tests.infra import AZURE_YAML, INFRA, MAIN_BICEP, MAIN_PARAMETERS, ROOT, BicepFile, text
from tests.infra.tools import tool

# Set by azd in every environment (azd env new / azd provision).
AZD_VARIABLES = {"AZURE_ENV_NAME", "AZURE_LOCATION", "AZURE_SUBSCRIPTION_ID", "AZURE_PRINCIPAL_ID",
                 "AZURE_PRINCIPAL_TYPE", "AZURE_RESOURCE_GROUP", "AZURE_TENANT_ID"}
REFERENCE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?:=([^}]*))?\}")


def load_yaml(path) -> dict:
    python = tool("python")
    done = subprocess.run([str(python), "-c", "import json, sys, yaml; "
                           "print(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def azure_yaml_problems(doc: dict) -> list[str]:
    problems = []
    if not isinstance(doc, dict) or not doc.get("name"):
        return ["azure.yaml has no name"]
    infra = doc.get("infra") or {}
    if infra.get("provider", "bicep") != "bicep":
        problems.append(f"infra.provider is {infra.get('provider')!r}, not bicep")
    module = ROOT / infra.get("path", "infra") / f"{infra.get('module', 'main')}.bicep"
    if module != MAIN_BICEP:
        problems.append(f"azure.yaml provisions {module}, not infra/main.bicep")
    if not module.with_suffix(".parameters.json").exists():
        problems.append(f"{module.with_suffix('.parameters.json')} is missing (azd reads it)")
    services = doc.get("services") or {}
    if list(services) != ["app"]:
        problems.append(f"services are {list(services)}, want the one function app 'app'")
    app = services.get("app") or {}
    for key, want in (("project", "."), ("language", "python"), ("host", "function")):
        if app.get(key) != want:
            problems.append(f"services.app.{key} is {app.get(key)!r}, want {want!r}")
    for hook, shells in (doc.get("hooks") or {}).items():
        for platform in ("posix", "windows"):
            run = ((shells or {}).get(platform) or {}).get("run")
            if not run:
                problems.append(f"hook {hook} has no {platform} script")
            elif not (ROOT / run).is_file():
                problems.append(f"hook {hook} ({platform}) runs missing {run}")
    return problems


def parameters_problems(main: BicepFile, parameters: dict, documented: str) -> list[str]:
    params = main.params()
    problems = []
    given = parameters.get("parameters", {})
    for name, entry in given.items():
        if name not in params:
            problems.append(f"main.parameters.json feeds {name}, which main.bicep does not declare")
        for variable, _default in REFERENCE.findall(json.dumps(entry.get("value", ""))):
            if variable not in AZD_VARIABLES and f"`{variable}`" not in documented:
                problems.append(f"{name}: ${{{variable}}} is neither set by azd nor documented in docs/deploy.md")
    for name, param in params.items():
        if param.default is None and name not in given:
            problems.append(f"main.bicep requires {name}, which main.parameters.json does not feed")
    return problems


def test_azure_yaml_provisions_infra_and_deploys_the_function_app():
    assert not azure_yaml_problems(load_yaml(AZURE_YAML))


def test_every_parameter_azd_feeds_exists_in_main_bicep():
    main = BicepFile.load(MAIN_BICEP)
    parameters = json.loads(MAIN_PARAMETERS.read_text(encoding="utf-8"))
    documented = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert not parameters_problems(main, parameters, documented)
    given = parameters["parameters"]
    # azd's own values reach the parameters that take them
    assert given["location"]["value"] == "${AZURE_LOCATION}"
    assert given["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert given["adminPrincipalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    # and the app azd deploys to carries the service tag azure.yaml names
    assert "'azd-service-name': 'app'" in text(main.variables()["appTags"].value)


def test_the_azd_outputs_the_hooks_use_exist():
    outputs = BicepFile.load(MAIN_BICEP).outputs()
    hooks = "".join(p.read_text(encoding="utf-8") for p in (INFRA / "hooks").glob("*"))
    for name in set(re.findall(r"\b(AZURE_[A-Z_]+)", hooks)) - AZD_VARIABLES:
        assert name in outputs, f"the hooks read {name}, which main.bicep does not output"


def test_the_checks_find_a_broken_azure_yaml_and_parameters():
    assert azure_yaml_problems({"name": "x", "infra": {"path": "elsewhere"},
                                "services": {"api": {"project": "src", "language": "js", "host": "appservice"}},
                                "hooks": {"postdeploy": {"posix": {"run": "./missing.sh"}}}})
    main = BicepFile.from_source("@description('a')\nparam a string\n@description('b')\nparam b string = ''\n")
    problems = parameters_problems(main, {"parameters": {"b": {"value": "${UNDOCUMENTED}"},
                                                         "c": {"value": 1}}}, "")
    assert any("feeds c" in p for p in problems)
    assert any("UNDOCUMENTED" in p for p in problems)
    assert any("requires a" in p for p in problems)
