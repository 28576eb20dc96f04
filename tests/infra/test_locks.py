"""The dependency locks: the whole tree pinned with hashes, in step with the .in files.

- requirements.in (the app's direct dependencies) -> requirements.txt: what Azure's remote build
  installs, every package pinned with its hashes;
- requirements-dev.in (-r requirements.txt, test tools) -> requirements-dev.txt:
  what `make install` and CI install with --require-hashes, every runtime package at its lock's
  version;
- requirements-tools.in -> requirements-tools.txt: checkov and pip-tools in .venv-tools;
- requirements-worker.txt: Microsoft's Python worker library for the indexing check on Python
  >= 3.13, on top of requirements.txt (whose azure-functions 1.x it replaces with 2.x there).

This test reads the files only (no network). `make lock-check` (CI) re-compiles every lock and
fails on any difference, transitive pins included.
"""
from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.infra import ROOT

LOCKS = {"requirements.in": "requirements.txt", "requirements-dev.in": "requirements-dev.txt",
         "requirements-tools.in": "requirements-tools.txt"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[([^\]]*)\])?==([^\s\\;]+)")
MACHINE_SPECIFIC = re.compile(r"--(?:extra-)?index-url|--find-links|file://|/tmp/|/opt/")


def lock_entries(body: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of every requirement of a pip-compile lock."""
    entries: dict[str, tuple[str, list[str]]] = {}
    current = None
    for line in body.splitlines():
        match = PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            entries[current] = (match.group(3), [])
        elif current and line.strip().startswith("--hash="):
            entries[current][1].append(line.strip().split("=", 1)[1].rstrip(" \\"))
        elif not line.startswith(" "):
            current = None
    return entries


def lock_extras(body: str) -> dict[str, set[str]]:
    """name -> the extras its pin names (httpx[http2]==0.28.1 -> {"http2"})."""
    return {canonicalize_name(m.group(1)): {e.strip() for e in (m.group(2) or "").split(",") if e.strip()}
            for m in map(PIN.match, body.splitlines()) if m}


def direct_requirements(body: str) -> list[Requirement]:
    return [Requirement(line.split("#", 1)[0].strip()) for line in body.splitlines()
            if line.split("#", 1)[0].strip() and not line.lstrip().startswith("-")]


def lock_problems(source: str, lock: str, label: str) -> list[str]:
    problems = []
    if MACHINE_SPECIFIC.search(lock):
        problems.append(f"{label}: holds a machine-specific index, link or path")
    if "make lock" not in lock.split("\n\n", 1)[0]:
        problems.append(f"{label}: its header does not name `make lock`")
    entries = lock_entries(lock)
    if not entries:
        return problems + [f"{label}: no pinned requirement"]
    for name, (version, hashes) in entries.items():
        if not hashes:
            problems.append(f"{label}: {name}=={version} has no hash")
    for requirement in direct_requirements(source):
        pinned = entries.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{label}: {requirement.name} (from its .in file) is not in the lock")
        elif not requirement.specifier.contains(pinned[0], prereleases=True):
            problems.append(f"{label}: {requirement.name} is {pinned[0]}, its .in file wants {requirement.specifier}")
    return problems


def read(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


@pytest.mark.parametrize("source, lock", sorted(LOCKS.items()))
def test_each_lock_pins_everything_with_hashes_and_matches_its_input(source, lock):
    assert not lock_problems(read(source), read(lock), lock)


def test_the_dev_lock_is_layered_on_the_runtime_lock():
    dev_in = read("requirements-dev.in")
    assert "-r requirements.txt" in dev_in
    runtime, dev = lock_entries(read("requirements.txt")), lock_entries(read("requirements-dev.txt"))
    different = {n: (v, dev.get(n, ("missing",))[0]) for n, (v, _) in runtime.items() if dev.get(n, ("",))[0] != v}
    assert not different, f"runtime packages at another version (or missing) in the dev lock: {different}"
    # the runtime lock holds no test tool
    assert not {"pytest", "hypothesis", "playwright", "tree-sitter"} & runtime.keys()


def test_the_worker_check_lock_is_hashed_and_on_top_of_the_runtime_lock():
    body = read("requirements-worker.txt")
    entries = lock_entries(body)
    assert "azure-functions-runtime" in entries
    assert all(hashes for _, hashes in entries.values())
    # installed together with requirements.txt, whose azure-functions (1.x: Python < 3.13) it replaces
    assert set(entries) & set(lock_entries(read("requirements.txt"))) == {"azure-functions"}
    assert entries["azure-functions"][0].startswith("2.")
    assert "/^azure-functions==/ {skip=1; next}" in read("Makefile")


@pytest.mark.parametrize("lock", ["requirements.txt", "requirements-dev.txt"])
def test_each_extra_a_locked_package_asks_for_is_named_in_the_lock(lock):
    """pip < 23.3 (a new venv's bundled pip on Python 3.11; perhaps the remote build's) refuses a
    hashed lock whose packages ask for an extra the lock does not name (httpx[http2] for
    microsoft-kiota-http) as soon as the index offers a newer release than the pin: CI failed so.
    Read from the installed distributions' metadata (this venv is installed from the dev lock)."""
    body = read(lock)
    entries, extras = lock_entries(body), lock_extras(body)
    missing = {}
    for name in entries:
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed on this interpreter (a marker excludes it)
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue  # only for one of this package's own extras
            wanted = {canonicalize_name(e) for e in requirement.extras}
            dependency = canonicalize_name(requirement.name)
            if wanted and dependency in entries and not wanted <= {canonicalize_name(e) for e in extras[dependency]}:
                missing[f"{name} -> {requirement}"] = sorted(extras[dependency])
    assert not missing, f"{lock} pins these without the extras asked for (make lock: --no-strip-extras): {missing}"
    assert "--no-strip-extras" in read("Makefile")


def test_the_lock_parser_reads_extras():
    body = "httpx[http2]==0.28.1 \\\n    --hash=sha256:aa\npyjwt[crypto,x]==2.15.1 \\\n    --hash=sha256:bb\nnh3==0.3.8\n"
    assert lock_entries(body)["httpx"] == ("0.28.1", ["sha256:aa"])
    assert lock_extras(body) == {"httpx": {"http2"}, "pyjwt": {"crypto", "x"}, "nh3": set()}


def test_ci_and_make_install_from_the_locks_with_hashes_required():
    makefile = read("Makefile")
    assert "--require-hashes" in makefile and "-r requirements-dev.txt" in makefile
    assert "-r requirements-tools.txt" in makefile
    assert "lock-check" in read(".ci/run")
    # the deployed package gets the lock, not the .in files
    ignored = read(".funcignore").split()
    assert "requirements.txt" not in ignored and "requirements.in" in ignored


def test_the_lock_check_finds_drift():
    source = "httpx==0.28.1\nnh3==0.3.8\n"
    lock = ("# header\n#    make lock\n\nhttpx==0.28.1 \\\n    --hash=sha256:aa\n    # via -r requirements.in\n"
            "nh3==0.3.8 \\\n    --hash=sha256:bb\n")
    assert not lock_problems(source, lock, "x")
    assert lock_problems(source.replace("0.28.1", "0.28.2"), lock, "x")  # .in edited, lock not
    assert lock_problems(source + "sniffio==1.3.1\n", lock, "x")  # added to .in only
    assert lock_problems(source, lock.replace("    --hash=sha256:bb\n", ""), "x")  # no hash
    assert lock_problems(source, "--extra-index-url file:///opt/pypi/simple\n" + lock, "x")
