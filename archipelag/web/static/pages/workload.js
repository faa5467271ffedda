// Run one workload: its input from the form (named fields plus a JSON object), the job followed live.
import { api, complain, credits, dataUrlOf, describeEvent, el, followJob, quiet, say } from "/static/app.js";

const form = document.getElementById("run-form");
const events = document.getElementById("events");
const output = document.getElementById("output");
const button = document.getElementById("run");

function inputOf() {
  const text = form.elements.input_json.value.trim() || "{}";
  let input;
  try {
    input = JSON.parse(text);
  } catch (error) {
    throw new Error(`Input (JSON) is not valid JSON: ${error.message}`);
  }
  if (!input || typeof input !== "object" || Array.isArray(input)) throw new Error("Input (JSON) must be a JSON object.");
  for (const field of form.querySelectorAll("[data-input]")) input[field.dataset.input] = field.value;
  return input;
}

function showOutput(job) {
  output.replaceChildren();
  if (job.output === null || job.output === undefined) return;
  let parsed = null;
  try { parsed = JSON.parse(job.output); } catch { /* plain text */ }
  if (parsed && parsed.image_data) {
    output.append(el("img", { src: dataUrlOf(parsed), alt: `Output of job ${job.id}` }));
    return;
  }
  output.append(el("h3", {}, "Output"),
    el("pre", {}, parsed !== null && typeof parsed === "object" ? JSON.stringify(parsed, null, 2) : job.output));
}

// Enter in a text area runs the job, as in chat; Shift+Enter starts a new line.
form.addEventListener("keydown", (event) => {
  if (event.target.tagName === "TEXTAREA" && event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  quiet();
  let input;
  try { input = inputOf(); } catch (error) { complain(error); return; }
  button.disabled = true;
  events.replaceChildren();
  output.replaceChildren();
  try {
    const job = (await api("/api/v1/jobs", { method: "POST", body: { workload: form.dataset.workload, input } })).data;
    say(`Job ${job.id} is ${job.status}.`);
    const follower = followJob(job.id, (ev) => {
      events.append(el("p", { class: "event" }, describeEvent(ev)));
      events.scrollTop = events.scrollHeight;
    });
    await follower.ended;
    const finished = (await api(`/api/v1/jobs/${encodeURIComponent(job.id)}`)).data;
    showOutput(finished);
    const link = el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, `job ${job.id}`);
    if (finished.status === "completed") {
      say(`Done: ${credits(finished.usage.credits_used)}.`);
    } else {
      complain(`The job ended ${finished.status}: ${finished.error || "no reason given"}`);
    }
    output.append(el("p", {}, "See ", link, "."));
  } catch (error) {
    complain(error);
  } finally {
    button.disabled = false;
  }
});
