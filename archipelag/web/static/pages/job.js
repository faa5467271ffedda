// One job: its events, replayed and then live while it runs; its status, cost and output once it ends.
import { api, complain, credits, dataUrlOf, describeEvent, el, followJob, quiet, request, say } from "/static/app.js";

const section = document.getElementById("job");
const jobId = section.dataset.jobId;
const events = document.getElementById("events");
const cancel = document.getElementById("cancel");

function show(job) {
  const status = document.getElementById("job-status");
  status.textContent = job.status;
  status.className = `status-${job.status}`;
  document.getElementById("job-cost").textContent = credits(job.usage.credits_used);
  document.getElementById("job-duration").textContent =
    job.duration_ms === null ? "—" : `${(job.duration_ms / 1000).toFixed(1)} s`;
  const output = document.getElementById("output");
  let parsed = null;
  try { parsed = JSON.parse(job.output); } catch { /* plain text */ }
  if (parsed && parsed.image_data) output.replaceChildren(el("img", { src: dataUrlOf(parsed), alt: `Output of job ${job.id}` }));
  else if (job.output !== null) output.replaceChildren(el("pre", {}, job.output));
  else if (job.error) output.replaceChildren(el("p", {}, job.error));
  if (job.receipt && !document.getElementById("receipt-heading")) {
    // The page came before the job ended: the host's receipt, checked by the page's server on the next load.
    section.parentElement.append(el("section", { "aria-labelledby": "receipt-heading" },
      el("h2", { id: "receipt-heading" }, "Receipt"),
      el("p", { id: "receipt-check" }, `Signed by host ${job.receipt.host_id}; reload the page to see it checked.`),
      el("p", { class: "hint" }, `Check it on your own machine: archipelag jobs verify ${job.id}`)));
  }
}

async function follow() {
  const follower = followJob(jobId, (event) => {
    events.append(el("p", { class: "event" }, describeEvent(event)));
    events.scrollTop = events.scrollHeight;
  });
  await follower.ended;
  cancel.hidden = true;
  try {
    const job = (await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`)).data;
    show(job);
    if (section.dataset.live === "true") say(`The job ended: ${job.status}.`);
  } catch (error) {
    complain(error);
  }
}

cancel.addEventListener("click", async () => {
  quiet();
  cancel.disabled = true;
  try {
    await request(`/api/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" });
    say("Cancelling the job…");
  } catch (error) {
    complain(error);
    cancel.disabled = false;
  }
});

follow();
