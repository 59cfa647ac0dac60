// medcm's study viewer: Cornerstone3D (the rendering and tools OHIF is built on) over pixels the server
// already decoded. The server (ui/viewer_route.py) serves, to a logged-in reader only:
//   GET /medcm/viewer/<study>/<series>          -> JSON: frames, start (the middle slice), modality, label,
//                                                  kind ("slice"/"frame"), presets, frame_time_ms
//   GET /medcm/viewer/<study>/<series>/<frame>  -> uint32 LE header length, JSON header (rows, columns,
//                                                  dtype, samples, window, invert, spacing, orientation),
//                                                  padding to 8 bytes, raw little-endian pixels
// The page tells the viewer what to show through #viewer-source's data-src (set by the server's handlers).
import {
  Enums, RenderingEngine, getRenderingEngine, imageLoader, init as coreInit, metaData, setUseCPURendering,
  utilities as csUtils,
} from "@cornerstonejs/core";
import {
  Enums as ToolEnums, PanTool, StackScrollTool, ToolGroupManager, WindowLevelTool, ZoomTool, addTool,
  init as toolsInit,
} from "@cornerstonejs/tools";
import { compareGo, compareState, watchCompare } from "./compare.js";

const ENGINE_ID = "medcm-engine";
const VIEWPORT_ID = "medcm-viewport";
const TOOL_GROUP_ID = "medcm-tools";
const SCHEME = "medcm";
const meta = new Map(); // imageId -> {pixel, plane, voi, series}
const DTYPES = { int16: Int16Array, float32: Float32Array, uint8: Uint8Array, uint16: Uint16Array };
const state = { src: null, series: null, cine: null, ready: null, sentence: null };

function frameUrl(imageId) {
  return imageId.slice(SCHEME.length + 1);
}

function parseFrame(buffer) {
  const view = new DataView(buffer);
  const length = view.getUint32(0, true);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
  const start = Math.ceil((4 + length) / 8) * 8;
  const Typed = DTYPES[header.dtype];
  if (!Typed) throw new Error(`frame dtype ${header.dtype}: expected one of ${Object.keys(DTYPES)}`);
  const count = header.rows * header.columns * header.samples;
  return { header, data: new Typed(buffer, start, count) };
}

function makeImage(imageId, header, data) {
  const { rows, columns, samples } = header;
  const colour = samples === 3;
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < data.length; i++) { const v = data[i]; if (v < min) min = v; if (v > max) max = v; }
  const [center, width] = header.window;
  const [rowSpacing, colSpacing] = header.spacing || [1, 1];
  const orientation = header.orientation || [1, 0, 0, 0, 1, 0];
  meta.set(imageId, {
    imagePixelModule: {
      samplesPerPixel: samples, photometricInterpretation: colour ? "RGB" : (header.invert ? "MONOCHROME1" : "MONOCHROME2"),
      rows, columns, bitsAllocated: data.BYTES_PER_ELEMENT * 8, bitsStored: data.BYTES_PER_ELEMENT * 8,
      highBit: data.BYTES_PER_ELEMENT * 8 - 1, pixelRepresentation: data instanceof Int16Array ? 1 : 0,
    },
    imagePlaneModule: {
      rows, columns, imageOrientationPatient: orientation, rowCosines: orientation.slice(0, 3),
      columnCosines: orientation.slice(3, 6), imagePositionPatient: header.position || [0, 0, 0],
      pixelSpacing: [rowSpacing, colSpacing], rowPixelSpacing: rowSpacing, columnPixelSpacing: colSpacing,
      frameOfReferenceUID: "medcm",
    },
    voiLutModule: { windowCenter: [center], windowWidth: [width], voiLUTFunction: "LINEAR" },
    modalityLutModule: { rescaleSlope: 1, rescaleIntercept: 0 },
    generalSeriesModule: { modality: (state.series && state.series.modality) || "OT" },
    header,
  });
  const voxelManager = csUtils.VoxelManager.createImageVoxelManager({
    height: rows, width: columns, numberOfComponents: samples, scalarData: data, id: imageId,
  });
  return {
    imageId, rows, columns, height: rows, width: columns, color: colour, rgba: false, numberOfComponents: samples,
    minPixelValue: min, maxPixelValue: max, slope: 1, intercept: 0, windowCenter: center, windowWidth: width,
    voiLUTFunction: "LINEAR", invert: !!header.invert, rowPixelSpacing: rowSpacing, columnPixelSpacing: colSpacing,
    sizeInBytes: data.byteLength, getPixelData: () => data, voxelManager, dataType: data.constructor.name,
  };
}

