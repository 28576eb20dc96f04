"""checkov over infra/ (its bicep framework, .checkov.yaml): no failed check, no file it cannot
parse, every skip justified where it is made, and nothing left out that deploys a resource.

checkov runs from its own venv (tests/infra/tools.py); it is given no network (no policy or
guideline download).
"""
from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.infra import INFRA, ROOT, BicepFile, text
from tests.infra.tools import tool

CONFIG = ROOT / ".checkov.yaml"
SKIP = re.compile(r"//\s*checkov:skip=(CKV2?_[A-Z]+_\d+)(:?)\s*(.*)")
MIN_REASON_WORDS = 6


@pytest.fixture(scope="module")
def report() -> dict:
    checkov = tool("checkov")
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    done = subprocess.run([str(checkov), "--config-file", str(CONFIG), "-o", "json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), f"checkov printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    data = json.loads(done.stdout)
    return data[0] if isinstance(data, list) else data


def skipped_paths() -> list[str]:
    """The skip-path entries of .checkov.yaml (a plain list; read without a YAML library)."""
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    start = lines.index("skip-path:")
    paths = []
    for line in lines[start + 1:]:
        if line.startswith("  - "):
            paths.append(line[4:].strip())
        elif line.strip() and not line.startswith("#"):
            break
    return paths


def skip_comment_problems(source: str, label: str) -> list[str]:
    """Every `checkov:skip=` comment names a check and gives a reason of some substance."""
    problems = []
    for number, line in enumerate(source.splitlines(), 1):
        if "checkov:skip" not in line:
            continue
        match = SKIP.search(line)
        if not match or not match.group(2):
            problems.append(f"{label}:{number}: malformed skip comment (want `// checkov:skip=CKV_X_N: reason`)")
        elif len(match.group(3).split()) < MIN_REASON_WORDS:
            problems.append(f"{label}:{number}: {match.group(1)} is skipped without a reason")
    return problems


def test_checkov_finds_no_failed_check_and_parses_every_scanned_file(report):
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}:{c['file_line_range']})"
              for c in report["results"]["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert summary["parsing_errors"] == 0, report["results"].get("parsing_errors")
    assert summary["passed"] >= 25  # it really checked something


PARSE = """
import json, sys
from pathlib import Path
from pycep import BicepParser  # checkov's Bicep parser
parser = BicepParser(add_line_numbers=True)
result = {}
for name in sys.argv[1:]:
    try:
        parsed = parser.parse(file_path=Path(name))
        result[name] = sorted((parsed.get("resources") or {}).keys())
    except Exception as exc:
        result[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
print(json.dumps(result))
"""


def test_every_file_that_deploys_a_resource_is_parsed_by_checkov():
    python = tool("python")
    skipped = skipped_paths()
    assert skipped == ["infra/main.bicep", "infra/app/names.bicep"]
    files = {str(p.relative_to(ROOT)): BicepFile.load(p) for p in sorted(INFRA.rglob("*.bicep"))}
    for relative in skipped:
        deploys = files[relative].resources()  # `existing` references excluded
        assert not deploys, f"{relative} is left out of checkov but deploys {[t for t, _ in deploys]}"
    scanned = [r for r in files if r not in skipped]
    done = subprocess.run([str(python), "-c", PARSE, *scanned], cwd=ROOT, capture_output=True, text=True, timeout=300)
    parsed = json.loads(done.stdout)
    for relative in scanned:
        assert isinstance(parsed[relative], list), f"checkov cannot parse {relative}: {parsed[relative]}"
        declared = {text(n.named_children[0]) for _, n in files[relative].resources(include_existing=True)}
        assert declared <= set(parsed[relative]), f"{relative}: checkov's parser misses {declared - set(parsed[relative])}"


def test_every_skip_is_justified_next_to_the_resource(report):
    problems = []
    for path in sorted(INFRA.rglob("*.bicep")):
        problems += skip_comment_problems(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert not problems
    assert "skip-check" not in CONFIG.read_text(encoding="utf-8")  # no blanket skip
    # each skip checkov reports comes from such a comment (it reports the reason it read)
    for skipped in report["results"]["skipped_checks"]:
        assert len((skipped.get("check_result") or {}).get("suppress_comment", "").split()) >= MIN_REASON_WORDS, skipped


def test_secure_parameters_have_no_default_but_empty():
    """checkov's CKV_AZURE_131 on the files it cannot parse (main.bicep, names.bicep)."""
    for path in sorted(INFRA.rglob("*.bicep")):
        for param in BicepFile.load(path).params().values():
            if "secure" in param.decorators and param.default is not None:
                assert text(param.default) == "''", f"{path.name}: @secure() param {param.name} has a default"


def test_skip_comment_check_finds_unjustified_skips():
    assert skip_comment_problems("  // checkov:skip=CKV_AZURE_35\n", "x")
    assert skip_comment_problems("  // checkov:skip=CKV_AZURE_35: because\n", "x")
    assert skip_comment_problems("  // checkov:skip CKV_AZURE_35 reason\n", "x")
    assert not skip_comment_problems("  // checkov:skip=CKV_AZURE_35: Graph calls the webhook from the internet.\n",
                                     "x")
