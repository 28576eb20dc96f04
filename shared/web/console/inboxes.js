/* inboxes.js: the monitored mailboxes (GET status?all=true for their state, GET mailboxes for their
   settings): status and reason, subscription expiry, last mail, failed and unprocessed counts;
   Add and Edit (inbox_form.js), Activate / Deactivate (PATCH active), Delete with a confirmation. */
(function () {
  const el = C.el;

  async function setActive(box, active) {
    await C.api("PATCH", "mailboxes/" + encodeURIComponent(box.id), { body: { active } });
    C.notice(active
      ? box.address + " is active again: its Graph subscription is being restored and new mail is processed."
      : box.address + " is switched off: its subscription is removed and its mail shows as unprocessed until you activate it.");
    await C.render();
  }

  async function remove(box) {
    const ok = await C.confirm({
      title: "Delete " + box.address + "?",
      body: ["Its Graph subscription is removed and its mail is no longer processed. Tickets already in the CRM stay.",
             "To monitor it again, add it again. To pause it instead, Deactivate it."],
      confirm: "Delete " + box.address, danger: true,
    });
    if (!ok) return;
    await C.api("DELETE", "mailboxes/" + encodeURIComponent(box.id));
    C.notice(box.address + " was deleted.");
    await C.render();
  }

  function countLink(n, status, box, more) {
    if (n === null || n === undefined) return el("span", { class: "muted", title: "could not be counted" }, "?");
    const text = String(n) + (more ? "+" : "");
    return n > 0 ? el("a", { href: "#/mail?status=" + status + "&mailbox=" + encodeURIComponent(box) }, text) : text;
  }

  C.screens.inboxes = async function (view, route) {
    if (route.parts[1] === "new") return C.inboxForm(view, null);
    if (route.parts[1]) return C.inboxForm(view, route.parts[1]);
    const [status, listed] = await Promise.all([C.get("status", { all: "true" }), C.get("mailboxes")]);
    C.showHealth(status.summary);
    const byId = Object.fromEntries(listed.mailboxes.map((m) => [m.id, m]));
    const rows = status.inboxes.map((i) => Object.assign({}, byId[i.id] || {}, { state: i }));
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Inboxes"),
        el("div", { class: "toolbar" },
          el("a", { class: "button primary", href: "#/inboxes/new", id: "add-inbox" }, "Add inbox"),
          C.actionButton("Sync and Save", () => C.syncAndSave(), { id: "sync-inboxes", title: "POST subscriptions/sync" }))),
      el("p", { class: "muted small" }, "Each active inbox has a Graph subscription that is renewed automatically; ",
        "Sync and Save creates, renews and repairs them now."),
      C.table({
        id: "inboxes-table", rows, empty: "No inboxes are registered yet: add one.", columns: [
          { label: "Inbox", cell: (m) => [el("a", { href: C.href("inboxes", m.id) }, m.address || m.state.address),
                                          el("div", { class: "muted small" }, "client " + (m.client || "?"))] },
          { label: "Status", cell: (m) => C.badge(m.state.status) },
          { label: "Reason", cls: "wrap", cell: (m) => m.state.reason || "" },
          { label: "Subscription expires", cell: (m) => (m.state.status === "Inactive" ? "–" : C.time(m.state.subscription_expires_at, true)) },
          { label: "Last mail", cell: (m) => C.time(m.state.last_processed_at) },
          { label: "Failed", cls: "num", cell: (m) => countLink(m.state.failed, "failed", m.id) },
          { label: "Unprocessed", cls: "num", cell: (m) => countLink(m.state.unprocessed, "unprocessed", m.id, m.state.unprocessed_more) },
          { label: "Actions", cls: "actions", cell: (m) => [
            el("a", { class: "button", href: C.href("inboxes", m.id), "aria-label": "Edit " + m.address }, "Edit"),
            m.active === false
              ? C.actionButton("Activate", () => setActive(m, true), { "aria-label": "Activate " + m.address })
              : C.actionButton("Deactivate", () => setActive(m, false), { "aria-label": "Deactivate " + m.address }),
            C.actionButton("Delete", () => remove(m), { class: "danger", "aria-label": "Delete " + m.address })] },
        ],
      }));
  };
})();
