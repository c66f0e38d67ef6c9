// accsmooth's page: pick an image, POST /certify, draw the radius against sigma; on demand,
// POST /certify/sampled (the Monte-Carlo audit) and show whether it agrees. No build step.
"use strict";

const AUDIT_N = 2000; // a modest n: seconds, not minutes, on a CPU
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { model: null, image: null, name: null };

function headers() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

// every ready bundle in the picker, with its noise level and the largest radius CERTIFY can give
// at its n (a larger sigma reaches larger radii, at some clean accuracy)
async function listModels() {
  try {
    const list = await (await fetch("/models")).json();
    const select = $("model-select");
    for (const m of list.models.filter((m) => m.status === "ready")) {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = `${m.name} · sigma ${m.sigma} · radius up to ${m.max_certifiable_radius.toFixed(2)}`;
      option.selected = m.name === list.default;
      select.append(option);
    }
    await loadModel(list.default);
  } catch (err) {
    $("model-info").textContent = `could not read /models: ${err}`;
  }
}

async function loadModel(name) {
  try {
    state.model = await (await fetch(`/models/${encodeURIComponent(name)}`)).json();
    const m = state.model;
    const cal = m.calibration ? `calibrated (epsilon ${m.calibration.epsilon})` : "uncalibrated";
    const drift = m.drift && m.drift.drifting ? " · DRIFTING" : "";
    $("model-info").textContent = `model ${m.name} ${m.version} · sigma ${m.sigma} · ` +
      `${m.classes.length} classes · ${cal}${drift}`;
  } catch (err) {
    $("model-info").textContent = `could not read /models: ${err}`;
  }
}

// samples.json (written by `python -m exporter.samples` from the default bundle's evaluation
// images): a clear certificate first, then a small one and an abstention, each with a caption.
async function showSamples() {
  let samples = [];
  try {
    samples = await (await fetch("/static/samples/samples.json")).json();
  } catch (err) {
    $("samples").textContent = `could not read the samples: ${err}`;
    return;
  }
  for (const sample of samples) {
    const figure = document.createElement("figure");
    figure.className = "sample-item";
    const button = document.createElement("button");
    button.className = "sample";
    button.dataset.name = sample.file.replace(/\.png$/, "");
    button.title = sample.caption;
    const img = document.createElement("img");
    img.src = `/static/samples/${sample.file}`;
    img.alt = sample.caption;
    button.appendChild(img);
    button.addEventListener("click", async () => {
      const blob = await (await fetch(`/static/samples/${sample.file}`)).blob();
      choose(blob, sample.file, button);
    });
    const caption = document.createElement("figcaption");
    caption.textContent = sample.kind === "abstains" ? "abstains" :
      `${sample.kind === "clear" ? "clear" : "small"} · r ${sample.radius.toFixed(2)}`;
    figure.append(button, caption);
    $("samples").appendChild(figure);
  }
}

function choose(blob, name, button = null) {
  document.querySelectorAll(".sample").forEach((b) => b.classList.toggle("chosen", b === button));
  state.image = blob;
  state.name = name;
  $("preview").src = URL.createObjectURL(blob);
  $("preview").hidden = false;
  $("audit-result").hidden = true;
  certify();
}

function form() {
  const data = new FormData();
  data.append("image", state.image, state.name);
  return data;
}

