// eis-hil view: the page. Plain JavaScript and SVG, no library, no build step.
// It receives "hello" and then "update" messages over /ws (hil_server/view/state.py builds them), keeps
// what is incremental (history, spectra, faults), and draws at most once per animation frame.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const SPECTRA_KEPT = 5;
const REPLIES_KEPT = 20; // the answers to this page's last commands, newest first
const QUANTITIES = {
  voltage: { key: "voltage_uV", scale: 1e-6, unit: "V", digits: 4, cellDigits: 3, spread: [1e3, "mV", 1] },
  temperature: { key: "temperature_mdegC", scale: 1e-3, unit: "C", digits: 2, cellDigits: 1, spread: [1, "K", 2] },
  soc: { key: "soc_ppm", scale: 1e-4, unit: "%", digits: 2, cellDigits: 1, spread: [1, "%", 2] },
  soh: { key: "soh_ppm", scale: 1e-4, unit: "%", digits: 2, cellDigits: 1, spread: [1, "%", 2] },
};
const FLAG_LETTERS = [[1, "F"], [2, "M"], [4, "L"], [8, "H"], [16, "I"], [32, "T"], [64, "X"]];
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];

// Everything the page knows; also what the browser tests read.
const view = {
  hello: null, latest: null, cell: 0, spectra: [], history: null, faults: [], summary: {},
  lagSamples: [], renders: 0, shown: null, scheduled: false, ws: null, nextId: 1,
  dirty: { spectra: true, history: true, faults: true, layout: true },
};
window.eisView = view;

const $ = (id) => document.getElementById(id);

function svgEl(parent, name, attrs, text) {
  const el = document.createElementNS(SVGNS, name);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  parent.appendChild(el);
  return el;
}

function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
}

function flagLetters(flags) {
  return FLAG_LETTERS.filter(([bit]) => flags & bit).map(([, l]) => l).join("") || "-";
}

function fmt(value, digits) {
  return value === null || value === undefined || !isFinite(value) ? "-" : value.toFixed(digits);
}

function freqLabel(f) {
  if (f >= 1e3) return `${+(f / 1e3).toPrecision(3)} kHz`;
  if (f >= 1) return `${+f.toPrecision(3)} Hz`;
  return `${+(f * 1e3).toPrecision(3)} mHz`;
}

function colour(frac) {
  const x = Math.min(1, Math.max(0, frac)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const t = x - i;
  const c = VIRIDIS[i].map((a, k) => Math.round(a + (VIRIDIS[i + 1][k] - a) * t));
  return { fill: `rgb(${c[0]},${c[1]},${c[2]})`, light: frac < 0.6 };
}

// "Nice" axis ticks: about n values at 1, 2 or 5 times a power of ten.
function ticks(lo, hi, n) {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

// -- the connection ----------------------------------------------------------------------------------------

function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  view.ws = ws;
  setConn("connecting", "");
  ws.onopen = () => setConn("live", "open");
  ws.onclose = () => {
    setConn("view disconnected: retrying", "closed");
    setTimeout(connect, 2000);
  };
  ws.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type === "hello") onHello(msg);
    else if (msg.type === "update") onUpdate(msg);
  };
}

function setConn(text, cls) {
  const el = $("conn");
  el.textContent = text;
  el.className = `conn ${cls}`;
}

function send(msg) {
  if (!view.ws || view.ws.readyState !== WebSocket.OPEN) return false;
  view.ws.send(JSON.stringify(msg));
  return true;
}

function onHello(msg) {
  view.hello = msg;
  view.cell = Math.min(view.cell, msg.cell_count - 1);
  view.spectra = [];
  view.history = null;
  $("scenario").textContent = `scenario ${msg.scenario}`;
  $("endpoint").textContent = `${msg.endpoint} (${msg.model}, server ${msg.server_version})`;
  $("cellcount").textContent = `${msg.cell_count} cell${msg.cell_count === 1 ? "" : "s"}`;
  $("controls-off").hidden = msg.controls;
  $("control-set").disabled = !msg.controls;
  const kinds = $("inject-kind");
  clear(kinds);
  for (const k of msg.fault_kinds) {
    const opt = document.createElement("option");
    opt.value = k;
    opt.textContent = k;
    kinds.appendChild(opt);
  }
  send({ type: "select", cell: view.cell });
  view.dirty.layout = true;
}

