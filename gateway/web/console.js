// The web console (gateway/console.py): numbers and trunks, agents, call history — on the REST API only.
//
// The API key lives in this tab's sessionStorage (shared with /calls/live) and in memory; it is sent only as
// `Authorization: Bearer`, never in a URL. Views are chosen by the URL fragment (#/numbers, #/agents/3,
// #/calls?status=completed), which the browser never sends to the server. Forms are built from the API's own
// description (/api/v1/openapi.json: each loaded carrier's import fields, the agent settings schema) and from
// the values it returns, so a field the API adds shows up here without a change. Text from the API is only ever
// set as textContent.
"use strict";

const KEY_STORE = "gateway_api_key";
const PROVIDER_LABELS = {
  sip: "SIP trunk", twilio: "Twilio", exotel: "Exotel", vonage: "Vonage", plivo: "Plivo", telnyx: "Telnyx",
  signalwire: "SignalWire",
};
const PAGE_SIZE = 25;
let apiKey = sessionStorage.getItem(KEY_STORE) || "";
let openapiDoc = null;           // /api/v1/openapi.json, fetched once per key
let renderSeq = 0;               // a slow view never overwrites the one the user moved on to
let pendingFlash = null;         // shown by the next view (after a navigation)

const $ = (id) => document.getElementById(id);

// -- small DOM helpers ------------------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (["value", "checked", "hidden", "disabled"].includes(k)) el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of kids.flat(Infinity)) if (c != null && c !== false) el.append(c instanceof Node ? c : String(c));
  return el;
}

function humanize(name) { return String(name).replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()); }
function providerLabel(p) { return PROVIDER_LABELS[p] || p; }
function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? String(iso) : d.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}
function isPlain(v) { return v !== null && typeof v === "object" && !Array.isArray(v); }
function scalarText(v) {
  if (v === null || v === undefined || v === "") return "—";
  if (v === true) return "yes";
  if (v === false) return "no";
  if (typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v)) return fmtTime(v);
  return String(v);
}

/** A value of any shape as a definition list (objects nest, lists of objects become small tables). */
function kv(obj, skip) {
  const dl = h("dl", { class: "kv" });
  for (const [k, v] of Object.entries(obj || {})) {
    if (skip && skip.has(k)) continue;
    dl.append(h("dt", {}, humanize(k)), h("dd", { "data-key": k }, valueView(v)));
  }
  if (!dl.children.length) dl.append(h("dd", { class: "muted" }, "nothing reported"));
  return dl;
}
function valueView(v) {
  if (isPlain(v)) return Object.keys(v).length ? kv(v) : "—";
  if (Array.isArray(v)) {
    if (!v.length) return "—";
    if (v.every(isPlain)) return h("div", {}, v.map((x, i) => h("div", { class: "item" }, kv(x))));
    return v.map(scalarText).join(", ");
  }
  return scalarText(v);
}

function badge(text, cls) { return h("span", { class: "badge " + (cls || "") }, text); }
function verdictClass(verdict, ok) {
  if (ok === true || verdict === "ok" || verdict === "registered" || verdict === "healthy") return "ok";
  if (verdict === "skipped" || verdict == null) return "";
  if (/degraded|warn|registering|unknown/.test(String(verdict))) return "warn";
  return "fail";
}

/** A table that becomes one card per row on a phone: each cell carries its column's label. */
function table(columns, rows, empty) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c))));
  const body = h("tbody");
  for (const row of rows) {
    const tr = h("tr", row.attrs || {});
    row.cells.forEach((c, i) => tr.append(h("td", { "data-label": columns[i], class: c && c.cls }, c && c.node !== undefined ? c.node : c)));
    body.append(tr);
  }
  if (!rows.length) body.append(h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty || "none")));
  return h("table", { class: "cards" }, head, body);
}

function flash(text, error) {
  const el = $("flash");
  el.textContent = text || "";
  el.className = error ? "error" : "";
}

// -- the API ------------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body.error || ("HTTP " + status));
    this.status = status;
    this.field = body.field || null;
  }
}