function loadImage(imageId) {
  const promise = fetch(frameUrl(imageId), { credentials: "same-origin" }).then((response) => {
    if (!response.ok) return response.text().then((text) => { throw new Error(`${response.status}: ${text}`); });
    return response.arrayBuffer();
  }).then((buffer) => {
    const { header, data } = parseFrame(buffer);
    return makeImage(imageId, header, data);
  });
  return { promise };
}

function metadataProvider(type, imageId) {
  const found = meta.get(imageId);
  return found ? found[type] : undefined;
}

function hasWebGL() {
  try {
    const canvas = document.createElement("canvas");
    return !!(canvas.getContext("webgl2") || canvas.getContext("webgl"));
  } catch (err) {
    return false;
  }
}

async function setupOnce() {
  await coreInit();
  if (!hasWebGL()) setUseCPURendering(true); // headless browsers and remote desktops without a GPU
  toolsInit();
  imageLoader.registerImageLoader(SCHEME, loadImage);
  metaData.addProvider(metadataProvider, 10000);
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) addTool(tool);
  document.addEventListener("keydown", onPageKey, true);
  document.addEventListener("fullscreenchange", onFullscreen);
  setInterval(watchSource, 200);
}

function attach(element) {
  // A new engine on `element` (Gradio may re-create the viewer's elements, e.g. after a tab switch).
  const old = getRenderingEngine(ENGINE_ID);
  if (old) old.destroy();
  if (ToolGroupManager.getToolGroup(TOOL_GROUP_ID)) ToolGroupManager.destroyToolGroup(TOOL_GROUP_ID);
  const engine = new RenderingEngine(ENGINE_ID);
  engine.enableElement({ viewportId: VIEWPORT_ID, type: Enums.ViewportType.STACK, element,
                         defaultOptions: { background: [0, 0, 0] } });
  const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) group.addTool(tool.toolName);
  const { MouseBindings, KeyboardBindings } = ToolEnums;
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary },
                                                     { mouseButton: MouseBindings.Primary, modifierKey: KeyboardBindings.Ctrl }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary },
                                                      { mouseButton: MouseBindings.Primary, modifierKey: KeyboardBindings.Shift }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  group.addViewport(VIEWPORT_ID, ENGINE_ID);
  element.addEventListener("contextmenu", (event) => event.preventDefault());
  element.addEventListener(Enums.Events.IMAGE_RENDERED, updateOverlay);
  new ResizeObserver(() => { engine.resize(true, true); }).observe(element);
  const root = document.getElementById("medcm-viewer");
  root.addEventListener("keydown", onViewerKey);
  document.getElementById("medcm-cine").addEventListener("click", toggleCine);
  document.getElementById("medcm-full").addEventListener("click", toggleFullscreen);
  document.getElementById("medcm-reset").addEventListener("click", resetView);
  document.getElementById("medcm-slider").addEventListener("input", (e) => goTo(Number(e.target.value)));
  element.addEventListener("mousedown", () => root.focus({ preventScroll: true }));
  element.addEventListener("wheel", () => root.focus({ preventScroll: true }), { passive: true });
  root.dataset.ready = "1";
  if (state.src) show(state.src).catch((err) => text("medcm-ov-series", `viewer error: ${err.message}`));
}

