// Chat: the OpenAI-compatible endpoint, streamed (fetch + ReadableStream: a POST, which EventSource cannot
// send). Each answer grows as its chunks arrive; its cost is read from its job once it has ended.
import { TERMINAL, api, complain, credits, el, quiet, request, say, sseData } from "/static/app.js";

const form = document.getElementById("chat-form");
const models = document.getElementById("model");
const message = document.getElementById("message");
const send = document.getElementById("send");
const stop = document.getElementById("stop");
const log = document.getElementById("conversation");
const history = [];  // the conversation so far, as the API takes it
let running = null;  // { controller, jobId } while an answer streams

async function loadModels() {
  try {
    const chat = (await api("/v1/models")).data.filter((model) => model.kind === "chat");
    models.replaceChildren(...chat.map((model) => el("option", { value: model.id }, model.id)));
    if (!chat.length) complain("No chat model can be served by the network right now. Try again when a host is online.");
  } catch (error) {
    complain(error);
  }
}

// One turn of the conversation: who said it, then what (the answer's element also takes its cost at the end).
function turn(role, text) {
  const body = el("div", { class: "text" }, text);
  const node = el("div", { "data-role": role === "user" ? "question" : "answer" }, body);
  log.append(el("div", { class: "turn" }, el("div", { class: "who-said" }, role === "user" ? "You" : models.value), node));
  log.scrollTop = log.scrollHeight;
  return { node, body };
}

// The job's charge, once the ledger has settled it (a moment after the stream's last chunk).
async function costOf(jobId) {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const job = (await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`)).data;
    if (TERMINAL.has(job.status)) return job.usage.credits_used;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  return null;
}

async function ask(text) {
  quiet();
  history.push({ role: "user", content: text });
  turn("user", text);
  const answer = turn("assistant", "");
  const controller = new AbortController();
  running = { controller, jobId: null };
  send.disabled = true;
  stop.disabled = false;
  let reply = "";
  let stopped = false;
  try {
    const response = await request("/v1/chat/completions", {
      method: "POST", signal: controller.signal,
      body: { model: models.value, messages: history, stream: true },
    });
    running.jobId = response.headers.get("X-Archipelag-Job-Id");
    for await (const data of sseData(response)) {
      if (data === "[DONE]") break;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message || "the model failed");
      if (!running.jobId && chunk.id) running.jobId = chunk.id.replace(/^chatcmpl-/, "");
      const piece = chunk.choices && chunk.choices[0] && chunk.choices[0].delta.content;
      if (piece) {
        reply += piece;
        answer.body.textContent = reply;
        log.scrollTop = log.scrollHeight;
      }
    }
  } catch (error) {
    if (error.name === "AbortError") stopped = true;
    else complain(error);
  }
  const { jobId } = running;
  running = null;
  send.disabled = false;
  stop.disabled = true;
  if (stopped) {
    say("Stopped.");
    if (jobId) request(`/api/v1/jobs/${encodeURIComponent(jobId)}`, { method: "DELETE" }).catch(() => {});
  }
  if (reply) history.push({ role: "assistant", content: reply });
  else history.pop();  // nothing came back: the question is not part of the conversation
  if (jobId) {
    const cost = el("p", { "data-role": "cost" }, "…");
    answer.node.append(cost);
    try {
      const used = await costOf(jobId);
      cost.textContent = used === null ? "cost not settled yet" : credits(used);
    } catch (error) {
      cost.textContent = "cost unknown";
    }
  }
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = message.value.trim();
  if (!text || running) return;
  if (!models.value) { complain("Choose a model first."); return; }
  message.value = "";
  ask(text);
});

message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

stop.addEventListener("click", () => {
  if (running) running.controller.abort();
});

document.getElementById("clear").addEventListener("click", () => {
  if (running) running.controller.abort();
  history.length = 0;
  log.replaceChildren();
  quiet();
  message.focus();
});

loadModels();
