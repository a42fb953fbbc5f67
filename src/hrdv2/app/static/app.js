// hrdv2 web app: projects, images, painting, training, results.
// Plain ES modules, no build step; the server's JSON API is the single source of truth.
import * as api from "./api.js";
import { Viewer, isTyping } from "./viewer.js";
import { $, S, fail, hexToRgb, hooks, say, track } from "./state.js";
import { addClass, renderClasses, renderLegend, selectClass } from "./classes.js";
import { flushPending, pendingFor, redrawStrokes, saveStroke, undoRedo } from "./strokes.js";
import { crfSettings, featureSettings, patchProject, renderSettings } from "./settings.js";
import { deleteImage, deleteProject, importScribbles, loadModel, showFractions, showModelInfo, showUncertain } from "./manage.js";

const viewer = new Viewer(document, {
  brush: () => {
    if (!S.image) return null;
    const tool = document.querySelector("input[name=tool]:checked").value;
    const radius = Number($("#brush-size").value) / 2;
    if (tool === "eraser") return { tool, radius, color: "#ffffff", classId: null };
    if (tool === "click") return S.image ? { tool, radius: 1, color: "#fff", classId: null } : null;
    if (tool === "polygon") {
      const c = S.classes.find((x) => x.id === S.activeClass);
      return c ? { tool, radius: 1, color: c.color, classId: c.id } : null;
    }
    const cls = S.classes.find((c) => c.id === S.activeClass);
    return cls ? { tool, radius, color: cls.color, classId: cls.id } : null;
  },
  onStroke: (stroke) => saveStroke(stroke),
  onClick: (x, y, positive) => addClick(x, y, positive),
  onPointer: (x, y) => {
    const inside = S.image && x >= 0 && y >= 0 && x < S.image.width && y < S.image.height;
    $("#pos-label").textContent = inside ? `x ${Math.floor(x)}, y ${Math.floor(y)}` : "";
  },
  onZoom: (scale) => { $("#zoom-label").textContent = `${Math.round(scale * 100)}%`; },
});

// -- projects -----------------------------------------------------------------------------------
async function loadProjects() {
  S.projects = await api.get("/api/projects");
  const sel = $("#project-select");
  sel.innerHTML = "";
  if (!S.projects.length) sel.append(new Option("(no project yet)", ""));
  for (const p of S.projects) sel.append(new Option(p.name, p.id));
  if (S.project) sel.value = S.project.id;
}

async function openProject(id, imageId = null) {
  S.project = await api.get(`/api/projects/${id}`);
  localStorage.setItem("hrdv2.project", id);
  $("#project-select").value = id;
  [S.classes, S.images] = await Promise.all([
    api.get(`/api/projects/${id}/classes`),
    api.get(`/api/projects/${id}/images`),
  ]);
  if (!S.classes.some((c) => c.id === S.activeClass)) S.activeClass = S.classes[0]?.id ?? null;
  setPanelsEnabled();
  renderSettings();
  renderClasses();
  renderThumbs();
  $("#fractions-box").hidden = true;
  showModelInfo();
  const target = S.images.find((i) => i.id === imageId) || S.images[0];
  if (target) await openImage(target.id);
  else showEmpty();
  updateDownloads();
  document.body.dataset.project = String(id); // "this project is on screen" (also a hook for tests)
}

function setPanelsEnabled() {
  // without a project the model / view / results controls have nothing to act on
  const right = $("#right");
  right.inert = !S.project;
  right.classList.toggle("muted", !S.project);
}

function showEmpty() {
  setPanelsEnabled();
  S.image = null;
  S.strokes = [];
  viewer.clear();
  $("#empty").hidden = false;
  $("#empty").textContent = S.project ? "Add an image: upload one or pick one from the server folder." : "Create or open a project, then add an image.";
  $("#pages").hidden = true;
  setHash();
}

function setHash() {
  const parts = [];
  if (S.project) parts.push(`p=${S.project.id}`);
  if (S.image) parts.push(`i=${S.image.id}`);
  history.replaceState(null, "", parts.length ? `#${parts.join("&")}` : location.pathname);
}

async function createProject(name) {
  const project = await api.post("/api/projects", { name });
  await loadProjects();
  await openProject(project.id);
  say(`Project “${project.name}” created. Add an image and two classes to start.`);
}