function viewport() {
  const engine = getRenderingEngine(ENGINE_ID);
  return engine ? engine.getViewport(VIEWPORT_ID) : null;
}

// ------------------------------------------------------------------------------------------- overlay
const AXES = [["L", "R"], ["P", "A"], ["H", "F"]]; // patient +x is left, +y posterior, +z head

function directionLetters(vector) {
  // The letters a direction points towards, strongest axis first (e.g. "LP"), ignoring axes under 0.25.
  return [0, 1, 2].filter((i) => Math.abs(vector[i]) >= 0.25)
    .sort((a, b) => Math.abs(vector[b]) - Math.abs(vector[a]))
    .map((i) => (vector[i] > 0 ? AXES[i][0] : AXES[i][1])).join("");
}

const OPPOSITE = { L: "R", R: "L", A: "P", P: "A", H: "F", F: "H" };

function orientationMarkers(series) {
  // From ImageOrientationPatient (cross-sectional images), else PatientOrientation (projection images).
  if (series.orientation) {
    const row = series.orientation.slice(0, 3), column = series.orientation.slice(3, 6);
    const negate = (v) => v.map((x) => -x);
    return { right: directionLetters(row), left: directionLetters(negate(row)),
             bottom: directionLetters(column), top: directionLetters(negate(column)) };
  }
  if (series.patientOrientation) {
    const [row, column] = series.patientOrientation;
    const flip = (letters) => [...letters].map((c) => OPPOSITE[c] || "").join("");
    return { right: row, left: flip(row), bottom: column, top: flip(column) };
  }
  return { left: "", right: "", top: "", bottom: "" };
}

function text(id, value) {
  const node = document.getElementById(id);
  if (node && node.textContent !== value) node.textContent = value;
}

function updateOverlay() {
  const vp = viewport();
  const series = state.series;
  if (!vp || !series) return;
  const index = vp.getCurrentImageIdIndex();
  const imageId = vp.getCurrentImageId();
  const found = meta.get(imageId);
  const what = series.kind === "slice" ? "Slice" : "Frame";
  text("medcm-ov-frame", `${what} ${index + 1} / ${series.frames}`);
  const { voiRange } = vp.getProperties();
  if (voiRange && found && found.imagePixelModule.samplesPerPixel === 1) {
    const { windowWidth, windowCenter } = csUtils.windowLevel.toWindowLevel(voiRange.lower, voiRange.upper);
    text("medcm-ov-wl", `W ${Math.round(windowWidth)} L ${Math.round(windowCenter)}`);
  } else {
    text("medcm-ov-wl", found && found.imagePixelModule.samplesPerPixel === 3 ? "colour" : "");
  }
  text("medcm-ov-zoom", `zoom ${vp.getZoom().toFixed(2)}`);
  text("medcm-ov-series", `${series.modality} · ${series.label}`);
  const markers = orientationMarkers(series);
  for (const side of ["left", "right", "top", "bottom"]) text(`medcm-ov-${side}`, markers[side]);
  const slider = document.getElementById("medcm-slider");
  if (slider && Number(slider.value) !== index) slider.value = String(index);
  const root = document.getElementById("medcm-viewer");
  if (root) {
    root.dataset.index = String(index);
    root.dataset.rendered = imageId;
  }
}

// ------------------------------------------------------------------------------------------ controls
function go(delta) {
  const vp = viewport();
  if (!vp || !state.series) return;
  const last = state.series.frames - 1;
  const next = Math.min(Math.max(vp.getCurrentImageIdIndex() + delta, 0), last);
  return vp.setImageIdIndex(next);
}

function goTo(index) {
  const vp = viewport();
  if (vp && state.series) return vp.setImageIdIndex(Math.min(Math.max(index, 0), state.series.frames - 1));
}

