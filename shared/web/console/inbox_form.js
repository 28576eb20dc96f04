/* inbox_form.js: Add and Edit an inbox, every per-mailbox setting. Every choice comes from GET options
   (and the move folder from GET clients/{name}/folders); a choice list the options route gives for
   the mailbox that this form does not know yet is rendered as one more select. "Check" sends the
   form to the same route with ?validate_only=true (nothing saved), and so does every change, a
   moment later; "Save" sends POST mailboxes or PATCH mailboxes/{id} (only what changed). A refusal
   is shown next to the field it names (`field`, dotted), and at the top. */
(function () {
  const el = C.el;
  const KNOWN_CHOICES = ["action", "closed_ticket_policy", "sender_id_behaviour"];

  // One labelled field: the control, a hint, and the place its error goes.
  function field(name, label, control, hint, isCheck) {
    const id = "f-" + name.replace(/[^A-Za-z0-9_-]/g, "-");
    if (!control.id) control.id = id;
    control.dataset.field = name;
    const error = el("p", { class: "field-error", id: id + "-error", hidden: true });
    const hintEl = hint ? el("span", { class: "hint", id: id + "-hint" }, hint) : null;
    control.setAttribute("aria-describedby", [hintEl && hintEl.id, error.id].filter(Boolean).join(" "));
    const labelEl = el("label", { for: control.id }, label);
    if (isCheck) {
      return el("div", { class: "field check", dataset: { wrap: name } }, el("span", { class: "label" }),
        el("div", { class: "control" }, control, labelEl, hintEl, error));
    }
    return el("div", { class: "field", dataset: { wrap: name } }, labelEl, el("div", { class: "control" }, control, hintEl, error));
  }

  function select(choices, value, labelOf) {
    const s = el("select", {}, choices.map((c) => C.option(c, labelOf ? labelOf(c) : c)));
    if (value !== undefined && value !== null && value !== "" && !choices.includes(value)) {
      s.append(C.option(value, value + " (not an allowed value)"));
    }
    if (value !== undefined && value !== null) s.value = value;
    return s;
  }

  // Rows of inputs (merge codes, routing): each row carries data-field = prefix + its key, so a
  // refusal naming e.g. routing.values.helpdesktype lands on that row. A column with `choicesFrom`
  // (the index of another column) offers the choices that column's value has, e.g. a Lime option
  // property's options; without choices a column is free text.
  function rowEditor({ name, label, columns, rows, addLabel, keyOf, hint }) {
    const list = el("div", { class: "rows" });
    const labelId = "f-" + name.replace(/\./g, "-") + "-label";
    const choicesOf = (col, inputs) => (col.choicesFrom !== undefined ? col.choicesOf(inputs[col.choicesFrom].value) : col.choices);
    function control(col, value, inputs) {
      const choices = choicesOf(col, inputs);
      const input = choices && choices.length
        ? select(choices, value || choices[0])
        : el("input", { type: col.type || "text", placeholder: col.placeholder, value: value || "" });
      input.setAttribute("aria-label", col.placeholder);
      return input;
    }
    function addRow(values) {
      const inputs = [];
      columns.forEach((col, i) => inputs.push(control(col, values ? values[i] : "", inputs)));
      const row = el("div", { class: "row" }, inputs,
        el("button", { type: "button", class: "danger", "aria-label": "Remove this " + label.toLowerCase() + " row",
                       onclick: () => { row.remove(); list.dispatchEvent(new Event("change", { bubbles: true })); } }, "Remove"));
      const mark = () => { row.dataset.field = name + "." + keyOf(inputs.map((x) => x.value)); };
      columns.forEach((col, i) => {
        if (col.choicesFrom === undefined) return;
        let offered = JSON.stringify(choicesOf(col, inputs) || null);
        inputs[col.choicesFrom].addEventListener("change", () => {
          const now = JSON.stringify(choicesOf(col, inputs) || null);
          if (now === offered) return;  // same choices (or free text): keep what was typed
          offered = now;
          const next = control(col, "", inputs);
          inputs[i].replaceWith(next);
          inputs[i] = next;
        });
      });
      row.addEventListener("input", mark);
      row.addEventListener("change", mark);
      mark();
      list.append(row);
      return inputs;
    }
    for (const r of rows) addRow(r);
    const add = el("button", { type: "button", onclick: () => addRow(null)[0].focus() }, addLabel);
    const group = el("div", { role: "group", "aria-labelledby": labelId, dataset: { field: name } }, list, add);
    const error = el("p", { class: "field-error", id: labelId.replace("-label", "-error"), hidden: true });
    const node = el("div", { class: "field", dataset: { wrap: name } }, el("span", { class: "label", id: labelId }, label),
      el("div", { class: "control" }, group, hint ? el("span", { class: "hint" }, hint) : null, error));
    const read = () => [...list.children].map((row) => [...row.querySelectorAll("input, select")].map((x) => x.value.trim()));
    return { node, read };
  }

  function warningText(w) {
    if (typeof w === "string") return w;
    return (w.message || w.reason || JSON.stringify(w)) + (w.fix ? " What to do: " + w.fix : "");
  }

  C.inboxForm = async function (view, ref) {
    let options, box = null;
    try {
      [options, box] = await Promise.all([C.loadOptions(), ref ? C.get("mailboxes/" + encodeURIComponent(ref)) : null]);
    } catch (err) {
      if (err === C.optionsError) err.message = "The form's choices could not be loaded (GET options): " + err.message;
      throw err;
    }
    const m = options.mailbox || {};
    const clients = options.clients || [];
    const auto = options.autoreply || {};
    const crm = options.crm || {};
    const cur = box || {};
    const curAuto = cur.autoreply || {};
    const curRouting = cur.routing || {};

    // ---- controls ----
    const address = box ? null : el("input", { type: "email", autocomplete: "off", placeholder: "support@customer.com" });
    const clientNames = clients.map((c) => c.name);
    // a new inbox with several clients to choose from: no choice made for the admin
    const client = select(!box && clientNames.length > 1 ? ["", ...clientNames] : clientNames, cur.client || (clientNames.length > 1 ? "" : clientNames[0]),
      (n) => { const c = clients.find((x) => x.name === n); return c ? n + " (" + c.credential + ", tenant " + c.tenant_id + ")" : "— choose a client —"; });
    const active = el("input", { type: "checkbox", checked: box ? cur.active !== false : true });
    const startInitial = box ? C.localInput(cur.start_date) : "";
    const start = el("input", { type: "datetime-local", value: startInitial });
    const defaults = options.defaults || {};
    const initialChoice = (k) => cur[k] || defaults[k] || (m[k] || [])[0];
    const action = select(m.action || [], initialChoice("action"), (v) => C.label("action", v));
    const folder = el("select", {}, cur.move_folder ? C.option(cur.move_folder, cur.move_folder) : C.option("", "— choose a folder —"));
    const folderHint = el("span", { class: "hint" });
    const arEnabled = el("input", { type: "checkbox", checked: Boolean(curAuto.enabled) });
    const templates = Array.isArray(auto.templates) ? auto.templates : [];
    const template = el("select", {}, C.option("", "— none —"), templates.map((t) => C.option(t, t)));
    if (curAuto.template && !templates.includes(curAuto.template)) {
      template.append(C.option(curAuto.template, curAuto.template + " (not found in TRAML)"));
    }
    template.value = curAuto.template || "";
    const fromName = el("input", { type: "text", value: curAuto.from_name || "", placeholder: "Contoso Support" });
    const policy = select(m.closed_ticket_policy || [], initialChoice("closed_ticket_policy"),
      (v) => C.label("closed_ticket_policy", v));
    const days = el("input", { type: "number", min: "0", step: "1", inputmode: "numeric", value: String(cur.closed_ticket_days ?? 0) });
    const senders = select(m.sender_id_behaviour || [], initialChoice("sender_id_behaviour"),
      (v) => C.label("sender_id_behaviour", v));
    const extras = Object.keys(m).filter((k) => !KNOWN_CHOICES.includes(k) && Array.isArray(m[k]))
      .map((k) => [k, select(m[k], initialChoice(k), (v) => C.label(k, v))]);

    const props = crm.routing_properties || [];
    const optionsOf = (prop) => (crm.routing_options || {})[prop] || null;
    const mergeCodes = rowEditor({
      name: "autoreply.merge_codes", label: "Merge codes", addLabel: "Add merge code", keyOf: (v) => v[0],
      columns: [{ placeholder: "merge code name" }, { placeholder: "value" }],
      rows: Object.entries(curAuto.merge_codes || {}), hint: "Extra $$name$$ codes the template uses, per inbox.",
    });
    const routingValues = rowEditor({
      name: "routing.values", label: "Ticket defaults", addLabel: "Add a default", keyOf: (v) => v[0],
      columns: [{ placeholder: "property", choices: props }, { placeholder: "value", choicesFrom: 0, choicesOf: optionsOf }],
      rows: Object.entries(curRouting.values || {}),
      hint: "Values a new ticket from this inbox gets, e.g. its helpdesk type.",
    });
    const byRecipientRows = [];
    for (const [to, values] of Object.entries(curRouting.by_recipient || {})) {
      for (const [prop, value] of Object.entries(values || {})) byRecipientRows.push([to, prop, value]);
    }
    const byRecipient = rowEditor({
      name: "routing.by_recipient", label: "By receiving address", addLabel: "Add an address rule",
      keyOf: (v) => v[0] + (v[1] ? "." + v[1] : ""), rows: byRecipientRows,
      columns: [{ placeholder: "receiving address", type: "email" }, { placeholder: "property", choices: props },
                { placeholder: "value", choicesFrom: 1, choicesOf: optionsOf }],
      hint: "For mail sent to this address (To or Cc), these values instead.",
    });

    // ---- layout ----
    const daysField = field("closed_ticket_days", "Days closed before a new ticket", days, "Used with the last policy.");
    const folderField = field("move_folder", "Folder", folder);
    folderField.querySelector(".control").insertBefore(folderHint, folderField.querySelector(".field-error"));
    const missingTemplate = Array.isArray(auto.templates) && curAuto.template && !templates.includes(curAuto.template)
      ? "TRAML has no template named '" + curAuto.template + "' (any more): its autoreplies fail until you choose another. " : "";
    const templateHint = missingTemplate + (auto.traml_configured === false
      ? "TRAML is not configured (TRAML_BASE_URL): no autoreply can be sent."
      : auto.error ? "TRAML's templates could not be listed: " + (auto.error.message || auto.error.reason)
        : (templates.length ? "Mail templates in Lime Marketing (TRAML)." : "TRAML has no mail templates yet."));
    const summary = el("div", { class: "form-errors", id: "form-errors", role: "alert", hidden: true });
    const checkResult = el("div", { class: "check-result", id: "check-result", "aria-live": "polite" });
    const checkButton = el("button", { type: "button", id: "check-inbox" }, "Check");
    const saveButton = el("button", { type: "submit", class: "primary", id: "save-inbox" }, box ? "Save changes" : "Add inbox");
    const form = el("form", { class: "settings", novalidate: true, id: "inbox-form" },
      summary, checkResult,
      el("fieldset", {}, el("legend", {}, "Mailbox"),
        box ? el("div", { class: "field", dataset: { wrap: "address", field: "address" } }, el("span", { class: "label" }, "Address"),
                 el("div", { class: "control" }, el("strong", { id: "f-address" }, cur.address),
                    el("span", { class: "hint" }, "id " + cur.id), el("p", { class: "field-error", hidden: true })))
            : field("address", "Address", address, "The mailbox to monitor: its Inbox becomes tickets."),
        field("client", "Graph client", client, "The Entra app registration that reads this mailbox."),
        field("active", "Monitor this inbox (active)", active, null, true),
        field("start_date", "Process mail received from", start,
          "Empty: from when it is added. Older mail shows as unprocessed; recover it on the Mail screen.")),
      el("fieldset", {}, el("legend", {}, "After a mail is in the CRM"),
        field("action", "Then", action), folderField),
      el("fieldset", {}, el("legend", {}, "Autoreply"),
        field("autoreply.enabled", "Send an autoreply with the ticket number", arEnabled, null, true),
        field("autoreply.template", "Template", template, templateHint),
        field("autoreply.from_name", "From name", fromName),
        mergeCodes.node),
      el("fieldset", {}, el("legend", {}, "Tickets"),
        field("closed_ticket_policy", "Mail about a closed ticket", policy), daysField,
        field("sender_id_behaviour", "Find the sender's person and company", senders,
          "Each level adds a way to find the company, stopping at the first unique match."),
        routingValues.node, byRecipient.node),
      extras.length ? el("fieldset", {}, el("legend", {}, "More"),
        extras.map(([k, s]) => field(k, C.humanize(k), s))) : null,
      el("div", { class: "form-actions" }, saveButton, checkButton, el("a", { href: "#/inboxes", class: "button" }, "Cancel")));
    C.put(view, el("div", { class: "screen-head" }, el("h2", {}, box ? "Edit " + cur.address : "Add an inbox")), form);

    // ---- dependent fields ----
    const toggle = () => {
      folderField.hidden = action.value !== "move";
      daysField.hidden = policy.value !== "new_after_days";
    };
    let folderLoad = 0;
    async function loadFolders() {
      if (action.value !== "move") return;
      const mailbox = box ? box.id : address.value.trim();
      if (!mailbox || !client.value) { folderHint.textContent = "Enter the address first: its folders are listed here."; return; }
      const mine = ++folderLoad;
      const chosen = folder.value || cur.move_folder || "";
      folderHint.textContent = "Loading the mailbox's folders…";
      try {
        const found = await C.get("clients/" + encodeURIComponent(client.value) + "/folders", { mailbox });
        if (mine !== folderLoad) return;
        const list = Array.isArray(found) ? found : (found.folders || []);
        folder.replaceChildren(C.option("", "— choose a folder —"), ...list.map((f) => C.option(f.id, f.path || f.display_name)));
        const match = list.find((f) => [f.id, f.path, f.display_name].includes(chosen));
        if (chosen && !match) folder.append(C.option(chosen, chosen + " (not found in the mailbox)"));
        folder.value = match ? match.id : chosen;
        folderHint.textContent = list.length + " folder(s) in the mailbox.";
      } catch (err) {
        if (mine !== folderLoad) return;
        folderHint.textContent = "The folders could not be listed: " + err.message;
      }
    }
    action.addEventListener("change", () => { toggle(); loadFolders(); });
    policy.addEventListener("change", toggle);
    client.addEventListener("change", loadFolders);
    if (address) address.addEventListener("change", loadFolders);
    toggle();
    loadFolders();

    // ---- the request body ----
    function collect() {
      const doc = {};
      if (!box) doc.address = address.value.trim();
      doc.client = client.value;
      doc.active = active.checked;
      if (start.value && start.value !== startInitial) doc.start_date = new Date(start.value).toISOString();
      doc.action = action.value;
      if (action.value === "move") doc.move_folder = folder.value;
      const codes = {};
      for (const [k, v] of mergeCodes.read()) if (k) codes[k] = v;
      doc.autoreply = { enabled: arEnabled.checked, template: template.value, from_name: fromName.value.trim(), merge_codes: codes };
      const values = {}, rules = {};
      for (const [k, v] of routingValues.read()) if (k) values[k] = v;
      for (const [to, k, v] of byRecipient.read()) if (to || k) (rules[to] = rules[to] || {})[k] = v;
      doc.routing = {};
      if (Object.keys(values).length) doc.routing.values = values;
      if (Object.keys(rules).length) doc.routing.by_recipient = rules;
      doc.closed_ticket_policy = policy.value;
      if (!daysField.hidden) doc.closed_ticket_days = days.value === "" ? null : Number(days.value);
      doc.sender_id_behaviour = senders.value;
      for (const [k, s] of extras) doc[k] = s.value;
      return doc;
    }
    const initial = collect();
    const changed = (doc) => Object.fromEntries(Object.entries(doc).filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(initial[k])));

    // ---- refusals next to their field ----
    function clearErrors() {
      summary.hidden = true;
      summary.replaceChildren();
      for (const x of form.querySelectorAll("[aria-invalid]")) x.removeAttribute("aria-invalid");
      for (const x of form.querySelectorAll(".field-error")) { x.hidden = true; x.textContent = ""; }
    }
    // the control (or row, or group) a dotted field name stands for: the longest prefix that has one
    function targetOf(field) {
      for (let name = field || ""; name; name = name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "") {
        const found = [...form.querySelectorAll(".field [data-field], .field[data-field]")]
          .find((x) => x.dataset.field === name && !x.closest("[hidden]"));
        if (found) return found;
      }
      return null;
    }
    function place(field, message) {
      const target = targetOf(field);
      if (!target) return null;
      const control = target.matches("input, select, textarea") ? target : target.querySelector("input, select, textarea");
      const error = target.closest(".field").querySelector(".field-error");
      error.textContent = error.textContent ? error.textContent + " " + message : message;
      error.hidden = false;
      if (control) control.setAttribute("aria-invalid", "true");
      return control || target;
    }
    function showRefusal(err, checking, touched) {
      clearErrors();
      if (touched) {  // a check of its own accord: only about a field the admin has changed
        const near = (f) => [...touched].some((t) => f === t || f.startsWith(t + ".") || t.startsWith(f + "."));
        const all = [{ field: err.field, message: err.message }, ...((err.detail && err.detail.violations) || [])];
        if (!all.some((v) => v.field && near(v.field))) return;
      }
      const what = checking ? "Check found a problem" : (box ? "Not saved" : "Not added");
      C.put(summary, el("strong", {}, what + ": "), el("span", { class: "message" }, err.message),
        err.reason ? el("span", {}, " ", el("span", { class: "tag" }, err.reason)) : null,
        err.detail && err.detail.host ? el("div", {}, "Host: ", el("code", {}, err.detail.host)) : null,
        err.detail && err.detail.fix ? el("div", {}, "What to do: " + err.detail.fix) : null);
      summary.hidden = false;
      summary.dataset.refusedField = err.field || "";
      summary.dataset.reason = err.reason || "";
      // every broken rule next to its field (the API lists them all; its message names the first)
      const more = ((err.detail && err.detail.violations) || []).filter((v) => v.field && v.field !== err.field);
      const first = err.field ? place(err.field, err.message) : null;
      for (const v of more) place(v.field, v.message);
      if (checking) return;
      if (first && first.focus) first.focus();
      else {
        summary.setAttribute("tabindex", "-1");
        summary.focus();
      }
    }

    // ---- Check, Save ----
    let checks = 0, saving = false, timer = null;
    const touched = new Set();
    async function check(quiet) {
      if (saving) return;
      const mine = ++checks;
      if (!quiet) checkResult.replaceChildren(C.loading("Checking…"));
      try {
        const answer = await C.api(box ? "PATCH" : "POST", box ? "mailboxes/" + encodeURIComponent(box.id) : "mailboxes",
          { body: collect(), query: { validate_only: "true" } });
        if (mine !== checks || saving) return;
        clearErrors();
        const warnings = (answer && answer.warnings) || [];
        checkResult.replaceChildren(el("div", { class: "result", dataset: { ok: "true" } },
          el("strong", {}, warnings.length ? "No refusals, with warnings:" : "No problems found: nothing was saved yet."),
          warnings.length ? el("ul", { class: "warnings" }, warnings.map((w) => el("li", {}, warningText(w)))) : null));
      } catch (err) {
        if (mine !== checks || saving) return;
        checkResult.replaceChildren();
        showRefusal(err, true, quiet ? touched : null);
      }
    }
    checkButton.addEventListener("click", () => { clearTimeout(timer); check(false); });
    // a mistake is shown when it is made: check again shortly after any change
    form.addEventListener("change", (ev) => {
      const changed = ev.target.closest && ev.target.closest("[data-field]");
      if (changed) touched.add(changed.dataset.field.split(".")[0]);
      clearTimeout(timer);
      timer = setTimeout(() => check(true), 600);
    });

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      if (saving) return;
      clearTimeout(timer);
      checks += 1;  // a check still under way is no longer news
      const body = box ? changed(collect()) : collect();
      if (box && !Object.keys(body).length) {
        checkResult.replaceChildren(el("div", { class: "result" }, "Nothing changed."));
        return;
      }
      saving = true;
      saveButton.disabled = true;
      checkResult.replaceChildren(C.loading(box ? "Saving…" : "Adding… (the app checks that it can reach the mailbox)"));
      try {
        const saved = await C.api(box ? "PATCH" : "POST", box ? "mailboxes/" + encodeURIComponent(box.id) : "mailboxes", { body });
        const sub = saved.subscription_outcome || saved.subscription || {};
        const warnings = [...(saved.warnings || []), ...(saved.check_warnings || [])].map(warningText);
        C.notice((box ? "Saved " + saved.address + "." : "Added " + saved.address + ".")
          + (sub.action ? " Graph subscription: " + sub.action + (sub.reason ? " (" + sub.reason + ")" : "") + "." : "")
          + (warnings.length ? " Note: " + warnings.join(" ") : ""));
        C.go("#/inboxes");
      } catch (err) {
        checkResult.replaceChildren();
        showRefusal(err, false);
      } finally {
        saving = false;
        saveButton.disabled = false;
      }
    });
    if (address) setTimeout(() => address.focus(), 0);  // once the router has shown the form
  };
})();
