/* clients.js: the Graph clients (GET clients): tenant, client id, credential kind, secret expiry
   warnings; Validate, for all their inboxes or one address (POST clients/{name}/validate), showing
   the named reason and what to do about it; their sync log (GET clients/{name}/synclog); and Sync
   and Save (POST subscriptions/sync). */
(function () {
  const el = C.el;

  // What to do about each reason validation names (the API's own `fix`, when it gives one, wins).
  const ADVICE = {
    bad_secret: "The client secret is wrong: copy the secret's Value (not its Secret ID) from the app registration's " +
      "Certificates & secrets into GRAPH_CLIENT_SECRET_<NAME> (the Key Vault secret in Azure), then validate again.",
    expired_secret: "The client secret has expired: create a new one on the app registration and update " +
      "GRAPH_CLIENT_SECRET_<NAME>, or move to the managed identity (a federated credential has nothing to expire).",
    secret_missing: "No secret reached the app: set GRAPH_CLIENT_SECRET_<NAME> (or the certificate setting) for this client.",
    bad_certificate: "Entra does not accept the certificate: upload its public key to the app registration, or fix " +
      "GRAPH_CLIENT_CERT_<NAME>; check that it is within its validity dates.",
    federation_mismatch: "The app registration has no federated credential for this Function App's managed identity: " +
      "add one (docs/deploy.md, Entra app) and validate again.",
    unknown_app: "Entra knows no application with this client_id in this tenant: check client_id in GRAPH_CLIENTS and " +
      "that the app is registered (or consented to) in the tenant.",
    unknown_tenant: "Entra knows no such tenant: check tenant_id in GRAPH_CLIENTS (the Directory (tenant) ID, or a " +
      "verified domain of the tenant).",
    token_failed: "No token: read the detail. If it names a host, the app cannot reach it (proxy, firewall, DNS, " +
      "GRAPH_AUTHORITY_HOST); otherwise check the credential.",
    missing_permission: "Add the Microsoft Graph application permission Mail.ReadWrite to the app registration and " +
      "grant admin consent, then validate again.",
    mailbox_not_found: "Graph knows no such mailbox for this client: check the address, and that the mailbox is in " +
      "this client's tenant.",
    mailbox_unreachable: "The client may not read this mailbox: an application access policy (or RBAC for " +
      "Applications) leaves it out. Add the mailbox to the policy's group, or validate a mailbox it covers.",
    graph_unavailable: "Graph or Entra could not be reached or failed: check the network path (proxy, firewall, " +
      "OUTBOUND_CA_BUNDLE for a TLS-inspecting proxy) and try again.",
  };
  // the API's fix when it gives one, else ours, naming the client's own secret setting
  C.advice = (reason, fix, client) => {
    const text = fix || ADVICE[reason] || "";
    return client && client.secret_setting ? text.split("GRAPH_CLIENT_SECRET_<NAME>").join(client.secret_setting) : text;
  };

  C.syncAndSave = async function () {
    const report = await C.api("POST", "subscriptions/sync");
    const parts = Object.entries(report.clients || {}).map(([name, e]) => {
      const counts = Object.entries(e.counts || {}).map(([k, v]) => v + " " + k).join(", ") || "nothing to do";
      return name + ": " + counts + (e.error ? " - " + e.error : "");
    });
    C.notice("Sync and Save done. " + (parts.join("; ") || "No clients."), Object.values(report.clients || {}).some((e) => !e.ok));
    await C.render();
  };

  function validationResult(result, client) {
    const ok = result.ok;
    const failing = (result.checks || []).filter((c) => !c.ok);
    const first = failing[0] || {};
    const reason = result.reason || first.reason || "";
    const box = el("div", { class: "result" + (ok ? "" : " bad"), role: ok ? "status" : "alert",
                            dataset: { ok: String(ok), reason } },
      el("strong", {}, ok ? "Valid: a token, Mail.ReadWrite and every inbox checked could be read."
                          : "Not valid: "), ok ? null : el("span", { class: "tag reason" }, reason));
    if (!ok) {
      if (first.detail) box.append(el("p", { class: "what detail" }, first.detail));
      const advice = C.advice(reason, result.fix || first.fix, client);
      if (advice) box.append(el("p", { class: "what advice" }, el("strong", {}, "What to do: "), advice));
    }
    box.append(C.table({
      rows: result.checks || [], empty: "No checks ran.", pageSize: 50, columns: [
        { label: "Check", cell: (c) => c.check },
        { label: "Inbox", cell: (c) => c.mailbox || "" },
        { label: "Result", cell: (c) => (c.ok ? C.badge("ok", "ok") : C.badge(c.reason || "failed", "bad")) },
        { label: "Detail", cls: "wrap", cell: (c) => c.detail || (c.roles ? "roles: " + c.roles.join(", ") : "") },
      ],
    }), el("p", { class: "muted small" }, "Checked ", C.time(result.checked_at), "."));
    return box;
  }

  function synclogTable(entries) {
    return C.table({
      rows: entries, empty: "No sync has run for this client yet.", pageSize: 10, columns: [
        { label: "Started", cell: (e) => C.time(e.started) },
        { label: "By", cell: (e) => e.trigger || "" },
        { label: "Inboxes", cls: "num", cell: (e) => e.mailboxes ?? "" },
        { label: "Outcome", cell: (e) => Object.entries(e.counts || {}).map(([k, v]) => v + " " + k).join(", ") || "–" },
        { label: "Orphans deleted", cls: "num", cell: (e) => e.orphans_deleted ?? 0 },
        { label: "Result", cls: "wrap", cell: (e) => [e.ok ? C.badge("ok", "ok") : C.badge("failed", "bad"),
          e.error ? " " + e.error : "", (e.errors || []).map((x) => el("div", { class: "small" }, x.mailbox + ": " + x.reason))] },
      ],
    });
  }

  function clientPanel(c, addresses) {
    const result = el("div", { class: "validation", "aria-live": "polite" });
    const log = el("div", { class: "synclog", hidden: true });
    const listId = "inboxes-of-" + c.name;
    const target = el("input", { type: "text", list: listId, placeholder: "all its inboxes", "aria-label": "Validate against one inbox (optional)",
                                 class: "validate-mailbox" });
    const validate = C.actionButton("Validate", async () => {
      result.replaceChildren(C.loading("Getting a fresh token and reading the inboxes…"));
      try {
        result.replaceChildren(validationResult(await C.api("POST", "clients/" + encodeURIComponent(c.name) + "/validate",
          { query: { mailbox: target.value.trim() } }), c));
      } catch (err) {
        result.replaceChildren(C.errorBox(err, "Validation could not run"));
      }
    }, { class: "primary validate" });
    const toggleLog = C.actionButton("Sync log", async (button) => {
      if (!log.hidden) { log.hidden = true; button.setAttribute("aria-expanded", "false"); return; }
      log.hidden = false;
      button.setAttribute("aria-expanded", "true");
      await C.section(log, async () => synclogTable((await C.get("clients/" + encodeURIComponent(c.name) + "/synclog")).entries),
        "The sync log could not be read");
    }, { class: "show-synclog", "aria-expanded": "false" });
    const credential = [c.credential];
    if (c.secret_setting) credential.push(" from ", el("code", {}, c.secret_setting), c.secret_set ? "" : " (not set)");
    if (c.certificate_setting) credential.push(" from ", el("code", {}, c.certificate_setting), c.certificate_set ? "" : " (not set)");
    const last = c.last_sync;
    return el("section", { class: "panel client", dataset: { client: c.name }, "aria-label": "Graph client " + c.name },
      el("div", { class: "panel-head" }, el("h3", {}, c.name), c.warnings && c.warnings.length ? C.badge("warning", "warn") : null),
      el("dl", { class: "facts" },
        el("dt", {}, "Tenant"), el("dd", { class: "tenant" }, el("code", {}, c.tenant_id),
          c.tenant_guid && c.tenant_guid !== c.tenant_id.toLowerCase() ? [" = ", el("code", {}, c.tenant_guid)]
            : c.tenant_guid ? null : " (the GUID Graph sends is learnt when its first inbox is registered)"),
        el("dt", {}, "Client id"), el("dd", {}, el("code", {}, c.client_id)),
        el("dt", {}, "Credential"), el("dd", {}, credential),
        c.credential === "secret" ? [el("dt", {}, "Secret expires"),
          el("dd", {}, c.secret_expires ? C.time(c.secret_expires, true) : "not recorded (set secret_expires to be warned)")] : null,
        el("dt", {}, "Inboxes"), el("dd", {}, (c.mailboxes || []).length ? (c.mailboxes || []).map((id) => addresses[id] || id).join(", ") : "none"),
        el("dt", {}, "Last sync"), el("dd", {}, last ? [C.time(last.started), " (" + (last.trigger || "") + ") ",
          last.ok ? C.badge("ok", "ok") : C.badge("failed", "bad"), last.error ? " " + last.error : ""] : "never")),
      c.warnings && c.warnings.length ? el("ul", { class: "warnings" }, c.warnings.map((w) => C.warningItem(w))) : null,
      el("datalist", { id: listId }, (c.mailboxes || []).map((id) => C.option(addresses[id] || id))),
      el("form", { class: "inline", onsubmit: (ev) => { ev.preventDefault(); validate.click(); } },
        el("label", {}, "Validate against", target), validate, toggleLog),
      result, log);
  }

  C.screens.clients = async function (view) {
    const [doc, boxes] = await Promise.all([C.get("clients"), C.get("mailboxes")]);
    const addresses = Object.fromEntries(boxes.mailboxes.map((m) => [m.id, m.address]));
    C.put(view, 
      el("div", { class: "screen-head" }, el("h2", {}, "Graph clients"),
        C.actionButton("Sync and Save", () => C.syncAndSave(), { class: "primary", id: "sync-and-save" })),
      el("p", { class: "muted small" }, "Clients are configured in the app settings (GRAPH_CLIENTS; secrets in Key Vault). ",
        "Validate gets a fresh token and reads each inbox's Inbox; nothing is changed. Sync and Save creates, renews ",
        "and repairs every inbox's Graph subscription now (the timer does it every 30 minutes)."),
      doc.clients.length ? doc.clients.map((c) => clientPanel(c, addresses))
        : C.empty("No Graph clients are configured: set GRAPH_CLIENTS (see the README's Configuration)."));
  };
})();
