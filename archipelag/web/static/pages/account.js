// The account: credits spent per day (a Chart.js chart computed from the account's jobs) and API keys.
import { api, complain, el, quiet, request, say, when } from "/static/app.js";

const DAYS = 30;
const keys = document.getElementById("keys");
const newKey = document.getElementById("new-key");

function dayOf(date) {
  return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, "0")}-${String(date.getDate()).padStart(2, "0")}`;
}

// Credits spent per local day over the last DAYS days, from the account's jobs (newest first, a page at a time).
async function spending() {
  const since = new Date();
  since.setHours(0, 0, 0, 0);
  since.setDate(since.getDate() - (DAYS - 1));
  const days = new Map();
  for (let i = 0; i < DAYS; i += 1) {
    const day = new Date(since);
    day.setDate(since.getDate() + i);
    days.set(dayOf(day), 0);
  }
  let jobs = 0;
  for (let offset = 0; offset < 20000; offset += 200) {
    const page = await api(`/api/v1/jobs?limit=200&offset=${offset}`);
    let older = false;
    for (const job of page.data) {
      const created = new Date(job.created_at);
      if (created < since) { older = true; break; }
      const day = dayOf(created);
      days.set(day, (days.get(day) || 0) + Number(job.usage.credits_used || 0));
      jobs += 1;
    }
    if (older || offset + page.data.length >= page.meta.total || !page.data.length) break;
  }
  return { days, jobs };
}

async function drawUsage() {
  const { days, jobs } = await spending();
  const total = [...days.values()].reduce((sum, value) => sum + value, 0);
  document.getElementById("usage-summary").textContent =
    `${total.toFixed(4)} credits spent on ${jobs} jobs in the last ${DAYS} days.`;
  if (!window.Chart) return;
  new window.Chart(document.getElementById("usage-chart"), {
    type: "bar",
    data: {
      labels: [...days.keys()].map((day) => day.slice(5)),
      datasets: [{ label: "Credits spent", data: [...days.values()], backgroundColor: "#1d5fd1" }],
    },
    options: {
      maintainAspectRatio: false, animation: false,
      scales: { y: { beginAtZero: true, title: { display: true, text: "credits" } } },
      plugins: { legend: { display: false } },
    },
  });
}

function keyRow(key) {
  const nameId = `key-name-${key.id}`;
  const revoke = el("button", { type: "button", class: "danger", "aria-describedby": nameId }, "Revoke");
  revoke.addEventListener("click", async () => {
    quiet();
    revoke.disabled = true;
    try {
      await request(`/api/v1/api-keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      say(`The key “${key.name}” is revoked: it stops working at once.`);
      await loadKeys();
    } catch (error) {
      complain(error);
      revoke.disabled = false;
    }
  });
  return el("tr", {},
    el("td", { id: nameId }, key.name), el("td", {}, el("code", {}, key.prefix)), el("td", {}, key.scopes.join(", ")),
    el("td", {}, when(key.created_at)), el("td", {}, key.last_used_at ? when(key.last_used_at) : "never"),
    el("td", {}, revoke));
}

async function loadKeys() {
  const found = (await api("/api/v1/api-keys")).data;
  keys.replaceChildren(...(found.length ? found.map(keyRow) : [el("tr", {}, el("td", { colspan: "6" }, "No API keys yet."))]));
}

document.getElementById("key-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  quiet();
  const form = event.target;
  const button = form.querySelector("button");
  button.disabled = true;
  newKey.textContent = "";
  newKey.parentElement.hidden = true;
  try {
    const answer = await api("/api/v1/api-keys", { method: "POST", body: { name: form.elements.name.value.trim() } });
    newKey.textContent = answer.key || answer.data.key;
    newKey.parentElement.hidden = false;
    say(`Key “${answer.data.name}” created. Copy it now: it is not shown again.`);
    form.reset();
    await loadKeys();
  } catch (error) {
    complain(error);
  } finally {
    button.disabled = false;
  }
});

loadKeys().catch(complain);
drawUsage().catch(complain);
