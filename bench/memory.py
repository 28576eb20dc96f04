"""Benchmark: memory of the function app while it stores large attachments, and one it must skip.

    .venv/bin/python bench/memory.py [--sizes 25,45] [--skip-size 100] [--eml-size 45]

Azurite, the Graph simulator, the Lime CRM simulator (CRM_BACKEND=lime) and the function app in a
dev host process (tools/devhost.py). After a warm-up mail (imports, clients, Lime's schema check)
the host's resident memory is the idle baseline; its peak (VmHWM, reset before each mail) is read
after each mail with one attachment of --sizes MB has become a ticket with the file as a document.
Target: peak above idle under 2.5 x the largest attachment (the app streams attachments through a
spooled temporary file instead of holding them, let alone base64 copies of them).

Then a mail with a --skip-size MB attachment, over ATTACHMENT_MAX_BYTES (50 MB by default): it must
be skipped by its metadata, which the simulator's request log shows (no request for the
attachment's content), and the ticket says why.

Then, in the same run, a mailbox with `store_original: eml` receives a mail of --eml-size MB of MIME
in all (one PDF, base64 as mail clients send it, delivered to the simulator as MIME): the app
streams the PDF and then the whole mail (`$value`) into two documents; its peak above idle is
reported beside the attachments', against the same target (2.5 x the largest size). Prints JSON;
asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from harness import BenchStack, memory_kb, reset_peak, rounded, wait_for

from tests.support.stack import make_mime

MB = 1024 * 1024
MAILBOX = "support@contoso.example"
ORIGINALS = "originals@contoso.example"  # store_original: eml


def attachment_mail(size_mb: float, seed: int) -> dict:
    """Graph message JSON with one PDF of size_mb MB (random bytes: incompressible, as in real life)."""
    raw = make_mime(sender=f"sender{seed}@customer.example", to=MAILBOX, subject=f"{size_mb:g} MB drawing",
                    body="The drawings are attached.")
    from tools.sim.mime2graph import mime_to_graph_message
    doc = mime_to_graph_message(raw)
    doc["attachments"] = [{"@odata.type": "#microsoft.graph.fileAttachment", "name": f"drawing-{size_mb:g}MB.pdf",
                           "contentType": "application/pdf", "content": os.urandom(int(size_mb * MB))}]
    return doc


def eml_mail(size_mb: float, seed: int) -> bytes:
    """Real MIME of about size_mb MB in all: one PDF of random bytes in base64 (76-character lines
    and a line break: 4/3 x 77/76 of the file), as a mail client sends it."""
    payload = os.urandom(int(size_mb * MB * 76 / 77 * 3 / 4))
    return make_mime(sender=f"sender{seed}@customer.example", to=ORIGINALS, subject=f"{size_mb:g} MB mail kept as .eml",
                     body="The scan is attached.", attachments=[("scan.pdf", "application/pdf", payload)])


def process(stack: BenchStack, doc: dict | bytes, timeout: float = 300, mailbox: str = MAILBOX) -> tuple[str, float]:
    mid = stack.graph.deliver(mailbox, doc)
    start = time.monotonic()
    wait_for(lambda: not any(m["id"] == mid for m in stack.graph.messages(mailbox)), timeout, interval=0.2,
             what="the mail processed")
    return mid, time.monotonic() - start


def stored_emls(stack: BenchStack, crm: str) -> list[bytes]:
    """The .eml documents the CRM holds (message/rfc822), as stored."""
    if crm == "lime":
        return [stack.lime.file_bytes(d["document"]) for d in stack.lime.objects("document")
                if d.get("document") and stack.lime.files[int(d["document"])]["content_type"] == "message/rfc822"]
    tickets = stack.http.get("/api/manage/tickets", params={"limit": 100}).json()["tickets"]
    return [stack.http.get(d["url"]).content for t in tickets
            for d in stack.http.get(f"/api/manage/tickets/{t['number']}").json().get("documents", [])
            if d.get("content_type") == "message/rfc822"]


def stored_size(stack: BenchStack, crm: str) -> int:
    """The largest document the CRM holds, in bytes."""
    if crm == "lime":
        docs = stack.lime.objects("document")
        return max((len(stack.lime.file_bytes(d["document"])) for d in docs if d.get("document")), default=0)
    tickets = stack.http.get("/api/manage/tickets", params={"limit": 100}).json()["tickets"]
    sizes = [d.get("size", 0) for t in tickets
             for d in stack.http.get(f"/api/manage/tickets/{t['number']}").json().get("documents", [])]
    return max(sizes, default=0)


def notes_of(stack: BenchStack, crm: str) -> list[str]:
    if crm == "lime":
        return [h.get("note", "") for h in stack.lime.objects("history")]
    tickets = stack.http.get("/api/manage/tickets", params={"limit": 100}).json()["tickets"]
    return [h.get("note", "") for t in tickets
            for h in stack.http.get(f"/api/manage/tickets/{t['number']}").json().get("history", [])]


def last_seq(stack: BenchStack) -> int:
    entries = stack.graph.requests.entries()
    return entries[-1]["seq"] if entries else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="25,45", help="attachment sizes in MB, one mail each")
    ap.add_argument("--skip-size", type=float, default=100, help="MB of the attachment that must be skipped")
    ap.add_argument("--eml-size", type=float, default=45, help="MB of MIME of the mail kept as .eml (0: none)")
    ap.add_argument("--crm", choices=("lime", "table"), default="lime", help="CRM_BACKEND")
    args = ap.parse_args()
    results: dict = {"crm": args.crm, "attachments": []}
    with BenchStack(graph_latency_ms=0, crm_latency_ms=0, traml_latency_ms=0, autoreply=False, crm=args.crm,
                    extra_settings={"LIME_RATE_LIMIT_REQUESTS": "0"}) as stack:
        stack.add_mailbox(MAILBOX)
        stack.add_mailbox(ORIGINALS, store_original="eml")
        pid = stack.processes[0].pid
        process(stack, attachment_mail(0.1, 0))  # warm-up: imports, tokens, clients, the streaming path
        time.sleep(1.0)
        idle = memory_kb(pid)["VmRSS"]
        results["idle_rss_mb"] = idle / 1024
        largest = 0.0
        for i, size in enumerate(float(s) for s in args.sizes.split(",")):
            if not reset_peak(pid):
                raise SystemExit("cannot reset the peak RSS of the dev host (/proc/<pid>/clear_refs)")
            before = memory_kb(pid)["VmRSS"]
            seq = last_seq(stack)
            mid, seconds = process(stack, attachment_mail(size, i + 1))
            peak = memory_kb(pid)["VmHWM"]
            fetches = [e["path"].rsplit("/", 1)[-1] for e in stack.graph.requests.entries(since_seq=seq)
                       if mid in e["path"] and "/attachments/" in e["path"].lower()]
            stored = stored_size(stack, args.crm)
            results["attachments"].append({
                "size_mb": size, "seconds": seconds, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                "peak_above_idle_mb": (peak - idle) / 1024, "peak_above_idle_x_attachment": (peak - idle) / 1024 / size,
                "content_fetched_by": fetches, "largest_file_in_crm_mb": stored / MB})
            largest = max(largest, size)
        worst = max(a["peak_above_idle_mb"] for a in results["attachments"])
        results["peak_above_idle_mb"] = worst
        results["target_mb"] = 2.5 * largest
        results["within_target"] = worst < 2.5 * largest

        seq = last_seq(stack)
        mid, seconds = process(stack, attachment_mail(args.skip_size, 99))
        content_requests = [e for e in stack.graph.requests.entries(since_seq=seq)
                            if mid in e["path"] and "/attachments" in e["path"].lower()]
        notes = notes_of(stack, args.crm)
        results["skipped"] = {
            "size_mb": args.skip_size, "seconds": seconds,
            "requests_for_its_content": len(content_requests),
            "note_says_why": any("not downloaded" in n for n in notes),
        }

        if args.eml_size:
            process(stack, make_mime(sender="warm@customer.example", to=ORIGINALS, subject="warm-up"),
                    mailbox=ORIGINALS)  # the MIME streaming path warm, as the attachments' was
            time.sleep(1.0)
            raw = eml_mail(args.eml_size, 100)
            if not reset_peak(pid):
                raise SystemExit("cannot reset the peak RSS of the dev host (/proc/<pid>/clear_refs)")
            before = memory_kb(pid)["VmRSS"]
            seq = last_seq(stack)
            mid, seconds = process(stack, raw, mailbox=ORIGINALS)
            peak = memory_kb(pid)["VmHWM"]
            requests = [f"{e['method']} {e['path'].split(mid, 1)[-1] or '/'}"
                        for e in stack.graph.requests.entries(since_seq=seq) if mid in e["path"]]
            stored = [e for e in stored_emls(stack, args.crm) if len(e) == len(raw)]
            size_mb = len(raw) / MB
            results["eml"] = {
                "mime_mb": size_mb, "seconds": seconds, "rss_before_mb": before / 1024, "peak_rss_mb": peak / 1024,
                "peak_above_idle_mb": (peak - idle) / 1024,
                "attachment_case_peak_above_idle_mb": results["attachments"][-1]["peak_above_idle_mb"],
                "target_mb": 2.5 * size_mb, "within_target": (peak - idle) / 1024 < 2.5 * size_mb,
                "graph_requests": requests, "stored_byte_for_byte": bool(stored) and stored[0] == raw}
            del raw, stored
    print(json.dumps(rounded(results), indent=2))


if __name__ == "__main__":
    main()