async function post(path, params) {
  const query = new URLSearchParams({ model: state.model.name, ...params });
  const started = performance.now();
  const response = await fetch(`${path}?${query}`, { method: "POST", body: form(), headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(`${response.status} ${body.error}: ${body.detail}`);
  return [body, performance.now() - started];
}

async function certify() {
  if (!state.model || !state.image) return;
  $("status").textContent = "certifying…";
  const params = { mode: $("mode").value, calibrated: $("calibrated").checked };
  try {
    const [c, roundTrip] = await post("/certify", params);
    $("result-label").textContent = c.abstained ? "abstained" : c.label;
    const extra = c.method === "monte_carlo" ? ` (n = ${c.n}, ${c.reason})` : c.reason ? ` (${c.reason})` : "";
    $("result-method").textContent = `answered by: ${c.method}${extra}`;
    $("result-radius").textContent = `${c.certified_radius.toFixed(3)} = ` +
      `${(c.certified_radius / c.sigma).toFixed(2)} sigma`;
    $("result-p").textContent = `${c.p_a.toFixed(4)} / ${c.p_a_lower.toFixed(4)}`;
    $("result-latency").textContent = `${c.latency_ms.toFixed(2)} ms / ${roundTrip.toFixed(1)} ms`;
    drawRadius(c.certified_radius, c.sigma);
    $("status").textContent = "";
    $("audit-button").disabled = false;
  } catch (err) {
    $("status").textContent = String(err.message || err);
  }
}

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// Left: the certified L2 ball against a ball of radius sigma. Right: the radius on an axis
// in units of sigma.
function drawRadius(radius, sigma) {
  const svg = $("radius-plot");
  svg.replaceChildren();
  const scale = 55 / Math.max(radius, sigma);
  svg.append(el("circle", { cx: 70, cy: 70, r: sigma * scale, fill: "none", stroke: "#667085",
    "stroke-dasharray": "4 3" }));
  svg.append(el("circle", { cx: 70, cy: 70, r: Math.max(radius * scale, 0.5), fill: "#2f6fde55",
    stroke: "#2f6fde" }));
  svg.append(el("circle", { cx: 70, cy: 70, r: 2.5, fill: "#1d2430" }));
  svg.append(el("text", { x: 70, y: 143, "text-anchor": "middle", "font-size": 11 },
    "R (filled) vs σ (dashed)"));
  const x0 = 150, width = 195, top = 50;
  const max = Math.max(4 * sigma, radius * 1.1);
  const x = (v) => x0 + (v / max) * width;
  svg.append(el("rect", { x: x0, y: top, width: x(radius) - x0, height: 24, fill: "#2f6fde" }));
  svg.append(el("line", { x1: x0, y1: top + 30, x2: x0 + width, y2: top + 30, stroke: "#1d2430" }));
  for (let k = 0; k * sigma <= max + 1e-9; k++) {
    svg.append(el("line", { x1: x(k * sigma), y1: top + 27, x2: x(k * sigma), y2: top + 33,
      stroke: "#1d2430" }));
    svg.append(el("text", { x: x(k * sigma), y: top + 46, "text-anchor": "middle", "font-size": 11 },
      k === 0 ? "0" : `${k}σ`));
  }
  svg.append(el("line", { x1: x(sigma), y1: top - 8, x2: x(sigma), y2: top + 30, stroke: "#c23b3b",
    "stroke-dasharray": "3 2" }));
  svg.append(el("text", { x: x(sigma), y: top - 12, "text-anchor": "middle", "font-size": 11,
    fill: "#c23b3b" }, `σ = ${sigma}`));
  svg.append(el("text", { x: x0, y: top + 66, "font-size": 12 },
    `R = ${radius.toFixed(3)} (${(radius / sigma).toFixed(2)} σ)`));
}

async function audit() {
  $("audit-button").disabled = true;
  $("status").textContent = `running CERTIFY with n = ${AUDIT_N}…`;
  try {
    const [a] = await post("/certify/sampled", { n: AUDIT_N, calibrated: $("calibrated").checked });
    $("audit-label").textContent = a.abstained ? "abstained" : a.label;
    $("audit-radius").textContent = a.certified_radius.toFixed(3);
    const g = a.agreement;
    const verdict = g.overestimated ? "surrogate OVER-ESTIMATES" : "surrogate within Monte-Carlo";
    $("audit-agreement").innerHTML = `<span class="${g.overestimated ? "warn" : "good"}">` +
      `${g.same_class ? "same class" : a.surrogate.abstained ? "surrogate abstained" : "different class"}` +
      `, ${verdict}</span>` +
      ` (radius gap ${g.radius_gap >= 0 ? "+" : ""}${g.radius_gap.toFixed(3)})`;
    $("audit-latency").textContent = `${(a.latency_ms / 1000).toFixed(2)} s, ` +
      `${Math.round(a.samples_per_second).toLocaleString()} samples/s`;
    $("audit-result").hidden = false;
    $("status").textContent = "";
  } catch (err) {
    $("status").textContent = String(err.message || err);
  }
  $("audit-button").disabled = false;
}

function wireDropZone() {
  const zone = $("drop-zone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) choose(file, file.name);
  });
  $("file-input").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) choose(file, file.name);
  });
}

$("audit-n").textContent = AUDIT_N.toLocaleString();
$("audit-button").addEventListener("click", audit);
$("mode").addEventListener("change", certify);
$("model-select").addEventListener("change", async (e) => {
  await loadModel(e.target.value);
  certify();
});
$("calibrated").addEventListener("change", certify);
wireDropZone();
showSamples();
listModels();