async function api(method, path, body) {
  if (!apiKey) throw new ApiError(401, { error: "enter the API key first" });
  const init = { method, headers: { Authorization: "Bearer " + apiKey }, cache: "no-store" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch("/api/v1" + path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) {
    if (res.status === 401) $("api-key").focus();
    throw new ApiError(res.status, data);
  }
  return data;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

async function openapi() {
  if (!openapiDoc) openapiDoc = await api("GET", "/openapi.json");
  return openapiDoc;
}
async function importSchemas() {
  const schemas = (await openapi()).components.schemas;
  const out = {};
  for (const [name, s] of Object.entries(schemas)) if (name.startsWith("Import_")) out[name.slice(7)] = s;
  return out;
}

/** Every item of a paged list endpoint (bounded: 20 pages of 150). */
async function allPages(path, key) {
  const out = [];
  for (let page = 1; page <= 20; page++) {
    const body = await api("GET", path + query({ pageno: page, pagesize: 150 }));
    out.push(...body[key]);
    if (out.length >= (body.total || 0) || !body[key].length) break;
  }
  return out;
}
const loadAgents = () => allPages("/agents", "agents");
const loadNumbers = () => allPages("/phone_number/list", "phone_numbers");

// -- forms generated from a JSON schema and/or the values the API returned -------------------------------------
class FieldError extends Error {
  constructor(path, message) { super(path + ": " + message); this.field = path; }
}

// The document is generated from pydantic models: a nested model is a `$ref` to components.schemas and an optional
// field is `anyOf: [X, {type: "null"}]`. Forms want X itself (the field's own description and default kept; the
// model's class name is no label).
function deref(schema) {
  let s = schema || {};
  for (let i = 0; i < 8; i++) {
    if (s.$ref && openapiDoc) {
      const { $ref, ...outer } = s;
      const { title, ...target } = openapiDoc.components.schemas[$ref.split("/").pop()] || {};
      s = { ...target, ...outer };
    } else if (Array.isArray(s.anyOf) && s.anyOf.filter((x) => x.type !== "null").length === 1) {
      const { anyOf, ...outer } = s;
      s = { ...anyOf.find((x) => x.type !== "null"), ...outer };
    } else break;
  }
  return s;
}

function kindOf(schema, value) {
  schema = deref(schema);
  let t = schema.type;
  if (Array.isArray(t)) t = t.find((x) => x !== "null");
  if (!t && schema.enum) t = "string";
  if (!t && schema.properties) t = "object";
  if (!t) {
    if (typeof value === "boolean") t = "boolean";
    else if (typeof value === "number") t = Number.isInteger(value) ? "integer" : "number";
    else if (Array.isArray(value)) t = "array";
    else if (isPlain(value)) t = "object";
    else if (value === undefined || value === null || typeof value === "string") t = "string";
    else t = "json";
  }
  if (t === "array") {
    const items = deref(schema.items);
    let item = items.type || (items.properties ? "object" : null);
    if (!item && Array.isArray(value) && value.length) item = isPlain(value[0]) ? "object" : typeof value[0];
    if (!item || item === "string") return "lines";
    return item === "object" ? "objects" : "json";
  }
  return t;
}

function fieldId(path) { return "f-" + path.replace(/[^\w-]/g, "_"); }

/**
 * One input (or group) for `value` described by `schema`. Returns {name, path, el, get}; get() gives the value to
 * send: `undefined` when the field was never set and is still empty (left out of the request), `null` when a
 * value the API returned was cleared.
 */
function buildField(name, path, schema, value, opts) {
  opts = opts || {};
  schema = deref(schema);
  if (opts.special && opts.special[name]) return opts.special[name](name, path, schema, value);
  const kind = kindOf(schema, value);
  if (kind === "object") return objectField(name, path, schema, value, opts);
  if (kind === "objects") return objectsField(name, path, schema, value);
  const present = value !== undefined && value !== null;
  const empty = () => (present ? null : undefined);
  const id = fieldId(path);
  let input, get;
  if (kind === "boolean") {
    input = h("input", { type: "checkbox", id, name: path, checked: value === true || (!present && schema.default === true) });
    // untouched and still at the default: left out, so the server's default applies
    get = () => (!present && input.checked === (schema.default === true) ? undefined : input.checked);
  } else if (kind === "integer" || kind === "number") {
    input = h("input", { type: "number", id, name: path, step: kind === "integer" ? "1" : "any",
      value: present ? String(value) : "", placeholder: schema.default != null ? String(schema.default) : null });
    get = () => {
      const t = input.value.trim();
      if (t === "") return empty();
      const n = Number(t);
      if (!Number.isFinite(n)) throw new FieldError(path, "must be a number");
      return n;
    };
  } else if (kind === "lines") {
    input = h("textarea", { id, name: path, rows: 3, placeholder: "one per line",
      value: Array.isArray(value) ? value.join("\n") : "" });
    get = () => {
      const lines = input.value.split(/[\n,]/).map((s) => s.trim()).filter(Boolean);
      return lines.length ? lines : (present ? [] : undefined);
    };
  } else if (kind === "json") {
    input = h("textarea", { id, name: path, rows: 4, value: present ? JSON.stringify(value, null, 2) : "" });
    get = () => {
      const t = input.value.trim();
      if (!t) return empty();
      try { return JSON.parse(t); } catch (e) { throw new FieldError(path, "is not valid JSON"); }
    };
  } else if (schema.enum) {
    input = h("select", { id, name: path });
    if (!opts.required || !present) input.append(h("option", { value: "" }, schema.default != null ? "(default: " + schema.default + ")" : "—"));
    for (const choice of schema.enum) input.append(h("option", { value: String(choice) }, String(choice)));
    if (present && !schema.enum.map(String).includes(String(value))) input.append(h("option", { value: String(value) }, String(value)));
    input.value = present ? String(value) : "";
    get = () => (input.value === "" ? empty() : input.value);
  } else {
    const secret = schema.writeOnly || schema.format === "password";
    input = h("input", { type: secret ? "password" : "text", id, name: path, value: present ? String(value) : "",
      autocomplete: secret ? "new-password" : "off", spellcheck: "false",
      placeholder: schema.default != null ? String(schema.default) : (secret && value === "****" ? "" : null) });
    get = () => { const t = input.value.trim(); return t === "" ? empty() : t; };
  }
  const help = [schema.description, secretNote(schema, value)].filter(Boolean).join(" ");
  const el = h("div", { class: "field" + (opts.required ? " required" : ""), "data-path": path },
    h("label", { for: id }, schema.title || humanize(name)), input, help ? h("div", { class: "help" }, help) : null);
  return { name, path, el, get };
}
function secretNote(schema, value) {
  return (schema.writeOnly || schema.format === "password") && value === "****" ? "Set; “****” keeps it." : "";
}

function objectField(name, path, schema, value, opts) {
  schema = deref(schema);
  const props = schema.properties || {};
  const val = isPlain(value) ? value : {};
  const present = isPlain(value);
  const keys = Object.keys(props);
  if (!opts.onlySchema) for (const k of Object.keys(val)) if (!(k in props)) keys.push(k);
  const required = new Set(schema.required || []);
  const children = keys.map((k) => buildField(k, path ? path + "." + k : k, props[k] || {}, val[k],
    { required: required.has(k), special: opts.special }));
  const box = opts.root ? h("div", {}) : h("fieldset", { "data-path": path }, h("legend", {}, schema.title || humanize(name)));
  if (!opts.root && schema.description) box.append(h("div", { class: "help muted small" }, schema.description));
  for (const c of children) box.append(c.el);
  const get = () => {
    const out = {};
    let any = false;
    for (const c of children) {
      const v = c.get();
      if (v === undefined) continue;
      out[c.name] = v;
      if (v !== null && v !== false && !(Array.isArray(v) && !v.length)) any = true;
    }
    return !opts.root && !present && !any ? undefined : out;
  };
  return { name, path, el: box, get, children };
}

function objectsField(name, path, schema, value) {
  const declared = deref(schema.items);
  const itemSchema = declared.properties ? declared
    : { type: "object", properties: Object.fromEntries(((Array.isArray(value) && value[0] && Object.keys(value[0])) || []).map((k) => [k, {}])) };
  const present = Array.isArray(value);
  const list = h("div", {});
  const items = [];
  const add = (v) => {
    const i = items.length;
    const f = objectField("#" + (i + 1), path + "[" + i + "]", { ...itemSchema, title: humanize(name) + " #" + (i + 1) }, v, {});
    const entry = { f, removed: false };
    f.el.append(h("button", { type: "button", class: "danger", onclick: () => { entry.removed = true; f.el.remove(); } }, "Remove"));
    items.push(entry);
    list.append(f.el);
  };
  (present ? value : []).forEach(add);
  const el = h("fieldset", { "data-path": path }, h("legend", {}, schema.title || humanize(name)),
    schema.description ? h("div", { class: "help muted small" }, schema.description) : null, list,
    h("button", { type: "button", onclick: () => add(undefined) }, "Add " + humanize(name).toLowerCase().replace(/s$/, "")));
  const get = () => {
    const out = items.filter((e) => !e.removed).map((e) => e.f.get()).filter((v) => v !== undefined);
    return out.length || present ? out : undefined;
  };
  return { name, path, el, get };
}

/** Mark the input the API named in its error (`settings.transfer.number`, `allowed_ips[1]`). */
function markError(form, field) {
  form.querySelectorAll(".invalid").forEach((e) => e.classList.remove("invalid"));
  if (!field) return;
  let path = field;
  while (path) {
    const el = [...form.querySelectorAll("[data-path]")].find((e) => e.dataset.path === path);
    if (el) {
      el.classList.add("invalid");
      const input = el.querySelector("input, select, textarea");
      if (input) input.focus();
      return;
    }
    const shorter = path.replace(/(\[\d+\]|\.[^.[\]]+)$/, "");
    if (shorter === path) return;
    path = shorter;
  }
}

function agentSelect(agents, current, opts) {
  const sel = h("select", opts || {});
  sel.append(h("option", { value: "" }, "— none —"));
  for (const a of agents) sel.append(h("option", { value: String(a.id) }, a.name + " (#" + a.id + ")"));
  sel.value = current ? String(current) : "";
  return sel;
}

function agentField(agents) {
  return (name, path, schema, value) => {
    const id = fieldId(path);
    const sel = agentSelect(agents, value, { id, name: path });
    const el = h("div", { class: "field", "data-path": path }, h("label", { for: id }, "Agent"), sel,
      h("div", { class: "help" }, "calls to this number go to this agent"));
    return { name, path, el, get: () => (sel.value ? Number(sel.value) : undefined) };
  };
}

// -- connection test report -----------------------------------------------------------------------------------
function reportView(report, title) {
  const verdict = report.verdict || (report.ok ? "ok" : "failed");
  const steps = Array.isArray(report.steps) ? report.steps : [];
  const list = h("ol", { class: "steps" });
  for (const s of steps) {
    const v = s.verdict || (s.ok === true ? "ok" : s.ok === false ? "failed" : "—");
    const extra = Object.entries(s).filter(([k]) => !["step", "ok", "verdict", "detail"].includes(k))
      .map(([k, x]) => humanize(k) + ": " + (isPlain(x) || Array.isArray(x) ? JSON.stringify(x) : scalarText(x)));
    list.append(h("li", { "data-step": s.step, "data-verdict": v },
      h("span", { class: "name" }, humanize(s.step || "step")), h("span", {}, badge(v, verdictClass(v, s.ok))),
      h("span", {}, s.detail || "", extra.length ? h("div", { class: "muted small" }, extra.join(" · ")) : null)));
  }
  const rest = Object.fromEntries(Object.entries(report).filter(([k]) => !["ok", "verdict", "steps"].includes(k)));
  return h("div", { class: "report", id: "test-report", "data-ok": String(!!report.ok) },
    h("h4", {}, title || "Connection test", " — ", badge(verdict, verdictClass(verdict, report.ok))),
    steps.length ? list : h("p", { class: "muted" }, "the carrier reported no steps"),
    Object.keys(rest).length ? kv(rest) : null);
}

async function runTest(button, out, method, path, body) {
  button.disabled = true;
  out.replaceChildren(h("p", { class: "muted" }, "Testing… (DNS, reachability and credentials, one step at a time on the gateway)"));
  try {
    const res = await api(method, path, body);
    out.replaceChildren(reportView(res.report || {}));
  } catch (e) {
    out.replaceChildren(h("p", { class: "error" }, "Test failed: " + e.message));
    return e;
  } finally {
    button.disabled = false;
  }
  return null;
}

// -- numbers and trunks ---------------------------------------------------------------------------------------
function numberState(n) {
  const out = [];
  const st = n.status || {};
  for (const key of ["registration", "health_status", "health"]) {
    const v = st[key] !== undefined ? st[key] : n[key];
    if (v === undefined || v === null) continue;
    const text = isPlain(v) ? (v.status || v.health_status || v.state || "") : v;
    if (text !== "") out.push(badge(humanize(key) + ": " + text, verdictClass(text)));
  }
  const score = st.health_score !== undefined ? st.health_score : n.health_score;
  if (score !== undefined && score !== null) out.push(badge("score " + score));
  if (st.inbound_registration) out.push(badge("registered to us", "ok"));
  if (!out.length) out.push(h("span", { class: "muted" }, Object.keys(st).length ? "see details" : "—"));
  return h("span", {}, out);
}

async function attachOrDetach(numberId, agentId) {
  if (agentId) {
    await api("POST", "/phone_number/attach", { phone_number_id: numberId, agent_id: agentId });
    return "attached to agent #" + agentId;
  }
  await api("POST", "/phone_number/detach", { phone_number_id: numberId });
  return "detached";
}

async function deleteNumber(n) {
  if (!confirm("Delete " + n.phone_number + " (" + providerLabel(n.provider) + ")? Calls to it stop reaching the gateway's agents.")) return false;
  await api("DELETE", "/phone_number/" + n.id);
  return true;
}

async function viewNumbers() {
  const [numbers, agents] = await Promise.all([loadNumbers(), loadAgents()]);
  const rows = numbers.map((n) => {
    const sel = agentSelect(agents, n.agent_id, { "aria-label": "agent for " + n.phone_number, class: "attach" });
    sel.onchange = async () => {
      if (!sel.value && !confirm("Detach " + n.phone_number + " from its agent? Its calls will be refused.")) {
        sel.value = n.agent_id ? String(n.agent_id) : "";
        return;
      }
      try { flash(n.phone_number + " " + await attachOrDetach(n.id, sel.value ? Number(sel.value) : null)); n.agent_id = sel.value ? Number(sel.value) : null; }
      catch (e) { flash(e.message, true); sel.value = n.agent_id ? String(n.agent_id) : ""; }
    };
    const del = h("button", { type: "button", class: "danger delete", onclick: async () => {
      try { if (await deleteNumber(n)) { flash(n.phone_number + " deleted"); route(); } } catch (e) { flash(e.message, true); }
    } }, "Delete");
    return { attrs: { "data-number-id": n.id }, cells: [
      h("a", { href: "#/numbers/" + n.id }, n.phone_number), providerLabel(n.provider),
      [n.name, n.sip_trunk_name].filter(Boolean).join(" · ") || "—", sel, numberState(n),
      { cls: "actions", node: h("span", {}, h("a", { class: "button", href: "#/numbers/" + n.id }, "Open"), " ", del) },
    ] };
  });
  return [
    h("h2", {}, "Numbers and trunks"),
    h("div", { class: "toolbar" }, h("a", { class: "button primary", href: "#/numbers/new", id: "import-link" }, "Import a number or trunk")),
    table(["Number", "Carrier", "Name / trunk", "Agent", "State", ""], rows, "no numbers yet: import one"),
  ];
}

async function viewImport(provider) {
  const [schemas, agents] = await Promise.all([importSchemas(), loadAgents()]);
  const names = Object.keys(schemas).sort();
  const picker = h("div", { class: "toolbar", id: "providers" }, h("span", {}, "Carrier:"),
    names.map((p) => h("a", { class: "button" + (p === provider ? " primary" : ""), href: "#/numbers/new/" + p, "data-provider": p }, providerLabel(p))));
  const head = [h("h2", {}, "Import a number or trunk"), picker];
  if (!provider) return [...head, h("p", { class: "muted" }, "Choose the carrier: the form shows the fields it needs (from the gateway's API description).")];
  const schema = schemas[provider];
  if (!schema) return [...head, h("p", { class: "error" }, "No carrier " + provider + " is loaded on this gateway.")];
  const fields = objectField("", "", schema, {}, { root: true, onlySchema: true, special: { agent_id: agentField(agents) } });
  const out = h("div", { id: "test-out" });
  const testBtn = h("button", { type: "button", id: "test-connection" }, "Test connection");
  const form = h("form", { class: "fields", id: "import-form", novalidate: true }, fields.el,
    h("div", { class: "toolbar" }, h("button", { type: "submit", class: "primary", id: "import" }, "Import"), testBtn,
      h("span", { class: "muted small" }, "Test connection checks the settings without storing anything.")));
  const body = () => { try { return fields.get(); } catch (e) { markError(form, e.field); throw e; } };
  testBtn.onclick = async () => {
    let b;
    try { b = body(); } catch (e) { flash(e.message, true); return; }
    delete b.agent_id;
    const err = await runTest(testBtn, out, "POST", "/phone_number/test/" + provider, b);
    markError(form, err && err.field);
  };
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    try {
      const res = await api("POST", "/phone_number/import/" + provider, body());
      pendingFlash = res.message || "imported";
      location.hash = "#/numbers/" + res.id;
    } catch (e) { markError(form, e.field); flash(e.message, true); }
  };
  return [...head, h("h3", {}, providerLabel(provider)), form, out];
}

function prefill(n, schema) {
  const value = {};
  for (const k of Object.keys(schema.properties || {})) {
    if (k === "agent_id") continue;
    let v = (n.config || {})[k];
    if (v === undefined) v = n[k];
    if ((v === undefined || v === null) && (k === "phone_number" || k.endsWith("_phone_number"))) v = n.phone_number;
    if (v !== undefined) value[k] = v;
  }
  return value;
}

async function viewNumber(id) {
  const [res, agents, schemas] = await Promise.all([api("GET", "/phone_number/" + id), loadAgents(), importSchemas()]);
  const n = res.phone_number;
  const out = h("div", { id: "test-out" });
  const testBtn = h("button", { type: "button", id: "test-connection" }, "Test connection");
  testBtn.onclick = () => runTest(testBtn, out, "POST", "/phone_number/" + n.id + "/test", {});
  const del = h("button", { type: "button", class: "danger", id: "delete" }, "Delete");
  del.onclick = async () => {
    try { if (await deleteNumber(n)) { pendingFlash = n.phone_number + " deleted"; location.hash = "#/numbers"; } }
    catch (e) { flash(e.message, true); }
  };
  const sel = agentSelect(agents, n.agent_id, { id: "agent", "aria-label": "agent" });
  const attachBtn = h("button", { type: "button", id: "attach" }, "Save agent");
  attachBtn.onclick = async () => {
    if (!sel.value && n.agent_id && !confirm("Detach " + n.phone_number + " from its agent? Its calls will be refused.")) return;
    try { flash(n.phone_number + " " + await attachOrDetach(n.id, sel.value ? Number(sel.value) : null)); n.agent_id = sel.value ? Number(sel.value) : null; }
    catch (e) { flash(e.message, true); }
  };
  const health = Object.fromEntries(Object.entries(n).filter(([k]) => /health/.test(k)));
  const state = { ...(n.status || {}), ...health };
  const parts = [
    h("h2", {}, n.phone_number, " ", h("span", { class: "muted" }, providerLabel(n.provider))),
    h("div", { class: "toolbar" }, testBtn, del, h("a", { href: "#/numbers" }, "All numbers")),
    out,
    h("div", { class: "grid2" },
      h("section", {}, h("h3", {}, "Registration and health"), h("div", { id: "state" }, kv(state))),
      h("section", {}, h("h3", {}, "Agent"), h("div", { class: "toolbar" }, sel, attachBtn))),
  ];
  const schema = schemas[n.provider];
  if (schema) {
    const fields = objectField("", "", schema, prefill(n, schema), { root: true, onlySchema: true, special: { agent_id: () => ({ name: "agent_id", el: h("span"), get: () => undefined }) } });
    const baseline = fields.get();
    const form = h("form", { class: "fields", id: "edit-form", novalidate: true }, fields.el,
      h("div", { class: "toolbar" }, h("button", { type: "submit", class: "primary", id: "save" }, "Save changes")));
    form.onsubmit = async (ev) => {
      ev.preventDefault();
      try {
        const now = fields.get();
        const changed = {};
        for (const k of new Set([...Object.keys(now), ...Object.keys(baseline)])) {
          if (JSON.stringify(now[k]) !== JSON.stringify(baseline[k])) changed[k] = now[k] === undefined ? null : now[k];
        }
        if (!Object.keys(changed).length) { flash("nothing changed"); return; }
        flash("saving…");   // the status of an earlier save must not stand for this one
        await api("PATCH", "/phone_number/" + n.id, changed);
        pendingFlash = "saved: " + Object.keys(changed).join(", ");
        route();
      } catch (e) { markError(form, e.field); flash(e.message, true); }
    };
    parts.push(h("h3", {}, "Settings"), form);
  } else {
    parts.push(h("h3", {}, "Settings"), kv(n.config), h("p", { class: "muted" }, "This gateway has no carrier for " + n.provider + " loaded: the settings cannot be changed here."));
  }
  // the rest of the record; the OmniDimension aliases (number_provider, active_bot_id, the flat sip_*/exotel_*
  // copies of config) repeat what is shown above
  const other = Object.fromEntries(Object.entries(n).filter(([k]) => !["config", "status", "phone_number", "provider",
    "number_provider", "active_bot_id"].includes(k) && !/health/.test(k) && !k.startsWith("sip_") && !k.startsWith("exotel_")));
  parts.push(h("h3", {}, "Record"), kv(other));
  return parts;
}

// -- agents -------------------------------------------------------------------------------------------------------
function sectionBadges(settings) {
  return Object.entries(settings || {}).map(([name, s]) => {
    const on = isPlain(s) ? s.enabled : undefined;
    return badge(humanize(name) + (on === true ? " on" : on === false ? " off" : ""), on === true ? "ok" : "");
  });
}

async function deleteAgent(a) {
  if (!confirm("Delete agent “" + a.name + "”? Its numbers are detached and their calls refused until attached again.")) return false;
  await api("DELETE", "/agents/" + a.id);
  return true;
}

async function viewAgents() {
  const [agents, numbers] = await Promise.all([loadAgents(), loadNumbers()]);
  const rows = agents.map((a) => {
    const del = h("button", { type: "button", class: "danger delete", onclick: async () => {
      try { if (await deleteAgent(a)) { flash("agent " + a.name + " deleted"); route(); } } catch (e) { flash(e.message, true); }
    } }, "Delete");
    const nums = numbers.filter((n) => n.agent_id === a.id).map((n) => n.phone_number).join(", ");
    return { attrs: { "data-agent-id": a.id }, cells: [
      h("a", { href: "#/agents/" + a.id }, a.name), a.engine || "(gateway default)", nums || "—",
      h("span", {}, sectionBadges(a.settings)),
      { cls: "actions", node: h("span", {}, h("a", { class: "button", href: "#/agents/" + a.id }, "Edit"), " ", del) },
    ] };
  });
  return [
    h("h2", {}, "Agents"),
    h("div", { class: "toolbar" }, h("a", { class: "button primary", href: "#/agents/new", id: "new-agent" }, "New agent")),
    table(["Name", "Engine", "Numbers", "Settings", ""], rows, "no agents yet"),
  ];
}

/** The agent form; `draft` (the form's values so far) replaces what the API returned, when re-rendering. */
async function viewAgent(id, draft) {
  const doc = await openapi();
  const schema = doc.components.schemas.AgentInput || { properties: {} };
  const agent = id ? (await api("GET", "/agents/" + id)).agent : {};
  const value = draft || { name: agent.name, engine: agent.engine, webhook_url: agent.webhook_url,
    settings: agent.settings };
  const fields = objectField("", "", schema, value, { root: true, onlySchema: true });
  const form = h("form", { class: "fields", id: "agent-form", novalidate: true }, fields.el,
    h("div", { class: "toolbar" }, h("button", { type: "submit", class: "primary", id: "save" }, id ? "Save" : "Create agent")));
  form.onsubmit = async (ev) => {
    ev.preventDefault();
    flash("saving…");   // an earlier "agent saved" must not stand for this save while it is on its way
    try {
      const body = fields.get();
      if (id) {
        await api("PATCH", "/agents/" + id, body);
        pendingFlash = "agent saved";
        route();
      } else {
        const res = await api("POST", "/agents", body);
        pendingFlash = "agent " + res.agent.name + " created";
        location.hash = "#/agents/" + res.agent.id;
      }
    } catch (e) { markError(form, e.field); flash(e.message, true); }
  };
  // a settings section the schema does not describe (an engine's own, say): name + JSON, then edited like the rest
  const secName = h("input", { type: "text", id: "section-name", placeholder: "section name", spellcheck: "false" });
  const secJson = h("textarea", { id: "section-json", rows: 3, placeholder: '{"enabled": true}' });
  const addSection = h("button", { type: "button", id: "add-section", onclick: async () => {
    const name = secName.value.trim();
    let v;
    try { v = JSON.parse(secJson.value || "{}"); } catch (e) { flash("the section must be a JSON object", true); return; }
    if (!name || !isPlain(v)) { flash("a section needs a name and a JSON object", true); return; }
    let current;
    try { current = fields.get(); } catch (e) { flash(e.message, true); return; }
    const settings = { ...(current.settings || {}), [name]: v };
    $("view").replaceChildren(...await viewAgent(id, { ...current, settings }));
  } }, "Add section");
  const parts = [h("h2", {}, id ? "Agent: " + agent.name : "New agent"),
    h("div", { class: "toolbar" }, h("a", { href: "#/agents" }, "All agents")), form,
    h("details", {}, h("summary", {}, "Add a settings section"), h("div", { class: "field" }, h("label", { for: "section-name" }, "Name"), secName),
      h("div", { class: "field" }, h("label", { for: "section-json" }, "Value (JSON)"), secJson), addSection)];
  if (id) {
    const del = h("button", { type: "button", class: "danger", id: "delete" }, "Delete agent");
    del.onclick = async () => {
      try { if (await deleteAgent(agent)) { pendingFlash = "agent " + agent.name + " deleted"; location.hash = "#/agents"; } }
      catch (e) { flash(e.message, true); }
    };
    parts.push(h("h3", {}, "Danger zone"), del);
  }
  return parts;
}

// -- call history ---------------------------------------------------------------------------------------------
async function viewCalls(params) {
  const doc = await openapi();
  const logsOp = (doc.paths["/api/v1/calls/logs"] || {}).get || {};
  const statusParam = (logsOp.parameters || []).find((p) => p.name === "call_status");
  const statuses = (statusParam && statusParam.schema && statusParam.schema.enum) || [];
  const [agents, health] = await Promise.all([loadAgents(), fetch("/healthz").then((r) => r.json()).catch(() => ({}))]);
  const carriers = health.carriers || [];
  const page = Math.max(1, parseInt(params.get("page") || "1", 10) || 1);
  const filters = { agentid: params.get("agent") || "", call_status: params.get("status") || "",
    carrier: params.get("carrier") || "", since: params.get("since") || "", until: params.get("until") || "" };
  const body = await api("GET", "/calls/logs" + query({ ...filters, pageno: page, pagesize: PAGE_SIZE }));
  const names = Object.fromEntries(agents.map((a) => [a.id, a.name]));

  const fAgent = agentSelect(agents, filters.agentid, { id: "filter-agent" });
  fAgent.options[0].textContent = "any";
  const fStatus = h("select", { id: "filter-status" }, h("option", { value: "" }, "any"), statuses.map((s) => h("option", { value: s }, s)));
  fStatus.value = filters.call_status;
  const fCarrier = h("select", { id: "filter-carrier" }, h("option", { value: "" }, "any"), carriers.map((c) => h("option", { value: c }, providerLabel(c))));
  fCarrier.value = filters.carrier;
  const fSince = h("input", { type: "date", id: "filter-since", value: filters.since });
  const fUntil = h("input", { type: "date", id: "filter-until", value: filters.until });
  const form = h("form", { class: "filters", id: "filters" },
    h("label", {}, "Agent", fAgent), h("label", {}, "Status", fStatus), h("label", {}, "Carrier", fCarrier),
    h("label", {}, "From (UTC day)", fSince), h("label", {}, "To (UTC day)", fUntil),
    h("button", { type: "submit", class: "primary", id: "apply" }, "Filter"),
    h("a", { href: "#/calls", class: "button" }, "Clear"));
  form.onsubmit = (ev) => {
    ev.preventDefault();
    location.hash = "#/calls" + query({ agent: fAgent.value, status: fStatus.value, carrier: fCarrier.value,
      since: fSince.value, until: fUntil.value });
  };
  const rows = body.call_log_data.map((c) => ({ attrs: { "data-call-id": c.id }, cells: [
    h("a", { href: "#/calls/" + c.id }, "#" + c.id), fmtTime(c.created_at), providerLabel(c.channel_type),
    c.call_direction, c.from_number || "—", c.to_number || "—",
    c.agent_id ? (names[c.agent_id] || "#" + c.agent_id) : "—", badge(c.call_status, verdictClass(c.call_status === "completed" ? "ok" : c.call_status === "in-progress" ? "warn" : c.call_status)),
    c.call_duration, c.amd_answered_by || "—", c.is_call_transfer ? (c.transfer_target || "yes") : "—",
    [c.hangup_source, c.hangup_reason].filter(Boolean).join(": ") || "—",
  ] }));
  const pages = Math.max(1, Math.ceil(body.total / PAGE_SIZE));
  const go = (p) => "#/calls" + query({ agent: filters.agentid, status: filters.call_status, carrier: filters.carrier,
    since: filters.since, until: filters.until, page: p > 1 ? p : "" });
  return [
    h("h2", {}, "Call history"), form,
    h("p", { class: "muted", id: "total" }, body.total + " call" + (body.total === 1 ? "" : "s")),
    table(["Call", "Started", "Carrier", "Dir.", "From", "To", "Agent", "Status", "Duration", "AMD", "Transfer", "Hangup"], rows, "no calls match"),
    h("div", { class: "pager" }, page > 1 ? h("a", { class: "button", href: go(page - 1) }, "← Newer") : null,
      h("span", {}, "page " + page + " of " + pages), page < pages ? h("a", { class: "button", href: go(page + 1) }, "Older →") : null),
  ];
}

const SHOWN = new Set(["id", "call_log_id", "call_uuid", "channel_type", "call_direction", "from_number", "to_number",
  "agent_id", "call_status", "created_at", "answered_at", "ended_at", "call_duration", "call_duration_in_seconds",
  "call_duration_in_minutes", "time_of_call", "hangup_source", "hangup_reason", "amd_detected", "amd_answered_by",
  "amd_duration", "is_voicemail", "voicemail_type", "is_fax", "is_call_transfer", "transfer_target",
  "transfer_outcome", "recording_url", "recording_status", "recording", "timing", "extra", "call_context"]);
const QUALITY = /rtp|rtcp|quality|mos|jitter|loss/i;

/**
 * A recording behind our API (`<public URL>/api/v1/calls/<id>/recording`, which needs the key) is fetched from this
 * page's own origin with the key in a header — an <audio src> could carry it only in the URL — and played from a
 * blob: URL. The public URL's host may not be the one this console was opened on, so only the path is used.
 * Anywhere else (a carrier's own recording link) is given to the player as it is.
 */
async function recordingView(url) {
  const box = h("div", { id: "recording" });
  const abs = new URL(url, location.href);
  if (!abs.pathname.startsWith("/api/v1/")) {
    box.append(h("audio", { controls: true, src: abs.href, preload: "none" }));
    return box;
  }
  try {
    const res = await fetch(abs.pathname + abs.search, { headers: { Authorization: "Bearer " + apiKey }, cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    const blobUrl = URL.createObjectURL(await res.blob());
    box.append(h("audio", { controls: true, src: blobUrl, preload: "metadata" }), " ",
      h("a", { href: blobUrl, download: "call-recording.wav" }, "Download"));
  } catch (e) {
    box.append(h("p", { class: "error" }, "recording not loaded: " + e.message));
  }
  return box;
}

async function viewCall(ident) {
  const [res, agents] = await Promise.all([api("GET", "/calls/logs/" + encodeURIComponent(ident)), loadAgents()]);
  const c = res.call_log;
  const events = res.events || [];
  const agent = agents.find((a) => a.id === c.agent_id);
  const summary = { carrier: providerLabel(c.channel_type), direction: c.call_direction, from: c.from_number,
    to: c.to_number, agent: agent ? agent.name + " (#" + agent.id + ")" : (c.agent_id ? "#" + c.agent_id : null),
    status: c.call_status, created_at: c.created_at, answered_at: c.answered_at, ended_at: c.ended_at,
    duration: c.call_duration, hangup_source: c.hangup_source, hangup_reason: c.hangup_reason, call_uuid: c.call_uuid };
  const amdEvents = events.filter((e) => /amd|voicemail|machine|beep/i.test(e.event));
  const amd = { detected: c.amd_detected, answered_by: c.amd_answered_by,
    decision_time_s: c.amd_duration, voicemail: c.is_voicemail, voicemail_type: c.voicemail_type, fax: c.is_fax };
  const transfers = events.filter((e) => /transfer/i.test(e.event));
  const extra = isPlain(c.extra) ? c.extra : {};
  const quality = Object.fromEntries([...Object.entries(c), ...Object.entries(extra)]
    .filter(([k, v]) => QUALITY.test(k) && v !== null && v !== undefined && v !== false));
  const other = Object.fromEntries(Object.entries(c).filter(([k]) => !SHOWN.has(k) && !QUALITY.test(k)));
  const extraRest = Object.fromEntries(Object.entries(extra).filter(([k]) => !QUALITY.test(k)));
  const t0 = events.length ? new Date(events[0].at).getTime() : 0;
  const timeline = h("ol", { class: "timeline", id: "timeline" }, events.map((e) => h("li", { "data-event": e.event },
    h("span", { class: "at", title: fmtTime(e.at) }, "+" + ((new Date(e.at).getTime() - t0) / 1000).toFixed(2) + " s"),
    h("span", { class: "event" }, e.event),
    h("span", { class: "data" }, isPlain(e.data) && Object.keys(e.data).length ? JSON.stringify(e.data) : ""))));
  const parts = [
    h("h2", {}, "Call #" + c.id, " ", badge(c.call_status, verdictClass(c.call_status === "completed" ? "ok" : c.call_status))),
    h("div", { class: "toolbar" }, h("a", { href: "#/calls" }, "Call history")),
    h("div", { class: "grid2" },
      h("section", { id: "summary" }, h("h3", {}, "Summary"), kv(summary)),
      h("section", { id: "amd" }, h("h3", {}, "Answering-machine detection"),
        c.amd_detected || c.amd_answered_by || amdEvents.length ? kv(amd) : h("p", { class: "muted" }, "no AMD on this call"),
        amdEvents.length ? h("ol", { class: "timeline" }, amdEvents.map((e) => h("li", {}, h("span", { class: "at" }, fmtTime(e.at).slice(11)), h("span", { class: "event" }, e.event), h("span", { class: "data" }, JSON.stringify(e.data || {}))))) : null)),
    h("section", { id: "transfers" }, h("h3", {}, "Transfer"),
      c.is_call_transfer || c.transfer_target || c.transfer_outcome || transfers.length
        ? [kv({ transferred: c.is_call_transfer, target: c.transfer_target, outcome: c.transfer_outcome }),
          h("ol", { class: "timeline" }, transfers.map((e) => h("li", { "data-event": e.event }, h("span", { class: "at" }, fmtTime(e.at).slice(11, 19)), h("span", { class: "event" }, e.event), h("span", { class: "data" }, JSON.stringify(e.data || {})))))]
        : h("p", { class: "muted" }, "no transfer attempted")),
    h("section", { id: "quality" }, h("h3", {}, "RTP quality"),
      Object.keys(quality).length ? kv(quality) : h("p", { class: "muted" }, "no media quality recorded for this call")),
  ];
  if (c.recording_url || c.recording_status) {
    const about = { status: c.recording_status, ...(isPlain(c.recording) ? c.recording : {}) };
    parts.push(h("section", { id: "recording-section" }, h("h3", {}, "Recording"),
      c.recording_url ? await recordingView(c.recording_url) : null, kv(about)));
  }
  if (isPlain(c.timing)) parts.push(h("section", { id: "timing" }, h("h3", {}, "Conversation timing"), kv(c.timing)));
  if (isPlain(c.call_context) && Object.keys(c.call_context).length) parts.push(h("section", {}, h("h3", {}, "Call context"), kv(c.call_context)));
  const more = { ...other, ...extraRest };
  if (Object.keys(more).length) parts.push(h("section", { id: "other" }, h("h3", {}, "Other fields"), kv(more)));
  parts.push(h("section", {}, h("h3", {}, "Event timeline"), events.length ? timeline : h("p", { class: "muted" }, "no events")));
  return parts;
}

// -- routing --------------------------------------------------------------------------------------------------------
const ROUTES = [
  [/^\/numbers\/new(?:\/([\w-]+))?$/, (m) => viewImport(m[1])],
  [/^\/numbers\/(\d+)$/, (m) => viewNumber(m[1])],
  [/^\/numbers$/, () => viewNumbers()],
  [/^\/agents\/new$/, () => viewAgent(null)],
  [/^\/agents\/(\d+)$/, (m) => viewAgent(Number(m[1]))],
  [/^\/agents$/, () => viewAgents()],
  [/^\/calls\/([\w-]+)$/, (m) => viewCall(m[1])],
  [/^\/calls$/, (m, params) => viewCalls(params)],
];

async function route() {
  const seq = ++renderSeq;
  const [path, qs] = (location.hash.replace(/^#/, "") || "/numbers").split("?");
  const section = path.split("/")[1] || "numbers";
  for (const a of document.querySelectorAll("#nav a[data-section]")) a.classList.toggle("active", a.dataset.section === section);
  flash(pendingFlash || "");
  pendingFlash = null;
  $("forget").hidden = !apiKey;
  $("key-entry").hidden = !!apiKey;
  const view = $("view");
  if (!apiKey) {
    view.replaceChildren(h("h2", {}, "Sign in"), h("p", {}, "Enter the gateway's API key above (`gateway serve` printed where it saved it). ",
      "It stays in this browser tab's session storage and is sent only in the Authorization header."));
    return;
  }
  const found = ROUTES.map(([re, fn]) => [path.match(re), fn]).find(([m]) => m);
  if (!found) { location.hash = "#/numbers"; return; }
  view.setAttribute("aria-busy", "true");
  try {
    const parts = await found[1](found[0], new URLSearchParams(qs || ""));
    if (seq !== renderSeq) return;
    view.replaceChildren(...parts);
    document.title = (view.querySelector("h2") || {}).textContent + " — telephony gateway";
  } catch (e) {
    if (seq !== renderSeq) return;
    view.replaceChildren(h("h2", {}, "Could not load this page"), h("p", { class: "error", id: "load-error" }, e.message));
    if (e.status === 401) flash("the gateway refused the API key", true);
  } finally {
    if (seq === renderSeq) view.removeAttribute("aria-busy");
  }
}

$("auth").addEventListener("submit", (ev) => {
  ev.preventDefault();
  apiKey = $("api-key").value.trim();
  $("api-key").value = "";
  openapiDoc = null;
  if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey); else sessionStorage.removeItem(KEY_STORE);
  route();
});
$("forget").addEventListener("click", () => {
  apiKey = "";
  openapiDoc = null;
  sessionStorage.removeItem(KEY_STORE);
  route();
});
window.addEventListener("hashchange", route);
route();