function onUpdate(msg) {
  const d = msg.detail;
  if (d.cell === view.cell) {
    if (d.history_reset || !view.history) view.history = d.history;
    else for (const k of Object.keys(d.history)) view.history[k].push(...d.history[k]);
    if (d.spectra.length) {
      view.spectra.push(...d.spectra);
      view.spectra = view.spectra.slice(-SPECTRA_KEPT);
      view.dirty.spectra = true;
    }
    view.dirty.history = true;
  }
  if (msg.faults) {
    view.faults = msg.faults;
    view.dirty.faults = true;
  }
  if (msg.spectrum_summary) view.summary = msg.spectrum_summary;
  for (const r of msg.replies || []) onReply(r);
  view.latest = msg;
  if (!view.scheduled) {
    view.scheduled = true;
    requestAnimationFrame(render);
  }
}

// -- drawing -----------------------------------------------------------------------------------------------

function render() {
  view.scheduled = false;
  const msg = view.latest;
  if (!msg || !view.hello) return;
  $("tsim").textContent = (msg.t_sim_us / 1e6).toFixed(1);
  $("tsim").dataset.tUs = msg.t_sim_us;
  $("step").textContent = msg.step;
  $("simstate").textContent = msg.sim_state || "-";
  renderDecimation(msg);
  const bye = $("bye");
  bye.hidden = !(msg.bye || msg.ended);
  bye.textContent = msg.bye ? `The stream ended: ${msg.bye}` : "The stream ended.";
  renderHeatmap(msg);
  renderDetail(msg);
  if (view.dirty.spectra) {
    renderNyquist();
    renderBode();
    view.dirty.spectra = false;
  }
  if (view.dirty.history) {
    renderHistory();
    view.dirty.history = false;
  }
  renderTimeline(msg);
  renderHealth(msg);
  if ($("table-details").open) renderTable(msg);
  const now = Date.now();
  if (msg.t_wall_us) {
    const lag = now - msg.t_wall_us / 1e3;
    view.lagSamples.push(lag);
    if (view.lagSamples.length > 100000) view.lagSamples.splice(0, 50000);
    $("lag").textContent = `${Math.round(lag)} ms`;
  }
  view.shown = { t_sim_us: msg.t_sim_us, t_wall_us: msg.t_wall_us, step: msg.step, at_ms: now };
  view.renders += 1;
}

function renderDecimation(msg) {
  const d = msg.decimation;
  const el = $("decimation");
  const parts = [];
  if (d.states > 1) {
    const rate = d.states_per_s ? `${Math.round(d.states_per_s)} state frames/s` : `${d.states} state frames`;
    parts.push(`Decimated on the server: ${rate} arrive, this page shows the latest of each batch ` +
      `(at most 10 updates/s).`);
  }
  if (d.history_stride > 1) parts.push(`The history keeps one state in ${d.history_stride}.`);
  el.textContent = parts.join(" ") || "Every state frame shown (no decimation).";
  el.className = parts.length ? "note active" : "note";
  el.dataset.decimated = parts.length ? "1" : "0";
}

function cellValue(msg, q, cell) {
  return msg.cells[q.key][cell] * q.scale;
}

