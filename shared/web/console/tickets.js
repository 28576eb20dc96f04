/* tickets.js: the embedded CRM's tickets (GET tickets, GET tickets/{number}): list, one ticket with
   its person, company, notes and documents (GET documents/{id}), Close and Reopen
   (PATCH tickets/{number} {"status": "done" | "started"}). With Lime CRM they live in Lime. */
(function () {
  const el = C.el;

  // A note's HTML (sanitised by the app) as plain text: parsed inert (no script runs, no image
  // loads), block ends become line breaks. Never inserted as HTML.
  const BLOCKS = new Set(["P", "DIV", "BR", "LI", "TR", "H1", "H2", "H3", "H4", "H5", "H6", "BLOCKQUOTE", "PRE", "TABLE"]);
  function noteText(note) {
    if (!/<[a-z][\s\S]*>/i.test(note || "")) return note || "";
    const doc = new DOMParser().parseFromString(note, "text/html");
    let out = "";
    (function walk(node) {
      for (const child of node.childNodes) {
        if (child.nodeType === Node.TEXT_NODE) out += child.textContent;
        else if (child.nodeType === Node.ELEMENT_NODE && !["SCRIPT", "STYLE", "HEAD"].includes(child.tagName)) {
          if (child.tagName === "IMG") out += "[image" + (child.getAttribute("alt") ? ": " + child.getAttribute("alt") : "") + "]";
          walk(child);
          if (BLOCKS.has(child.tagName)) out += "\n";
        }
      }
    })(doc.body);
    return out.replace(/[ \t]+\n/g, "\n").replace(/\n{3,}/g, "\n\n").trim();
  }

  function size(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KB";
    return (bytes / 1024 / 1024).toFixed(1) + " MB";
  }

  async function setStatus(number, status, what) {
    await C.api("PATCH", "tickets/" + encodeURIComponent(number), { body: { status } });
    C.notice("Ticket " + number + " " + what + ".");
    await C.render();
  }

  async function one(view, number) {
    const doc = await C.get("tickets/" + encodeURIComponent(number));
    const t = doc.ticket;
    const person = doc.person || {};
    const company = doc.company || {};
    const values = Object.entries(t.values || {});
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "[" + t.number + "] " + (t.title || "")),
        C.badge(t.status, t.status), el("a", { href: "#/tickets" }, "All tickets")),
      el("section", { class: "panel", id: "ticket-view", dataset: { status: t.status } },
        el("div", { class: "panel-head" }, el("h3", {}, "Ticket " + t.number),
          t.status === "done"
            ? C.actionButton("Reopen", () => setStatus(t.number, "started", "is reopened"), { id: "ticket-reopen" })
            : C.actionButton("Close", () => setStatus(t.number, "done", "is closed"), { id: "ticket-close", class: "primary" })),
        el("dl", { class: "facts" },
          el("dt", {}, "Status"), el("dd", {}, t.status + (t.enddate ? " since " + C.when(t.enddate) : "")),
          el("dt", {}, "From"), el("dd", {}, t.email || ""),
          el("dt", {}, "Person"), el("dd", {}, person.name || [person.firstname, person.lastname].filter(Boolean).join(" ") || person.email || "–"),
          el("dt", {}, "Company"), el("dd", {}, company.name || company.domain || "–"),
          el("dt", {}, "Created"), el("dd", {}, C.time(t.created)),
          el("dt", {}, "Updated"), el("dd", {}, C.time(t.updated)),
          t.linked_ticket_id ? [el("dt", {}, "Follows"), el("dd", {}, t.linked_ticket_id)] : null,
          values.length ? [el("dt", {}, "Values"), el("dd", {}, values.map(([k, v]) => k + ": " + v).join(", "))] : null)),
      el("h3", {}, "Notes ", el("span", { class: "muted" }, "(" + (doc.history || []).length + ")")),
      (doc.history || []).length
        ? el("div", { id: "ticket-notes" }, doc.history.map((h) => el("article", { class: "note", dataset: { type: h.type } },
          el("div", { class: "meta" }, h.type + " · ", C.time(h.date)), el("div", { class: "body" }, noteText(h.note)))))
        : C.empty("No notes."),
      el("h3", {}, "Documents ", el("span", { class: "muted" }, "(" + (doc.documents || []).length + ")")),
      C.table({
        id: "ticket-documents", rows: doc.documents || [], empty: "No documents.", columns: [
          { label: "File", cls: "wrap", cell: (d) => el("a", { href: C.url("documents/" + encodeURIComponent(d.id)), download: d.filename || "" }, d.filename || d.id) },
          { label: "Type", cell: (d) => d.content_type || "" },
          { label: "Size", cls: "num", cell: (d) => size(d.size || 0) },
          { label: "Note", cls: "wrap", cell: (d) => d.comment || "" },
          { label: "Added", cell: (d) => C.time(d.created) },
        ],
      }));
  }

  async function list(view, route) {
    const doc = await C.get("tickets", { limit: 500 });
    const filter = (route.query.get("q") || "").toLowerCase();
    const rows = doc.tickets.filter((t) => !filter || [t.number, t.title, t.email, t.status].join(" ").toLowerCase().includes(filter));
    const search = el("input", { type: "search", id: "ticket-search", value: route.query.get("q") || "", placeholder: "number, title, sender" });
    const form = el("form", { class: "filters", role: "search" }, el("label", {}, "Find", search), el("button", { type: "submit" }, "Find"));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); C.go("#/tickets" + (search.value ? "?q=" + encodeURIComponent(search.value) : "")); });
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Tickets"), el("span", { class: "muted" }, "embedded CRM, newest first")),
      form,
      C.table({
        id: "tickets-table", rows, empty: filter ? "No ticket matches." : "No tickets yet: they appear when mail arrives.", columns: [
          { label: "Number", cell: (t) => el("a", { href: C.href("tickets", t.number) }, t.number) },
          { label: "Title", cls: "wrap", cell: (t) => t.title || "" },
          { label: "Status", cell: (t) => C.badge(t.status, t.status) },
          { label: "From", cls: "wrap", cell: (t) => t.email || "" },
          { label: "Created", cell: (t) => C.time(t.created) },
          { label: "Updated", cell: (t) => C.time(t.updated) },
        ],
      }),
      doc.tickets.length >= 500 ? el("p", { class: "more" }, "Only the newest 500 tickets are listed.") : null);
  }

  C.screens.tickets = async function (view, route) {
    const options = await C.loadOptions().catch(() => null);
    if (options && options.crm && options.crm.backend && options.crm.backend !== "table") {
      C.put(view, el("h2", {}, "Tickets"), C.empty("Tickets are in Lime CRM (CRM_BACKEND=" + options.crm.backend +
        "): open them there. A mail's steps (Mail screen) name its ticket number."));
      return;
    }
    return route.parts[1] ? one(view, route.parts[1]) : list(view, route);
  };
})();
