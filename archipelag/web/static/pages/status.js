// The public status page: GET /api/v1/status (no account needed), refreshed every few seconds.
import { ApiError, api, complain, el, quiet, say, when } from "/static/app.js";

const REFRESH_MS = 5000;

function number(value, digits = 0) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function show(status) {
  document.getElementById("hosts-online").textContent = number(status.hosts_online);
  document.getElementById("jobs-per-minute").textContent = number(status.jobs_per_minute, 1);
  document.getElementById("median-ttft").textContent =
    status.median_ttft_ms === null || status.median_ttft_ms === undefined ? "—" : `${number(status.median_ttft_ms)} ms`;
  document.getElementById("queue-depth").textContent = number(status.queue_depth);
  const regions = Object.entries(status.hosts_online_by_region || {}).sort(([a], [b]) => a.localeCompare(b));
  document.getElementById("regions").replaceChildren(...(regions.length
    ? regions.map(([region, count]) => el("tr", {}, el("td", {}, region), el("td", { class: "number" }, count)))
    : [el("tr", {}, el("td", { colspan: "2" }, "No host is online."))]));
  const updated = document.getElementById("updated-at");
  updated.textContent = when(status.updated_at);
  updated.setAttribute("datetime", status.updated_at || "");
}

let announced = "";
async function refresh() {
  try {
    show((await api("/api/v1/status")).data);
    if (announced) { quiet(); announced = ""; }
  } catch (error) {
    // Announce a problem once, not at every refresh.
    const text = error instanceof ApiError && error.status === 404
      ? "This coordinator does not publish its status yet."
      : `The status could not be read: ${error.message}`;
    if (text !== announced) {
      if (error instanceof ApiError && error.status === 404) say(text); else complain(text);
      announced = text;
    }
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
