// netsight explore: the page. Plain JavaScript, nothing fetched from elsewhere.
//
// Every model-derived string (module names, class names, file names, errors) is put
// into the DOM as text (textContent, createTextNode) or as a safe attribute value;
// the graph's SVG is parsed as XML and imported, never assigned as HTML.
"use strict";

(function () {
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const SVG_NS = "http://www.w3.org/2000/svg";

  const state = {
    model: null,
    layers: [], // rows of /api/model
    graph: null, // last /api/graph answer
    depth: null, // null: the server's default
    expanded: [],
    collapsed: [],
    unrolled: [],
    images: [],
    image: null, // selected image id
    layer: null, // selected module name
    call: 0,
    node: null, // selected graph node id
    normalize: "each",
    compare: false,
  };

  // ------------------------------------------------------------------ helpers
  function $(id) {
    return document.getElementById(id);
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    if (props) {
      for (const [key, value] of Object.entries(props)) {
        if (value === undefined || value === null) continue;
        if (key === "text") node.textContent = value;
        else if (key === "cls") node.className = value;
        else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
        else if (key in node && typeof value !== "string") node[key] = value;
        else node.setAttribute(key, value);
      }
    }
    for (const child of children || []) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function show(node, visible) {
    node.classList.toggle("hidden", !visible);
  }

  function setError(node, message) {
    node.textContent = message || "";
    show(node, !!message);
  }

  function human(n) {
    if (n === null || n === undefined) return "–";
    const units = [
      [1e12, "T"],
      [1e9, "G"],
      [1e6, "M"],
      [1e3, "k"],
    ];
    for (const [size, unit] of units) {
      if (Math.abs(n) >= size) return (n / size).toFixed(n / size >= 100 ? 0 : 2) + " " + unit;
    }
    return String(n);
  }

  function num(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    return Math.abs(v) >= 1e4 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(2) : v.toFixed(digits === undefined ? 3 : digits);
  }

  function pct(p) {
    return p === null || p === undefined ? "–" : (100 * p).toFixed(1) + "%";
  }

  // "TensorMeta(shape=(1, 64, 16, 16), dtype='float32')" -> "1×64×16×16"
  function shapeText(s) {
    if (s === null || s === undefined) return "–";
    if (Array.isArray(s)) return s.join("×");
    const found = /shape=\(([^)]*)\)/.exec(String(s));
    if (found) return found[1].split(",").map((x) => x.trim()).filter((x) => x).join("×");
    return String(s);
  }

  function className(index) {
    const names = state.model && state.model.class_names;
    if (names && index >= 0 && index < names.length) return names[index];
    return null;
  }

  function classLabel(index, name) {
    const n = name === undefined ? className(index) : name;
    return n ? n + " (" + index + ")" : "#" + index;
  }

  function safeName(text) {
    return String(text || "picture").replace(/[^A-Za-z0-9._-]+/g, "_").replace(/^[._]+/, "").slice(0, 120) || "picture";
  }

  function download(href, name) {
    const a = el("a", { href: href, download: name });
    document.body.appendChild(a);
    a.click();
    a.remove();
  }

  // ------------------------------------------------------------------ requests
  let running = 0;
  const controllers = new Map();

  function status(text) {
    $("status-text").textContent = text;
  }

  function busy(delta, what) {
    running += delta;
    $("status").classList.toggle("busy", running > 0);
    if (running > 0) status("working… " + (what || ""));
    else status("ready");
  }

  class HttpError extends Error {}

  // fetch with the token; `key` names the panel: a newer request with the same key
  // aborts the older one. Resolves to the parsed JSON (or the raw Response).
  async function api(path, opts) {
    opts = opts || {};
    const headers = Object.assign({ "X-Netsight-Token": TOKEN }, opts.headers || {});
    let controller = null;
    if (opts.key) {
      const old = controllers.get(opts.key);
      if (old) old.abort();
      controller = new AbortController();
      controllers.set(opts.key, controller);
    }
    busy(1, opts.key || path.split("?")[0]);
    try {
      const response = await fetch(path, {
        method: opts.method || "GET",
        headers: headers,
        body: opts.body,
        signal: controller ? controller.signal : undefined,
        cache: "no-store",
      });
      if (opts.raw) {
        if (!response.ok) throw new HttpError(await errorText(response));
        return response;
      }
      if (!response.ok) throw new HttpError(await errorText(response));
      return await response.json();
    } finally {
      busy(-1);
      if (controller && controllers.get(opts.key) === controller) controllers.delete(opts.key);
    }
  }

  async function errorText(response) {
    const text = await response.text();
    try {
      const data = JSON.parse(text);
      if (data && data.error) return data.error;
    } catch (e) {
      /* not JSON */
    }
    return (text || response.statusText || "request failed") + " (" + response.status + ")";
  }

  function aborted(err) {
    return err && err.name === "AbortError";
  }

  function q(params) {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params)) {
      if (value === null || value === undefined) continue;
      if (Array.isArray(value)) value.forEach((v) => search.append(key, v));
      else search.append(key, value);
    }
    return search.toString();
  }

  // ------------------------------------------------------------------ header
  function renderHeader() {
    const m = state.model;
    $("model-name").textContent = m.name + (m.type && m.type !== m.name ? " (" + m.type + ")" : "");
    const parts = [human(m.params) + " parameters", human(m.mult_adds) + " mult-adds", "input " + shapeText(m.input)];
    if (m.classes) parts.push(m.classes + " classes");
    $("model-totals").textContent = parts.join(" · ");
    document.title = "netsight explore: " + m.name;
    if (m.trace_error) setError($("graph-error"), "trace: " + m.trace_error);
  }

  async function saveReport() {
    try {
      const ids = state.image ? [state.image] : state.images.map((i) => i.id);
      const response = await api("api/report?" + q({ images: ids.join(",") }), { raw: true, key: "report" });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      download(url, "netsight-report-" + safeName(state.model.name) + ".html");
      setTimeout(() => URL.revokeObjectURL(url), 10000);
      status("report saved");
    } catch (err) {
      if (!aborted(err)) status("report: " + err.message);
    }
  }

  // ------------------------------------------------------------------ graph
  const view = { x: 0, y: 0, w: 100, h: 100, full: null };

  async function loadGraph() {
    try {
      const data = await api(
        "api/graph?" + q({ depth: state.depth, expanded: state.expanded, collapsed: state.collapsed, unrolled: state.unrolled }),
        { key: "graph" }
      );
      state.graph = data;
      renderGraph();
      renderGraphState();
    } catch (err) {
      if (!aborted(err)) setError($("graph-error"), "graph: " + err.message);
    }
  }

  function renderGraph() {
    const data = state.graph;
    const box = $("graph");
    setError($("graph-error"), data.error ? "the model failed while tracing; the graph stops there: " + data.error : "");
    const doc = new DOMParser().parseFromString(data.svg || "", "image/svg+xml");
    const root = doc.documentElement;
    clear(box);
    if (!root || root.nodeName !== "svg" || doc.getElementsByTagName("parsererror").length) {
      box.appendChild(el("p", { cls: "muted", text: "no graph" }));
      return;
    }
    const svg = document.importNode(root, true);
    // drop anything executable or external the SVG could carry
    svg.querySelectorAll("script, foreignObject").forEach((n) => n.remove());
    svg.querySelectorAll("*").forEach((n) => {
      for (const attr of Array.from(n.attributes)) {
        if (/^on/i.test(attr.name)) n.removeAttribute(attr.name);
        if (/href$/i.test(attr.name) && !/^#/.test(attr.value)) n.removeAttribute(attr.name);
      }
    });
    const vb = (svg.getAttribute("viewBox") || "0 0 100 100").split(/[\s,]+/).map(Number);
    view.full = { x: vb[0], y: vb[1], w: vb[2], h: vb[3] };
    svg.removeAttribute("width");
    svg.removeAttribute("height");
    svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
    for (const g of svg.querySelectorAll("g.node")) {
      const title = g.querySelector("title");
      const id = title ? title.textContent.trim() : null;
      const info = id && data.nodes[id];
      if (!info) continue;
      g.setAttribute("data-node", id);
      if (info.failed) g.classList.add("failed");
      if (info.expandable) g.classList.add("expandable");
      if (info.rolled && info.rolled.length > 1) g.classList.add("rolled");
      if (info.kind === "module" || info.kind === "failed") g.classList.add("clickable");
    }
    for (const g of svg.querySelectorAll("g.cluster")) {
      const title = g.querySelector("title");
      const id = title ? title.textContent.trim() : null;
      if (id && data.clusters && data.clusters[id]) {
        g.setAttribute("data-cluster", id);
        g.classList.add("clickable");
      }
    }
    box.appendChild(svg);
    fitWidth();
    if (state.layer) markSelected(state.layer, false);
  }

  // what the graph was asked to draw differently, each undoable
  function renderGraphState() {
    const box = $("graph-state");
    clear(box);
    const chips = [];
    const undo = (list, name) => () => {
      state[list] = state[list].filter((n) => n !== name);
      loadGraph();
    };
    state.expanded.forEach((n) => chips.push(["expanded", n, undo("expanded", n)]));
    state.collapsed.forEach((n) => chips.push(["collapsed", n, undo("collapsed", n)]));
    state.unrolled.forEach((n) => chips.push(["unrolled", n, undo("unrolled", n)]));
    for (const [what, name, action] of chips) {
      box.appendChild(
        el("span", { cls: "chip " + what }, [what + " ", el("b", { text: name || "(model)" }), el("button", { type: "button", cls: "small", title: "undo", "aria-label": "undo", text: "×", onclick: action })])
      );
    }
    if (chips.length) {
      box.appendChild(
        actionButton("reset", "draw the graph as at first", () => {
          state.expanded = [];
          state.collapsed = [];
          state.unrolled = [];
          loadGraph();
        }, "reset")
      );
    }
    show(box, chips.length > 0);
  }

  function applyView() {
    const svg = $("graph").querySelector("svg");
    if (svg) svg.setAttribute("viewBox", [view.x, view.y, view.w, view.h].join(" "));
  }

  function boxSize() {
    const r = $("graph").getBoundingClientRect();
    return { W: Math.max(50, r.width), H: Math.max(50, r.height) };
  }

  // the view keeps the container's aspect ratio, so 1 px = view.w / W user units
  function fit() {
    if (!view.full) return;
    const { W, H } = boxSize();
    const f = view.full;
    const scale = Math.max(f.w / W, f.h / H) * 1.02;
    view.w = W * scale;
    view.h = H * scale;
    view.x = f.x + (f.w - view.w) / 2;
    view.y = f.y + (f.h - view.h) / 2;
    applyView();
  }

  // fit the width (capped at 1.6x), top of the graph in view: readable boxes
  function fitWidth() {
    if (!view.full) return;
    const { W, H } = boxSize();
    const f = view.full;
    const scale = Math.max(f.w / W, 1 / 1.6) * 1.02;
    view.w = W * scale;
    view.h = H * scale;
    view.x = f.x + (f.w - view.w) / 2;
    view.y = f.y;
    if (view.h >= f.h) return fit();
    applyView();
  }

  function zoom(factor, px, py) {
    const { W, H } = boxSize();
    if (px === undefined) {
      px = W / 2;
      py = H / 2;
    }
    const s = view.w / W;
    const sx = view.x + px * s;
    const sy = view.y + py * s;
    const w = Math.min(Math.max(view.w * factor, 20), (view.full ? Math.max(view.full.w, view.full.h) : 1000) * 4);
    const f = w / view.w;
    view.x = sx - px * s * f;
    view.y = sy - py * s * f;
    view.w = w;
    view.h = view.h * f;
    applyView();
  }

  function centreOn(g) {
    const svg = $("graph").querySelector("svg");
    if (!svg || !g) return;
    const bb = g.getBBox();
    const m = svg.getScreenCTM().inverse().multiply(g.getScreenCTM());
    const p = new DOMPoint(bb.x + bb.width / 2, bb.y + bb.height / 2).matrixTransform(m);
    // p is in the svg's user units, the viewBox's coordinates
    const local = p;
    view.x = local.x - view.w / 2;
    view.y = local.y - view.h / 2;
    applyView();
  }

  function setupGraphEvents() {
    const box = $("graph");
    box.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const r = box.getBoundingClientRect();
        zoom(Math.exp(e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
      },
      { passive: false }
    );
    let drag = null;
    box.addEventListener("pointerdown", (e) => {
      if (e.button !== 0) return;
      drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y, moved: false };
    });
    window.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (!drag.moved && Math.abs(dx) + Math.abs(dy) < 4) return;
      drag.moved = true;
      box.classList.add("dragging");
      const s = view.w / boxSize().W;
      view.x = drag.vx - dx * s;
      view.y = drag.vy - dy * s;
      applyView();
    });
    window.addEventListener("pointerup", () => {
      if (drag && drag.moved) box.dataset.dragged = "1";
      drag = null;
      box.classList.remove("dragging");
    });
    box.addEventListener("click", (e) => {
      if (box.dataset.dragged) {
        delete box.dataset.dragged;
        return;
      }
      const g = e.target.closest("g.node, g.cluster");
      if (!g) return;
      if (g.dataset.node) selectNode(g.dataset.node);
      else if (g.dataset.cluster) selectCluster(g.dataset.cluster);
    });
    box.addEventListener("dblclick", (e) => {
      const g = e.target.closest("g.node.expandable");
      const info = g && state.graph.nodes[g.dataset.node];
      if (!info) return;
      (info.rolled && info.rolled.length > 1 ? info.rolled : [info.name]).forEach((n) => {
        if (state.collapsed.includes(n)) state.collapsed = state.collapsed.filter((c) => c !== n);
        else if (!state.expanded.includes(n)) state.expanded.push(n);
      });
      loadGraph();
    });
    $("graph-fit").addEventListener("click", fit);
    $("graph-depth").addEventListener("change", (e) => {
      const v = e.target.value.trim();
      const depth = v === "" ? null : Math.max(0, Math.min(32, Number(v) || 0));
      if (depth === state.depth) return;
      state.depth = depth;
      state.expanded = [];
      state.collapsed = [];
      loadGraph();
    });
    $("graph-zoom-in").addEventListener("click", () => zoom(1 / 1.25));
    $("graph-zoom-out").addEventListener("click", () => zoom(1.25));
    window.addEventListener("resize", () => {
      const { W, H } = boxSize();
      view.h = (view.w * H) / W;
      applyView();
    });
  }

  function nodeOf(name) {
    const g = state.graph;
    if (!g) return null;
    if (g.layers && g.layers[name]) return g.layers[name];
    return null;
  }

  function markSelected(name, centre) {
    const svg = $("graph").querySelector("svg");
    if (!svg) return;
    svg.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
    let id = nodeOf(name);
    // a module inside a box drawn whole: its nearest drawn ancestor
    let probe = name;
    while (!id && probe.includes(".")) {
      probe = probe.slice(0, probe.lastIndexOf("."));
      id = nodeOf(probe);
    }
    if (!id) return;
    const g = svg.querySelector('g.node[data-node="' + CSS.escape(id) + '"]');
    if (!g) return;
    g.classList.add("selected");
    if (centre) centreOn(g);
  }

  function parentOf(name) {
    return name.includes(".") ? name.slice(0, name.lastIndexOf(".")) : "";
  }

  // the parent whose run of blocks a rolled node stands for
  function rolledParent(names) {
    if (!names || names.length < 2) return null;
    const a = names[0].split(".");
    const b = names[1].split(".");
    let k = 0;
    while (k < a.length && k < b.length && a[k] === b[k]) k++;
    return a.slice(0, k).join(".");
  }

  function ancestors(name) {
    const out = [];
    let probe = name;
    while (probe.includes(".")) {
      probe = parentOf(probe);
      out.push(probe);
    }
    return out;
  }

  function expand(name) {
    if (state.collapsed.includes(name)) state.collapsed = state.collapsed.filter((n) => n !== name);
    else if (!state.expanded.includes(name)) state.expanded.push(name);
    loadGraph();
  }

  function collapse(name) {
    if (state.expanded.includes(name)) {
      state.expanded = state.expanded.filter((n) => n !== name && !n.startsWith(name + "."));
    } else if (!state.collapsed.includes(name)) state.collapsed.push(name);
    loadGraph();
  }

  function unroll(name) {
    if (!state.unrolled.includes(name)) state.unrolled.push(name);
    loadGraph();
  }

  function roll(name) {
    state.unrolled = state.unrolled.filter((n) => n !== name);
    loadGraph();
  }

  function actionButton(label, title, onclick, cls) {
    return el("button", { type: "button", cls: "small " + (cls || ""), title: title, onclick: onclick }, [label]);
  }

  function renderNodeActions(info, nodeId) {
    const box = $("node-actions");
    clear(box);
    if (!info) {
      show(box, false);
      return;
    }
    box.appendChild(el("span", { cls: "node-name", text: info.name || nodeId }));
    if (info.type) box.appendChild(el("span", { cls: "muted", text: " " + info.type }));
    if (info.rolled && info.rolled.length > 1) {
      const sel = el("select", { id: "block-select", "aria-label": "block" });
      info.rolled.forEach((n) => sel.appendChild(el("option", { value: n, text: n })));
      sel.value = state.layer && info.rolled.includes(state.layer) ? state.layer : info.rolled[0];
      sel.addEventListener("change", () => selectLayer(sel.value, 0, { fromGraph: true }));
      box.appendChild(el("label", { cls: "inline" }, ["block ", sel]));
      const parent = rolledParent(info.rolled);
      if (parent !== null) box.appendChild(actionButton("unroll", "draw every block of " + (parent || "the model"), () => unroll(parent), "unroll"));
    }
    if (info.repeat > 1 && !(info.rolled && info.rolled.length > 1) && info.name) {
      const parent = parentOf(info.name);
      box.appendChild(actionButton("unroll", "draw every block of " + (parent || "the model"), () => unroll(parent), "unroll"));
    }
    if (info.expandable) {
      const names = info.rolled && info.rolled.length > 1 ? info.rolled : [info.name];
      box.appendChild(
        actionButton("expand", "draw what is inside", () => {
          names.forEach((n) => {
            if (state.collapsed.includes(n)) state.collapsed = state.collapsed.filter((c) => c !== n);
            else if (!state.expanded.includes(n)) state.expanded.push(n);
          });
          loadGraph();
        }, "expand")
      );
    }
    const name = info.name || "";
    const ups = ancestors(name).filter((n) => n !== "");
    ups.forEach((n) => {
      box.appendChild(actionButton("collapse " + n, "draw " + n + " as one box", () => collapse(n), "collapse"));
    });
    state.unrolled.forEach((n) => {
      if (name === n || name.startsWith(n + ".") || n === "") box.appendChild(actionButton("roll " + (n || "model"), "roll repeated blocks again", () => roll(n), "roll"));
    });
    show(box, true);
  }

  function selectNode(id) {
    const info = state.graph && state.graph.nodes[id];
    if (!info) return;
    state.node = id;
    renderNodeActions(info, id);
    const target = info.rolled && info.rolled.length > 1 ? info.rolled[0] : info.name;
    if (info.kind === "module" || state.layers.some((l) => l.name === target)) selectLayer(target, 0, { fromGraph: true });
    const svg = $("graph").querySelector("svg");
    svg.querySelectorAll(".selected").forEach((n) => n.classList.remove("selected"));
    const g = svg.querySelector('g.node[data-node="' + CSS.escape(id) + '"]');
    if (g) g.classList.add("selected");
  }

  function selectCluster(id) {
    const c = state.graph.clusters[id];
    const box = $("node-actions");
    clear(box);
    box.appendChild(el("span", { cls: "node-name", text: c.label }));
    if (c.repeat > 1 && c.parent !== null) {
      box.appendChild(actionButton("unroll", "draw every block", () => unroll(c.parent), "unroll"));
    }
    if (c.names && c.names.length) {
      const sel = el("select", { id: "block-select", "aria-label": "block" });
      c.names.forEach((n) => sel.appendChild(el("option", { value: n, text: n })));
      sel.addEventListener("change", () => selectLayer(sel.value, 0, { fromGraph: true }));
      box.appendChild(el("label", { cls: "inline" }, ["block ", sel]));
      box.appendChild(actionButton("collapse", "draw each block as one box", () => {
        c.names.forEach((n) => {
          if (!state.collapsed.includes(n)) state.collapsed.push(n);
        });
        loadGraph();
      }, "collapse"));
      if (c.parent) box.appendChild(actionButton("collapse " + c.parent, "draw " + c.parent + " as one box", () => collapse(c.parent), "collapse"));
      selectLayer(c.names[0], 0, { fromGraph: true });
    }
    show(box, true);
  }

  // ------------------------------------------------------------------ search and list
  function setupSearch() {
    const input = $("search");
    const list = $("search-results");
    function update() {
      const needle = input.value.trim().toLowerCase();
      clear(list);
      if (!needle) {
        show(list, false);
        return;
      }
      const seen = new Set();
      const found = [];
      for (const row of state.layers) {
        if (!row.name || seen.has(row.name)) continue;
        if (row.name.toLowerCase().includes(needle) || row.type.toLowerCase().includes(needle)) {
          seen.add(row.name);
          found.push(row);
        }
        if (found.length >= 50) break;
      }
      if (!found.length) list.appendChild(el("li", { cls: "muted", text: "no layer matches" }));
      for (const row of found) {
        list.appendChild(
          el("li", { cls: "match", tabindex: "0", onclick: () => choose(row.name), onkeydown: (e) => e.key === "Enter" && choose(row.name) }, [
            el("span", { text: row.name }),
            el("span", { cls: "muted", text: " " + row.type }),
          ])
        );
      }
      show(list, true);
    }
    function choose(name) {
      show(list, false);
      selectLayer(name, 0, { centre: true });
    }
    input.addEventListener("input", update);
    input.addEventListener("focus", update);
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        const first = list.querySelector("li.match");
        if (first) first.click();
      } else if (e.key === "Escape") show(list, false);
    });
    document.addEventListener("click", (e) => {
      if (!e.target.closest(".search-wrap")) show(list, false);
    });
  }

  function renderLayerList() {
    const box = $("layer-list");
    clear(box);
    $("layer-count").textContent = "(" + state.layers.filter((l) => l.name).length + ")";
    const table = el("table", { cls: "layers" });
    table.appendChild(el("thead", null, [el("tr", null, ["name", "type", "output", "params"].map((t) => el("th", { text: t })))]));
    const body = el("tbody");
    for (const row of state.layers) {
      if (!row.name) continue;
      const tr = el("tr", { cls: "layer-row" + (row.conv ? " conv" : "") }, [
        el("td", { cls: "lname" }, [el("span", { cls: "indent-" + Math.min(row.depth, 6) }), row.name + (row.call ? " (call " + row.call + ")" : "")]),
        el("td", { text: row.type }),
        el("td", { text: shapeText(row.output) }),
        el("td", { cls: "num", text: row.params ? human(row.params) : "" }),
      ]);
      tr.dataset.layer = row.name;
      tr.dataset.call = String(row.call);
      tr.tabIndex = 0;
      tr.addEventListener("click", () => selectLayer(row.name, row.call, { centre: true }));
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          selectLayer(row.name, row.call, { centre: true });
        }
      });
      body.appendChild(tr);
    }
    table.appendChild(body);
    box.appendChild(table);
  }

  function markListRow() {
    document.querySelectorAll("#layer-list tr.selected").forEach((r) => r.classList.remove("selected"));
    for (const tr of document.querySelectorAll("#layer-list tr.layer-row")) {
      if (tr.dataset.layer === state.layer && Number(tr.dataset.call) === state.call) {
        tr.classList.add("selected");
        // scroll the list only (not the page) so the row shows
        const list = $("layer-list");
        const top = tr.getBoundingClientRect().top - list.getBoundingClientRect().top + list.scrollTop;
        const head = 20;
        if (top - head < list.scrollTop || top + tr.offsetHeight > list.scrollTop + list.clientHeight) {
          list.scrollTop = Math.max(0, top - list.clientHeight / 2);
        }
        break;
      }
    }
  }

  function selectLayer(name, call, opts) {
    opts = opts || {};
    state.layer = name;
    state.call = call || 0;
    markListRow();
    if (!opts.fromGraph) {
      markSelected(name, !!opts.centre);
      const id = nodeOf(name);
      if (id && state.graph.nodes[id]) renderNodeActions(state.graph.nodes[id], id);
    }
    $("patterns-layer").textContent = name;
    show($("channel-box"), false);
    panelA.load();
    if (state.compare && panelB.mode === "images") panelB.load();
    if ($("cam-layer").value === "selected") runCam();
  }

  // ------------------------------------------------------------------ images
  async function loadImages() {
    try {
      state.images = await api("api/images", { key: "images" });
      if (!state.image || !state.images.some((i) => i.id === state.image)) {
        // an image the model failed on still has the maps of the layers before the failure
        const ok = state.images.find((i) => !i.error) || state.images[0];
        state.image = ok ? ok.id : null;
      }
      renderImages();
    } catch (err) {
      if (!aborted(err)) setError($("images-error"), err.message);
    }
  }

  // images given to explore() still on their first forward: ask again until all came
  async function pollImages() {
    const hadImage = !!state.image;
    try {
      const model = await api("api/model", { key: "model-poll" });
      state.model.pending_images = model.pending_images;
      if (model.classes) state.model.classes = model.classes;
      showLoadErrors(model.load_errors);
      await loadImages();
    } catch (err) {
      if (aborted(err)) return;
    }
    renderPending();
    if (!hadImage && state.image) selectImage(state.image);
    if (state.model.pending_images) setTimeout(pollImages, 700);
  }

  function renderPending() {
    const n = (state.model && state.model.pending_images) || 0;
    let note = document.getElementById("images-pending");
    if (!n) {
      if (note) note.remove();
      return;
    }
    if (!note) {
      note = el("div", { id: "images-pending", cls: "muted" });
      $("images-box").insertBefore(note, $("images"));
    }
    note.textContent = n + (n === 1 ? " image is" : " images are") + " still loading…";
  }

  function showLoadErrors(errors) {
    if (errors && errors.length) setError($("images-error"), errors.join("\n"));
  }

  function renderImages() {
    const box = $("images");
    clear(box);
    if (!state.images.length) box.appendChild(el("p", { cls: "muted", text: "no images yet: add one" }));
    for (const info of state.images) {
      const preds = el("ol", { cls: "preds" });
      for (const p of info.predictions || []) {
        preds.appendChild(
          el("li", null, [el("span", { cls: "pname", text: p.name ? p.name : "#" + p.index }), el("span", { cls: "prob", text: pct(p.probability) })])
        );
      }
      const thumb = el("div", { cls: "thumb" + (info.id === state.image ? " selected" : "") + (info.error ? " broken" : ""), tabindex: "0" }, [
        el("img", { src: info.picture, alt: info.name, title: info.name + " " + shapeText(info.shape) }),
        el("div", { cls: "tname", text: info.name }),
        info.error ? el("div", { cls: "error", text: info.error }) : preds,
        el("button", { type: "button", cls: "remove small", title: "remove this image", "aria-label": "remove", text: "×" }),
      ]);
      thumb.dataset.image = info.id;
      thumb.addEventListener("click", (e) => {
        if (e.target.closest(".remove")) removeImage(info.id);
        else selectImage(info.id);
      });
      thumb.addEventListener("keydown", (e) => {
        if (e.key === "Enter") selectImage(info.id);
      });
      box.appendChild(thumb);
    }
    panelB.refreshSelects();
  }

  function selectImage(id) {
    state.image = id;
    document.querySelectorAll("#images .thumb").forEach((t) => t.classList.toggle("selected", t.dataset.image === id));
    renderCamClasses();
    panelA.load();
    if (state.compare && panelB.mode === "layers") panelB.load();
    runCam();
  }

  async function removeImage(id) {
    try {
      await api("api/images/" + encodeURIComponent(id), { method: "DELETE" });
      if (state.image === id) state.image = null;
      await loadImages();
      if (state.image) selectImage(state.image);
    } catch (err) {
      setError($("images-error"), err.message);
    }
  }

  async function upload(files) {
    setError($("images-error"), "");
    const problems = [];
    let last = null;
    for (const file of Array.from(files)) {
      try {
        const info = await api("api/images?" + q({ name: file.name }), {
          method: "POST",
          body: file,
          headers: { "Content-Type": "application/octet-stream" },
        });
        if (info.error) problems.push(file.name + ": " + info.error);
        else last = info.id;
      } catch (err) {
        problems.push(file.name + ": " + err.message);
      }
    }
    setError($("images-error"), problems.join("\n"));
    await loadImages();
    if (last) selectImage(last);
  }

  function setupUpload() {
    $("upload").addEventListener("change", (e) => {
      if (e.target.files && e.target.files.length) upload(e.target.files).then(() => (e.target.value = ""));
    });
    document.addEventListener("dragover", (e) => {
      if (e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files")) {
        e.preventDefault();
        document.body.classList.add("dropping");
      }
    });
    document.addEventListener("dragleave", (e) => {
      if (!e.relatedTarget) document.body.classList.remove("dropping");
    });
    document.addEventListener("drop", (e) => {
      document.body.classList.remove("dropping");
      if (e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files.length) {
        e.preventDefault();
        upload(e.dataTransfer.files);
      }
    });
  }

  // ------------------------------------------------------------------ layer panels
  function pngButton(getSrc, getName) {
    return el("button", {
      type: "button",
      cls: "png",
      title: "save this picture as PNG",
      text: "PNG",
      onclick: () => {
        const src = getSrc();
        if (src) download(src, safeName(getName()) + ".png");
      },
    });
  }

  class LayerPanel {
    constructor(root, side) {
      this.root = root;
      this.side = side; // "a" follows the selection; "b" has its own selects
      this.key = "layer-" + side;
      this.page = 0;
      this.data = null;
      this.mode = "images"; // b: "images" = other image, same layer; "layers" = same image, other layer
      this.imageB = null;
      this.layerB = null;
      this.build();
    }

    imageId() {
      if (this.side === "a" || this.mode === "layers") return state.image;
      return this.imageB || state.image;
    }

    layerName() {
      if (this.side === "a" || this.mode === "images") return state.layer;
      return this.layerB || state.layer;
    }

    layerCall() {
      if (this.side === "a" || this.mode === "images") return state.call;
      return 0;
    }

    build() {
      const r = this.root;
      clear(r);
      this.title = el("h2", { text: "Layer" });
      this.head = el("div", { cls: "panel-head" }, [this.title]);
      this.norm = el("select", { cls: "normalize", "aria-label": "normalisation" }, ["each", "shared", "none"].map((v) => el("option", { value: v, text: v })));
      this.norm.addEventListener("change", () => this.load());
      r.appendChild(this.head);
      if (this.side === "b") {
        this.modeSel = el("select", { id: "compare-mode", "aria-label": "compare" }, [
          el("option", { value: "images", text: "another image, same layer" }),
          el("option", { value: "layers", text: "same image, another layer" }),
        ]);
        this.imageSel = el("select", { id: "compare-image", "aria-label": "image" });
        this.layerSel = el("select", { id: "compare-layer", "aria-label": "layer" });
        this.modeSel.addEventListener("change", () => {
          this.mode = this.modeSel.value;
          this.refreshSelects();
          this.load();
        });
        this.imageSel.addEventListener("change", () => {
          this.imageB = this.imageSel.value;
          this.load();
        });
        this.layerSel.addEventListener("change", () => {
          this.layerB = this.layerSel.value;
          this.load();
        });
        this.imageLabel = el("label", null, ["image ", this.imageSel]);
        this.layerLabel = el("label", null, ["layer ", this.layerSel]);
        r.appendChild(el("div", { cls: "controls" }, [this.modeSel, this.imageLabel, this.layerLabel]));
      }
      this.summary = el("div", { cls: "summary" });
      this.error = el("div", { cls: "error hidden" });
      this.stats = el("div", { cls: "stats" });
      this.gridHead = el("div", { cls: "controls grid-controls" });
      this.gridBox = el("div", { cls: "grid-box" });
      this.extra = el("div", { cls: "maps" });
      this.values = el("div", { cls: "values" });
      this.body = el("div", { cls: "layer-body" }, [el("div", { cls: "layer-main" }, [this.gridHead, this.gridBox, this.values]), this.extra]);
      [this.summary, this.error, this.stats, this.body].forEach((n) => r.appendChild(n));
      this.summary.appendChild(el("p", { cls: "muted", text: "click a layer in the graph or the list" }));
    }

    refreshSelects() {
      if (this.side !== "b") return;
      const keep = this.imageSel.value;
      clear(this.imageSel);
      state.images.forEach((i) => this.imageSel.appendChild(el("option", { value: i.id, text: i.name })));
      const other = state.images.find((i) => i.id !== state.image && !i.error);
      this.imageSel.value = state.images.some((i) => i.id === keep) ? keep : other ? other.id : state.image || "";
      this.imageB = this.imageSel.value;
      if (!this.layerSel.options.length) {
        const seen = new Set();
        state.layers.forEach((l) => {
          if (l.name && !seen.has(l.name)) {
            seen.add(l.name);
            this.layerSel.appendChild(el("option", { value: l.name, text: l.name }));
          }
        });
        this.layerB = this.layerSel.value;
      }
      this.imageLabel.classList.toggle("hidden", this.mode !== "images");
      this.layerLabel.classList.toggle("hidden", this.mode !== "layers");
    }

    async load() {
      const image = this.imageId();
      const layer = this.layerName();
      if (this.side === "b" && !state.compare) return;
      const which = layer + "\u0000" + this.layerCall();
      if (this.shown !== which) this.page = 0;
      this.shown = which;
      if (layer === null || layer === undefined) return;
      if (!image) {
        clear(this.summary);
        this.summary.appendChild(el("p", { cls: "muted no-image", text: "add an image to see what " + (layer || "the model") + " makes of it" }));
        return;
      }
      this.root.classList.add("loading");
      try {
        const data = await api(
          "api/layer?" + q({ image: image, layer: layer, call: this.layerCall(), normalize: this.norm.value, page: this.page }),
          { key: this.key }
        );
        this.data = data;
        this.image = image;
        setError(this.error, "");
        this.render(data);
      } catch (err) {
        if (aborted(err)) return;
        setError(this.error, layer + ": " + err.message);
      } finally {
        this.root.classList.remove("loading");
      }
    }

    imageName() {
      const info = state.images.find((i) => i.id === this.image);
      return info ? info.name : this.image;
    }

    render(d) {
      this.title.textContent = "Layer ";
      this.title.appendChild(el("span", { cls: "lname", text: d.name || "(model)" }));
      if (d.call) this.title.appendChild(document.createTextNode(" call " + d.call));
      clear(this.summary);
      const row = d.row || {};
      const facts = [
        ["type", d.type],
        ["image", this.imageName()],
        ["input → output", shapeText(row.input) + " → " + shapeText(d.shape)],
        ["params", row.params !== undefined ? row.params.toLocaleString() : "–"],
        ["mult-adds", human(row.mult_adds)],
      ];
      if (row.kernel) facts.push(["kernel", row.kernel.join("×")]);
      this.summary.appendChild(el("dl", { cls: "facts" }, facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: String(v) })])));
      clear(this.stats);
      const s = d.stats || {};
      const statFacts = [
        ["channels", s.channels],
        ["dead channels", s.dead_channels],
        ["sparsity", pct(s.sparsity)],
        ["mean", num(s.mean)],
        ["std", num(s.std)],
        ["min", num(s.min)],
        ["max", num(s.max)],
      ];
      if (s.nonfinite) statFacts.push(["non-finite", s.nonfinite]);
      for (const [k, v] of statFacts) {
        const item = el("span", { cls: "stat stat-" + k.replace(/[^a-z]+/g, "-") }, [el("span", { cls: "k", text: k + " " }), el("b", { text: v === undefined || v === null ? "–" : String(v) })]);
        this.stats.appendChild(item);
      }
      clear(this.gridHead);
      clear(this.gridBox);
      clear(this.values);
      clear(this.extra);
      if (d.grid) {
        const g = d.grid;
        const count = el("span", { cls: "channels-count", text: g.total + " channels" });
        count.dataset.total = String(g.total);
        this.gridHead.appendChild(count);
        if (g.pages > 1) {
          const prev = el("button", { type: "button", cls: "small page-prev", text: "◀", disabled: g.page <= 0 });
          const next = el("button", { type: "button", cls: "small page-next", text: "▶", disabled: g.page >= g.pages - 1 });
          prev.addEventListener("click", () => {
            this.page = g.page - 1;
            this.load();
          });
          next.addEventListener("click", () => {
            this.page = g.page + 1;
            this.load();
          });
          this.gridHead.appendChild(el("span", { cls: "pager" }, [prev, el("span", { text: " page " + (g.page + 1) + " / " + g.pages + " " }), next]));
        }
        this.gridHead.appendChild(el("label", null, ["normalise ", this.norm]));
        const name = () => (d.name || "model") + "_" + this.imageName() + "_channels_p" + (g.page + 1);
        this.gridHead.appendChild(pngButton(() => g.picture, name));
        const img = el("img", { cls: "grid", src: g.picture, alt: "channels of " + d.name, title: "click a channel to zoom it" });
        // tiles drawn at least twice their size when there is room, never wider than the panel
        img.style.width = Math.min(Math.max(g.size[1] * 2, 240), 640) + "px";
        img.addEventListener("click", (e) => this.clickGrid(e, img, g));
        this.gridBox.appendChild(img);
        if (g.note) this.gridBox.appendChild(el("div", { cls: "muted note", text: g.note }));
      }
      if (d.note) this.values.appendChild(el("p", { cls: "note", text: d.note }));
      if (d.values && d.values.length) {
        const list = el("table", { cls: "values-table" }, [el("tr", null, [el("th", { text: "index" }), el("th", { text: "value" })])]);
        for (const v of d.values) {
          const idx = v.index !== undefined ? v.index : v[0];
          const val = v.value !== undefined ? v.value : v[1];
          const label = v.name ? v.name + " (" + idx + ")" : String(idx);
          list.appendChild(el("tr", null, [el("td", { text: label }), el("td", { cls: "num", text: num(val) })]));
        }
        this.values.appendChild(list);
      }
      if (d.mean) {
        this.extra.appendChild(
          el("figure", { cls: "mean" }, [
            el("img", { src: d.mean, alt: "mean map" }),
            el("figcaption", null, ["mean over channels ", pngButton(() => d.mean, () => (d.name || "model") + "_" + this.imageName() + "_mean")]),
          ])
        );
      }
      if (d.kernels) {
        const k = d.kernels;
        const fig = el("figure", { cls: "kernels" });
        if (k.picture) fig.appendChild(el("img", { cls: "kernels-grid", src: k.picture, alt: "kernels" }));
        fig.appendChild(el("figcaption", null, ["kernels ", k.picture ? pngButton(() => k.picture, () => (d.name || "model") + "_kernels") : null, el("div", { cls: "muted", text: k.note || "" })]));
        this.extra.appendChild(fig);
      }
    }

    clickGrid(e, img, g) {
      const r = img.getBoundingClientRect();
      const x = ((e.clientX - r.left) * img.naturalWidth) / r.width;
      const y = ((e.clientY - r.top) * img.naturalHeight) / r.height;
      const pad = g.padding;
      const [th, tw] = g.tile;
      const col = Math.floor((x - pad) / (tw + pad));
      const rowN = Math.floor((y - pad) / (th + pad));
      const inX = x - pad - col * (tw + pad);
      const inY = y - pad - rowN * (th + pad);
      if (col < 0 || rowN < 0 || col >= g.nrow || inX >= tw || inY >= th) return;
      const index = rowN * g.nrow + col;
      if (index >= g.channels.length) return;
      showChannel(this.image, this.data.name, this.data.call, g.channels[index]);
    }
  }

  async function showChannel(image, layer, call, channel) {
    const box = $("channel-zoom");
    show($("channel-box"), true);
    $("channel-box").scrollIntoView({ block: "nearest" });
    $("channel-title").textContent = layer + " · channel " + channel;
    try {
      const d = await api("api/channel?" + q({ image: image, layer: layer, call: call, channel: channel }), { key: "channel" });
      clear(box);
      const info = state.images.find((i) => i.id === image);
      channelPicture = { src: d.picture, name: layer + "_" + (info ? info.name : image) + "_ch" + channel };
      box.appendChild(
        el("figure", null, [
          el("img", { cls: "zoom", src: d.picture, alt: "channel " + channel }),
          el("figcaption", { text: "channel " + channel + " · min " + num(d.min) + " · max " + num(d.max) + " · mean " + num(d.mean) }),
        ])
      );
      if (d.kernel && d.kernel.picture) {
        box.appendChild(
          el("figure", { cls: "kernel" }, [
            el("img", { cls: "kernel", src: d.kernel.picture, alt: "kernel" }),
            el("figcaption", { text: "kernel " + (d.kernel.size || []).join("×") + (d.kernel.how ? " · " + d.kernel.how : "") }),
          ])
        );
      }
    } catch (err) {
      if (aborted(err)) return;
      clear(box);
      box.appendChild(el("div", { cls: "error", text: err.message }));
    }
  }
  let channelPicture = null;

  // ------------------------------------------------------------------ CAM
  let camPicture = null;

  function renderCamClasses() {
    const sel = $("cam-class");
    const keep = sel.value;
    clear(sel);
    const info = state.images.find((i) => i.id === state.image);
    sel.appendChild(el("option", { value: "", text: "top prediction" }));
    const top = (info && info.predictions) || [];
    if (top.length) {
      const group = el("optgroup", { label: "top 5 of this image" });
      top.forEach((p) => group.appendChild(el("option", { value: String(p.index), text: classLabel(p.index, p.name) + " · " + pct(p.probability) })));
      sel.appendChild(group);
    }
    const n = (state.model && state.model.classes) || 0;
    if (n) {
      const group = el("optgroup", { label: "all classes" });
      for (let k = 0; k < n; k++) group.appendChild(el("option", { value: String(k), text: classLabel(k) }));
      sel.appendChild(group);
    }
    if (Array.from(sel.options).some((o) => o.value === keep)) sel.value = keep;
  }

  async function runCam() {
    const box = $("cam");
    if (!state.image) return;
    const info = state.images.find((i) => i.id === state.image);
    if (info && info.error) {
      clear(box);
      setError($("cam-error"), "CAM: the model failed on this image: " + info.error);
      return;
    }
    const which = $("cam-layer").value;
    const layer = which === "selected" ? state.layer || "" : "";
    try {
      const d = await api(
        "api/cam?" + q({ image: state.image, layer: layer || null, class: $("cam-class").value || null, method: $("cam-method").value }),
        { key: "cam" }
      );
      setError($("cam-error"), "");
      clear(box);
      camPicture = { src: d.picture, name: "cam_" + d.method + "_" + (info ? info.name : state.image) + "_class" + d.class };
      box.appendChild(el("img", { src: d.picture, alt: "class activation map" }));
      box.appendChild(
        el("div", { cls: "cam-info" }, [
          el("div", null, [el("span", { cls: "k", text: "class " }), el("b", { cls: "cam-class-name", text: classLabel(d.class, d.class_name) })]),
          el("div", null, [el("span", { cls: "k", text: "probability " }), el("b", { text: pct(d.probability) })]),
          el("div", null, [el("span", { cls: "k", text: "method " }), el("b", { text: d.method })]),
          el("div", null, [el("span", { cls: "k", text: "layer " }), el("b", { text: d.layer || "–" })]),
          el("div", { cls: "muted", text: Math.round(d.ms) + " ms" + (d.reused_graph ? " (reused the forward graph)" : "") }),
        ].concat((d.warnings || []).map((w) => el("div", { cls: "cam-warning", text: w }))))
      );
    } catch (err) {
      if (!aborted(err)) setError($("cam-error"), "CAM: " + err.message);
    }
  }

  function setupCam() {
    const sel = $("cam-method");
    clear(sel);
    (state.model.methods || ["gradcam"]).forEach((m) => sel.appendChild(el("option", { value: m, text: m })));
    if ((state.model.methods || []).includes("gradcam")) sel.value = "gradcam";
    $("cam-class").addEventListener("change", runCam);
    sel.addEventListener("change", runCam);
    $("cam-layer").addEventListener("change", runCam);
    $("cam-png").addEventListener("click", () => camPicture && download(camPicture.src, safeName(camPicture.name) + ".png"));
    $("channel-png").addEventListener("click", () => channelPicture && download(channelPicture.src, safeName(channelPicture.name) + ".png"));
  }

  // ------------------------------------------------------------------ patterns
  let patternsPicture = null;

  function parseChannels(text) {
    const out = [];
    for (const part of text.split(",")) {
      const m = /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(part);
      if (!m) {
        if (part.trim()) throw new Error("channels: expected e.g. 0-7 or 1,4,9, got " + JSON.stringify(part.trim()));
        continue;
      }
      const a = Number(m[1]);
      const b = m[2] === undefined ? a : Number(m[2]);
      for (let k = Math.min(a, b); k <= Math.max(a, b) && out.length < 16; k++) out.push(k);
    }
    if (!out.length) throw new Error("channels: none given");
    return out;
  }

  let patternsController = null;

  async function runPatterns() {
    const errorBox = $("patterns-error");
    setError(errorBox, "");
    if (!state.layer) {
      setError(errorBox, "select a layer first");
      return;
    }
    let channels;
    try {
      channels = parseChannels($("patterns-channels").value);
    } catch (err) {
      setError(errorBox, err.message);
      return;
    }
    const steps = Math.max(1, Math.min(512, Number($("patterns-steps").value) || 32));
    const bar = $("patterns-progress");
    bar.value = 0;
    if (patternsController) patternsController.abort();
    patternsController = new AbortController();
    const mine = patternsController;
    busy(1, "patterns");
    try {
      const response = await fetch("api/patterns", {
        method: "POST",
        headers: { "X-Netsight-Token": TOKEN, "Content-Type": "application/json" },
        body: JSON.stringify({ layer: state.layer, channels: channels, steps: steps }),
        signal: mine.signal,
      });
      if (!response.ok) throw new Error(await errorText(response));
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (value) buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, cut).trim();
          buffer = buffer.slice(cut + 1);
          if (line) handlePatternLine(JSON.parse(line));
        }
        if (done) break;
      }
      if (buffer.trim()) handlePatternLine(JSON.parse(buffer));
    } catch (err) {
      if (!aborted(err)) setError(errorBox, "patterns: " + err.message);
    } finally {
      busy(-1);
      if (patternsController === mine) patternsController = null;
    }
  }

  function handlePatternLine(msg) {
    const bar = $("patterns-progress");
    if (msg.progress !== undefined) {
      bar.max = msg.total || 1;
      bar.value = msg.progress;
    } else if (msg.error) {
      setError($("patterns-error"), "patterns: " + msg.error);
    } else if (msg.result) {
      const r = msg.result;
      bar.value = bar.max;
      const box = $("patterns");
      clear(box);
      patternsPicture = { src: r.picture, name: "patterns_" + (r.layer || state.layer) + "_" + r.channels.join("-") };
      box.appendChild(el("img", { cls: "patterns-grid", src: r.picture, alt: "patterns" }));
      const rows = r.channels.map((c, k) => "ch " + c + ": " + num(r.start[k], 2) + " → " + num(r.activation[k], 2));
      box.appendChild(el("div", { cls: "muted", text: "activation " + rows.join(" · ") + " · " + Math.round(r.ms) + " ms" }));
    }
  }

  // ------------------------------------------------------------------ compare
  function setCompare(on) {
    state.compare = on;
    show($("layer-panel-b"), on);
    $("panels").classList.toggle("compare", on);
    if (on) {
      panelB.refreshSelects();
      panelB.load();
    }
  }

  // ------------------------------------------------------------------ start
  let panelA;
  let panelB;

  async function start() {
    panelA = new LayerPanel($("layer-panel"), "a");
    panelB = new LayerPanel($("layer-panel-b"), "b");
    setupGraphEvents();
    setupSearch();
    setupUpload();
    $("save-report").addEventListener("click", saveReport);
    $("patterns-run").addEventListener("click", runPatterns);
    $("patterns-png").addEventListener("click", () => patternsPicture && download(patternsPicture.src, safeName(patternsPicture.name) + ".png"));
    $("compare-toggle").addEventListener("change", (e) => setCompare(e.target.checked));
    try {
      const model = await api("api/model");
      state.model = model;
      state.layers = model.layers || [];
      renderHeader();
      renderLayerList();
      setupCam();
    } catch (err) {
      status("cannot load the model: " + err.message);
      return;
    }
    await Promise.all([loadGraph(), loadImages()]);
    renderCamClasses();
    if (state.image) runCam();
    renderPending();
    if (state.model.pending_images) setTimeout(pollImages, 300);
    showLoadErrors(state.model.load_errors);
    document.body.dataset.ready = "1";
    if (running === 0) status("ready");
  }

  start();
})();