// -- images -------------------------------------------------------------------------------------
function renderThumbs() {
  const box = $("#thumbs");
  box.innerHTML = "";
  const files = new Map();
  for (const im of S.images) if (!files.has(im.file_id)) files.set(im.file_id, im);
  for (const im of files.values()) {
    const card = document.createElement("button");
    card.className = "thumb";
    card.dataset.fileId = im.file_id;
    card.title = `${im.name} — ${im.width}×${im.height}, ${im.dtype}${im.n_pages > 1 ? `, ${im.n_pages} pages` : ""}`;
    const img = document.createElement("img");
    img.src = `/api/images/${im.id}/thumb.png`;
    img.alt = im.name;
    const cap = document.createElement("span");
    cap.textContent = im.n_pages > 1 ? `${im.name} (${im.n_pages}p)` : im.name;
    const del = document.createElement("button");
    del.className = "thumb-delete";
    del.title = "Delete this image (asks first)";
    del.textContent = "✕";
    del.onclick = (e) => { e.stopPropagation(); deleteImage(im); };
    card.append(img, cap, del);
    card.onclick = () => openImage(im.id).catch(fail);
    box.append(card);
  }
  markThumb();
}

function markThumb() {
  for (const el of document.querySelectorAll(".thumb")) {
    el.classList.toggle("selected", S.image && Number(el.dataset.fileId) === S.image.file_id);
  }
  const pages = S.image ? S.images.filter((i) => i.file_id === S.image.file_id) : [];
  $("#pages").hidden = pages.length < 2;
  if (pages.length > 1) $("#page-label").textContent = `page ${S.image.page + 1}/${pages.length}`;
}

function turnPage(delta) {
  if (!S.image) return;
  const pages = S.images.filter((i) => i.file_id === S.image.file_id);
  const next = pages.find((p) => p.page === S.image.page + delta);
  if (next) openImage(next.id).catch(fail);
}

async function openImage(id) {
  const image = S.images.find((i) => i.id === id) || (await api.get(`/api/images/${id}`));
  S.image = image;
  S.prediction = null;
  updateDownloads(); // at once: until its prediction loads, no link may still fetch the previous image's results
  viewer.setRegions(null);
  clearClicks();
  $("#empty").hidden = true;
  markThumb();
  setHash();
  const pyramid = await api.get(`/api/images/${id}/pyramid`);
  await viewer.setImage(`/api/images/${id}/display.png`, image.width, image.height, pyramid,
    (level, ty, tx) => `/api/images/${id}/tile.png?level=${level}&ty=${ty}&tx=${tx}`);
  const strokes = await api.get(`/api/images/${id}/strokes`);
  if (S.image.id !== id) return;
  S.strokes = strokes.concat(pendingFor(id));
  redrawStrokes();
  updateDownloads();
  await refreshPrediction();
  if (S.image.id === id) prefetchFeatures(id);
}

async function prefetchFeatures(id) {
  try {
    const job = await api.post(`/api/images/${id}/features`);
    if (job.state !== "done") await track(job, "Features");
  } catch (err) {
    fail(err);
  }
}

async function uploadFiles(files) {
  let last = null;
  for (const file of files) {
    const form = new FormData();
    form.append("file", file, file.name);
    say(`Uploading ${file.name}…`);
    try {
      const added = await api.post(`/api/projects/${S.project.id}/images`, form);
      last = added[0];
      say(`Added ${file.name}${added.length > 1 ? ` (${added.length} pages)` : ""}`);
    } catch (err) {
      fail(err);
    }
  }
  await reloadImages(last?.id);
}

async function reloadImages(openId) {
  S.images = await api.get(`/api/projects/${S.project.id}/images`);
  renderThumbs();
  if (openId) await openImage(openId);
}

async function loadDataFiles() {
  const data = await api.get("/api/data");
  $("#data-section").hidden = !data.available;
  const sel = $("#data-files");
  sel.innerHTML = "";
  for (const f of data.files) sel.append(new Option(f, f));
}

// -- training and prediction --------------------------------------------------------------------
let trainTimer = null;
function scheduleTrain() {
  clearTimeout(trainTimer);
  trainTimer = setTimeout(() => train(), 150);
}

