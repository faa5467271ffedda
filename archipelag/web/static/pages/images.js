// Images: an image job run through the jobs API and followed live (its progress events drive the bar), and a
// gallery of the account's image jobs.
import { api, complain, credits, dataUrlOf, el, followJob, quiet, say, when } from "/static/app.js";

const form = document.getElementById("image-form");
const imageWorkloads = JSON.parse(form.dataset.imageWorkloads || "[]");
const select = document.getElementById("image-model");
const progress = document.getElementById("progress");
const result = document.getElementById("result");
const button = document.getElementById("generate");

async function loadModels() {
  let servable = [];
  try {
    servable = (await api("/v1/models")).data.filter((model) => model.kind === "image").map((model) => model.workload);
  } catch (error) {
    complain(error);
  }
  // Models a host can run now first; the others stay choosable (submitting one says why it cannot run).
  const slugs = [...servable, ...imageWorkloads.filter((slug) => !servable.includes(slug))];
  select.replaceChildren(...slugs.map((slug) => el("option", { value: slug },
    servable.includes(slug) ? slug : `${slug} (no host can run it now)`)));
}

function picture(image, prompt) {
  return el("img", { src: dataUrlOf(image), alt: `Generated image: ${prompt}`, width: image.width, height: image.height });
}

async function loadGallery() {
  const items = [];
  for (let offset = 0; offset < 1000 && items.length < 48; offset += 200) {
    const page = await api(`/api/v1/jobs?limit=200&offset=${offset}`);
    for (const job of page.data) {
      if (!imageWorkloads.includes(job.workload_slug) || job.status !== "completed" || !job.output) continue;
      let output;
      try { output = JSON.parse(job.output); } catch { continue; }
      if (!output || !output.image_data) continue;
      const prompt = (job.input && job.input.prompt) || "";
      items.push(el("li", {}, el("figure", {},
        el("a", { href: `/jobs/${encodeURIComponent(job.id)}` }, picture(output, prompt)),
        el("figcaption", {}, when(job.created_at)))));
    }
    if (offset + page.data.length >= page.meta.total) break;
  }
  document.getElementById("gallery").replaceChildren(...items);
  document.getElementById("gallery-empty").hidden = items.length > 0;
}

function integer(name) {
  const text = form.elements[name].value.trim();
  return text === "" ? null : Number.parseInt(text, 10);
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  quiet();
  const prompt = form.elements.prompt.value.trim();
  const input = { prompt, width: integer("width"), height: integer("height"), steps: integer("steps"), guidance_scale: 7.5 };
  const seed = integer("seed");
  if (seed !== null) input.seed = seed;
  button.disabled = true;
  progress.value = 0;
  progress.max = input.steps || 1;
  result.replaceChildren();
  try {
    const job = (await api("/api/v1/jobs", { method: "POST", body: { workload: select.value, input } })).data;
    say("Generating…");
    let image = null;
    const follower = followJob(job.id, (ev) => {
      if (ev.type === "progress") {
        progress.max = ev.total;
        progress.value = ev.step;
      } else if (ev.type === "image") {
        image = ev;
        result.replaceChildren(picture(ev, prompt));
      }
    });
    const last = await follower.ended;
    if (last.type === "done" && image) {
      progress.value = progress.max;
      const finished = (await api(`/api/v1/jobs/${encodeURIComponent(job.id)}`)).data;
      say(`Done: ${credits(finished.usage.credits_used)}.`);
      loadGallery().catch(complain);
    } else if (last.type === "done") {
      complain("The job ended without an image.");
    } else {
      complain(`The image could not be made: ${last.error || "the job did not complete"}`);
    }
  } catch (error) {
    complain(error);
  } finally {
    button.disabled = false;
  }
});

loadModels();
loadGallery().catch(complain);
