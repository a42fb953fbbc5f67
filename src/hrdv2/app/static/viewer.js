// The image view: zoom (wheel), pan (right/middle button or Space+drag), painting with a brush
// or eraser drawn live on a canvas at image resolution, the brush outline, and the overlay.
// All layers share one CSS transform, so a canvas pixel is always an image pixel.

const MIN_SCALE = 0.05;
const MAX_SCALE = 40;

export class Viewer {
  constructor(root, hooks) {
    this.viewport = root.querySelector("#viewport");
    this.stage = root.querySelector("#stage");
    this.img = root.querySelector("#image");
    this.overlay = root.querySelector("#overlay");
    this.scribbles = root.querySelector("#scribbles");
    this.cursor = root.querySelector("#cursor");
    this.hooks = hooks; // {brush(): {tool, radius, color, classId} | null, onStroke(stroke), onPointer(x, y)}
    this.width = 0;
    this.height = 0;
    this.scale = 1;
    this.tx = 0;
    this.ty = 0;
    this.current = null; // stroke being painted
    this.pyramid = null;
    this.canvasScale = 1;
    this.panning = null;
    this.spaceDown = false;
    this.bind();
  }

  hasImage() {
    return this.width > 0;
  }

  // pyramid: {tiled, tile, levels: [[w, h], ...]} for a large image (canvases at the last
  // level's size, tiles of finer levels fetched for the region on screen), else null
  async setImage(url, width, height, pyramid = null, tileUrl = null) {
    this.width = width;
    this.height = height;
    this.pyramid = pyramid?.tiled ? pyramid : null;
    this.tileUrl = tileUrl;
    this.tileBox = this.stage.querySelector("#tiles");
    this.tileBox.innerHTML = "";
    const [cw, ch] = this.pyramid ? this.pyramid.levels[this.pyramid.levels.length - 1] : [width, height];
    this.canvasScale = cw / width; // canvas pixels per image pixel (1 unless tiled)
    for (const canvas of [this.overlay, this.scribbles]) {
      canvas.width = cw;
      canvas.height = ch;
    }
    this.stage.style.width = `${width}px`;
    this.stage.style.height = `${height}px`;
    this.clearOverlay();
    await new Promise((resolve, reject) => {
      this.img.onload = resolve;
      this.img.onerror = () => reject(new Error(`could not load ${url}`));
      this.img.src = url;
    });
    this.img.width = width;
    this.img.height = height;
    this.stage.hidden = false;
    this.fit();
  }

  // pyramid level of the overlay and the canvases (0 unless the image is tiled)
  overlayLevel() {
    return this.pyramid ? this.pyramid.levels.length - 1 : 0;
  }

  clear() {
    this.width = this.height = 0;
    this.pyramid = null;
    this.stage.querySelector("#tiles").innerHTML = "";
    this.stage.hidden = true;
    this.img.removeAttribute("src");
  }

  // -- geometry --------------------------------------------------------------------------------
  fit() {
    if (!this.hasImage()) return;
    const rect = this.viewport.getBoundingClientRect();
    const s = Math.min(rect.width / this.width, rect.height / this.height) * 0.96;
    this.scale = Math.max(MIN_SCALE, Math.min(MAX_SCALE, s));
    this.tx = (rect.width - this.width * this.scale) / 2;
    this.ty = (rect.height - this.height * this.scale) / 2;
    this.apply();
  }

  apply() {
    this.stage.style.transform = `translate(${this.tx}px, ${this.ty}px) scale(${this.scale})`;
    const crisp = this.scale >= 2 ? "pixelated" : "auto";
    this.img.style.imageRendering = crisp;
    this.hooks.onZoom?.(this.scale);
    if (this.pyramid && !this.tilesPending) {
      this.tilesPending = true;
      requestAnimationFrame(() => { this.tilesPending = false; this.updateTiles(); });
    }
  }

