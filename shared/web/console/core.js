/* core.js: what every screen uses. The manage API client (the function key on every call, JSON
   errors as ApiError with their reason and field), DOM building (text only: never innerHTML),
   times in the viewer's time zone, tables that page, loading / empty / error states, notices,
   a confirmation dialog, and the hash router. Screens register in C.screens. */
"use strict";
const C = { screens: {}, options: null, optionsError: null };
window.InboxConsole = C;  // for the browser tests and a curious admin's devtools

(function () {
  const code = new URLSearchParams(location.search).get("code");

  // ---- the manage API ------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, body) {
      const doc = body && typeof body === "object" ? body : {};
      super(doc.error || (status ? "HTTP " + status : "no answer"));
      this.status = status;
      this.reason = doc.reason || "";
      this.field = doc.field || "";
      this.detail = doc.detail || null;
      this.body = doc;
    }
  }
  C.ApiError = ApiError;

  // Relative to /api/manage/dashboard, so any routePrefix works; the key goes on every call.
  C.url = function (path, query) {
    const url = new URL(path, location.href);
    for (const [k, v] of Object.entries(query || {})) {
      if (v !== undefined && v !== null && v !== "") url.searchParams.set(k, String(v));
    }
    if (code) url.searchParams.set("code", code);
    return url.toString();
  };

  C.api = async function (method, path, opts) {
    const { query, body } = opts || {};
    const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let resp;
    try {
      resp = await fetch(C.url(path, query), init);
    } catch (err) {
      throw new ApiError(0, { error: "The app did not answer (" + err.message + "): is it running?", reason: "no_answer" });
    }
    const text = await resp.text();
    let doc = null;
    try { doc = text ? JSON.parse(text) : null; } catch (err) { doc = null; }
    if (resp.ok) return doc;
    if (resp.status === 401) {
      throw new ApiError(401, { error: "The function key is missing or wrong: open the console with ?code=<function key>.",
                                reason: "unauthorized" });
    }
    if (doc && typeof doc === "object" && doc.error) throw new ApiError(resp.status, doc);
    throw new ApiError(resp.status, { error: "HTTP " + resp.status + (text ? ": " + text.slice(0, 300) : " with an empty body"),
                                      reason: "http_" + resp.status });
  };
  C.get = (path, query) => C.api("GET", path, { query });

  // GET options: every choice the forms offer (loaded once; reloaded by the form on demand).
  C.loadOptions = async function (force) {
    if (C.options && !force) return C.options;
    try {
      C.options = await C.get("options");
      C.optionsError = null;
    } catch (err) {
      C.optionsError = err;
      throw err;
    }
    return C.options;
  };

  // ---- DOM -----------------------------------------------------------------------------------
  // el("a", {href: "#/x", class: "c", onclick: f}, "text", child): attributes, listeners, text children.
  C.el = function (tag, attrs, ...children) {
    const node = document.createElement(tag);
    let value;
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = String(v);
      else if (k === "value") value = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on") && typeof v === "function") node.addEventListener(k.slice(2), v);
      else if (k === "checked" || k === "selected" || k === "disabled" || k === "hidden" || k === "required") node[k] = Boolean(v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : String(c));
    }
    if (value !== undefined) node.value = value;
    return node;
  };
  const el = C.el;
  // parent.append for mixed content: arrays flattened, null / undefined / false skipped
  C.put = function (parent, ...children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      parent.append(c instanceof Node ? c : String(c));
    }
    return parent;
  };

  C.option = (value, label, selected) => el("option", { value, selected: Boolean(selected) }, label === undefined ? value : label);

  C.badge = (text, cls) => el("span", { class: "badge " + (cls || text || "") }, text || "–");

  // ---- times ---------------------------------------------------------------------------------
  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
  const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });
  const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
  C.timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "your time zone";

  function parse(iso) {
    if (!iso) return null;
    const d = new Date(iso);
    return isNaN(d) ? null : d;
  }
  C.when = function (iso) {
    const d = parse(iso);
    return d ? dateTime.format(d) : (iso ? String(iso) : "–");
  };
  C.day = function (iso) {
    const d = parse(iso);
    return d ? dateOnly.format(d) : (iso ? String(iso) : "–");
  };
  C.fromNow = function (iso) {
    const d = parse(iso);
    if (!d) return "";
    const seconds = (d.getTime() - Date.now()) / 1000;
    const units = [["day", 86400], ["hour", 3600], ["minute", 60]];
    for (const [unit, size] of units) {
      if (Math.abs(seconds) >= size || unit === "minute") return relative.format(Math.round(seconds / size), unit);
    }
    return "";
  };
  // <time> with the viewer's local rendering and the ISO value as its title
  C.time = function (iso, withRelative) {
    if (!iso) return el("span", { class: "muted" }, "–");
    return el("time", { datetime: iso, title: iso }, C.when(iso) + (withRelative ? " (" + C.fromNow(iso) + ")" : ""));
  };
  // a yyyy-mm-dd for <input type=date> from a Date, in local time
  C.dateInput = function (d) {
    const pad = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
  };
  // an ISO time -> the value of <input type=datetime-local> (local time, minutes)
  C.localInput = function (iso) {
    const d = parse(iso);
    if (!d) return "";
    const pad = (n) => String(n).padStart(2, "0");
    return C.dateInput(d) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  };
  // a date input's value (local midnight) -> ISO with the viewer's offset, as the API reads it
  C.localDayIso = (value) => (value ? new Date(value + "T00:00").toISOString() : "");

  // ---- states --------------------------------------------------------------------------------
  C.loading = (text) => el("p", { class: "state loading", role: "status" }, text || "Loading…");
  C.empty = (text) => el("p", { class: "state empty" }, text);
  C.errorBox = function (err, what, retry) {
    const box = el("div", { class: "state error", role: "alert" },
      el("strong", {}, (what ? what + ": " : "") + (err && err.message ? err.message : String(err))));
    if (err && err.reason) box.append(" ", el("span", { class: "reason" }, "(" + err.reason + ")"));
    if (err && err.detail && err.detail.host) box.append(el("div", {}, "Host: ", el("code", {}, err.detail.host)));
    if (retry) box.append(" ", el("button", { type: "button", onclick: retry }, "Try again"));
    return box;
  };
  // Fill `container` by `load()`: a loading state first, then its content, or the error with a retry.
  C.section = async function (container, load, what) {
    container.replaceChildren(C.loading());
    try {
      const content = await load();
      container.replaceChildren(...[].concat(content));
    } catch (err) {
      container.replaceChildren(C.errorBox(err, what, () => C.section(container, load, what)));
    }
  };

  // ---- notices -------------------------------------------------------------------------------
  C.notice = function (text, isError) {
    const box = document.getElementById("notice");
    box.className = "notice" + (isError ? " error" : "");
    box.setAttribute("role", isError ? "alert" : "status");
    box.replaceChildren(el("span", { class: "text" }, text),
      el("button", { type: "button", "aria-label": "Dismiss", onclick: () => { box.hidden = true; } }, "×"));
    box.hidden = false;
    C.noticeAt = Date.now();
  };
  C.clearNotice = () => { document.getElementById("notice").hidden = true; };

  // ---- confirmation dialog -------------------------------------------------------------------
  // resolves true when confirmed; Escape, Cancel or a click outside resolve false
  // With `input` ({label, maxlength}), the dialog asks for a line of text too and resolves to
  // {value} when confirmed (false when cancelled), so that an empty answer is still a yes.
  C.confirm = function ({ title, body, confirm, danger, input }) {
    return new Promise((resolve) => {
      const no = el("button", { type: "button", value: "no" }, "Cancel");
      const yes = el("button", { type: "button", class: danger ? "danger solid" : "primary", value: "yes" }, confirm || "OK");
      const field = input ? el("input", { type: "text", id: "confirm-input", maxlength: String(input.maxlength || 500) }) : null;
      const dialog = el("dialog", { "aria-labelledby": "confirm-title", class: "confirm" },
        el("h2", { id: "confirm-title" }, title), ...[].concat(body || []).map((p) => el("p", {}, p)),
        field ? el("div", { class: "dialog-input" }, el("label", { for: "confirm-input" }, input.label), field) : null,
        el("div", { class: "buttons" }, no, yes));
      let answer = false;
      const close = (value) => { answer = value; dialog.close(); };
      no.addEventListener("click", () => close(false));
      yes.addEventListener("click", () => close(field ? { value: field.value.trim() } : true));
      dialog.addEventListener("click", (ev) => { if (ev.target === dialog) close(false); });
      dialog.addEventListener("close", () => { dialog.remove(); resolve(answer); });
      document.body.append(dialog);
      dialog.showModal();
      (danger ? no : yes).focus();
    });
  };

  // A button that runs `action` once at a time, shows `busy` meanwhile, and reports its error.
  C.actionButton = function (label, action, attrs) {
    const button = el("button", Object.assign({ type: "button" }, attrs || {}), label);
    button.addEventListener("click", async () => {
      if (button.disabled) return;
      button.disabled = true;
      button.setAttribute("aria-busy", "true");
      try {
        await action(button);
      } catch (err) {
        C.notice((err.message || String(err)) + (err.reason ? " (" + err.reason + ")" : ""), true);
      } finally {
        button.disabled = false;
        button.removeAttribute("aria-busy");
      }
    });
    return button;
  };

  // ---- tables that page ----------------------------------------------------------------------
  // columns: [{label, cell: (row) => text | Node, cls}], rows: data; 25 a page unless pageSize.
  C.table = function ({ columns, rows, empty, pageSize, id, caption }) {
    const size = pageSize || 25;
    let page = 0;
    const body = el("tbody");
    const info = el("span", { class: "muted", "aria-live": "polite" });
    const prev = el("button", { type: "button", "aria-label": "Previous page" }, "‹ Previous");
    const next = el("button", { type: "button", "aria-label": "Next page" }, "Next ›");
    const pager = el("div", { class: "pager" }, info, prev, next);
    const table = el("table", { class: "data" },
      caption ? el("caption", { class: "muted small" }, caption) : null,
      el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c.label)))), body);
    const wrap = el("div", { class: "table-wrap", id: id || null, dataset: { rows: String(rows.length) } }, table, pager);

    function render() {
      const pages = Math.max(1, Math.ceil(rows.length / size));
      page = Math.min(page, pages - 1);
      const shown = rows.slice(page * size, (page + 1) * size);
      body.replaceChildren(...shown.map((row) => el("tr", {}, columns.map((c) => {
        const value = c.cell(row);
        // one wrapper per cell: on a phone the cell is a (label, value) grid
        return el("td", { class: c.cls || null, "data-label": c.label }, C.put(el("div", { class: "cell" }), value));
      }))));
      if (!rows.length) body.append(el("tr", { class: "empty" }, el("td", { colspan: columns.length }, empty || "Nothing here.")));
      pager.hidden = rows.length <= size;
      info.textContent = rows.length ? (page * size + 1) + "–" + (page * size + shown.length) + " of " + rows.length : "";
      prev.disabled = page === 0;
      next.disabled = page >= pages - 1;
      wrap.dataset.page = String(page + 1);
    }
    prev.addEventListener("click", () => { page -= 1; render(); });
    next.addEventListener("click", () => { page += 1; render(); });
    render();
    return wrap;
  };

  // ---- router --------------------------------------------------------------------------------
  // "#/mail/abc?status=failed" -> {parts: ["mail", "abc"], query: URLSearchParams}
  C.route = function () {
    const raw = location.hash.replace(/^#\/?/, "");
    const [path, query] = raw.split("?");
    return { parts: path.split("/").filter(Boolean).map(decodeURIComponent), query: new URLSearchParams(query || "") };
  };
  C.go = function (hash) {
    if (location.hash === hash) C.render();
    else location.hash = hash;
  };
  C.href = (...parts) => "#/" + parts.map((p) => encodeURIComponent(p)).join("/");

  let generation = 0;
  C.render = async function () {
    const mine = ++generation;
    const route = C.route();
    const name = route.parts[0] || "overview";
    const screen = C.screens[name];
    const main = document.getElementById("main");
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.dataset.screen === name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.body.dataset.screen = name;
    document.body.dataset.state = "loading";
    main.setAttribute("aria-busy", "true");
    main.replaceChildren(C.loading());
    if (!screen) {
      main.replaceChildren(C.empty("There is no such screen. Choose one above."));
      document.body.dataset.state = "ready";
      main.removeAttribute("aria-busy");
      return;
    }
    const view = el("div", { class: "screen", id: "screen-" + name });
    try {
      await screen(view, route);
      if (mine !== generation) return;  // the admin moved on meanwhile
      main.replaceChildren(view);
      document.body.dataset.state = "ready";
      delete document.body.dataset.error;
    } catch (err) {
      if (mine !== generation) return;
      main.replaceChildren(C.errorBox(err, "Could not load this screen", () => C.render()));
      document.body.dataset.state = "error";
      document.body.dataset.error = err.message || String(err);
    } finally {
      if (mine === generation) {
        main.removeAttribute("aria-busy");
        document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
      }
    }
  };

  // The header's health badge (from GET status).
  // Healthy, or what it is: mail waiting for a dependency and nothing else is a wait (amber), not red.
  C.health = function (s) {
    if (s.healthy) return { text: "All good", cls: "ok" };
    const onlyWaiting = s.retrying > 0 && !s.failed && !s.unprocessed && !s.expired && !s.warnings;
    return onlyWaiting ? { text: "Waiting for a dependency", cls: "warn" } : { text: "Needs attention", cls: "bad" };
  };

  C.showHealth = function (summary) {
    const badge = document.getElementById("health");
    if (!summary) { badge.hidden = true; return; }
    const health = C.health(summary);
    badge.textContent = health.text;
    badge.className = "badge " + health.cls;
    badge.hidden = false;
  };

  // Labels for the values the API offers (the values themselves always come from GET options).
  C.LABELS = {
    action: { delete: "Delete it (kept in Recoverable Items)", move: "Move it to a folder" },
    closed_ticket_policy: { reopen: "Reopen it", new: "Open a new ticket, linked to it",
                            new_after_days: "Reopen it, or a new ticket after some days" },
    sender_id_behaviour: {
      PersonEmailExact: "The person with this address only",
      CompanyEmailExact: "… or the company with this address",
      CompanyEmailDomain: "… or the company whose email has the domain",
      CompanyEmailWebsite: "… or the company whose website has the domain",
      PersonEmailDomain: "… or persons of one company with the domain",
    },
    store_original: { none: "No", eml: "Yes, as an .eml document on the ticket" },
  };
  C.FIELD_LABELS = { store_original: "Keep the original mail" };
  C.label = (field, value) => ((C.LABELS[field] || {})[value] ? C.LABELS[field][value] + " (" + value + ")" : value);
  C.humanize = (key) => C.FIELD_LABELS[key] || (key.charAt(0).toUpperCase() + key.slice(1)).replace(/_/g, " ");
})();