async function train() {
  if (!S.project) return;
  if (S.training) {
    S.trainAgain = true;
    return;
  }
  S.training = true;
  $("#train").disabled = true;
  try {
    await S.queue; // every stroke painted so far is on the server
    const job = await api.post(`/api/projects/${S.project.id}/train`, { image_id: S.image?.id ?? null });
    const final = await track(job, "Training");
    if (final.state === "done") {
      S.project = await api.get(`/api/projects/${S.project.id}`);
      if (S.image && final.result.image_id === S.image.id) await refreshPrediction();
      if (final.result.note) say(`Trained, but this image cannot be predicted: ${final.result.note}`, "error");
      updateDownloads();
      showModelInfo();
    }
  } catch (err) {
    fail(err);
  } finally {
    S.training = false;
    $("#train").disabled = false;
  }
  if (S.trainAgain) {
    S.trainAgain = false;
    train();
  }
}

async function refreshPrediction() {
  if (!S.image) return;
  const id = S.image.id;
  const meta = await api.get(`/api/images/${id}`);
  // a prediction from before a class was deleted has the old class values: not shown
  const pred = meta.prediction_version > 0 && S.project.has_model ? await api.getPrediction(id, S.view, viewer.overlayLevel()) : null;
  if (S.image?.id !== id) return;
  Object.assign(S.image, meta);
  S.prediction = pred;
  if (!pred) {
    viewer.clearOverlay();
  } else {
    drawPrediction();
  }
  if (S.project.has_model && meta.prediction_version !== S.project.model_version) predictCurrent();
  updateDownloads();
}

async function predictCurrent() {
  const id = S.image.id;
  try {
    const job = await api.post(`/api/images/${id}/predict`);
    const final = await track(job, "Predicting");
    if (final.state === "done" && S.image?.id === id) await refreshPrediction();
  } catch (err) {
    fail(err);
  }
}

function drawPrediction() {
  if (!S.prediction) return;
  const palette = S.view === "labels" ? Object.fromEntries(S.classes.map((c) => [c.value, hexToRgb(c.color)])) : null;
  viewer.setOverlay(S.prediction, palette, S.prediction.version);
}

async function applyAll() {
  if (!S.project) return;
  try {
    const job = await api.post(`/api/projects/${S.project.id}/apply`);
    $("#apply-all").disabled = true;
    const final = await track(job, "Apply to all");
    if (final.state === "done") {
      const skipped = final.result.skipped || [];
      const note = skipped.length ? ` Skipped ${skipped.map((x) => x.name).join(", ")}: ${skipped[0].reason}` : "";
      say(`Applied the model to ${final.result.n_images} image(s). Results are ready to download.${note}`, skipped.length ? "error" : "info");
      [S.images, S.project] = await Promise.all([
        api.get(`/api/projects/${S.project.id}/images`),
        api.get(`/api/projects/${S.project.id}`),
      ]);
      await refreshPrediction();
    }
  } catch (err) {
    fail(err);
  } finally {
    $("#apply-all").disabled = false;
    updateDownloads();
  }
}

function updateDownloads() {
  const p = S.project;
  const hasModel = p && p.has_model;
  const hasPred = S.image && S.prediction;
  const links = {
    "#dl-labels": hasPred ? `/api/images/${S.image.id}/labels.png` : null,
    "#dl-proba": hasPred ? `/api/images/${S.image.id}/probabilities.tif` : null,
    "#dl-csv": p && p.has_phase_fractions ? `/api/projects/${p.id}/phase_fractions.csv` : null,
    "#dl-fractions": hasModel ? `/api/projects/${p.id}/fractions.csv` : null,
    "#dl-scribbles": S.image ? `/api/images/${S.image.id}/scribbles.png` : null,
    "#dl-model": hasModel ? `/api/projects/${p.id}/model.skops` : null,
    "#dl-zip": hasModel ? `/api/projects/${p.id}/results.zip` : null,
  };
  for (const [sel, href] of Object.entries(links)) {
    const a = $(sel);
    if (href) a.href = href;
    else a.removeAttribute("href");
    a.classList.toggle("disabled", !href);
  }
}

