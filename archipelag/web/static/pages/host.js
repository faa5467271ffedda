// One host: its karma points over time (a Chart.js line from its karma events) and the latest events.
import { api, complain, el, when } from "/static/app.js";

const hostId = document.getElementById("host").dataset.hostId;
const LATEST = 20;

async function draw() {
  const karma = (await api(`/api/v1/hosts/${encodeURIComponent(hostId)}/karma`)).data;
  const events = [...karma.events].sort((a, b) => new Date(a.at) - new Date(b.at));
  let points = 0;
  const series = events.map((event) => {
    points += Number(event.points);
    return { at: event.at, points };
  });
  document.getElementById("karma-summary").textContent =
    `${events.length} karma events, ${points.toFixed(2)} points in all; score ${Number(karma.karma_score).toFixed(2)}.`;
  document.getElementById("karma-events").replaceChildren(...events.slice(-LATEST).reverse().map((event) => el("tr", {},
    el("td", {}, when(event.at)), el("td", {}, event.kind), el("td", { class: "number" }, Number(event.points).toFixed(2)),
    el("td", {}, event.job_id ? el("span", { class: "hint" }, event.job_id) : "—"))));
  if (!window.Chart || !series.length) return;
  new window.Chart(document.getElementById("karma-chart"), {
    type: "line",
    data: {
      labels: series.map((point) => when(point.at)),
      datasets: [{ label: "Karma points", data: series.map((point) => point.points), borderColor: "#1d5fd1",
                   pointRadius: 0, tension: 0.2 }],
    },
    options: {
      maintainAspectRatio: false, animation: false,
      scales: { x: { ticks: { maxTicksLimit: 8 } }, y: { title: { display: true, text: "points" } } },
      plugins: { legend: { display: false } },
    },
  });
}

draw().catch(complain);
