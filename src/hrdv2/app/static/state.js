// Shared state of the page and the small helpers every panel uses (messages, job progress rows).
import * as api from "./api.js";

export const $ = (sel) => document.querySelector(sel);
export const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#9a6324"];

export const S = {
  info: null,
  options: null,
  projects: [],
  project: null,
  images: [],
  image: null,
  classes: [],
  activeClass: null,
  strokes: [],
  view: "labels",
  prediction: null,
  training: false,
  trainAgain: false,
  queue: Promise.resolve(),
};

// Functions app.js provides to the panel modules (set once at start-up).
export const hooks = { viewer: null, scheduleTrain: null, drawPrediction: null, updateDownloads: null };

// -- messages and jobs ---------------------------------------------------------------------------
let messageTimer = null;
export function say(text, kind = "info") {
  const el = $("#message");
  el.textContent = text;
  el.className = kind;
  clearTimeout(messageTimer);
  if (kind !== "error") messageTimer = setTimeout(() => { el.textContent = ""; }, 6000);
}

export function fail(err) {
  console.error(err);
  say(err.message || String(err), "error");
}

// A progress row per running job: label, real progress from the server, stage text, cancel.
export async function track(job, label) {
  const row = document.createElement("div");
  row.className = "job";
  row.dataset.kind = job.kind;
  row.innerHTML = `<span class="job-label"></span><progress max="1" value="0"></progress><span class="job-stage"></span><button class="job-cancel" title="Cancel">✕</button>`;
  row.querySelector(".job-label").textContent = label;
  row.querySelector(".job-cancel").onclick = () => api.post(`/api/jobs/${job.id}/cancel`).catch(fail);
  $("#jobs").append(row);
  row.scrollIntoView({ block: "nearest" });  // the bar has a fixed height: show the newest job
  const final = await api.watchJob(job, (j) => {
    const bar = row.querySelector("progress");
    bar.value = j.total > 0 ? j.done / j.total : 0;
    row.querySelector(".job-stage").textContent = j.stage;
    row.dataset.state = j.state;
  });
  setTimeout(() => row.remove(), final.state === "done" ? 800 : 4000);
  if (final.state === "failed") say(`${label} failed: ${final.error}`, "error");
  if (final.state === "cancelled") say(`${label} cancelled`);
  return final;
}

export function hexToRgb(hex) {
  const v = parseInt(hex.slice(1), 16);
  return [(v >> 16) & 255, (v >> 8) & 255, v & 255];
}
