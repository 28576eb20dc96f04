/* autoreplies.js: autoreplies by status (GET autoreplies?status=uncertain|failed|dismissed|sent), Resend
   (POST autoreplies/{ticket_id}/resend) for the ones not known to be sent, and Dismiss
   (POST autoreplies/{ticket_id}/dismiss) for an uncertain or failed one the admin has settled. */
(function () {
  const el = C.el;
  const LISTS = [["uncertain", "Uncertain"], ["failed", "Failed"], ["dismissed", "Dismissed"], ["sent", "Sent"]];
  const EXPLAIN = {
    uncertain: "TRAML's answer was lost (a timeout, or a crash after the send was claimed): the customer may or may " +
      "not have it. They are never sent twice by themselves; resend one only when you know it did not arrive.",
    failed: "TRAML refused these or could not be reached, after the retries. Fix the cause (template, TRAML settings), then resend.",
    dismissed: "Settled by an admin without a send (the note says why): no warning, never sent by itself; resend one if needed.",
    sent: "Sent through TRAML, with a history note on the ticket.",
  };

  async function resend(a) {
    const ok = await C.confirm({
      title: "Resend the autoreply for ticket " + a.ticket_number + "?",
      body: a.status === "uncertain"
        ? ["It is uncertain: " + (a.recipient || "the customer") + " may already have it, and would then get it twice.",
           "It is sent once more, now, whatever the per-recipient limit."]
        : ["It goes to " + (a.recipient || "the customer") + " once more, now."],
      confirm: "Resend",
    });
    if (!ok) return;
    await C.api("POST", "autoreplies/" + encodeURIComponent(a.ticket_id) + "/resend");
    C.notice("The autoreply for ticket " + a.ticket_number + " is queued to be sent again.");
    await C.render();
  }

  async function dismiss(a) {
    const answer = await C.confirm({
      title: "Dismiss the autoreply for ticket " + a.ticket_number + "?",
      body: [a.status === "uncertain"
        ? "Do this when TRAML's sent mail shows it went out, or " + (a.recipient || "the customer") + " was answered otherwise."
        : "Do this when " + (a.recipient || "the customer") + " needs no autoreply (answered otherwise, or the address takes no mail).",
             "It is not sent. It leaves the warnings and this list for Dismissed, and can still be resent from there."],
      confirm: "Dismiss",
      input: { label: "Note (optional, kept with the autoreply)", maxlength: 500 },
    });
    if (!answer) return;
    await C.api("POST", "autoreplies/" + encodeURIComponent(a.ticket_id) + "/dismiss", { body: { note: answer.value } });
    C.notice("The autoreply for ticket " + a.ticket_number + " is dismissed.");
    await C.render();
  }

  C.screens.autoreplies = async function (view, route) {
    const status = LISTS.some(([s]) => s === route.query.get("status")) ? route.query.get("status") : "uncertain";
    const [doc, options] = await Promise.all([C.get("autoreplies", { status, limit: 500 }),
                                              C.loadOptions().catch(() => null)]);
    const embedded = options && options.crm && options.crm.backend === "table";
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Autoreplies"),
        el("nav", { class: "segmented", "aria-label": "Which autoreplies" }, LISTS.map(([s, label]) =>
          el("a", { href: "#/autoreplies?status=" + s, "aria-current": s === status ? "page" : null, id: "tab-" + s }, label)))),
      el("p", { class: "muted small" }, EXPLAIN[status]),
      C.table({
        id: "autoreplies-table", rows: doc.autoreplies, empty: "No " + status + " autoreplies.", columns: [
          { label: "Ticket", cell: (a) => (embedded ? el("a", { href: C.href("tickets", a.ticket_number) }, a.ticket_number) : a.ticket_number) },
          { label: "To", cls: "wrap", cell: (a) => a.recipient || "" },
          { label: "Template", cell: (a) => a.template || "" },
          { label: "Status", cell: (a) => C.badge(a.status) },
          { label: "Attempts", cls: "num", cell: (a) => a.attempts ?? 0 },
          { label: "Why", cls: "wrap", cell: (a) => a.reason || a.last_error || "" },
          { label: status === "sent" ? "Sent" : "Updated", cell: (a) => C.time(status === "sent" ? a.sent_at : a.updated_at) },
          { label: "Mail", cell: (a) => (a.message_id ? el("a", { href: C.href("mail", a.mailbox_id, a.message_id) }, "steps") : "") },
          { label: "Actions", cls: "actions", cell: (a) => (a.status === "sent" ? "" : [
            C.actionButton("Resend", () => resend(a), { "aria-label": "Resend the autoreply for ticket " + a.ticket_number }),
            a.status === "uncertain" || a.status === "failed"
              ? C.actionButton("Dismiss", () => dismiss(a), { "aria-label": "Dismiss the autoreply for ticket " + a.ticket_number })
              : null]) },
        ],
      }));
  };
})();