// -- wiring -------------------------------------------------------------------------------------
function bindUi() {
  $("#project-select").onchange = (e) => e.target.value && openProject(Number(e.target.value)).catch(fail);
  $("#new-project-form").onsubmit = (e) => {
    e.preventDefault();
    const name = $("#new-project-name").value.trim();
    if (!name) return say("Type a name for the new project.", "error");
    $("#new-project-name").value = "";
    createProject(name).catch(fail);
  };
  $("#upload").onchange = (e) => {
    if (!S.project) return say("Create a project first.", "error");
    uploadFiles([...e.target.files]).catch(fail);
    e.target.value = "";
  };
  $("#add-data").onclick = async () => {
    if (!S.project) return say("Create a project first.", "error");
    try {
      const added = await api.post(`/api/projects/${S.project.id}/images/from-data`, { path: $("#data-files").value });
      await reloadImages(added[0].id);
    } catch (err) {
      fail(err);
    }
  };
  $("#page-prev").onclick = () => turnPage(-1);
  $("#page-next").onclick = () => turnPage(1);
  $("#add-class").onclick = () => addClass().catch(fail);
  const size = $("#brush-size");
  size.oninput = () => { $("#size-value").textContent = size.value; };
  $("#undo").onclick = () => undoRedo("undo");
  $("#redo").onclick = () => undoRedo("redo");
  $("#fit").onclick = () => viewer.fit();
  for (const sel of ["#feature-kind", "#backbone", "#stride", "#shifts", "#flips", "#pca", "#filters", "#sigmas", "#device"]) {
    $(sel).onchange = () => changeSettings({ features: featureSettings() });
  }
  $("#crf").onchange = () => changeSettings({ crf: crfSettings() });
  for (const el of document.querySelectorAll("#crf-advanced input")) el.onchange = () => changeSettings({ crf: crfSettings() });
  $("#load-model").onchange = (e) => { if (e.target.files[0]) loadModel(e.target.files[0]); e.target.value = ""; };
  $("#import-scribbles").onchange = (e) => { if (e.target.files[0]) importScribbles(e.target.files[0]); e.target.value = ""; };
  $("#delete-project").onclick = () => deleteProject();
  $("#swipe").oninput = (e) => viewer.setSwipe(Number(e.target.value));
  $("#show-uncertain").onclick = () => showUncertain();
  $("#show-fractions").onclick = () => showFractions();
  $("#click-finish").onclick = () => finishObject();
  $("#click-undo").onclick = () => { clicks.pop(); showClickObject(); };
  $("#click-cancel").onclick = () => clearClicks();
  for (const r of document.querySelectorAll("input[name=tool]")) {
    r.addEventListener("change", () => { $("#click-row").hidden = r.value !== "click" || !r.checked; if (r.value !== "click") clearClicks(); });
  }
  $("#classifier").onchange = (e) => patchProject({ classifier: e.target.value });
  $("#auto-train").onchange = (e) => patchProject({ auto_train: e.target.checked });
  $("#train").onclick = () => train();
  $("#apply-all").onclick = () => applyAll();
  $("#show-overlay").onchange = (e) => viewer.setOverlayVisible(e.target.checked);
  $("#show-strokes").onchange = (e) => viewer.setStrokesVisible(e.target.checked);
  $("#opacity").oninput = (e) => viewer.setOverlayOpacity(Number(e.target.value) / 100);
  viewer.setOverlayOpacity(Number($("#opacity").value) / 100);
  for (const r of document.querySelectorAll("input[name=view]")) {
    r.onchange = () => { S.view = r.value; renderLegend(); refreshPrediction().catch(fail); };
  }
  for (const a of document.querySelectorAll("a.dl")) {
    a.addEventListener("click", (e) => { if (a.classList.contains("disabled")) e.preventDefault(); });
  }
  window.addEventListener("keydown", (e) => {
    if (isTyping(e)) return;
    const ctrl = e.ctrlKey || e.metaKey;
    if (ctrl && e.key.toLowerCase() === "z") { e.preventDefault(); undoRedo(e.shiftKey ? "redo" : "undo"); }
    else if (ctrl && e.key.toLowerCase() === "y") { e.preventDefault(); undoRedo("redo"); }
    else if (ctrl) return;
    else if (e.key === "b") $("#tool-brush").checked = true;
    else if (e.key === "e") $("#tool-eraser").checked = true;
    else if (e.key === "l") $("#tool-lasso").checked = true;
    else if (e.key === "c") { $("#tool-click").checked = true; $("#click-row").hidden = false; }
    else if ($("#tool-click").checked && e.key === "Enter") finishObject();
    else if ($("#tool-click").checked && e.key === "Backspace") { clicks.pop(); showClickObject(); }
    else if (e.key === "Escape") clearClicks();
    else if (e.key === "f") viewer.fit();
    else if (e.key === "[" || e.key === "]") {
      size.value = Number(size.value) + (e.key === "]" ? 2 : -2);
      size.oninput();
    } else if (/^[1-9]$/.test(e.key) && S.classes[Number(e.key) - 1]) selectClass(S.classes[Number(e.key) - 1].id);
  });
}