function renderHeatmap(msg) {
  const n = view.hello.cell_count;
  const q = QUANTITIES[$("quantity").value];
  const svg = $("heatmap");
  const cols = n <= 12 ? n : Math.ceil(Math.sqrt(n * 1.5));
  const rows = Math.ceil(n / cols);
  const size = Math.min(64, 600 / cols);
  if (view.dirty.layout || svg.childElementCount !== n) {
    clear(svg);
    svg.setAttribute("viewBox", `0 0 ${cols * size} ${rows * size}`);
    for (let c = 0; c < n; c++) {
      const x = (c % cols) * size;
      const y = Math.floor(c / cols) * size;
      const g = svgEl(svg, "g", { class: "cell", "data-cell": c });
      svgEl(g, "rect", { x: x + 1, y: y + 1, width: size - 2, height: size - 2 });
      svgEl(g, "text", { class: "index", x: x + 4, y: y + 11 }, `${c}`);
      svgEl(g, "text", { class: "value", x: x + size / 2, y: y + size / 2 + 5, "text-anchor": "middle" });
      svgEl(g, "text", { class: "flag", x: x + size - 4, y: y + 11, "text-anchor": "end" });
      g.addEventListener("click", () => selectCell(c));
    }
    view.dirty.layout = false;
  }
  const seen = msg.cells.seen;
  const values = [];
  for (let c = 0; c < n; c++) if (seen[c]) values.push([cellValue(msg, q, c), c]);
  let lo = Infinity;
  let hi = -Infinity;
  for (const [v] of values) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  const faulted = new Set(msg.fault_cells);
  for (const g of svg.children) {
    const c = +g.dataset.cell;
    const [rect, , text, flag] = g.children;
    const flags = msg.cells.flags[c];
    g.setAttribute("class", `cell${c === view.cell ? " selected" : ""}${faulted.has(c) ? " fault" : ""}`);
    if (!seen[c]) {
      rect.setAttribute("fill", "#ddd");
      text.textContent = "-";
      continue;
    }
    const v = cellValue(msg, q, c);
    const col = colour(hi > lo ? (v - lo) / (hi - lo) : 0.5);
    rect.setAttribute("fill", col.fill);
    for (const t of g.children) if (t.tagName === "text") t.setAttribute("class", `${t.classList[0]}${col.light ? " light" : ""}`);
    text.textContent = v.toFixed(q.cellDigits);
    flag.textContent = flags ? flagLetters(flags) : "";
  }
  const stats = $("stats");
  if (!values.length) {
    stats.textContent = "no cell states yet";
    return;
  }
  const min = values.reduce((a, b) => (b[0] < a[0] ? b : a));
  const max = values.reduce((a, b) => (b[0] > a[0] ? b : a));
  const [mult, unit, digits] = q.spread;
  stats.textContent = `min ${min[0].toFixed(q.digits)} ${q.unit} (cell ${min[1]}), max ${max[0].toFixed(q.digits)} ` +
    `${q.unit} (cell ${max[1]}), spread ${((max[0] - min[0]) * mult).toFixed(digits)} ${unit}; ` +
    `${faulted.size} cell${faulted.size === 1 ? "" : "s"} with an active fault`;
}

function selectCell(c) {
  if (c === view.cell) return;
  view.cell = c;
  view.spectra = [];
  view.history = null;
  view.dirty.spectra = view.dirty.history = true;
  send({ type: "select", cell: c });
  if (view.latest) render();
}

function renderDetail(msg) {
  const c = view.cell;
  $("detail-title").textContent = `cell ${c}`;
  const cells = msg.cells;
  const seen = cells.seen[c];
  $("detail-voltage").textContent = seen ? `${(cells.voltage_uV[c] / 1e6).toFixed(4)} V` : "-";
  $("detail-current").textContent = seen ? `${(cells.current_uA[c] / 1e6).toFixed(3)} A` : "-";
  $("detail-temperature").textContent = seen ? `${(cells.temperature_mdegC[c] / 1e3).toFixed(2)} C` : "-";
  $("detail-soc").textContent = seen ? `${(cells.soc_ppm[c] / 1e4).toFixed(2)} %` : "-";
  $("detail-soh").textContent = seen ? `${(cells.soh_ppm[c] / 1e4).toFixed(2)} %` : "-";
  $("detail-flags").textContent = seen ? flagLetters(cells.flags[c]) : "-";
  const s = view.summary[c];
  $("detail-kk").textContent = s && s.kk_residual !== null ? `${(s.kk_residual * 100).toFixed(3)} %` : "-";
  const sweep = msg.sweeps[c];
  $("detail-spectrum").textContent = sweep ? `sweep ${sweep[0]}/${sweep[1]}` :
    s ? `#${view.spectra.length ? view.spectra[view.spectra.length - 1].spectrum_id : "?"} at ` +
      `${(s.t_sim_us / 1e6).toFixed(1)} s` : "none yet";
}

