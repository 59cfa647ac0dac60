// The prior comparison: the series on screen and a prior's, side by side in two Cornerstone3D stack
// viewports, their slices scrolled together. Images come through the same "medcm:" loader as the main
// viewer (viewer.js registers it). The page names the two series in #compare-source's data-current and
// data-prior (set by ui/priors.py). Linking maps one stack onto the other from where both stood when they
// were opened or linked: by distance in mm when both know their slice spacing, else by the fraction of
// the stack (e.g. two cine loops), so studies with different slice spacing stay level.
import { Enums, RenderingEngine, getRenderingEngine, utilities as csUtils } from "@cornerstonejs/core";
import {
  Enums as ToolEnums, PanTool, StackScrollTool, ToolGroupManager, WindowLevelTool, ZoomTool,
} from "@cornerstonejs/tools";

const ENGINE_ID = "medcm-compare-engine";
const TOOL_GROUP_ID = "medcm-compare-tools";
const PANES = ["current", "prior"];
const OTHER = { current: "prior", prior: "current" };
const cmp = { key: "", elements: [], series: {}, anchor: null, expect: {}, linked: true, focus: "current",
              loading: false };

function paneId(pane) {
  return `medcm-cmp-${pane}`; // the viewport's element id, and its viewport id
}

function setText(id, value) {
  const node = document.getElementById(id);
  if (node && node.textContent !== value) node.textContent = value;
}

function viewport(pane) {
  const engine = getRenderingEngine(ENGINE_ID);
  return engine ? engine.getViewport(paneId(pane)) : null;
}

/**
 * Where the other stack goes when one moves: from the anchor pair (fromAnchor, toAnchor), the same distance
 * in mm when both series know their slice spacing, else the same fraction of the stack; clamped to it.
 */
export function linkedIndex(index, from, to, fromAnchor, toAnchor) {
  let ratio = 1;
  if (from.slice_mm > 0 && to.slice_mm > 0) ratio = from.slice_mm / to.slice_mm;
  else if (from.frames > 1 && to.frames > 1) ratio = (to.frames - 1) / (from.frames - 1);
  const target = toAnchor + Math.round((index - fromAnchor) * ratio);
  return Math.min(Math.max(target, 0), to.frames - 1);
}

function overlay(pane) {
  const vp = viewport(pane);
  const series = cmp.series[pane];
  if (!vp || !series) return;
  const index = vp.getCurrentImageIdIndex();
  const what = series.kind === "slice" ? "Slice" : "Frame";
  const spacing = series.slice_mm ? ` · ${series.slice_mm.toFixed(1)} mm` : "";
  setText(`${paneId(pane)}-frame`, `${what} ${index + 1} / ${series.frames}${spacing}`);
  const { voiRange } = vp.getProperties();
  if (voiRange && !series.colour) {
    const { windowWidth, windowCenter } = csUtils.windowLevel.toWindowLevel(voiRange.lower, voiRange.upper);
    setText(`${paneId(pane)}-wl`, `W ${Math.round(windowWidth)} L ${Math.round(windowCenter)}`);
  } else {
    setText(`${paneId(pane)}-wl`, series.colour ? "colour" : "");
  }
  const element = document.getElementById(paneId(pane));
  if (element) element.dataset.index = String(index);
}

function onNewImage(pane, index) {
  overlay(pane);
  if (cmp.expect[pane] === index) { // the move this file made to follow the other pane
    delete cmp.expect[pane];
    return;
  }
  if (cmp.loading || !cmp.linked || !cmp.anchor) return;
  const other = OTHER[pane];
  const vp = viewport(other);
  if (!vp || !cmp.series[other]) return;
  const target = linkedIndex(index, cmp.series[pane], cmp.series[other], cmp.anchor[pane], cmp.anchor[other]);
  if (vp.getCurrentImageIdIndex() === target) return;
  cmp.expect[other] = target;
  vp.setImageIdIndex(target);
}

function anchorHere() {
  const current = viewport("current"), prior = viewport("prior");
  if (current && prior) cmp.anchor = { current: current.getCurrentImageIdIndex(), prior: prior.getCurrentImageIdIndex() };
}

function go(pane, delta) {
  const vp = viewport(pane);
  const series = cmp.series[pane];
  if (!vp || !series) return;
  vp.setImageIdIndex(Math.min(Math.max(vp.getCurrentImageIdIndex() + delta, 0), series.frames - 1));
}

const KEYS = { ArrowUp: -1, ArrowLeft: -1, ArrowDown: 1, ArrowRight: 1, PageUp: -10, PageDown: 10 };

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || !(event.key in KEYS)) return;
  go(cmp.focus, KEYS[event.key]);
  event.preventDefault();
}

function laidOut() {
  const elements = PANES.map((pane) => document.getElementById(paneId(pane)));
  return elements.every((element) => element && element.clientWidth > 0) ? elements : null;
}