function applyPreset(name) {
  const vp = viewport();
  const series = state.series;
  if (!vp || !series) return;
  if (name === "default") {
    vp.resetProperties();
  } else {
    const window = series.presets[name];
    if (!window) return;
    vp.setProperties({ voiRange: csUtils.windowLevel.toLowHighRange(window[1], window[0]) });
  }
  vp.render();
}

function toggleCine() {
  const button = document.getElementById("medcm-cine");
  if (state.cine) {
    clearInterval(state.cine);
    state.cine = null;
  } else if (state.series && state.series.frames > 1) {
    const ms = Math.max(state.series.frame_time_ms || 66, 20);
    state.cine = setInterval(() => {
      const vp = viewport();
      if (!vp) return;
      const next = (vp.getCurrentImageIdIndex() + 1) % state.series.frames;
      vp.setImageIdIndex(next);
    }, ms);
  }
  if (button) button.textContent = state.cine ? "❚❚ stop" : "▶ cine";
}

function nativeZoom(vp) {
  // The zoom at which one image pixel is one screen pixel (zoom 1 fits the image to the canvas): a film
  // larger than the screen is shown 1:1 (pan to see the rest), a smaller image fills the screen.
  const image = vp.getCornerstoneImage ? vp.getCornerstoneImage() : null;
  const canvas = vp.getCanvas();
  if (!image) return 1;
  const fit = Math.min(canvas.clientWidth / image.columns, canvas.clientHeight / image.rows);
  return 1 / (fit * window.devicePixelRatio);
}

function toggleFullscreen() {
  const root = document.getElementById("medcm-viewer");
  if (!root) return;
  if (document.fullscreenElement) document.exitFullscreen();
  else root.requestFullscreen().catch(() => {});
}

function onFullscreen() {
  const engine = getRenderingEngine(ENGINE_ID);
  if (!engine) return;
  setTimeout(() => {
    engine.resize(true, false);
    const vp = viewport();
    if (!vp) return;
    if (document.fullscreenElement) vp.setZoom(Math.max(1, nativeZoom(vp)));  // 1:1, or fit if smaller
    else vp.resetCamera();
    vp.render();
  }, 50);
}

function resetView() {
  const vp = viewport();
  if (!vp) return;
  vp.resetCamera();
  vp.resetProperties();
  vp.render();
}

const KEYS = {
  ArrowUp: () => go(-1), ArrowLeft: () => go(-1), ArrowDown: () => go(1), ArrowRight: () => go(1),
  PageUp: () => go(-10), PageDown: () => go(10), Home: () => goTo(0),
  End: () => state.series && goTo(state.series.frames - 1), c: toggleCine, " ": toggleCine, f: toggleFullscreen,
  r: resetView, 0: () => applyPreset("default"),
};

function onViewerKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const names = state.series ? Object.keys(state.series.presets) : [];
  const digit = Number(event.key);
  if (Number.isInteger(digit) && digit >= 1 && digit <= names.length) {
    applyPreset(names[digit - 1]);
    event.preventDefault();
    return;
  }
  const action = KEYS[event.key];
  if (action) {
    action();
    event.preventDefault();
  }
}

// The page's own shortcuts (listed in the app's "Keyboard shortcuts"): draft sentences, save, sign.
function click(selector) {
  const node = document.querySelector(selector);
  if (node && !node.disabled) node.click();
}

