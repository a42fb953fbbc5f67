// The classes panel: add, rename, recolour, delete (with confirmation), select; the legend.
import * as api from "./api.js";
import { $, PALETTE, S, fail, hooks, say } from "./state.js";
import { redrawStrokes } from "./strokes.js";

export function renderClasses() {
  const list = $("#classes");
  list.innerHTML = "";
  for (const c of S.classes) {
    const li = document.createElement("li");
    li.className = "class" + (c.id === S.activeClass ? " active" : "");
    li.dataset.classId = c.id;
    li.innerHTML = `<span class="key"></span><input type="color" class="class-color" aria-label="Colour"><input class="class-name" maxlength="80" aria-label="Class name"><button class="class-move class-up" title="Move up (class values follow the order; the model must be retrained)">▲</button><button class="class-move class-down" title="Move down">▼</button><button class="class-delete" title="Delete class">✕</button>`;
    li.querySelector(".class-up").onclick = (e) => { e.stopPropagation(); moveClass(c, -1); };
    li.querySelector(".class-down").onclick = (e) => { e.stopPropagation(); moveClass(c, 1); };
    li.querySelector(".key").textContent = c.value;
    const color = li.querySelector(".class-color");
    color.value = c.color;
    color.onchange = () => patchClass(c, { color: color.value });
    const name = li.querySelector(".class-name");
    name.value = c.name;
    name.onchange = () => {
      const v = name.value.trim();
      if (v && v !== c.name) patchClass(c, { name: v });
      else name.value = c.name;
    };
    name.onkeydown = (e) => { if (e.key === "Enter") name.blur(); };
    li.querySelector(".class-delete").onclick = (e) => {
      e.stopPropagation();
      deleteClass(c);
    };
    li.onclick = () => selectClass(c.id);
    list.append(li);
  }
  renderLegend();
}

export function selectClass(id) {
  S.activeClass = id;
  if ($("#tool-eraser").checked) $("#tool-brush").checked = true; // the lasso stays the lasso
  for (const li of document.querySelectorAll("#classes li")) li.classList.toggle("active", Number(li.dataset.classId) === id);
}

// Serialised, so quick clicks each get the next free name and colour instead of colliding.
let adding = Promise.resolve();
export function addClass() {
  adding = adding.then(addOneClass).catch(fail);
  return adding;
}

async function addOneClass() {
  if (!S.project) return say("Create a project first.", "error");
  const used = new Set(S.classes.map((c) => c.name));
  let n = S.classes.length + 1;
  while (used.has(`class ${n}`)) n += 1;
  const color = PALETTE.find((p) => !S.classes.some((c) => c.color === p)) || PALETTE[n % PALETTE.length];
  const cls = await api.post(`/api/projects/${S.project.id}/classes`, { name: `class ${n}`, color });
  S.classes.push(cls);
  S.activeClass = cls.id;
  renderClasses();
  const input = document.querySelector(`#classes li[data-class-id="${cls.id}"] .class-name`);
  input.focus();
  input.select();
}

async function patchClass(c, body) {
  try {
    const updated = await api.patch(`/api/classes/${c.id}`, body);
    Object.assign(c, updated);
    renderLegend(); // the row's own inputs already show the change; re-rendering them could eat typing elsewhere
    redrawStrokes();
    if (S.prediction) hooks.drawPrediction();
  } catch (err) {
    fail(err);
    renderClasses();
  }
}

async function deleteClass(c) {
  const counted = S.strokes.filter((s) => s.class_id === c.id).length;
  const warn = `Delete class “${c.name}”? Its strokes on every image will be deleted too${counted ? ` (${counted} on this image)` : ""}. The model must be retrained.`;
  if (!window.confirm(warn)) return;
  try {
    await api.del(`/api/classes/${c.id}`);
    S.classes = await api.get(`/api/projects/${S.project.id}/classes`);
    if (S.activeClass === c.id) S.activeClass = S.classes[0]?.id ?? null;
    S.project = await api.get(`/api/projects/${S.project.id}`);
    renderClasses();
    if (S.image) {
      S.strokes = await api.get(`/api/images/${S.image.id}/strokes`);
      redrawStrokes();
    }
    hooks.viewer.clearOverlay();
    S.prediction = null;
    hooks.updateDownloads();
  } catch (err) {
    fail(err);
  }
}

// Reorder: class values 1..K follow the list, so the server retires the model (strokes are kept).
async function moveClass(c, delta) {
  const ids = S.classes.map((x) => x.id);
  const i = ids.indexOf(c.id);
  const j = i + delta;
  if (j < 0 || j >= ids.length) return;
  [ids[i], ids[j]] = [ids[j], ids[i]];
  try {
    S.classes = await api.put(`/api/projects/${S.project.id}/classes/order`, { class_ids: ids });
    S.project = await api.get(`/api/projects/${S.project.id}`);
    renderClasses();
    redrawStrokes();
    hooks.viewer.clearOverlay();
    S.prediction = null;
    hooks.updateDownloads();
    say("Classes reordered: their values changed, so train again.");
  } catch (err) {
    fail(err);
  }
}

export function renderLegend() {
  const box = $("#legend");
  box.innerHTML = "";
  if (S.view === "uncertainty") {
    box.innerHTML = `<div class="ramp"></div><div class="ramp-labels"><span>certain</span><span>1 - max p</span><span>unsure</span></div>`;
    return;
  }
  for (const c of S.classes) {
    const item = document.createElement("span");
    item.innerHTML = `<i></i>`;
    item.querySelector("i").style.background = c.color;
    item.append(` ${c.value} ${c.name}`);
    box.append(item);
  }
}
