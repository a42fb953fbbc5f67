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
    this.panning = null;
    this.spaceDown = false;
    this.bind();
  }

  hasImage() {
    return this.width > 0;
  }

  async setImage(url, width, height) {
    this.width = width;
    this.height = height;
    for (const canvas of [this.overlay, this.scribbles]) {
      canvas.width = width;
      canvas.height = height;
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

  clear() {
    this.width = this.height = 0;
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
    if (e.button === 1 || e.button === 2 || (e.button === 0 && this.spaceDown)) {
      this.panning = { x: e.clientX, y: e.clientY, tx: this.tx, ty: this.ty };
      this.viewport.setPointerCapture(e.pointerId);
      this.viewport.classList.add("panning");
      return;
    }
    if (e.button !== 0) return;
    const brush = this.hooks.brush();
    if (!brush) return;
    this.viewport.setPointerCapture(e.pointerId);
    const [x, y] = this.toImage(e);
    this.current = { ...brush, points: [[x, y]] };
    this.drawSegment(this.current, [x, y], [x, y]);
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
    const last = this.current.points[this.current.points.length - 1];
    if (Math.hypot(x - last[0], y - last[1]) < 0.5) return;
    this.current.points.push([x, y]);
    this.drawSegment(this.current, last, [x, y]);
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
    ctx.beginPath();
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
    if (pred.width !== this.width || pred.height !== this.height) return;
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
}

export function isTyping(e) {
  const t = e.target;
  return t && (t.tagName === "INPUT" && !["checkbox", "radio", "range"].includes(t.type) || t.tagName === "SELECT" || t.tagName === "TEXTAREA");
}
