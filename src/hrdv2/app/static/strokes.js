// Strokes: drawing them, saving each to the server in order, undo / redo.
import * as api from "./api.js";
import { S, fail, hooks, say } from "./state.js";

const PENDING_KEY = "hrdv2.pendingStrokes";

function classColor(id) {
  return S.classes.find((c) => c.id === id)?.color || "#000000";
}

export function redrawStrokes() {
  const colors = Object.fromEntries(S.classes.map((c) => [c.id, c.color]));
  hooks.viewer.setStrokes(S.strokes.map((s) => ({ ...s, colors, color: s.tool === "eraser" ? "#fff" : classColor(s.class_id) })));
}

function readPending() {
  try {
    return JSON.parse(localStorage.getItem(PENDING_KEY) || "[]");
  } catch {
    return [];
  }
}

function writePending(list) {
  localStorage.setItem(PENDING_KEY, JSON.stringify(list));
}

export function pendingFor(imageId) {
  return readPending().filter((p) => p.image_id === imageId).map((p) => ({ ...p.body, image_id: imageId, pending: true }));
}

// Strokes go to the server one at a time, in order. Until the server has it, a stroke is also
// kept in localStorage, so closing the tab mid-request loses nothing (sent on the next visit).
export function saveStroke(stroke) {
  const imageId = S.image.id;
  const body = { tool: stroke.tool, class_id: stroke.classId, radius: stroke.radius, points: stroke.points };
  const local = { ...body, image_id: imageId, pending: true, uid: Math.random().toString(36).slice(2) };
  S.strokes.push(local);
  writePending(readPending().concat([{ uid: local.uid, image_id: imageId, body }]));
  S.queue = S.queue.then(async () => {
    try {
      const saved = await api.post(`/api/images/${imageId}/strokes`, body);
      writePending(readPending().filter((p) => p.uid !== local.uid));
      if (S.image?.id === imageId) Object.assign(local, saved, { pending: false });
      if (S.project.auto_train) hooks.scheduleTrain();
    } catch (err) {
      writePending(readPending().filter((p) => p.uid !== local.uid));
      S.strokes = S.strokes.filter((s) => s !== local);
      if (S.image?.id === imageId) redrawStrokes();
      fail(err);
    }
  });
}

export async function flushPending() {
  for (const p of readPending()) {
    try {
      await api.post(`/api/images/${p.image_id}/strokes`, p.body);
    } catch (err) {
      if (!(err instanceof api.ApiError)) continue; // offline: keep it for later
    }
    writePending(readPending().filter((q) => q.uid !== p.uid));
  }
}

export function undoRedo(which) {
  if (!S.image) return;
  const imageId = S.image.id;
  S.queue = S.queue.then(async () => {
    try {
      const res = await api.post(`/api/images/${imageId}/${which}`);
      if (S.image?.id !== imageId) return;
      S.strokes = res.strokes;
      redrawStrokes();
      if (!res.changed) say(`Nothing to ${which}.`);
      else if (S.project.auto_train) hooks.scheduleTrain();
    } catch (err) {
      fail(err);
    }
  });
}