// -- click tool: clicks select an object (server-side ClickSegmenter), Finish makes it labels ----
let clicks = [];
let clickSeq = 0;
async function showClickObject() {
  const cls = S.classes.find((c) => c.id === S.activeClass);
  $("#click-row").hidden = !clicks.length && $("#tool-click").checked === false;
  if (!clicks.length || !S.image) return viewer.setClickObject(null, [], "#fff");
  const seq = ++clickSeq;
  try {
    const obj = await api.post(`/api/images/${S.image.id}/click-object`, { clicks });
    if (seq === clickSeq) viewer.setClickObject(obj.runs, clicks, cls?.color || "#ffffff");
  } catch (err) {
    fail(err);
  }
}

function addClick(x, y, positive) {
  if (!S.image || x < 0 || y < 0 || x >= S.image.width || y >= S.image.height) return;
  clicks.push({ x: Math.floor(x), y: Math.floor(y), positive });
  showClickObject();
}

function clearClicks() {
  clicks = [];
  viewer.setClickObject(null, [], "#fff");
}

async function finishObject() {
  if (!clicks.length || !S.image) return;
  if (!S.activeClass) return say("Select the class the object belongs to.", "error");
  const id = S.image.id;
  try {
    await S.queue;
    const layer = await api.post(`/api/images/${id}/click-object/commit`, { clicks, class_id: S.activeClass });
    clearClicks();
    if (S.image?.id === id) {
      S.strokes.push(layer);
      redrawStrokes();
    }
    if (S.project.auto_train) scheduleTrain();
  } catch (err) {
    fail(err);
  }
}

// Settings change: features retire the model (overlay cleared), CRF makes a new version of it
// (the image is predicted again); either way the overlay and the model line follow the server.
async function changeSettings(body) {
  if (!S.project) return;
  const before = S.project.model_version;
  await patchProject(body);
  if (S.project.model_version !== before) {
    S.images = await api.get(`/api/projects/${S.project.id}/images`);
    if (!S.project.has_model) { viewer.clearOverlay(); S.prediction = null; }
    await refreshPrediction();
  }
  showModelInfo();
  updateDownloads();
}

async function reopenProject(imageId = null) {
  await loadProjects();
  if (S.project) await openProject(S.project.id, imageId ?? S.image?.id ?? null);
}

async function afterProjectDeleted() {
  await loadProjects();
  const last = S.projects[S.projects.length - 1];
  if (last) await openProject(last.id);
  else {
    S.classes = [];
    S.images = [];
    renderClasses();
    renderThumbs();
    showEmpty();
    document.body.dataset.project = "";
  }
}

async function main() {
  Object.assign(hooks, { viewer, scheduleTrain, drawPrediction, updateDownloads, reopenProject, afterProjectDeleted, redrawStrokes });
  bindUi();
  $("#size-value").textContent = $("#brush-size").value;
  try {
    [S.info, S.options] = await Promise.all([api.get("/api/info"), api.get("/api/features/options")]);
    await flushPending();
    await loadProjects();
    await loadDataFiles();
    const hash = new URLSearchParams(location.hash.slice(1));
    const pid = Number(hash.get("p") || localStorage.getItem("hrdv2.project"));
    const target = S.projects.find((p) => p.id === pid) || S.projects[S.projects.length - 1];
    if (target) await openProject(target.id, Number(hash.get("i")) || null);
    else showEmpty();
    document.body.dataset.ready = "1";
  } catch (err) {
    fail(err);
  }
}

main();
