/* overview.js: the status summary (GET status?all=true): health, counts, and every warning with
   what to do about it, each linking to the screen where it is fixed. */
(function () {
  const el = C.el;

  function card(label, value, href, bad, extra, warn) {
    const attrs = { class: "card " + (bad ? "bad" : warn ? "warn" : "ok"), id: "card-" + label.toLowerCase().replace(/\W+/g, "-") };
    const tag = href ? "a" : "div";
    if (href) attrs.href = href;
    return el(tag, attrs, el("div", { class: "label" }, label), el("div", { class: "value" }, String(value)),
      extra ? el("div", { class: "muted small" }, extra) : null);
  }

  // The screen where a warning is dealt with, from what it names: [hash, link text] or null.
  function screenOf(w) {
    const reason = w.reason || "";
    if (w.mailbox) return [C.href("inboxes", w.mailbox), "Open the inbox"];
    if (w.client) return ["#/clients", "Open Clients"];
    if (reason.includes("autorepl")) {
      const status = ["uncertain", "failed"].find((s) => reason.includes(s));
      return ["#/autoreplies" + (status ? "?status=" + status : ""), "Open Autoreplies"];
    }
    const mail = ["failed", "unprocessed"].find((s) => reason.includes(s));
    if (mail) return ["#/mail?status=" + mail, "Open Mail"];
    if (reason.includes("inbox") || reason.includes("mailbox")) return ["#/inboxes", "Open Inboxes"];
    return null;
  }

  // A warning from GET status: {reason?, level?, message, fix?, mailbox?, client?}
  C.warningItem = function (w, addresses) {
    const where = [];
    if (w.client) where.push("Graph client " + w.client);
    if (w.mailbox) where.push("Inbox " + ((addresses || {})[w.mailbox] || w.mailbox));
    const li = el("li", { class: w.level === "error" ? "error" : "warning", dataset: { reason: w.reason || "" } },
      where.length ? el("span", { class: "where" }, where.join(" · ") + ": ") : null,
      el("span", { class: "message" }, w.message || w.reason || "warning"));
    if (w.reason) li.append(" ", el("span", { class: "tag" }, w.reason));
    if (w.fix) li.append(el("span", { class: "fix" }, "What to do: " + w.fix));
    const screen = screenOf(w);
    if (screen) li.append(" ", el("a", { href: screen[0], class: "small" }, screen[1]));
    return li;
  };

  C.screens.overview = async function (view) {
    const doc = await C.get("status", { all: "true" });
    const s = doc.summary;
    C.showHealth(s);
    const addresses = Object.fromEntries(doc.inboxes.map((i) => [i.id, i.address]));
    const warnings = doc.warnings || [];
    const health = C.health(s);
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Overview"),
        el("span", { class: "badge " + health.cls, id: "healthy" }, health.text),
        el("span", { class: "muted small" }, "updated ", C.time(doc.generated_at)),
        el("button", { type: "button", onclick: () => C.render() }, "Refresh")),
      el("section", { class: "cards", "aria-label": "Summary" },
        card("Inboxes", s.inboxes, "#/inboxes", s.inboxes === 0,
             s.active + " active · " + s.expired + " expired · " + s.inactive + " inactive"),
        card("Failed", s.failed, "#/mail?status=failed", s.failed > 0),
        card("Unprocessed", s.unprocessed, "#/mail?status=unprocessed", s.unprocessed > 0),
        // mail waiting for a dependency (Lime, TRAML, Graph, Storage): amber, not red; it is not Failed
        card("Retrying", s.retrying || 0, "#/mail?status=unprocessed", false,
             s.retrying ? ["waiting for a dependency; next try ", C.time(s.next_retry_at)] : null, s.retrying > 0),
        card("Expired", s.expired, "#/inboxes", s.expired > 0),
        card("Warnings", warnings.length, null, warnings.length > 0)),
      el("h3", {}, "Warnings"),
      warnings.length
        ? el("ul", { class: "warnings", id: "warnings" }, warnings.map((w) => C.warningItem(w, addresses)))
        : C.empty("Nothing needs attention."),
      el("h3", {}, "Where to go"),
      el("ul", {},
        el("li", {}, el("a", { href: "#/inboxes" }, "Inboxes"), ": add, change, switch off or delete a monitored mailbox."),
        el("li", {}, el("a", { href: "#/clients" }, "Clients"), ": validate a Graph client's credential, its sync log, Sync and Save."),
        el("li", {}, el("a", { href: "#/mail" }, "Mail"), ": failed, unprocessed and skipped mail, recovery, each mail's steps."),
        el("li", {}, el("a", { href: "#/autoreplies" }, "Autoreplies"), ": uncertain and failed autoreplies, resend or dismiss."),
        el("li", {}, el("a", { href: "#/tickets" }, "Tickets"), ": the embedded CRM's tickets.")));
  };
})();
