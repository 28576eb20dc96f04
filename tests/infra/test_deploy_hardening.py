"""What the deployment promises about keys, queues and request sizes (issue 15, item 9).

- WEBHOOK_KEY is registered as a function key of the two webhook functions only, never as a host
  key (a host key opens every function, the manage API and its privacy erase included): Bicep's
  text, docs/deploy.md and the azd hook say and do the same.
- Every queue a function of `function_app` triggers on is declared in Bicep (so it exists before
  the host first polls it), each trigger queue with its `-poison` queue.
- The request body limit is the host's FUNCTIONS_REQUEST_BODY_SIZE_LIMIT (the Functions host sets
  Kestrel's MaxRequestBodySize from it and refuses a larger body while reading it), equal to the
  webhook's own limit and at least every manage route's own limit.

Each check is a function returning problems, run on the real files and on a bad example.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from shared.domain.notifications import MAX_BODY_BYTES
from tests.infra import INFRA, MAIN_BICEP, ROOT, BicepFile, app_settings, bicep_files, string_value, text

WEBHOOK_FUNCTIONS = ("graph_notifications", "graph_lifecycle")
HOST_KEY_ADVICE = re.compile(r"(?<!never )(?<!not )(?<!no )\bas an? host key", re.IGNORECASE)
HOST_KEY_COMMAND = re.compile(r"az functionapp keys set[^\n]*")
FUNCTION_KEY_COMMAND = re.compile(r"az functionapp function keys set")
DEPLOY_MD = ROOT / "docs" / "deploy.md"
HOOKS = ROOT / "infra" / "hooks"


def indexed_functions() -> list:
    """The functions of `function_app` as the worker indexes them (app.get_functions())."""
    import function_app
    try:
        return list(function_app.app.get_functions())
    finally:
        function_app.app.functions_bindings = {}  # get_functions() may be called again elsewhere


# --- WEBHOOK_KEY: a per-function key -----------------------------------------------------------

def webhook_key_problems(texts: dict[str, str]) -> list[str]:
    """No text advises a host key for WEBHOOK_KEY or sets one; the key-setting texts name both
    webhook functions and nothing else."""
    problems = []
    for label, body in texts.items():
        for match in HOST_KEY_ADVICE.finditer(body):
            problems.append(f"{label}: advises a host key: ...{body[max(0, match.start() - 60):match.end()]!r}")
        for match in HOST_KEY_COMMAND.finditer(body):
            problems.append(f"{label}: sets a host key: {match.group(0)!r}")
        if FUNCTION_KEY_COMMAND.search(body):
            named = set(re.findall(r"graph_[a-z_]+", body))
            missing = [f for f in WEBHOOK_FUNCTIONS if f not in named]
            if missing:
                problems.append(f"{label}: sets function keys but not on {missing}")
    return problems


def _key_texts() -> dict[str, str]:
    texts = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(INFRA.rglob("*.bicep"))}
    texts["docs/deploy.md"] = DEPLOY_MD.read_text(encoding="utf-8")
    for hook in sorted(HOOKS.glob("*")) if HOOKS.is_dir() else []:
        texts[str(hook.relative_to(ROOT))] = hook.read_text(encoding="utf-8")
    return texts


def test_webhook_key_is_a_per_function_key_everywhere():
    texts = _key_texts()
    assert not webhook_key_problems(texts)
    description = BicepFile.load(MAIN_BICEP).params()["webhookKey"].decorator("description")
    assert all(f in text(description) for f in WEBHOOK_FUNCTIONS), text(description)
    # the functions the texts name are the real webhook functions
    names = {f.get_function_name() for f in indexed_functions()}
    assert set(WEBHOOK_FUNCTIONS) <= names


def test_the_azd_hook_registers_the_key_on_both_webhook_functions():
    hooks = {p.name: p.read_text(encoding="utf-8") for p in HOOKS.glob("postdeploy.*")}
    assert {"postdeploy.sh", "postdeploy.ps1"} <= hooks.keys()
    for name, body in hooks.items():
        assert FUNCTION_KEY_COMMAND.search(body), name
        assert all(f in body for f in WEBHOOK_FUNCTIONS), name
        assert not HOST_KEY_COMMAND.search(body), name


def test_webhook_key_check_finds_host_key_advice():
    assert webhook_key_problems({"a": "register the same value as a host key (docs/deploy.md)"})
    assert webhook_key_problems({"b": "az functionapp keys set -g rg -n app --key-type functionKeys --key-name graph"})
    assert webhook_key_problems({"c": "az functionapp function keys set --function-name graph_notifications"})
    assert not webhook_key_problems({"d": "a function key of each webhook function, never as a host key"})


# --- queues ------------------------------------------------------------------------------------

def trigger_queues() -> set[str]:
    queues = set()
    for function in indexed_functions():
        for binding in function.get_bindings():
            if binding.type == "queueTrigger":
                queues.add(binding.get_dict_repr()["queueName"])
    return queues


def declared_queue_names(main: BicepFile) -> list[str]:
    value = main.variables()["queueNames"].value
    return [string_value(n) for n in value.named_children if n.type == "string"]


def queue_problems(triggered: set[str], declared: list[str]) -> list[str]:
    problems = [f"queue {q!r} has a trigger but is not in main.bicep queueNames" for q in sorted(triggered)
                if q not in declared]
    problems += [f"queue {q!r} is declared without its poison queue {q + '-poison'!r}" for q in declared
                 if not q.endswith("-poison") and q + "-poison" not in declared]
    return problems


def test_every_trigger_queue_and_its_poison_queue_is_declared():
    triggered = trigger_queues()
    assert {"inbox-messages", "inbox-recovery", "inbox-recovery-poison"} <= triggered  # the reader works
    declared = declared_queue_names(BicepFile.load(MAIN_BICEP))
    assert not queue_problems(triggered, declared)
    assert not queue_problems({q + "-poison" for q in triggered if not q.endswith("-poison")}, declared)


def test_queue_check_finds_missing_queues():
    assert queue_problems({"inbox-recovery"}, ["inbox-messages", "inbox-messages-poison"])
    assert queue_problems(set(), ["inbox-recovery"])
    assert not queue_problems({"inbox-recovery"}, ["inbox-recovery", "inbox-recovery-poison"])


# --- request body limit -------------------------------------------------------------------------

def host_body_limit(files: list[BicepFile]) -> int | None:
    """FUNCTIONS_REQUEST_BODY_SIZE_LIMIT as Bicep sets it: string(<int literal or var>) or '<int>'."""
    variables = {v.name: text(v.value) for f in files for v in f.variables().values()}
    for setting in app_settings(files):
        if setting.name != "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT":
            continue
        call = re.fullmatch(r"string\((\w+)\)", setting.value.strip())
        raw = variables.get(call.group(1), call.group(1)) if call else setting.value.strip().strip("'")
        return int(raw) if raw.strip().isdigit() else None
    return None


def route_body_limits(functions_dir: Path) -> dict[str, int]:
    """Every body limit an HTTP function applies itself: json_body(..., limit=N), json_body's default
    and the webhook's MAX_BODY_BYTES."""
    limits: dict[str, int] = {"shared/domain/notifications.py MAX_BODY_BYTES": MAX_BODY_BYTES}
    for path in sorted(functions_dir.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "json_body":
                for kw in node.keywords:
                    if kw.arg == "limit" and isinstance(kw.value, ast.Constant):
                        limits[f"{path.name}:{node.lineno}"] = int(kw.value.value)
            if isinstance(node, ast.FunctionDef) and node.name == "json_body":
                for arg, default in zip(node.args.args[-len(node.args.defaults):], node.args.defaults):
                    if arg.arg == "limit" and isinstance(default, ast.Constant):
                        limits[f"{path.name}:json_body default"] = int(default.value)
    return limits


def body_limit_problems(host_limit: int | None, limits: dict[str, int]) -> list[str]:
    if host_limit is None:
        return ["Bicep sets no FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: the host buffers up to 100 MB before the app "
                "refuses a body"]
    problems = [f"{where}: limit {limit} is above the host's {host_limit}" for where, limit in limits.items()
                if limit > host_limit]
    if host_limit != MAX_BODY_BYTES:
        problems.append(f"host limit {host_limit} differs from the webhook's MAX_BODY_BYTES {MAX_BODY_BYTES}")
    return problems


def test_the_host_refuses_bodies_larger_than_the_largest_route_limit():
    files = bicep_files()
    limits = route_body_limits(ROOT / "functions")
    assert any("json_body default" in k for k in limits) and len(limits) >= 3  # the reader works
    assert not body_limit_problems(host_body_limit(files), limits)


def test_body_limit_check_finds_a_missing_or_too_small_host_limit():
    limits = {"webhook": MAX_BODY_BYTES, "manage": 256_000}
    assert body_limit_problems(None, limits)
    assert body_limit_problems(100_000, limits)
    source = "var hostAppSettings = {\n  FUNCTIONS_REQUEST_BODY_SIZE_LIMIT: '104857600'\n}\n"
    assert body_limit_problems(host_body_limit([BicepFile.from_source(source)]), limits)
    assert not body_limit_problems(MAX_BODY_BYTES, limits)


@pytest.mark.parametrize("relative", ["docs/deploy.md", "README.md"])
def test_the_limit_is_documented(relative):
    assert "FUNCTIONS_REQUEST_BODY_SIZE_LIMIT" in (ROOT / relative).read_text(encoding="utf-8")