// A plot frame: margins, a data-to-pixel mapping per axis, axes with ticks.
function frame(svg, width, height, m, x, y, labels) {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const px = (v) => m.left + ((v - x.lo) / (x.hi - x.lo)) * (width - m.left - m.right);
  const py = (v) => height - m.bottom - ((v - y.lo) / (y.hi - y.lo)) * (height - m.top - m.bottom);
  const grid = svgEl(svg, "g", { class: "grid" });
  const axis = svgEl(svg, "g", { class: "axis" });
  for (const t of x.ticks) {
    svgEl(grid, "line", { x1: px(t), x2: px(t), y1: m.top, y2: height - m.bottom });
    svgEl(axis, "text", { x: px(t), y: height - m.bottom + 13, "text-anchor": "middle" }, x.format(t));
  }
  for (const t of y.ticks) {
    svgEl(grid, "line", { x1: m.left, x2: width - m.right, y1: py(t), y2: py(t) });
    svgEl(axis, "text", { x: m.left - 4, y: py(t) + 4, "text-anchor": "end" }, y.format(t));
  }
  svgEl(axis, "line", { x1: m.left, x2: width - m.right, y1: height - m.bottom, y2: height - m.bottom });
  svgEl(axis, "line", { x1: m.left, x2: m.left, y1: m.top, y2: height - m.bottom });
  if (labels) {
    svgEl(axis, "text", { x: (m.left + width - m.right) / 2, y: height - 3, "text-anchor": "middle" }, labels[0]);
    svgEl(axis, "text", { x: 10, y: (m.top + height - m.bottom) / 2, "text-anchor": "middle",
      transform: `rotate(-90 10 ${(m.top + height - m.bottom) / 2})` }, labels[1]);
  }
  return { px, py };
}

function polyline(svg, points, attrs) {
  // a null (NaN on the wire) breaks the line
  let run = [];
  const flush = () => {
    if (run.length > 1) svgEl(svg, "polyline", { ...attrs, points: run.join(" ") });
    run = [];
  };
  for (const p of points) {
    if (p === null) flush();
    else run.push(`${p[0].toFixed(1)},${p[1].toFixed(1)}`);
  }
  flush();
}

function spectrumPoints(s) {
  const out = [];
  for (let i = 0; i < s.freq_hz.length; i++) {
    const f = s.freq_hz[i];
    const re = s.z_re_ohm[i];
    const im = s.z_im_ohm[i];
    out.push(f === null || re === null || im === null ? null : { f, re: re * 1e3, im: -im * 1e3 });
  }
  return out;
}

function opacity(i, n) {
  return i === n - 1 ? 1 : 0.12 + (0.5 * (i + 1)) / n;
}

function renderNyquist() {
  const svg = $("nyquist");
  clear(svg);
  const W = 420;
  const H = 320;
  const m = { left: 50, right: 10, top: 10, bottom: 34 };
  const spectra = view.spectra.map(spectrumPoints);
  const pts = spectra.flat().filter((p) => p !== null);
  svg.dataset.points = spectra.length ? spectra[spectra.length - 1].filter((p) => p).length : 0;
  svg.dataset.spectra = spectra.length;
  if (!pts.length) {
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svgEl(svg, "text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no spectrum of this cell yet");
    return;
  }
  let xlo = Math.min(...pts.map((p) => p.re));
  let xhi = Math.max(...pts.map((p) => p.re));
  let ylo = Math.min(0, ...pts.map((p) => p.im));
  let yhi = Math.max(...pts.map((p) => p.im));
  const pad = 0.05 * Math.max(xhi - xlo, yhi - ylo, 1e-6);
  xlo -= pad; xhi += pad; ylo -= pad; yhi += pad;
  // equal aspect: one scale (px per mOhm) for both axes, the narrower range widened around its middle
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const scale = Math.min(pw / (xhi - xlo), ph / (yhi - ylo));
  const xc = (xlo + xhi) / 2;
  const yc = (ylo + yhi) / 2;
  const x = { lo: xc - pw / scale / 2, hi: xc + pw / scale / 2 };
  const y = { lo: yc - ph / scale / 2, hi: yc + ph / scale / 2 };
  x.ticks = ticks(x.lo, x.hi, 6);
  y.ticks = ticks(y.lo, y.hi, 5);
  x.format = y.format = (v) => `${+v.toPrecision(4)}`;
  const { px, py } = frame(svg, W, H, m, x, y, ["Re Z / mOhm", "-Im Z / mOhm"]);
  svg.dataset.scaleX = (px(1) - px(0)).toFixed(6);
  svg.dataset.scaleY = (py(0) - py(1)).toFixed(6);
  spectra.forEach((s, i) => {
    polyline(svg, s.map((p) => (p ? [px(p.re), py(p.im)] : null)), {
      class: i === spectra.length - 1 ? "spectrum latest" : "spectrum previous",
      opacity: opacity(i, spectra.length).toFixed(2),
    });
  });
  // decade markers on the latest spectrum, interpolated in log f
  const latest = spectra[spectra.length - 1].filter((p) => p !== null);
  const fs = latest.map((p) => p.f);
  const fmin = Math.min(...fs);
  const fmax = Math.max(...fs);
  for (let k = Math.ceil(Math.log10(fmin) - 1e-9); Math.pow(10, k) <= fmax * (1 + 1e-9); k++) {
    const f = Math.pow(10, k);
    const p = interpolate(latest, Math.log10(f));
    if (!p) continue;
    svgEl(svg, "circle", { class: "decade", cx: px(p.re), cy: py(p.im), r: 3.5, "data-freq": f });
    const right = px(p.re) > W - m.right - 50; // keep the label inside the plot
    svgEl(svg, "text", { class: "decade-label", x: px(p.re) + (right ? -5 : 5), y: py(p.im) - 5,
      "text-anchor": right ? "end" : "start" }, freqLabel(f));
  }
}

