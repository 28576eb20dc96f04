"""The chaos scenario at a chosen size, by hand (a benchmark-style run; CI runs the small one):

    .venv/bin/python -m tests.chaos --mails 2000

Runs tests/chaos/test_chaos.py with CHAOS_MAILS set: every phase's mail count scaled to about that
many mails, the same faults. Prints the totals (lost, doubled, uncertain, faults injected, seconds)
and writes them to artifacts/chaos-totals-<mails>.json. Exits with pytest's status.
"""
from __future__ import annotations

import argparse
import os
import sys

import pytest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mails", type=int, default=2000, help="about how many mails to deliver (CI: about 85)")
    ap.add_argument("--timeout", type=int, default=4 * 3600, help="seconds before pytest-timeout stops the run")
    args = ap.parse_args()
    os.environ["CHAOS_MAILS"] = str(args.mails)
    os.makedirs("artifacts", exist_ok=True)
    return pytest.main(["tests/chaos/test_chaos.py", "-p", "no:randomly", "-s", "--tb=short",
                        f"--timeout={args.timeout}"])


if __name__ == "__main__":
    sys.exit(main())