  // Tiles of the finest level the zoom needs, for the part of the image on screen only.
  updateTiles() {
    const p = this.pyramid;
    if (!p) return;
    const top = p.levels.length - 1;
    const level = Math.max(0, Math.min(top, Math.floor(Math.log2(1 / this.scale))));
    const wanted = new Map();
    if (level < top) {
      const rect = this.viewport.getBoundingClientRect();
      const span = p.tile * 2 ** level; // image pixels per tile
      const [lw, lh] = p.levels[level];
      const x0 = Math.max(0, -this.tx / this.scale);
      const y0 = Math.max(0, -this.ty / this.scale);
      const x1 = Math.min(this.width, (rect.width - this.tx) / this.scale);
      const y1 = Math.min(this.height, (rect.height - this.ty) / this.scale);
      for (let ty = Math.floor(y0 / span); ty * span < y1 && ty * p.tile < lh; ty += 1) {
        for (let tx = Math.floor(x0 / span); tx * span < x1 && tx * p.tile < lw; tx += 1) {
          wanted.set(`${level}/${ty}/${tx}`, [level, ty, tx, Math.min(p.tile, lw - tx * p.tile), Math.min(p.tile, lh - ty * p.tile)]);
        }
      }
    }
    for (const el of [...this.tileBox.children]) if (!wanted.has(el.dataset.key)) el.remove();
    const have = new Set([...this.tileBox.children].map((el) => el.dataset.key));
    for (const [key, [lv, ty, tx, w, h]] of wanted) {
      if (have.has(key) || wanted.size > 64) continue;
      const f = 2 ** lv;
      const img = document.createElement("img");
      img.dataset.key = key;
      img.draggable = false;
      Object.assign(img.style, { left: `${tx * p.tile * f}px`, top: `${ty * p.tile * f}px`, width: `${w * f}px`, height: `${h * f}px` });
      img.src = this.tileUrl(lv, ty, tx);
      this.tileBox.append(img);
    }
    this.tileBox.dataset.level = String(level);
  }

  toImage(event) {
    const rect = this.viewport.getBoundingClientRect();
    return [(event.clientX - rect.left - this.tx) / this.scale, (event.clientY - rect.top - this.ty) / this.scale];
  }

  zoomAt(clientX, clientY, factor) {
    const rect = this.viewport.getBoundingClientRect();
    const mx = clientX - rect.left;
    const my = clientY - rect.top;
    const s = Math.max(MIN_SCALE, Math.min(MAX_SCALE, this.scale * factor));
    this.tx = mx - ((mx - this.tx) * s) / this.scale;
    this.ty = my - ((my - this.ty) * s) / this.scale;
    this.scale = s;
    this.apply();
  }

  // -- events ----------------------------------------------------------------------------------
  bind() {
    const vp = this.viewport;
    vp.addEventListener("contextmenu", (e) => e.preventDefault());
    vp.addEventListener("wheel", (e) => {
      if (!this.hasImage()) return;
      e.preventDefault();
      this.zoomAt(e.clientX, e.clientY, Math.exp(-e.deltaY * 0.0015));
      this.moveCursor(e);
    }, { passive: false });
    vp.addEventListener("pointerdown", (e) => this.down(e));
    vp.addEventListener("pointermove", (e) => this.move(e));
    vp.addEventListener("pointerup", (e) => this.up(e));
    vp.addEventListener("pointercancel", (e) => this.up(e));
    vp.addEventListener("pointerleave", () => { this.cursor.hidden = true; });
    window.addEventListener("keydown", (e) => {
      if (e.code === "Space" && !isTyping(e)) {
        this.spaceDown = true;
        e.preventDefault();
      }
    });
    window.addEventListener("keyup", (e) => { if (e.code === "Space") this.spaceDown = false; });
    window.addEventListener("resize", () => this.fit());
  }

  down(e) {
    if (!this.hasImage()) return;
    this.viewport.focus({ preventScroll: true });
    const clicking = this.hooks.brush()?.tool === "click";
    if (e.button === 1 || (e.button === 2 && !clicking) || (e.button === 0 && this.spaceDown)) {
      this.panning = { x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty };
      this.viewport.setPointerCapture(e.pointerId);
      this.viewport.classList.add("panning");
      return;
    }
    const tool = this.hooks.brush();
    if (tool?.tool === "click" && (e.button === 0 || e.button === 2)) {
      const [cx, cy] = this.toImage(e);
      this.hooks.onClick?.(cx, cy, e.button === 0 && !e.shiftKey);
      return;
    }
    if (e.button !== 0) return;
    const brush = this.hooks.brush();
    if (!brush) return;
    this.viewport.setPointerCapture(e.pointerId);
    const [x, y] = this.toImage(e);
    this.current = { ...brush, points: [[x, y]] };
    if (brush.tool === "polygon") this.drawLasso();
    else this.drawSegment(this.current, [x, y], [x, y]);
  }

  move(e) {
    this.moveCursor(e);
    if (this.panning) {
      this.tx = this.panning.tx + e.clientX - this.panning.x;
      this.ty = this.panning.ty + e.clientY - this.panning.y;
      this.apply();
      return;
    }
    const [x, y] = this.toImage(e);
    this.hooks.onPointer?.(x, y);
    if (!this.current) return;
    // a busy page gets one event for several pointer moves: take every position (a lasso's corners)
    const events = (e.getCoalescedEvents && e.getCoalescedEvents().length) ? e.getCoalescedEvents() : [e];
    for (const ev of events) {
      const [px, py] = this.toImage(ev);
      const last = this.current.points[this.current.points.length - 1];
      if (Math.hypot(px - last[0], py - last[1]) < 0.5) continue;
      this.current.points.push([px, py]);
      if (this.current.tool !== "polygon") this.drawSegment(this.current, last, [px, py]);
    }
    if (this.current.tool === "polygon") this.drawLasso();
  }