function interpolate(points, logf) {
  for (let i = 0; i + 1 < points.length; i++) {
    const a = Math.log10(points[i].f);
    const b = Math.log10(points[i + 1].f);
    if ((logf - a) * (logf - b) <= 0 && a !== b) {
      const t = (logf - a) / (b - a);
      return { re: points[i].re + t * (points[i + 1].re - points[i].re), im: points[i].im + t * (points[i + 1].im - points[i].im) };
    }
    if (a === logf) return points[i];
  }
  const last = points[points.length - 1];
  return last && Math.log10(last.f) === logf ? last : null;
}

function renderBode() {
  const svg = $("bode");
  clear(svg);
  const W = 420;
  const H = 320;
  const spectra = view.spectra.map(spectrumPoints);
  const pts = spectra.flat().filter((p) => p !== null);
  svg.dataset.points = spectra.length ? spectra[spectra.length - 1].filter((p) => p).length : 0;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  if (!pts.length) {
    svgEl(svg, "text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no spectrum of this cell yet");
    return;
  }
  const lf = pts.map((p) => Math.log10(p.f));
  const x = { lo: Math.min(...lf), hi: Math.max(...lf) };
  if (x.hi === x.lo) { x.lo -= 0.5; x.hi += 0.5; }
  x.ticks = ticks(Math.ceil(x.lo), Math.floor(x.hi), 8).filter((v) => Number.isInteger(v));
  x.format = (v) => freqLabel(Math.pow(10, v)).replace(" ", "");
  const mag = (p) => Math.hypot(p.re, p.im);
  const phase = (p) => (Math.atan2(p.im, p.re) * 180) / Math.PI; // -phase: capacitive is positive
  const panels = [
    { g: svgEl(svg, "g", {}), top: 0, value: mag, label: "|Z| / mOhm", cls: "spectrum magnitude" },
    { g: svgEl(svg, "g", {}), top: H / 2, value: phase, label: "-phase / deg", cls: "spectrum phase" },
  ];
  for (const panel of panels) {
    const vals = pts.map(panel.value);
    let lo = Math.min(...vals);
    let hi = Math.max(...vals);
    const pad = 0.08 * Math.max(hi - lo, 1e-6);
    const y = { lo: lo - pad, hi: hi + pad };
    y.ticks = ticks(y.lo, y.hi, 3);
    y.format = (v) => `${+v.toPrecision(3)}`;
    const sub = svgEl(panel.g, "svg", { x: 0, y: panel.top, width: W, height: H / 2 });
    const m = { left: 50, right: 10, top: 8, bottom: panel.top ? 30 : 18 };
    const { px, py } = frame(sub, W, H / 2, m, x, y, panel.top ? ["frequency", panel.label] : ["", panel.label]);
    spectra.forEach((s, i) => {
      polyline(sub, s.map((p) => (p ? [px(Math.log10(p.f)), py(panel.value(p))] : null)), {
        class: panel.cls, opacity: opacity(i, spectra.length).toFixed(2),
      });
    });
  }
}