function selectSentence(delta) {
  const panel = document.getElementById("provenance-panel");
  const toggle = panel && panel.querySelector(".label-wrap");
  if (toggle && !toggle.classList.contains("open")) toggle.click();
  let tries = 0;
  const pick = () => {  // the table's rows appear once the accordion has opened
    const rows = document.querySelectorAll("#provenance .virtual-row");  // Gradio 6's table: one per sentence
    if (!rows.length) {
      if (++tries < 30) setTimeout(pick, 100);
      return;
    }
    state.sentence = Math.min(Math.max((state.sentence ?? -1) + delta, 0), rows.length - 1);
    const cell = document.querySelector(`#provenance .body-cell[data-row="${state.sentence}"][data-col="2"]`);
    if (!cell) return;
    cell.scrollIntoView({ block: "nearest" });
    for (const type of ["pointerdown", "mousedown", "pointerup", "mouseup", "click"]) {  // as a real click
      const Event = type.startsWith("pointer") ? PointerEvent : MouseEvent;
      cell.dispatchEvent(new Event(type, { bubbles: true, cancelable: true, button: 0, view: window }));
    }
  };
  pick();
}

function onPageKey(event) {
  if (event.altKey && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
    selectSentence(event.key === "ArrowDown" ? 1 : -1);
  } else if ((event.ctrlKey || event.metaKey) && event.key.toLowerCase() === "s") {
    click("#save-draft");
  } else if ((event.ctrlKey || event.metaKey) && event.key === "Enter") {
    click("#sign");
  } else {
    return;
  }
  event.preventDefault();
}

function renderToolbar(series) {
  const bar = document.getElementById("medcm-presets");
  if (!bar) return;
  bar.replaceChildren();
  const names = ["default", ...Object.keys(series.presets)];
  names.forEach((name, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "medcm-btn";
    button.dataset.preset = name;
    button.textContent = i === 0 ? "0 default" : `${i} ${name}`;
    button.title = name === "default" ? "the file's own window (key 0)" : `window ${series.presets[name].join(" / ")} (key ${i})`;
    button.addEventListener("click", () => applyPreset(name));
    bar.appendChild(button);
  });
  const slider = document.getElementById("medcm-slider");
  if (slider) {
    slider.max = String(Math.max(series.frames - 1, 0));
    slider.value = String(series.start);
    slider.disabled = series.frames < 2;
  }
  const cine = document.getElementById("medcm-cine");
  if (cine) cine.disabled = series.frames < 2;
}

// ------------------------------------------------------------------------------------------- loading
async function show(src) {
  state.sentence = null;
  if (state.cine) toggleCine();
  const root = document.getElementById("medcm-viewer");
  const response = await fetch(src, { credentials: "same-origin" });
  if (!response.ok) {
    text("medcm-ov-series", `cannot load the study: ${response.status} ${await response.text()}`);
    return;
  }
  const series = await response.json();
  series.orientation = null;
  series.patientOrientation = null;
  state.series = series;
  const imageIds = Array.from({ length: series.frames }, (_, i) => `${SCHEME}:${src}/${i}`);
  renderToolbar(series);
  const vp = viewport();
  await vp.setStack(imageIds, series.start);
  const first = meta.get(imageIds[series.start]);
  series.orientation = first && first.header.orientation;
  series.patientOrientation = first && first.header.patient_orientation;
  vp.resetCamera();
  vp.render();
  if (root) root.dataset.src = src;
  updateOverlay();
}

function watchSource() {
  watchCompare();
  const node = document.querySelector("#viewer-source [data-src]");
  const src = node ? node.dataset.src : "";
  if (src && src !== state.src) {
    state.src = src;
    show(src).catch((err) => text("medcm-ov-series", `viewer error: ${err.message}`));
  }
}

function mount() {
  const element = document.getElementById("medcm-viewport");
  if (!element || element.dataset.mounted) return;
  element.dataset.mounted = "1";
  const first = !state.ready;
  state.ready = (state.ready || Promise.resolve()).then(() => (first ? setupOnce() : null)).then(() => attach(element));
}

// Gradio renders the page after this script runs (and may render the viewer again): mount whenever a
// viewer element without an engine appears.
mount();
new MutationObserver(mount).observe(document.documentElement, { childList: true, subtree: true });
window.medcmViewer = { go, goTo, applyPreset, toggleCine, toggleFullscreen, resetView, state,
                       compare: { go: compareGo, state: compareState } };
