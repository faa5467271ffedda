// Helpers every page shares: the JSON API with the browser session (CSRF header on every state-changing
// request, errors as readable messages), live job events over SSE, and the page's status and alert lines.

export const TERMINAL = new Set(["completed", "failed", "cancelled", "timeout"]);

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.status = status;
    this.body = body;
  }
}

export function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  if (meta && meta.content) return meta.content;
  const found = document.cookie.match(/(?:^|;\s*)archipelag_csrf=([^;]*)/);
  return found ? decodeURIComponent(found[1]) : "";
}

function messageOf(status, body) {
  const error = body && body.error;
  if (!error) return `The server answered ${status}.`;
  let text = error.message || `The server answered ${status}.`;
  if (error.errors && typeof error.errors === "object") {
    const fields = Object.entries(error.errors).map(([name, why]) => `${name}: ${why}`);
    if (fields.length) text += ` (${fields.join("; ")})`;
  }
  return text;
}

// fetch() on our own API: JSON in, the CSRF token on state-changing requests; an error answer raises ApiError.
export async function request(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method)) headers["X-CSRF-Token"] = csrfToken();
  const response = await fetch(path, {
    method, headers, signal, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) {
    let parsed = null;
    try { parsed = await response.json(); } catch { /* not JSON */ }
    throw new ApiError(response.status, messageOf(response.status, parsed), parsed);
  }
  return response;
}

export async function api(path, options) {
  const response = await request(path, options);
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

// The `data:` payloads of a server-sent event stream read with fetch (a POST, which EventSource cannot send).
export async function* sseData(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const lines = frame.split("\n").filter((line) => line.startsWith("data:"));
      if (lines.length) yield lines.map((line) => line.slice(5).replace(/^ /, "")).join("\n");
    }
  }
}

// Follow a job's events live (EventSource sends the session cookie; on a dropped connection the browser
// reconnects with Last-Event-ID and the stream continues where it left off). Resolves with the last event
// once the job has ended; `stop()` stops following.
export function followJob(jobId, onEvent) {
  const path = `/api/v1/jobs/${encodeURIComponent(jobId)}`;
  const source = new EventSource(`${path}/stream`);
  let finish;
  const ended = new Promise((resolve) => { finish = resolve; });
  const stop = (last) => { source.close(); finish(last); };
  source.onmessage = (message) => {
    let event;
    try { event = JSON.parse(message.data); } catch { return; }
    onEvent(event);
    if (event.type === "done" || event.type === "error") stop(event);
  };
  source.onerror = async () => {
    // The stream closed or failed: done if the job has ended (or cannot be read), else let it reconnect.
    try {
      const job = (await api(path)).data;
      if (TERMINAL.has(job.status)) stop({ type: job.status === "completed" ? "done" : "error", error: job.error, job });
    } catch (error) {
      stop({ type: "error", error: error.message });
    }
  };
  return { ended, stop: () => stop({ type: "stopped" }) };
}

// One line of a job's event log.
export function describeEvent(event) {
  switch (event.type) {
    case "token": return `token: ${event.content}`;
    case "status": return `status: ${event.message}`;
    case "progress": return `progress: ${event.step}/${event.total}`;
    case "image": return `image: ${event.width}×${event.height} ${event.format}`;
    case "error": return `error: ${event.error}`;
    case "done": return `done${event.usage ? `: ${JSON.stringify(event.usage)}` : ""}`;
    default: return JSON.stringify(event);
  }
}

export function say(text) {
  document.getElementById("alert").textContent = "";
  document.getElementById("status").textContent = text;
}

export function complain(text) {
  document.getElementById("status").textContent = "";
  document.getElementById("alert").textContent = text instanceof Error ? text.message : String(text);
}

export function quiet() {
  document.getElementById("status").textContent = "";
  document.getElementById("alert").textContent = "";
}

// A DOM element: el("td", { class: "number" }, "12"). Text is always text, never HTML.
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function credits(amount) {
  const value = Number(amount || 0);
  return `${value.toFixed(4)} credits`;
}

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function dataUrlOf(image) {
  const types = { png: "image/png", jpeg: "image/jpeg", jpg: "image/jpeg", webp: "image/webp" };
  return `data:${types[String(image.format || "png").toLowerCase()] || "image/png"};base64,${image.image_data}`;
}

// The session ends with the "Sign out" button of every page.
const signOut = document.getElementById("sign-out");
if (signOut) {
  signOut.addEventListener("click", async () => {
    try {
      await request("/api/v1/auth/signout", { method: "POST" });
    } catch (error) {
      if (error.status !== 401) { complain(error); return; }
    }
    window.location.assign("/signin");
  });
}
