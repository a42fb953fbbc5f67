// The model panel: feature kind, backbone (unavailable ones say why), stride, classifier, auto-train,
// CRF on/off, and under "Advanced" the rest of the library's feature settings, the device and the
// CRF parameters. Feature changes retire the model on the server; CRF and device changes keep it.
import * as api from "./api.js";
import { $, S, fail } from "./state.js";

const CRF_FIELDS = ["n_iter", "sxy_gaussian", "compat_gaussian", "sxy_bilateral", "srgb", "compat_bilateral"];

function fillSelect(sel, items, label = (x) => x) {
  sel.innerHTML = "";
  for (const item of items) sel.append(new Option(label(item), item));
}

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
  $("#deep-advanced").classList.toggle("muted", p.features.kind === "classical");
  $("#classical-advanced").classList.toggle("muted", p.features.kind === "deep");
  const selected = o.backbones.find((b) => b.name === bb.value) || o.backbones[0];
  const note = $("#feature-note");
  note.hidden = !selected || selected.available;
  if (selected && !selected.available) note.textContent = `Deep features unavailable: no weights. ${selected.reason}`;
  const cl = $("#classifier");
  cl.innerHTML = "";
  for (const c of o.classifiers) cl.append(new Option(c.replace("_", " "), c));
  cl.value = p.classifier;
  $("#auto-train").checked = p.auto_train;
  // advanced (a field being typed in keeps what is typed: its own change event sends it next)
  const set = (sel, value) => { if (document.activeElement !== $(sel)) $(sel).value = value; };
  set("#shifts", p.features.shifts.join(","));
  $("#flips").checked = p.features.flips;
  set("#pca", p.features.pca_components ?? "");
  const presets = [...o.filter_presets];
  if (!presets.includes(p.features.filters)) presets.push(p.features.filters); // e.g. a loaded model's own list
  fillSelect($("#filters"), presets);
  $("#filters").value = p.features.filters;
  set("#sigmas", p.features.sigmas.join(","));
  fillSelect($("#device"), o.devices, (d) => (d === "server" ? "server default" : d));
  $("#device").value = p.features.device;
  $("#crf").checked = p.crf.enabled;
  for (const f of CRF_FIELDS) set(`#crf-${f}`, p.crf[f]);
}

// Changes go to the server one at a time, in order, so a later setting never lands before an earlier one.
let patching = Promise.resolve();
export function patchProject(body) {
  const pid = S.project.id;
  patching = patching.then(async () => {
    try {
      const updated = await api.patch(`/api/projects/${pid}`, body);
      if (S.project?.id === pid) S.project = updated;
    } catch (err) {
      fail(err);
    }
    if (S.project?.id === pid) renderSettings();
    return S.project;
  });
  return patching;
}

function numbers(text) {
  return text.split(/[\s,;]+/).filter(Boolean).map(Number);
}

export function featureSettings() {
  const stride = $("#stride").value;
  const pca = $("#pca").value;
  return {
    kind: $("#feature-kind").value,
    backbone: $("#backbone").value,
    stride: stride ? Number(stride) : null,
    shifts: numbers($("#shifts").value),
    flips: $("#flips").checked,
    pca_components: pca ? Number(pca) : null,
    filters: $("#filters").value,
    sigmas: numbers($("#sigmas").value),
    device: $("#device").value,
  };
}

export function crfSettings() {
  const out = { enabled: $("#crf").checked };
  for (const f of CRF_FIELDS) out[f] = Number($(`#crf-${f}`).value);
  return out;
}