  // The lasso while it is drawn: an SVG polygon over the image, in the class colour.
  drawLasso() {
    let path = this.stage.querySelector("#lasso");
    if (!path) {
      path = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      path.id = "lasso";
      path.innerHTML = "<polygon></polygon>";
      this.stage.append(path);
    }
    path.setAttribute("viewBox", `0 0 ${this.width} ${this.height}`);
    const poly = path.querySelector("polygon");
    poly.setAttribute("points", this.current.points.map((p) => p.join(",")).join(" "));
    poly.setAttribute("fill", this.current.color);
    poly.setAttribute("stroke-width", String(1.5 / this.scale));
    path.hidden = false;
  }

  up(e) {
    if (this.panning) {
      this.panning = null;
      this.viewport.classList.remove("panning");
      return;
    }
    if (!this.current) return;
    const stroke = this.current;
    this.current = null;
    stroke.points = stroke.points.map(([x, y]) => [Math.round(x * 100) / 100, Math.round(y * 100) / 100]);
    if (stroke.tool === "polygon") {
      const lasso = this.stage.querySelector("#lasso");
      if (lasso) lasso.hidden = true;
      if (stroke.points.length < 3) return; // a click is not a region
      this.drawStroke(stroke);
    }
    this.hooks.onStroke(stroke);
  }

  moveCursor(e) {
    const brush = this.hooks.brush();
    if (!brush || this.panning || !this.hasImage()) {
      this.cursor.hidden = true;
      return;
    }
    const rect = this.viewport.getBoundingClientRect();
    const d = Math.max(2 * brush.radius * this.scale, 3);
    Object.assign(this.cursor.style, {
      width: `${d}px`,
      height: `${d}px`,
      left: `${e.clientX - rect.left - d / 2}px`,
      top: `${e.clientY - rect.top - d / 2}px`,
      borderColor: brush.tool === "eraser" ? "#ffffff" : brush.color,
    });
    this.cursor.classList.toggle("eraser", brush.tool === "eraser");
    this.cursor.hidden = false;
  }

  // -- strokes ---------------------------------------------------------------------------------
  /** The scribble canvas's context, saved and set up to paint (or erase) with this stroke's brush. */
  brushContext(stroke) {
    const ctx = this.scribbles.getContext("2d");
    ctx.save();
    ctx.setTransform(this.canvasScale, 0, 0, this.canvasScale, 0, 0); // image pixels -> canvas pixels
    ctx.globalCompositeOperation = stroke.tool === "eraser" ? "destination-out" : "source-over";
    ctx.strokeStyle = ctx.fillStyle = stroke.color || "#000";
    ctx.lineWidth = 2 * stroke.radius;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    return ctx;
  }

