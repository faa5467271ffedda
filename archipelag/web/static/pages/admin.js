// Admin: the network's numbers, accounts (search, grant credits, suspend, reinstate), hosts (suspend, reinstate)
// and invitations.
import { api, complain, el, quiet, say, when } from "/static/app.js";

const accounts = document.getElementById("accounts");
const search = document.getElementById("search");

function label(name) {
  return name.replace(/_/g, " ").replace(/^./, (first) => first.toUpperCase());
}

function figure(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "number") return Number.isInteger(value) ? value.toLocaleString() : value.toFixed(4);
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}: ${figure(v)}`).join(", ") || "none";
  return String(value);
}

async function loadStats() {
  const stats = (await api("/api/v1/admin/stats")).data;
  document.getElementById("stats").replaceChildren(...Object.entries(stats).map(([name, value]) =>
    el("div", {}, el("dt", {}, label(name)), el("dd", {}, figure(value)))));
}

// Run `action` (an API call), then say `done` and `refresh` what it changed (the accounts, by default).
async function act(action, done, refresh = refreshAccounts) {
  quiet();
  try {
    await action();
    say(done);
    await refresh();
  } catch (error) {
    complain(error);
  }
}

async function refreshAccounts() {
  await loadAccounts();
  loadStats().catch(complain);
}

function grantForm(person) {
  const id = `credits-${person.id}`;
  const amount = el("input", { id, name: "amount", type: "number", min: "0", step: "any", required: true, class: "small" });
  const form = el("form", { class: "row" },
    el("div", { class: "field" }, el("label", { for: id }, "Credits"), amount),
    el("div", { class: "actions" }, el("button", { type: "submit" }, "Grant credits")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = Number(amount.value);
    if (!(value > 0)) { complain("Enter the number of credits to grant (more than 0)."); amount.focus(); return; }
    act(() => api(`/api/v1/admin/accounts/${person.id}/credits`, { method: "POST", body: { amount: value } }),
      `Granted ${value} credits to ${person.email}.`);
  });
  return form;
}

// Suspend (with a reason) or, when already suspended, reinstate: one control for accounts and hosts alike.
// `run(action, done)` makes the call and refreshes the table; `path` is the thing's admin API address.
function suspensionControl({ suspended, id, path, name, suspendedSays, run }) {
  if (suspended) {
    const reinstate = el("button", { type: "button", class: "secondary" }, "Reinstate");
    reinstate.addEventListener("click", () => run(() => api(`${path}/reinstate`, { method: "POST" }),
      `${name} is reinstated.`));
    return el("div", { class: "actions" }, reinstate);
  }
  const reason = el("input", { id, name: "reason", type: "text", maxlength: "500", required: true });
  const form = el("form", { class: "row" },
    el("div", { class: "field" }, el("label", { for: id }, "Reason"), reason),
    el("div", { class: "actions" }, el("button", { type: "submit", class: "danger" }, "Suspend")));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const why = reason.value.trim();
    if (!why) { complain("Give a reason for the suspension."); reason.focus(); return; }
    run(() => api(`${path}/suspend`, { method: "POST", body: { reason: why } }), `${name} is suspended: ${suspendedSays}`);
  });
  return form;
}

function suspensionForm(person) {
  return suspensionControl({ suspended: person.suspended, id: `reason-${person.id}`,
    path: `/api/v1/admin/accounts/${person.id}`, name: person.email, run: act,
    suspendedSays: "their keys and sessions stop working at once." });
}

function accountRow(person) {
  const state = [person.is_admin ? "admin" : null, person.email_verified ? "verified" : "unverified",
    person.suspended ? `suspended (${person.suspended_reason || "no reason"})` : null].filter(Boolean).join(", ");
  return el("tr", { "data-account": person.email },
    el("td", {}, person.email), el("td", { class: "number" }, figure(person.credits)), el("td", {}, state),
    el("td", {}, when(person.created_at)), el("td", {}, grantForm(person), suspensionForm(person)));
}

async function loadAccounts() {
  const q = search.value.trim();
  const page = await api(`/api/v1/admin/accounts?limit=200${q ? `&q=${encodeURIComponent(q)}` : ""}`);
  accounts.replaceChildren(...(page.data.length ? page.data.map(accountRow)
    : [el("tr", {}, el("td", { colspan: "5" }, "No account matches."))]));
  document.getElementById("accounts-caption").textContent =
    `${page.meta.total} accounts${q ? ` matching “${q}”` : ""}${page.meta.total > page.data.length ? `, the first ${page.data.length} shown` : ""}`;
}

function hostActions(host) {
  return suspensionControl({ suspended: Boolean(host.suspended_reason), id: `host-reason-${host.id}`,
    path: `/api/v1/admin/hosts/${encodeURIComponent(host.id)}`, name: `Host ${host.name || host.id}`,
    run: actOnHosts, suspendedSays: "it gets no new jobs." });
}

function hostRow(host) {
  const status = host.suspended_reason ? `suspended (${host.suspended_reason})` : host.status;
  return el("tr", { "data-host": host.id },
    el("td", {}, el("a", { href: `/hosts/${encodeURIComponent(host.id)}` }, host.name || host.id)),
    el("td", {}, status), el("td", {}, host.region), el("td", { class: "number" }, figure(host.karma_score)),
    el("td", {}, hostActions(host)));
}

async function loadHosts() {
  const page = await api("/api/v1/admin/hosts");
  document.getElementById("admin-hosts").replaceChildren(...(page.data.length ? page.data.map(hostRow)
    : [el("tr", {}, el("td", { colspan: "5" }, "No host has joined the network yet."))]));
  document.getElementById("hosts-caption").textContent = `${page.meta.total} hosts`;
}

function actOnHosts(action, done) {
  return act(action, done, loadHosts);
}

let typing = null;
document.getElementById("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  clearTimeout(typing);  // Enter right after typing: one load, not a second that wipes the rows' inputs
  loadAccounts().catch(complain);
});
search.addEventListener("input", () => {
  clearTimeout(typing);
  typing = setTimeout(() => loadAccounts().catch(complain), 300);
});

document.getElementById("invite-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  quiet();
  const email = event.target.elements.email.value.trim();
  try {
    const invite = (await api("/api/v1/admin/invites", { method: "POST", body: email ? { email } : {} })).data;
    const shown = document.getElementById("invite-code");
    shown.textContent = invite.invite_code;
    shown.hidden = false;
    say(`Invite code created${invite.email ? ` for ${invite.email}` : ""}; it works until ${when(invite.expires_at)}.`);
    event.target.reset();
  } catch (error) {
    complain(error);
  }
});

loadStats().catch(complain);
loadAccounts().catch(complain);
loadHosts().catch(complain);
