// The model panel: feature kind, backbone (unavailable ones say why), stride, classifier, auto-train.
import * as api from "./api.js";
import { $, S, fail } from "./state.js";

export function renderSettings() {
  const o = S.options;
  const p = S.project;
  const anyDeep = o.backbones.some((b) => b.available);
  const kind = $("#feature-kind");
  kind.innerHTML = "";
  for (const k of o.kinds) {
    const opt = new Option(k === "classical" || anyDeep ? k : `${k} — unavailable: no weights`, k);
    opt.disabled = k !== "classical" && !anyDeep;
    kind.append(opt);
  }
  kind.value = p.features.kind;
  const bb = $("#backbone");
  bb.innerHTML = "";
  for (const b of o.backbones) {
    const opt = new Option(b.available ? b.name : `${b.name} — unavailable: no weights`, b.name);
    opt.disabled = !b.available;
    opt.title = b.reason || "";
    bb.append(opt);
  }
  bb.value = p.features.backbone;
  const stride = $("#stride");
  stride.innerHTML = "";
  stride.append(new Option("default", ""));
  for (const s of o.strides) stride.append(new Option(String(s), s));
  stride.value = p.features.stride ?? "";
  $("#deep-settings").classList.toggle("muted", p.features.kind === "classical");
  const selected = o.backbones.find((b) => b.name === bb.value) || o.backbones[0];
  const note = $("#feature-note");
  note.hidden = !selected || selected.available;
  if (selected && !selected.available) note.textContent = `Deep features unavailable: no weights. ${selected.reason}`;
  const cl = $("#classifier");
  cl.innerHTML = "";
  for (const c of o.classifiers) cl.append(new Option(c.replace("_", " "), c));
  cl.value = p.classifier;
  $("#auto-train").checked = p.auto_train;
}

export async function patchProject(body) {
  try {
    S.project = await api.patch(`/api/projects/${S.project.id}`, body);
  } catch (err) {
    fail(err);
  }
  renderSettings();
}

export function featureSettings() {
  const stride = $("#stride").value;
  return { kind: $("#feature-kind").value, backbone: $("#backbone").value, stride: stride ? Number(stride) : null };
}
