// Daily-use panels: load a model file, import scribbles, delete an image or the project, the
// model's "trained with" line, the phase-fraction table and the most uncertain regions.
import * as api from "./api.js";
import { $, S, fail, hooks, say } from "./state.js";

// -- models ---------------------------------------------------------------------------------
export async function loadModel(file) {
  if (!S.project) return say("Create a project first.", "error");
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    S.project = await api.post(`/api/projects/${S.project.id}/model`, form);
    say(`Loaded ${file.name}: predicting with it (no training).`);
    await hooks.reopenProject();
  } catch (err) {
    fail(err);
  }
}

function describeFeatures(f) {
  const parts = [f.kind];
  if (f.kind !== "deep") parts.push(`filters ${Array.isArray(f.filters) ? f.filters.length : "?"}, σ ${f.sigmas.join("/")}`);
  if (f.kind !== "classical") {
    parts.push(`${f.backbone}${f.stride ? ` stride ${f.stride}` : ""}, shifts ${f.shifts.join("/")}${f.flips ? ", flips" : ""}`);
    if (f.pca_components) parts.push(`PCA ${f.pca_components}`);
  }
  return parts.join(" · ");
}

export async function showModelInfo() {
  const box = $("#model-info");
  box.textContent = "";
  box.dataset.source = "";
  if (!S.project?.has_model) {
    box.textContent = "No model yet: paint two classes and train, or load a model file.";
    return;
  }
  try {
    const info = await api.get(`/api/projects/${S.project.id}/model`);
    box.dataset.source = info.source;
    box.textContent = `Model v${info.model_version} (${info.source}): ${describeFeatures(info.features)} · ${info.classifier.replace("_", " ")}` +
      ` · CRF ${info.crf ? "on" : "off"} · ${info.class_names.length} classes` +
      (info.matches_settings ? "" : " · trained with other feature settings than shown above (it is applied with its own)");
    box.title = JSON.stringify(info.features, null, 1);
  } catch (err) {
    box.textContent = "";
  }
}

// -- labels in ------------------------------------------------------------------------------
export async function importScribbles(file) {
  if (!S.image) return say("Open an image first.", "error");
  const form = new FormData();
  form.append("file", file, file.name);
  const id = S.image.id;
  try {
    await S.queue; // strokes painted before come first
    const layer = await api.post(`/api/images/${id}/scribbles`, form);
    if (S.image?.id === id) {
      S.strokes.push(layer);
      hooks.redrawStrokes();
    }
    say(`Imported ${file.name} (${layer.runs.length} runs of labelled pixels). Undo removes it.`);
    if (S.project.auto_train) hooks.scheduleTrain();
  } catch (err) {
    fail(err);
  }
}

// -- deleting -------------------------------------------------------------------------------
export async function deleteImage(image) {
  const pages = S.images.filter((i) => i.file_id === image.file_id);
  const strokes = image.id === S.image?.id ? S.strokes.length : null;
  const what = `${image.name}${pages.length > 1 ? ` (all ${pages.length} pages)` : ""}`;
  if (!window.confirm(`Delete ${what} from this project, with its strokes${strokes ? ` (${strokes} on it)` : ""} and predictions? Other images are kept.`)) return;
  try {
    await api.del(`/api/images/${image.id}`);
    const keep = S.image && S.image.file_id !== image.file_id ? S.image.id : null;
    say(`Deleted ${what}.`);
    await hooks.reopenProject(keep);
  } catch (err) {
    fail(err);
  }
}

export async function deleteProject() {
  if (!S.project) return;
  const p = S.project;
  if (!window.confirm(`Delete project “${p.name}” with its ${p.n_images} image(s), classes, strokes, model and results? This cannot be undone.`)) return;
  try {
    await api.del(`/api/projects/${p.id}`);
    localStorage.removeItem("hrdv2.project");
    S.project = null;
    say(`Deleted project “${p.name}”.`);
    await hooks.afterProjectDeleted();
  } catch (err) {
    fail(err);
  }
}

// -- results --------------------------------------------------------------------------------
export async function showFractions() {
  if (!S.project) return;
  const box = $("#fractions-box");
  try {
    const t = await api.get(`/api/projects/${S.project.id}/fractions`);
    const table = $("#fractions-table");
    table.innerHTML = "";
    const head = table.insertRow();
    for (const h of ["image", ...t.classes]) head.append(Object.assign(document.createElement("th"), { textContent: h }));
    for (const r of t.rows) {
      const row = table.insertRow();
      row.dataset.imageId = r.image_id;
      row.insertCell().textContent = r.page ? `${r.name} p${r.page + 1}` : r.name;
      row.cells[0].title = row.cells[0].textContent;
      if (r.fractions) for (const v of r.fractions) row.insertCell().textContent = `${(100 * v).toFixed(1)}%`;
      else Object.assign(row.insertCell(), { colSpan: t.classes.length, className: "stale", textContent: "no current prediction" });
    }
    box.hidden = false;
  } catch (err) {
    fail(err);
  }
}

export async function showUncertain() {
  if (!S.image || !S.prediction) return say("Train a model first: regions come from its prediction.", "error");
  try {
    const regions = await api.get(`/api/images/${S.image.id}/uncertain?n=5`);
    hooks.viewer.setRegions(regions);
    say(`Outlined the ${regions.length} most uncertain regions (1 = least sure): paint strokes there next.`);
  } catch (err) {
    fail(err);
  }
}
