// gyre's live dashboard: polls /api/snapshot about once a second, keeps a bounded series
// per kernel (seeded from /api/history), and draws every group as its DAG plus uPlot
// charts per kernel. The page records what it saw in <pre id="gyre-test-state"> (JSON)
// for tests: polls, kernels, states, faults, first and last counters, and every error.
"use strict";

(function () {
  const POLL_MS = 1000;
  const KEEP = 300; // points per series, as many as the runtime's history
  const MIN_STEP_MS = 500; // closer points would make noisy rates
  const COLOURS = {
    Launched: "#9aa3b5", Active: "#2e7d32", Paused: "#f9a825",
    Draining: "#1565c0", Terminated: "#616161", Faulted: "#c62828",
  };

  // ---- what the page saw, for tests ---------------------------------------------------
  const test = {
    polls: 0, history_samples: 0, points: 0, last_seq: null,
    kernels: [], groups: {}, states: {}, faults: {},
    first: {}, last: {}, errors: [],
  };
  const stateEl = document.getElementById("gyre-test-state");
  function publish() {
    stateEl.textContent = JSON.stringify(test);
    document.body.dataset.polls = String(test.polls);
    document.body.dataset.errors = String(test.errors.length);
  }
  function recordError(what) {
    test.errors.push(String(what).slice(0, 500));
    publish();
  }
  window.addEventListener("error", (e) => {
    recordError("error: " + (e.message || e.type) + (e.filename ? " at " + e.filename + ":" + e.lineno : ""));
  }, true);
  window.addEventListener("unhandledrejection", (e) => {
    recordError("unhandled rejection: " + (e.reason && e.reason.stack ? e.reason.stack : e.reason));
  });
  const consoleError = console.error.bind(console);
  console.error = function (...args) {
    recordError("console.error: " + args.map(String).join(" "));
    consoleError(...args);
  };

  // ---- series -------------------------------------------------------------------------
  // key -> { t: [], thr: [], depth: [], util: [], stalls: [], errors: [], p50: [], p99: [], prev }
  const series = new Map();
  const views = new Map(); // key -> { el, charts, ... }
  const groupEls = new Map(); // group name -> element
  let lastTime = null;

  const kernelKey = (g, k) => g.name + "/" + k.name + "#" + k.id;

  function push(arr, v) {
    arr.push(v);
    if (arr.length > KEEP) arr.shift();
  }

  // Adds one snapshot (a history sample or a poll) to the series: rates from the
  // counters of the kernel's previous point.
  function addPoint(snap) {
    if (lastTime !== null && snap.time_ms < lastTime + MIN_STEP_MS) return false;
    lastTime = snap.time_ms;
    const t = snap.time_ms / 1000;
    for (const g of snap.groups) {
      for (const k of g.kernels) {
        const key = kernelKey(g, k);
        let s = series.get(key);
        if (!s) {
          s = { t: [], thr: [], depth: [], util: [], stalls: [], errors: [], p50: [], p99: [], prev: null };
          series.set(key, s);
        }
        const prev = s.prev;
        const dt = prev ? t - prev.t : 0;
        const rate = (now, before) => (prev && dt > 0 ? Math.max(0, now - before) / dt : null);
        push(s.t, t);
        push(s.thr, prev ? rate(k.processed, prev.processed) : k.processed_per_second);
        push(s.depth, k.inbox_depth);
        push(s.util, 100 * k.inbox_utilisation);
        push(s.stalls, prev ? rate(k.stalls, prev.stalls) : k.stalls_per_second);
        push(s.errors, prev ? rate(k.errors, prev.errors) : k.errors_per_second);
        push(s.p50, k.latency_p50_ns == null ? null : k.latency_p50_ns / 1e6);
        push(s.p99, k.latency_p99_ns == null ? null : k.latency_p99_ns / 1e6);
        s.prev = { t, processed: k.processed, stalls: k.stalls, errors: k.errors };
        if (!test.first[key]) {
          test.first[key] = { received: k.received, processed: k.processed, emitted: k.emitted, inbox_depth: k.inbox_depth, time_ms: snap.time_ms };
        }
      }
    }
    test.points += 1;
    return true;
  }

  // ---- drawing ------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmtRate(r) {
    if (r == null) return "–";
    if (r >= 1e6) return (r / 1e6).toFixed(2) + " M/s";
    if (r >= 1e3) return (r / 1e3).toFixed(1) + " k/s";
    return r.toFixed(r < 10 ? 1 : 0) + " /s";
  }
  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
  function fmtAxis(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    return String(Math.round(v * 100) / 100);
  }

  // A simple layered layout: each kernel's layer is its longest path from a source.
  function layers(n, edges) {
    const layer = new Array(n).fill(0);
    for (let round = 0; round < n; round++) {
      let changed = false;
      for (const e of edges) {
        if (e.from !== e.to && layer[e.to] < layer[e.from] + 1 && layer[e.from] + 1 < n) {
          layer[e.to] = layer[e.from] + 1;
          changed = true;
        }
      }
      if (!changed) break;
    }
    return layer;
  }

  function drawDag(g) {
    const n = g.kernels.length;
    const layer = layers(n, g.edges);
    const rows = {};
    const pos = [];
    const W = 150, H = 38, GX = 90, GY = 18;
    for (let i = 0; i < n; i++) {
      const l = layer[i];
      rows[l] = (rows[l] || 0) + 1;
      pos.push({ x: 10 + l * (W + GX), y: 10 + (rows[l] - 1) * (H + GY) });
    }
    const width = 20 + (Math.max(...layer, 0) + 1) * (W + GX) - GX;
    const height = 20 + Math.max(...Object.values(rows), 1) * (H + GY) - GY;
    const root = svg("svg", { class: "dag", width, height, viewBox: `0 0 ${width} ${height}` });
    const defs = svg("defs");
    const marker = svg("marker", { id: "arrow-" + cssId(g.name), markerWidth: 8, markerHeight: 8, refX: 7, refY: 4, orient: "auto" });
    marker.appendChild(svg("path", { d: "M0,0 L8,4 L0,8 z", fill: "#6b7385" }));
    defs.appendChild(marker);
    root.appendChild(defs);
    for (const e of g.edges) {
      const a = pos[e.from], b = pos[e.to];
      const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 2, y2 = b.y + H / 2;
      const mx = (x1 + x2) / 2;
      root.appendChild(svg("path", {
        d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
        fill: "none", stroke: "#6b7385", "stroke-width": 1.6,
        "marker-end": `url(#arrow-${cssId(g.name)})`,
      }));
      root.appendChild(svg("text", { x: mx, y: (y1 + y2) / 2 - 5, "text-anchor": "middle", fill: "#1d2330", class: "edge-rate" }, fmtRate(e.per_second)));
    }
    g.kernels.forEach((k, i) => {
      const p = pos[i];
      root.appendChild(svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6, fill: COLOURS[k.state] || "#9aa3b5" }));
      root.appendChild(svg("text", { x: p.x + W / 2, y: p.y + 16, "text-anchor": "middle", fill: "#fff", "font-weight": 600 }, k.name));
      root.appendChild(svg("text", { x: p.x + W / 2, y: p.y + 31, "text-anchor": "middle", fill: "#fff" }, k.state + " · " + fmtRate(k.processed_per_second)));
    });
    return root;
  }

  function cssId(s) { return s.replace(/[^A-Za-z0-9_-]/g, "_"); }

  const CHARTS = [
    { title: "throughput (processed/s)", series: [["thr", "processed/s", "#2e7d32"]] },
    { title: "inbox depth · utilisation %", series: [["depth", "depth", "#1565c0"], ["util", "util %", "#f9a825", "pct"]] },
    { title: "stalls/s · errors/s", series: [["stalls", "stalls/s", "#6a1b9a"], ["errors", "errors/s", "#c62828"]] },
    { title: "latency p50 · p99 (ms)", series: [["p50", "p50 ms", "#00838f"], ["p99", "p99 ms", "#ef6c00"]] },
  ];

  function makeChart(spec, target) {
    const wrap = el("div", { class: "chart" });
    wrap.appendChild(el("div", { class: "title" }, spec.title));
    target.appendChild(wrap);
    const hasPct = spec.series.some((s) => s[3] === "pct");
    const opts = {
      width: 300, height: 130, legend: { show: true, live: false },
      cursor: { show: true, points: { show: false } },
      scales: { x: { time: true }, ...(hasPct ? { pct: { range: [0, 100] } } : {}) },
      axes: [
        { size: 24, font: "10px system-ui", values: (u, vals) => vals.map((v) => new Date(v * 1000).toLocaleTimeString("en-GB")) },
        { size: 44, font: "10px system-ui", values: (u, vals) => vals.map(fmtAxis) },
        ...(hasPct ? [{ scale: "pct", side: 1, size: 34, font: "10px system-ui", grid: { show: false }, values: (u, vals) => vals.map((v) => v + "%") }] : []),
      ],
      series: [{}].concat(spec.series.map(([, label, stroke, scale]) => ({ label, stroke, width: 1.5, spanGaps: true, points: { show: false }, ...(scale ? { scale } : {}) }))),
    };
    const u = new uPlot(opts, [[]].concat(spec.series.map(() => [])), wrap);
    return { u, spec };
  }

  function kernelView(key, k, host) {
    let v = views.get(key);
    if (!v) {
      const root = el("div", { class: "kernel", "data-kernel": key });
      const head = el("div", { class: "head" });
      const name = el("span", { class: "name" }, k.name);
      const state = el("span", { class: "state" });
      const fault = el("span", { class: "fault" });
      const counters = el("span", { class: "counters" });
      head.append(name, state, fault, counters);
      const charts = el("div", { class: "charts" });
      root.append(head, charts);
      host.appendChild(root);
      v = { root, state, fault, counters, charts: CHARTS.map((c) => makeChart(c, charts)) };
      views.set(key, v);
    }
    v.state.textContent = k.state;
    v.state.style.background = COLOURS[k.state] || "#9aa3b5";
    v.fault.textContent = k.fault ? "fault: " + k.fault : "";
    v.counters.textContent =
      `received ${fmtInt(k.received)} · processed ${fmtInt(k.processed)} · emitted ${fmtInt(k.emitted)}` +
      ` · inbox ${fmtInt(k.inbox_depth)}/${fmtInt(k.inbox_capacity)} · stalls ${fmtInt(k.stalls)} · errors ${fmtInt(k.errors)}`;
    const s = series.get(key);
    if (s) {
      for (const c of v.charts) {
        c.u.setData([s.t.slice()].concat(c.spec.series.map(([field]) => s[field].slice())));
      }
    }
    return v;
  }

  function render(snap) {
    const rt = snap.runtime;
    document.getElementById("runtime").textContent =
      `runtime ${rt.backend} · ${rt.kernels} kernels · ${rt.workers} workers (${(100 * rt.worker_utilisation).toFixed(0)}% busy) · dead letters ${fmtInt(rt.dead_letters)}`;
    const host = document.getElementById("groups");
    const seen = new Set();
    for (const g of snap.groups) {
      let ge = groupEls.get(g.name);
      if (!ge) {
        const root = el("section", { class: "group", "data-group": g.name });
        const h = el("h2", {}, g.name);
        const backend = el("span", { class: "backend" });
        h.appendChild(backend);
        const dag = el("div");
        const kernels = el("div");
        root.append(h, dag, kernels);
        host.appendChild(root);
        ge = { root, backend, dag, kernels };
        groupEls.set(g.name, ge);
      }
      seen.add(g.name);
      ge.backend.textContent = g.label;
      ge.dag.replaceChildren(drawDag(g));
      test.groups[g.name] = g.label;
      for (const k of g.kernels) {
        const key = kernelKey(g, k);
        kernelView(key, k, ge.kernels);
        if (!test.kernels.includes(key)) test.kernels.push(key);
        test.states[key] = k.state;
        if (k.fault) test.faults[key] = k.fault; else delete test.faults[key];
        test.last[key] = { received: k.received, processed: k.processed, emitted: k.emitted, inbox_depth: k.inbox_depth, time_ms: snap.time_ms };
      }
    }
    // A group gone from the runtime (its kernels dropped) leaves the page.
    for (const [name, ge] of groupEls) {
      if (seen.has(name)) continue;
      ge.root.remove();
      groupEls.delete(name);
      for (const key of [...views.keys()]) if (key.startsWith(name + "/")) views.delete(key);
    }
    const relays = document.getElementById("relays");
    relays.textContent = snap.relays.length
      ? "relays: " + snap.relays.map((r) => `${r.from} (${r.from_backend}) → ${r.to} (${r.to_backend}): ${fmtInt(r.forwarded)}, ${fmtRate(r.per_second)}`).join(" · ")
      : "";
  }

  async function getJson(path) {
    const response = await fetch(path, { cache: "no-store" });
    if (!response.ok) throw new Error(`${path} answered ${response.status}`);
    return response.json();
  }

  const status = document.getElementById("status");
  async function poll() {
    try {
      const snap = await getJson("/api/snapshot");
      addPoint(snap);
      render(snap);
      test.polls += 1;
      test.last_seq = snap.seq;
      status.textContent = "live · " + new Date(snap.time_ms).toLocaleTimeString("en-GB");
      status.classList.remove("bad");
    } catch (e) {
      // The runtime may be gone (the example was stopped): say so, keep trying.
      status.textContent = "no answer from the runtime (" + e.message + "); retrying";
      status.classList.add("bad");
      test.poll_failures = (test.poll_failures || 0) + 1;
    }
    publish();
    setTimeout(poll, POLL_MS);
  }

  async function start() {
    try {
      const history = await getJson("/api/history");
      for (const s of history.samples) addPoint(s);
      test.history_samples = history.samples.length;
    } catch (e) {
      status.textContent = "no history (" + e.message + ")";
    }
    publish();
    poll();
  }
  start();
})();