function renderHistory() {
  const svg = $("history");
  clear(svg);
  const W = 860;
  const H = 300;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const h = view.history;
  if (!h || h.t_us.length < 2) {
    svgEl(svg, "text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for history");
    return;
  }
  const t = h.t_us.map((v) => v / 1e6);
  const x = { lo: t[0], hi: t[t.length - 1] };
  if (x.hi === x.lo) x.hi = x.lo + 1;
  x.ticks = ticks(x.lo, x.hi, 8);
  x.format = (v) => `${+v.toPrecision(6)} s`;
  const series = [
    ["V", h.voltage_uV, 1e-6],
    ["I / A", h.current_uA, 1e-6],
    ["T / C", h.temperature_mdegC, 1e-3],
    ["SOC / %", h.soc_ppm, 1e-4],
  ];
  const ph = H / series.length;
  series.forEach(([label, raw, scale], i) => {
    const v = raw.map((r) => r * scale);
    let lo = Math.min(...v);
    let hi = Math.max(...v);
    if (hi - lo < 1e-9) { lo -= 0.5 * Math.max(Math.abs(lo) * 1e-3, 1e-3); hi = lo + Math.max(Math.abs(lo) * 1e-3, 1e-3); }
    const y = { lo, hi, ticks: [lo, hi], format: (val) => `${+val.toPrecision(5)}` };
    const sub = svgEl(svg, "svg", { x: 0, y: i * ph, width: W, height: ph });
    const last = i === series.length - 1;
    const m = { left: 70, right: 10, top: 6, bottom: last ? 18 : 6 };
    const xi = last ? x : { ...x, format: () => "" };
    const { px, py } = frame(sub, W, ph, m, xi, y, null);
    svgEl(sub, "text", { x: 4, y: ph / 2 + 4 }, label);
    polyline(sub, v.map((val, k) => [px(t[k]), py(val)]), { class: "series" });
  });
}

function renderTimeline(msg) {
  const svg = $("timeline");
  const faults = view.faults;
  const empty = $("fault-empty");
  empty.hidden = faults.length > 0 && faults.length <= 40;
  empty.textContent = faults.length ? `The last 40 of ${faults.length} faults:` : "No fault event yet.";
  if (!faults.length) {
    clear(svg);
    svg.setAttribute("viewBox", "0 0 1000 1");
    return;
  }
  clear(svg);
  const shown = faults.slice(-40);
  const rowH = 18;
  const W = 1000;
  const H = shown.length * rowH + 24;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  const starts = shown.map((f) => f.t_start_us).filter((v) => v !== null);
  const ends = shown.map((f) => f.t_end_us).filter((v) => v !== null);
  const now = msg.t_sim_us;
  const lo = Math.min(now, ...starts, ...ends) / 1e6;
  let hi = Math.max(now, ...ends) / 1e6;
  if (hi <= lo) hi = lo + 1;
  const left = 330;
  const px = (s) => left + ((s - lo) / (hi - lo)) * (W - left - 10);
  const axis = svgEl(svg, "g", { class: "axis" });
  for (const t of ticks(lo, hi, 8)) {
    svgEl(axis, "text", { x: px(t), y: H - 4, "text-anchor": "middle" }, `${+t.toPrecision(6)} s`);
  }
  shown.forEach((f, i) => {
    const active = f.t_end_us === null;
    const g = svgEl(svg, "g", { class: `fault${active ? " active" : ""}`, "data-fault-id": f.fault_id });
    const y = i * rowH + 2;
    const a = f.t_start_us === null ? lo : f.t_start_us / 1e6;
    const b = active ? now / 1e6 : f.t_end_us / 1e6;
    const cells = f.cells.length ? `cells ${f.cells.join(",")}` : "all cells";
    const label = `#${f.fault_id} ${f.kind} ${cells} ${(f.severity_ppm / 1e4).toFixed(0)}%` +
      `${f.t_start_us === null ? " (started earlier)" : ""}`;
    svgEl(g, "text", { class: "label", x: 4, y: y + 12 }, label.length > 54 ? `${label.slice(0, 52)}..` : label);
    svgEl(g, "rect", { class: "bar", x: px(a), y, width: Math.max(2, px(b) - px(a)), height: rowH - 4 });
    const title = svgEl(g, "title", {});
    title.textContent = `${label}: ${a.toFixed(1)} s to ${active ? "now (active)" : `${b.toFixed(1)} s`}`;
  });
  svgEl(svg, "line", { class: "now", x1: px(now / 1e6), x2: px(now / 1e6), y1: 0, y2: H - 18 });
}

function ms(us) {
  return us === null || us === undefined ? "-" : `${(us / 1e3).toFixed(2)} ms`;
}