function build(elements) {
  // A new engine with both panes (Gradio may re-create the elements, e.g. after a tab switch).
  const old = getRenderingEngine(ENGINE_ID);
  if (old) old.destroy();
  if (ToolGroupManager.getToolGroup(TOOL_GROUP_ID)) ToolGroupManager.destroyToolGroup(TOOL_GROUP_ID);
  const engine = new RenderingEngine(ENGINE_ID);
  engine.setViewports(PANES.map((pane, i) => ({
    viewportId: paneId(pane), type: Enums.ViewportType.STACK, element: elements[i],
    defaultOptions: { background: [0, 0, 0] },
  })));
  const group = ToolGroupManager.createToolGroup(TOOL_GROUP_ID);
  for (const tool of [WindowLevelTool, PanTool, ZoomTool, StackScrollTool]) group.addTool(tool.toolName);
  const { MouseBindings } = ToolEnums;
  group.setToolActive(WindowLevelTool.toolName, { bindings: [{ mouseButton: MouseBindings.Primary }] });
  group.setToolActive(PanTool.toolName, { bindings: [{ mouseButton: MouseBindings.Auxiliary }] });
  group.setToolActive(ZoomTool.toolName, { bindings: [{ mouseButton: MouseBindings.Secondary }] });
  group.setToolActive(StackScrollTool.toolName, { bindings: [{ mouseButton: MouseBindings.Wheel }] });
  const root = document.getElementById("medcm-compare");
  PANES.forEach((pane, i) => {
    const element = elements[i];
    group.addViewport(paneId(pane), ENGINE_ID);
    element.addEventListener(Enums.Events.STACK_NEW_IMAGE, (event) => onNewImage(pane, event.detail.imageIdIndex));
    element.addEventListener(Enums.Events.IMAGE_RENDERED, () => overlay(pane));
    element.addEventListener("contextmenu", (event) => event.preventDefault());
    const focus = () => { cmp.focus = pane; if (root) root.focus({ preventScroll: true }); };
    element.addEventListener("mousedown", focus);
    element.addEventListener("wheel", focus, { passive: true });
    new ResizeObserver(() => { engine.resize(true, true); }).observe(element);
  });
  if (root && !root.dataset.keys) {
    root.dataset.keys = "1";
    root.addEventListener("keydown", onKey);
  }
  const link = document.getElementById("medcm-link");
  if (link) {
    link.checked = cmp.linked;
    link.onchange = () => { cmp.linked = link.checked; if (cmp.linked) anchorHere(); };
  }
  cmp.elements = elements;
}

async function seriesOf(src) {
  const response = await fetch(src, { credentials: "same-origin" });
  if (!response.ok) throw new Error(`${src}: ${response.status} ${await response.text()}`);
  return response.json();
}

async function show(source) {
  cmp.loading = true;
  cmp.anchor = null;
  cmp.expect = {};
  try {
    const urls = { current: source.current, prior: source.prior };
    for (const pane of PANES) {
      const series = await seriesOf(urls[pane]);
      cmp.series[pane] = series;
      const ids = Array.from({ length: series.frames }, (_, i) => `medcm:${urls[pane]}/${i}`);
      const vp = viewport(pane);
      await vp.setStack(ids, series.start);
      vp.resetCamera();
      vp.render();
      setText(`${paneId(pane)}-label`, `${source[`${pane}Label`]} · ${series.modality} · ${series.label}`);
      overlay(pane);
    }
    cmp.anchor = { current: cmp.series.current.start, prior: cmp.series.prior.start };
    const root = document.getElementById("medcm-compare");
    if (root) {
      root.dataset.src = `${source.current}|${source.prior}`;
      root.scrollIntoView({ block: "nearest" }); // the pair opens below the review screen: bring it up
    }
  } finally {
    cmp.loading = false;
  }
}

/** Called every 200 ms by viewer.js: open the named pair once both panes are on screen. */
export function watchCompare() {
  const node = document.querySelector("#compare-source [data-current]");
  if (!node && cmp.key) { // another study under review: drop the last pair
    const engine = getRenderingEngine(ENGINE_ID);
    if (engine) engine.destroy();
    Object.assign(cmp, { key: "", elements: [], series: {}, anchor: null });
    setText("medcm-cmp-current-label", "This study");
    setText("medcm-cmp-prior-label", "Select a prior");
    for (const pane of PANES) for (const what of ["frame", "wl"]) setText(`${paneId(pane)}-${what}`, "");
  }
  const elements = laidOut();
  if (!node || !elements) return;
  if (elements.some((element, i) => element !== cmp.elements[i])) {
    build(elements);
    cmp.key = "";
  }
  const source = { current: node.dataset.current, prior: node.dataset.prior,
                   currentLabel: node.dataset.currentLabel, priorLabel: node.dataset.priorLabel };
  const key = `${source.current}|${source.prior}`;
  if (key === cmp.key) return;
  cmp.key = key;
  show(source).catch((err) => setText("medcm-cmp-prior-label", `viewer error: ${err.message}`));
}

export const compareState = cmp;
export { go as compareGo };
