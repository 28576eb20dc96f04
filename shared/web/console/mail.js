/* mail.js: failed, unprocessed and skipped mail (GET messages?status=&mailbox=&since=), recovery
   (POST messages/recover, followed through GET recovery/{task}; GET recovery for the last tasks),
   and one mail's step view (GET messages/{id}?mailbox=): its timeline, decision, ticket, autoreply. */
(function () {
  const el = C.el;
  const LISTS = [["failed", "Failed"], ["unprocessed", "Unprocessed"], ["skipped", "Skipped"]];

  function outcome(t) {
    const parts = Object.entries(t.counts || {}).map(([k, v]) => v + " " + k);
    return (parts.length ? parts.join(", ") : "nothing to do") + (t.capped ? " (capped: run again for the rest)" : "")
      + (t.error ? " - " + t.error : "");
  }

  // Start a recovery and follow it until done; `report` shows its progress.
  async function recover(body, report) {
    const task = await C.api("POST", "messages/recover", { body });
    report.dataset.task = task.task_id;
    for (;;) {
      const t = await C.get("recovery/" + encodeURIComponent(task.task_id));
      report.textContent = "Recovery " + t.status + ": " + outcome(t);
      report.dataset.status = t.status;
      if (t.status === "done" || t.status === "failed") return t;
      await new Promise((r) => setTimeout(r, 1200));
    }
  }
  C.recover = recover;

  function recoveryForm(inboxes, status) {
    const mailbox = el("select", { id: "recover-mailbox" }, C.option("", "All active inboxes"),
      inboxes.filter((i) => i.active !== false).map((i) => C.option(i.id, i.address)));
    const kind = el("select", { id: "recover-status" }, C.option("failed", "Failed", status === "failed"),
      C.option("unprocessed", "Unprocessed", status === "unprocessed"));
    const since = el("input", { type: "date", id: "recover-since", required: true,
                                value: C.dateInput(new Date(Date.now() - 864e5)) });
    const result = el("span", { id: "recover-result", role: "status" });
    const button = el("button", { type: "submit", class: "primary", id: "recover-button" }, "Start recovery");
    const form = el("form", { class: "inline", id: "recover-form" },
      el("label", {}, "Inbox", mailbox), el("label", {}, "Mail", kind), el("label", {}, "Received from", since), button, result);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const body = { status: kind.value };
      if (since.value) body.since = C.localDayIso(since.value);
      if (mailbox.value) body.mailbox = mailbox.value;
      button.disabled = true;
      result.className = "";
      try {
        await recover(body, result);
        C.notice(result.textContent);
        await C.render();
      } catch (err) {
        result.className = "field-error";
        result.textContent = "Could not recover: " + err.message;
      } finally {
        button.disabled = false;
      }
    });
    return form;
  }

  function messageLink(m) {
    return el("a", { href: C.href("mail", m.mailbox_id, m.message_id), class: "subject" }, m.subject || "(no subject)");
  }

  async function list(view, route) {
    const q = route.query;
    const status = LISTS.some(([s]) => s === q.get("status")) ? q.get("status") : "failed";
    const filters = { status, mailbox: q.get("mailbox") || "", since: q.get("since") || "" };
    // a filter the API refuses (a date in the future, an unknown inbox) is shown next to that filter
    const listed = C.get("messages", { status, mailbox: filters.mailbox, since: C.localDayIso(filters.since), limit: 1000 })
      .catch((err) => {
        if (!(err.status >= 400 && err.status < 500) || err.status === 401) throw err;
        return { count: 0, more: false, messages: [], refused: err };
      });
    // the inboxes from GET mailboxes (GET status would also count every Inbox's unprocessed mail)
    const [boxes, doc, tasks] = await Promise.all([C.get("mailboxes"), listed, C.get("recovery", { limit: 10 })]);
    const inboxes = boxes.mailboxes;
    const addresses = Object.fromEntries(inboxes.map((i) => [i.id, i.address]));
    const hash = (extra) => "#/mail?" + new URLSearchParams(Object.assign({}, filters, extra)).toString();

    const inbox = el("select", { id: "filter-mailbox" }, C.option("", "All inboxes"),
      inboxes.map((i) => C.option(i.id, i.address)));
    inbox.value = filters.mailbox;
    const since = el("input", { type: "date", id: "filter-since", value: filters.since });
    const refused = doc.refused;
    const errorOf = (name) => (refused && refused.field === name
      ? el("span", { class: "field-error", id: "filter-" + name + "-error", role: "alert" }, refused.message) : null);
    for (const [name, control] of [["mailbox", inbox], ["since", since]]) {
      if (refused && refused.field === name) {
        control.setAttribute("aria-invalid", "true");
        control.setAttribute("aria-describedby", "filter-" + name + "-error");
      }
    }
    const filterForm = el("form", { class: "filters", id: "mail-filters", role: "search" },
      el("label", {}, "Inbox", inbox, errorOf("mailbox")), el("label", {}, "Received since", since, errorOf("since")),
      el("button", { type: "submit" }, "Apply"), el("a", { href: "#/mail?status=" + status }, "Clear"),
      refused && !["mailbox", "since"].includes(refused.field)
        ? el("span", { class: "field-error", role: "alert" }, refused.message) : null);
    filterForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      C.go(hash({ mailbox: inbox.value, since: since.value }));
    });

    const lastColumn = status === "skipped"
      ? { label: "Skipped because", cls: "wrap", cell: (m) => m.skip_reason || "" }
      : status === "failed"
        ? { label: "Last error", cls: "err", cell: (m) => m.last_error || "" }
        : { label: "State", cls: "wrap", cell: (m) => (m.before_start_date ? "before the start date: recover from an earlier date"
                                                       : [m.state === "retrying" && m.next_attempt_at
                                                            ? ["retrying, next try ", C.time(m.next_attempt_at)] : m.state || "",
                                                          m.last_error ? " - " + m.last_error : ""]) };
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Mail"),
        el("nav", { class: "segmented", "aria-label": "Which mail" }, LISTS.map(([s, label]) =>
          el("a", { href: hash({ status: s }), "aria-current": s === status ? "page" : null, id: "tab-" + s }, label)))),
      filterForm,
      el("h3", {}, LISTS.find(([s]) => s === status)[1] + " mail ",
        el("span", { class: "muted", id: "mail-count" }, "(" + doc.count + (doc.more ? "+" : "") + ")")),
      C.table({
        id: "mail-table", rows: doc.messages,
        empty: refused ? "Nothing listed: the filters were refused (see above)."
          : "No " + status + " mail" + (filters.mailbox || filters.since ? " for these filters." : "."),
        columns: [
          { label: "Received", cell: (m) => C.time(m.received_at) },
          { label: "Inbox", cell: (m) => m.mailbox || addresses[m.mailbox_id] || m.mailbox_id },
          { label: "Sender", cls: "wrap", cell: (m) => m.sender || "" },
          { label: "Subject", cls: "wrap", cell: messageLink },
          { label: "Attempts", cls: "num", cell: (m) => m.attempts ?? 0 },
          lastColumn,
        ],
      }),
      doc.more ? el("p", { class: "more" }, "More mail exists than is shown: narrow the list by inbox or date.") : null,
      el("h3", {}, "Recover mail"),
      status === "skipped" ? el("p", { class: "muted small" }, "Skipped mail was read and left alone on purpose; nothing to recover.") : null,
      recoveryForm(inboxes, status),
      el("p", { class: "muted small" }, "Unprocessed mail received before an inbox's start date is processed only by a ",
        "recovery from a date before it. No autoreply is sent for mail older than a day."),
      el("h3", {}, "Recent recoveries"),
      C.table({
        id: "tasks-table", rows: tasks.tasks, empty: "No recoveries yet.", pageSize: 10, columns: [
          { label: "Started", cell: (t) => C.time(t.created_at) },
          { label: "Mail", cell: (t) => t.recover + (t.ids ? " (" + t.ids + " chosen)" : "") },
          { label: "Inboxes", cls: "wrap", cell: (t) => t.mailboxes.map((id) => addresses[id] || id).join(", ") },
          { label: "From", cell: (t) => (t.since ? C.time(t.since) : "start date") },
          { label: "Status", cell: (t) => C.badge(t.status, t.status === "done" ? "ok" : t.status === "failed" ? "bad" : "warn") },
          { label: "Outcome", cls: "wrap", cell: outcome },
        ],
      }));
  }

  async function steps(view, mailboxId, messageId) {
    let doc;
    try {
      doc = await C.get("messages/" + encodeURIComponent(messageId), { mailbox: mailboxId });
    } catch (err) {
      if (err.status !== 404) throw err;
      const report = el("span", { role: "status", id: "recover-one-result" });
      C.put(view, el("div", { class: "screen-head" }, el("h2", {}, "Mail"), el("a", { href: "#/mail?status=unprocessed" }, "Back to the list")),
        C.empty("No steps are recorded for this mail yet: it has not been picked up (" + err.message + ")."),
        el("p", {}, C.actionButton("Process it now", async () => {
          await recover({ status: "unprocessed", mailbox: mailboxId, ids: [messageId] }, report);
          await C.render();
        }, { class: "primary", id: "recover-one" }), " ", report));
      return;
    }
    const ticket = doc.ticket || null;
    const auto = doc.autoreply || null;
    const decision = doc.decision || null;
    const report = el("span", { role: "status", id: "recover-one-result" });
    const retry = doc.status === "failed"
      ? C.actionButton("Retry this mail", async () => {
        await recover({ status: "failed", mailbox: doc.mailbox_id, ids: [doc.message_id] }, report);
        await C.render();
      }, { class: "primary", id: "recover-one" }) : null;
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, doc.subject || "(no subject)"),
        el("a", { href: "#/mail?status=" + (["failed", "skipped"].includes(doc.status) ? doc.status : "failed") }, "Back to the list")),
      el("section", { class: "panel", id: "step-view" },
        el("dl", { class: "facts" },
          el("dt", {}, "Status"), el("dd", {}, C.badge(doc.status), doc.permanent ? " permanent: not retried by itself" : ""),
          el("dt", {}, "From"), el("dd", {}, doc.sender || ""),
          el("dt", {}, "Inbox"), el("dd", {}, doc.mailbox || doc.mailbox_id),
          el("dt", {}, "Received"), el("dd", {}, C.time(doc.received_at)),
          el("dt", {}, "Attempts"), el("dd", {}, String(doc.attempts ?? 0)),
          doc.last_error ? [el("dt", {}, "Last error"), el("dd", { class: "err" }, doc.last_error)] : null,
          doc.skip_reason ? [el("dt", {}, "Skipped because"), el("dd", {}, doc.skip_reason)] : null,
          el("dt", {}, "Ticket"), el("dd", { id: "step-ticket" }, ticket
            ? [ticket.url ? el("a", { href: C.href("tickets", ticket.number) }, "Ticket " + ticket.number)
                          : "Ticket " + ticket.number + " (open it in the CRM by its number)",
              ticket.action ? " - " + ticket.action + (ticket.new ? " (new ticket)" : "") : ""]
            : "none"),
          decision ? [el("dt", {}, "Decision"), el("dd", { id: "step-decision" }, [decision.action,
            decision.decided_by ? " (by " + decision.decided_by + ")" : "", decision.threaded_by ? ", threaded by " + decision.threaded_by : "",
            decision.skip_reason ? ": " + decision.skip_reason : ""].join(""))] : null,
          auto ? [el("dt", {}, "Autoreply"), el("dd", { id: "step-autoreply" }, C.badge(auto.status),
            auto.sent_at ? [" sent ", C.time(auto.sent_at)] : "", auto.reason ? " " + auto.reason : "", " ",
            el("a", { href: "#/autoreplies?status=" + encodeURIComponent(auto.status || "") }, "see autoreplies"))] : null,
          el("dt", {}, "Message id"), el("dd", {}, el("code", {}, doc.message_id))),
        retry ? el("p", {}, retry, " ", report) : null),
      el("h3", {}, "Steps"),
      C.table({
        id: "timeline", rows: doc.timeline || [], empty: "No steps recorded.", pageSize: 100, columns: [
          { label: "Time", cell: (s) => C.time(s.at) },
          { label: "Step", cell: (s) => s.step },
          { label: "Outcome", cls: "wrap", cell: (s) => [s.ok === false ? C.badge("error", "bad") : null, s.ok === false ? " " : null, s.outcome || ""] },
          { label: "Correlation", cell: (s) => (s.correlation_id ? el("code", { title: s.correlation_id }, String(s.correlation_id).slice(0, 12)) : "") },
        ],
      }),
      (doc.correlation_ids || []).length ? el("p", { class: "muted small" }, "Deliveries (correlation ids, for the logs): ",
        doc.correlation_ids.map((c, i) => [i ? ", " : "", el("code", {}, c)])) : null);
  }

  C.screens.mail = async function (view, route) {
    if (route.parts.length >= 3) return steps(view, route.parts[1], route.parts.slice(2).join("/"));
    return list(view, route);
  };
})();