function renderHealth(msg) {
  const h = msg.health;
  const rows = [
    ["simulation", msg.sim_state || "-", false],
    ["server heartbeats", h.heartbeats, h.heartbeats === 0],
    ["lateness p50 / p99 / max", `${ms(h.lateness_p50_us)} / ${ms(h.lateness_p99_us)} / ${ms(h.lateness_max_us)}`, false],
    ["worst p99 / max", `${ms(h.worst_p99_us)} / ${ms(h.worst_max_us)}`, false],
    ["dropped by the server", h.frames_dropped, h.frames_dropped > 0],
    ["server queue depth", h.queue_depth, false],
    ["frames received", h.frames, false],
    ["sequence gaps", `${h.gaps} (lost ${h.lost}, late ${h.late}, duplicates ${h.duplicates})`, h.gaps > 0],
    ["bad frames", h.bad_frames, h.bad_frames > 0],
  ];
  const dl = $("health-list");
  if (dl.childElementCount !== rows.length * 2) {
    clear(dl);
    for (const [name] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      dl.appendChild(dt);
      dl.appendChild(document.createElement("dd"));
    }
  }
  rows.forEach(([, value, bad], i) => {
    const dd = dl.children[2 * i + 1];
    dd.textContent = `${value}`;
    dd.className = bad ? "bad" : "";
  });
}

function renderTable(msg) {
  const body = $("cells-table").tBodies[0];
  const n = view.hello.cell_count;
  while (body.rows.length < n) {
    const tr = body.insertRow();
    for (let k = 0; k < 11; k++) tr.insertCell();
  }
  const c = msg.cells;
  for (let i = 0; i < n; i++) {
    const s = view.summary[i];
    const z = (v, f) => (v === null || f === null ? "-" : `${v.toPrecision(4)}@${freqLabel(f).replace(" ", "")}`);
    const values = c.seen[i] ? [i, (c.voltage_uV[i] / 1e6).toFixed(4), (c.current_uA[i] / 1e6).toFixed(3),
      (c.temperature_mdegC[i] / 1e3).toFixed(2), (c.soc_ppm[i] / 1e4).toFixed(1), (c.soh_ppm[i] / 1e4).toFixed(1),
      flagLetters(c.flags[i])] : [i, "-", "-", "-", "-", "-", ""];
    if (s) {
      values.push(z(s.z_high_mohm, s.f_high_hz), z(s.z_low_mohm, s.f_low_hz),
        s.kk_residual === null ? "-" : (s.kk_residual * 100).toFixed(3),
        (Math.max(0, msg.t_sim_us - s.t_sim_us) / 1e6).toFixed(1));
    } else values.push("-", "-", "-", "-");
    values.forEach((v, k) => { body.rows[i].cells[k].textContent = `${v}`; });
  }
}

// -- controls ----------------------------------------------------------------------------------------------

function control(text) {
  const id = view.nextId++;
  const li = document.createElement("li");
  li.dataset.id = id;
  const replies = $("replies");
  replies.prepend(li);
  while (replies.childElementCount > REPLIES_KEPT) replies.lastElementChild.remove(); // a bench runs for hours
  const sent = send({ type: "control", id, text });
  li.textContent = sent ? `${text}: sent` : `${text}: not sent (the view is disconnected)`;
  if (!sent) li.className = "nak";
}

function onReply(r) {
  const li = document.querySelector(`#replies li[data-id="${r.id}"]`);
  if (!li) return;
  li.textContent = r.answer;
  li.className = r.ok ? "ack" : "nak";
}

function cellArg(text) {
  const t = text.trim();
  return t === "" || t === "all" ? "" : `@${t}`;
}

function setupControls() {
  $("pause").addEventListener("click", () => control("pause"));
  $("resume").addEventListener("click", () => control("resume"));
  $("seek").addEventListener("click", () => control(`seek=${$("seek-s").value || 0}`));
  $("inject").addEventListener("click", () => {
    const dur = $("inject-duration").value;
    control(`inject=${$("inject-kind").value}:${$("inject-severity").value || 0}%` +
      `${cellArg($("inject-cell").value)}${dur ? `/${dur}` : ""}`);
  });
  $("clear").addEventListener("click", () => control(`clear=${$("clear-id").value.trim() || "all"}`));
  $("spectrum").addEventListener("click", () => control(`spectrum${cellArg($("spectrum-cell").value)}`));
  $("quantity").addEventListener("change", () => view.latest && render());
  $("table-details").addEventListener("toggle", () => view.latest && render());
}

setupControls();
connect();
