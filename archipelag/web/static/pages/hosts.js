// Hosts: approve a machine by the pairing code `archipelag host join` shows (it becomes yours), and your hosts.
import { api, complain, el, quiet, say, when } from "/static/app.js";

const form = document.getElementById("pair");
const code = document.getElementById("pairing-code");

async function refreshMine() {
  const mine = (await api("/api/v1/account/hosts")).data;
  document.getElementById("my-hosts").replaceChildren(...(mine.length ? mine.map((host) => el("tr", {},
    el("td", {}, host.name, el("br"), el("span", { class: "hint" }, host.id)),
    el("td", {}, host.revoked ? "revoked" : host.status),
    el("td", {}, host.region),
    el("td", { class: "number" }, Number(host.karma_score).toFixed(2)),
    el("td", {}, host.created_at ? when(host.created_at) : "—"))) :
    [el("tr", {}, el("td", { colspan: "5" }, "You lend no machine yet."))]));
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  quiet();
  const typed = code.value.trim();
  if (!typed) { complain("Enter the pairing code the machine shows."); code.focus(); return; }
  try {
    const host = (await api("/api/v1/hosts/approve", { method: "POST", body: { code: typed } })).data;
    say(`Approved: ${host.name} (${host.id}) is yours. It joins the network within seconds.`);
    form.reset();
    await refreshMine();
  } catch (error) {
    complain(error);
    code.focus();
  }
});