  drawSegment(stroke, a, b) {
    const ctx = this.brushContext(stroke);
    if (a[0] === b[0] && a[1] === b[1]) {
      ctx.beginPath();
      ctx.arc(a[0], a[1], stroke.radius, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.beginPath();
      ctx.moveTo(a[0], a[1]);
      ctx.lineTo(b[0], b[1]);
      ctx.stroke();
    }
    ctx.restore();
  }

  drawStroke(stroke) {
    const ctx = this.brushContext(stroke);
    const pts = stroke.points;
    if (stroke.tool === "labels") { // an imported label layer: (class_id, row, x0, x1) runs
      for (const [cid, y, x0, x1] of stroke.runs || []) {
        ctx.fillStyle = stroke.colors[cid] || "#000";
        ctx.fillRect(x0, y, x1 - x0, 1);
      }
      ctx.restore();
      return;
    }
    ctx.beginPath();
    if (stroke.tool === "polygon") { // filled like the server fills it: pixel centres inside, even-odd
      ctx.moveTo(pts[0][0], pts[0][1]);
      for (const p of pts.slice(1)) ctx.lineTo(p[0], p[1]);
      ctx.closePath();
      ctx.fill("evenodd");
      ctx.restore();
      return;
    }
    if (pts.length === 1) {
      ctx.arc(pts[0][0], pts[0][1], stroke.radius, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.moveTo(pts[0][0], pts[0][1]);
      for (const p of pts.slice(1)) ctx.lineTo(p[0], p[1]);
      ctx.stroke();
    }
    ctx.restore();
  }

  // strokes: [{tool, radius, points, color}] in painting order
  setStrokes(strokes) {
    const ctx = this.scribbles.getContext("2d");
    ctx.clearRect(0, 0, this.scribbles.width, this.scribbles.height);
    for (const s of strokes) this.drawStroke(s);
  }

  setStrokesVisible(visible) {
    this.scribbles.style.visibility = visible ? "visible" : "hidden";
  }

  // -- overlay ---------------------------------------------------------------------------------
  clearOverlay() {
    this.overlay.getContext("2d").clearRect(0, 0, this.overlay.width, this.overlay.height);
    this.overlay.dataset.state = "empty";
  }

  // pred: {width, height, data: Uint8Array}; palette: value -> [r, g, b] or null for the uncertainty ramp
  setOverlay(pred, palette, version) {
    if (pred.width !== this.overlay.width || pred.height !== this.overlay.height) return;
    const ctx = this.overlay.getContext("2d");
    const out = ctx.createImageData(pred.width, pred.height);
    const px = out.data;
    const src = pred.data;
    if (palette) {
      const lut = new Uint8Array(256 * 4);
      for (const [value, rgb] of Object.entries(palette)) lut.set([...rgb, 255], Number(value) * 4);
      for (let i = 0, j = 0; i < src.length; i += 1, j += 4) {
        const k = src[i] * 4;
        px[j] = lut[k]; px[j + 1] = lut[k + 1]; px[j + 2] = lut[k + 2]; px[j + 3] = lut[k + 3];
      }
    } else {
      for (let i = 0, j = 0; i < src.length; i += 1, j += 4) {
        const u = src[i]; // 0 = certain, 255 = maximally unsure: dark blue -> yellow
        px[j] = u; px[j + 1] = Math.min(255, u * 0.85 + 20); px[j + 2] = 160 - (u * 0.6) | 0; px[j + 3] = 255;
      }
    }
    ctx.putImageData(out, 0, 0);
    this.overlay.dataset.state = "ready";
    this.overlay.dataset.version = String(version ?? "");
  }

  setOverlayOpacity(value) {
    this.overlay.style.opacity = String(value);
  }

  setOverlayVisible(visible) {
    this.overlay.style.visibility = visible ? "visible" : "hidden";
  }

  // Show the prediction on the left ``percent`` of the image only (swipe comparison).
  setSwipe(percent) {
    this.overlay.style.clipPath = percent >= 100 ? "" : `inset(0 ${100 - percent}% 0 0)`;
  }

  // The click tool's object (runs (row, x0, x1) in image pixels) and its clicks; null clears.
  setClickObject(runs, clicks, color) {
    let canvas = this.stage.querySelector("#clickmask");
    if (!canvas) {
      canvas = document.createElement("canvas");
      canvas.id = "clickmask";
      this.stage.append(canvas);
    }
    canvas.width = this.overlay.width;
    canvas.height = this.overlay.height;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(this.canvasScale, 0, 0, this.canvasScale, 0, 0);
    canvas.dataset.area = "0";
    canvas.dataset.clicks = JSON.stringify(runs ? clicks : []);  // the clicks this object answers (tests read it)
    if (!runs) return;
    ctx.fillStyle = color;
    ctx.globalAlpha = 0.55;
    let area = 0;
    for (const [y, x0, x1] of runs) {
      ctx.fillRect(x0, y, x1 - x0, 1);
      area += x1 - x0;
    }
    ctx.globalAlpha = 1;
    for (const c of clicks) {
      ctx.beginPath();
      ctx.arc(c.x + 0.5, c.y + 0.5, Math.max(2, 4 / this.scale), 0, 2 * Math.PI);
      ctx.fillStyle = c.positive ? "#22c55e" : "#ef4444";
      ctx.fill();
    }
    canvas.dataset.area = String(area);
  }

  // Outline regions [{x, y, width, height, score}] in image pixels (null clears).
  setRegions(regions) {
    const box = this.stage.querySelector("#regions");
    box.innerHTML = "";
    for (const [k, r] of (regions || []).entries()) {
      const el = document.createElement("div");
      el.className = "region";
      Object.assign(el.style, { left: `${r.x}px`, top: `${r.y}px`, width: `${r.width}px`, height: `${r.height}px`,
        borderWidth: `${Math.max(1, 2 / this.scale)}px` });
      el.title = `#${k + 1}: mean uncertainty ${r.score.toFixed(2)}`;
      el.textContent = String(k + 1);
      box.append(el);
    }
  }
}

export function isTyping(e) {
  const t = e.target;
  return t && (t.tagName === "INPUT" && !["checkbox", "radio", "range"].includes(t.type) || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
}
