// smartproxy dashboard: Server-Sent Events from /api/events (one frame a second), polling of
// /api/dashboard when the stream is unavailable. Everything comes from this admin listener.
(function () {
  "use strict";

  const state = {
    mode: "connecting",
    frames: 0,
    range: 300,
    series: { x: [], in: [], out: [] },
    chart: null,
    lastFrame: null,
    lastFrameAt: 0,
  };
  // For people poking around in the console, and for the browser test.
  window.smartproxyDashboard = state;

  // ---------------------------------------------------------------- formatting
  const UNITS = ["B", "kB", "MB", "GB", "TB", "PB"];
  function bytes(n) {
    if (!isFinite(n)) return "–";
    let i = 0;
    let v = Math.abs(n);
    while (v >= 1000 && i < UNITS.length - 1) { v /= 1000; i++; }
    const s = i === 0 ? String(Math.round(v)) : v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0);
    return (n < 0 ? "-" : "") + s + " " + UNITS[i];
  }
  function rate(n) { return bytes(n) + "/s"; }
  function count(n) {
    if (!isFinite(n)) return "–";
    return Math.round(n).toLocaleString("en-US");
  }
  function perSec(n) {
    if (!isFinite(n)) return "–";
    return n >= 100 ? count(n) : n.toFixed(n >= 10 ? 1 : 2).replace(/\.?0+$/, "") || "0";
  }
  function duration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  function ago(unixSeconds, now) {
    return duration(now - unixSeconds) + " ago";
  }
  function clock(unixSeconds) {
    const d = new Date(unixSeconds * 1000);
    return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  // ---------------------------------------------------------------- DOM helpers
  function $(id) { return document.getElementById(id); }
  function h(tag, attrs) {
    const el = document.createElement(tag);
    if (attrs) for (const k in attrs) {
      if (k === "class") el.className = attrs[k];
      else if (k === "text") el.textContent = attrs[k];
      else el.setAttribute(k, attrs[k]);
    }
    for (let i = 2; i < arguments.length; i++) {
      const c = arguments[i];
      if (c == null) continue;
      el.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return el;
  }
  function setFigure(id, value, text) {
    const el = $(id);
    if (!el) return;
    el.dataset.value = String(value);
    el.textContent = text;
  }
  function replace(el, children) {
    while (el.firstChild) el.removeChild(el.firstChild);
    children.forEach(function (c) { el.appendChild(c); });
  }

  // ---------------------------------------------------------------- theme
  const THEMES = ["auto", "light", "dark"];
  function applyTheme(t) {
    if (t === "auto") document.documentElement.removeAttribute("data-theme");
    else document.documentElement.setAttribute("data-theme", t);
    $("theme-label").textContent = t;
    try { localStorage.setItem("smartproxy-theme", t); } catch (e) { /* private mode */ }
    if (state.chart) makeChart();
  }
  function initTheme() {
    let t = "auto";
    try { t = localStorage.getItem("smartproxy-theme") || "auto"; } catch (e) { /* ignore */ }
    const q = new URLSearchParams(location.search).get("theme");
    if (THEMES.indexOf(q) >= 0) t = q;
    applyTheme(THEMES.indexOf(t) >= 0 ? t : "auto");
    $("theme").addEventListener("click", function () {
      const cur = $("theme-label").textContent;
      applyTheme(THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length]);
    });
    if (window.matchMedia) {
      const mq = window.matchMedia("(prefers-color-scheme: dark)");
      const re = function () { if ($("theme-label").textContent === "auto" && state.chart) makeChart(); };
      if (mq.addEventListener) mq.addEventListener("change", re);
    }
  }
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  // ---------------------------------------------------------------- chart
  function chartSize() {
    const el = $("chart");
    return { width: Math.max(200, el.clientWidth), height: Math.max(160, el.clientHeight - 34) };
  }
  function withAlpha(color, a) {
    // #rrggbb -> rgba
    const m = /^#([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(color);
    if (!m) return color;
    return "rgba(" + parseInt(m[1], 16) + "," + parseInt(m[2], 16) + "," + parseInt(m[3], 16) + "," + a + ")";
  }
  function makeChart() {
    if (typeof uPlot === "undefined") return;
    const el = $("chart");
    if (state.chart) { state.chart.destroy(); state.chart = null; }
    const text = cssVar("--muted"), grid = cssVar("--grid"), cin = cssVar("--in"), cout = cssVar("--out");
    // Axis labels follow the page's font size (larger on a wall screen).
    const fs = parseFloat(getComputedStyle(document.documentElement).fontSize) || 15;
    const font = Math.round(fs * 0.8) + "px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif";
    const axis = { stroke: text, font: font, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = Object.assign(chartSize(), {
      scales: {
        // The whole window of the chosen range, from the newest point back.
        x: { time: true, range: function (u, min, max) { return [Math.min(min, max - state.range), max]; } },
        y: { range: function (u, min, max) { return [0, Math.max(max * 1.1, 1000)]; } } },
      series: [
        { value: function (u, v) { return v == null ? "–" : clock(v); } },
        { label: "in", stroke: cin, width: 2, fill: withAlpha(cin, 0.12), points: { show: false }, value: function (u, v) { return v == null ? "–" : rate(v); } },
        { label: "out", stroke: cout, width: 2, fill: withAlpha(cout, 0.12), points: { show: false }, value: function (u, v) { return v == null ? "–" : rate(v); } },
      ],
      axes: [
        Object.assign({}, axis, { size: Math.round(fs * 3.2) }),
        Object.assign({}, axis, { size: Math.round(fs * 5.6), values: function (u, vals) { return vals.map(rate); } }),
      ],
      legend: { show: true, live: true },
      cursor: { drag: { x: false, y: false } },
    });
    state.chart = new uPlot(opts, chartData(), el);
  }
  function chartData() {
    return [state.series.x, state.series.in, state.series.out];
  }
  function setSeries(points) {
    state.series = { x: [], in: [], out: [] };
    points.forEach(function (p) { pushPoint(p); });
    if (state.chart) state.chart.setData(chartData());
  }
  function pushPoint(p) {
    const s = state.series;
    const last = s.x.length ? s.x[s.x.length - 1] : -1;
    if (p.timestamp < last) return;
    if (p.timestamp === last) { s.in[s.in.length - 1] = p.in; s.out[s.out.length - 1] = p.out; return; }
    s.x.push(p.timestamp); s.in.push(p.in); s.out.push(p.out);
    const oldest = p.timestamp - state.range;
    while (s.x.length && s.x[0] <= oldest) { s.x.shift(); s.in.shift(); s.out.shift(); }
  }
  function loadHistory() {
    const range = state.range;
    return fetch("api/throughput/history?seconds=" + range, { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (points) { if (range === state.range) setSeries(points); })
      .catch(function (e) { console.warn("history:", e); });
  }
  function initChart() {
    makeChart();
    loadHistory();
    document.querySelectorAll("#chart-panel .seg button").forEach(function (b) {
      b.addEventListener("click", function () {
        document.querySelectorAll("#chart-panel .seg button").forEach(function (o) { o.classList.toggle("on", o === b); });
        state.range = Number(b.dataset.range);
        loadHistory();
      });
    });
    // Minute points of the 24 h view are refreshed once a minute; seconds come with frames.
    setInterval(function () { if (state.range > 3600) loadHistory(); }, 60000);
    let pending = false;
    window.addEventListener("resize", function () {
      if (pending) return;
      pending = true;
      requestAnimationFrame(function () { pending = false; if (state.chart) state.chart.setSize(chartSize()); });
    });
  }

  // ---------------------------------------------------------------- panels
  function httpClasses(snap) {
    const classes = {};
    const add = function (reqs) { (reqs || []).forEach(function (r) { classes[r.code_class] = (classes[r.code_class] || 0) + r.count; }); };
    (snap.routes || []).forEach(function (r) { add(r.http && r.http.requests); });
    add(snap.http && snap.http.unrouted && snap.http.unrouted.requests);
    return classes;
  }
  function routeErrors(r) {
    let e = r.backend_connect_failures || 0;
    ((r.http && r.http.requests) || []).forEach(function (q) { if (q.code_class === "5xx") e += q.count; });
    return e;
  }
  function windowRate(list, seconds) {
    const w = (list || []).find(function (x) { return x.window_seconds === seconds; }) || (list || [])[0];
    return w ? { in: w.in, out: w.out } : { in: 0, out: 0 };
  }
  function bars(el, entries, cls) {
    if (!entries.length) { replace(el, [h("div", { class: "none", text: "none yet" })]); return; }
    const max = Math.max.apply(null, entries.map(function (e) { return e[1]; }).concat([1]));
    replace(el, entries.map(function (e) {
      const fill = h("div", { class: "fill " + (cls ? cls(e[0]) : "") });
      fill.style.width = (100 * e[1] / max).toFixed(1) + "%";
      return h("div", { class: "bar-row", "data-key": e[0], "data-value": String(e[1]) },
        h("span", { text: e[0] }), h("div", { class: "track" }, fill), h("span", { class: "count", text: count(e[1]) }));
    }));
  }

  function renderRoutes(frame, snap) {
    const metrics = {};
    (snap.routes || []).forEach(function (r) { metrics[r.name] = r; });
    const table = (frame.routes && frame.routes.routes) || [];
    const tbody = document.querySelector("#routes tbody");
    $("routes-count").textContent = table.length + (table.length === 1 ? " route" : " routes");
    if (!table.length) { replace(tbody, [h("tr", null, h("td", { colspan: "12", class: "empty", text: "no routes" }))]); return; }
    replace(tbody, table.map(function (rt) {
      const m = metrics[rt.name] || {};
      const w = windowRate(m.throughput, 10);
      const targets = rt.targets || [];
      const down = targets.filter(function (t) { return t.health && t.health.down; });
      const tcell = h("span", { class: "targets", title: targets.map(function (t) {
        const hl = t.health || {};
        return t.host + ":" + t.port + (hl.down ? " down (" + (hl.last_error || "failed") + ")" : " up") + ", " + t.active + " open";
      }).join("\n") });
      targets.forEach(function (t) { tcell.appendChild(h("span", { class: "tdot" + (t.health && t.health.down ? " down" : "") })); });
      tcell.appendChild(document.createTextNode(targets.length ? " " + (targets.length - down.length) + "/" + targets.length : (rt.handler || "–")));
      const errors = routeErrors(m);
      const name = h("td", null, h("span", { class: "route-name", text: rt.name }));
      if (rt.http) name.appendChild(h("span", { class: "tag", text: "http" }));
      if (rt.tls) name.appendChild(h("span", { class: "tag", text: rt.tls }));
      if (!rt.enabled) name.appendChild(h("span", { class: "tag", text: "off" }));
      return h("tr", { "data-route": rt.name, "data-total": String(m.total || 0), "data-active": String(m.active || 0), "data-bytes-in": String(m.bytes_in || 0), "data-bytes-out": String(m.bytes_out || 0), "data-refused": String(rt.refused || 0) },
        name,
        h("td", { text: (rt.ports || []).join(", ") }),
        h("td", null, tcell),
        h("td", { class: "num", text: count(m.active || 0) }),
        h("td", { class: "num", text: count(m.total || 0) }),
        h("td", { class: "num", text: rate(w.in) }),
        h("td", { class: "num", text: rate(w.out) }),
        h("td", { class: "num", text: bytes(m.bytes_in || 0) }),
        h("td", { class: "num", text: bytes(m.bytes_out || 0) }),
        h("td", { class: "num", text: perSec(m.requests_per_second || 0) }),
        h("td", { class: "num" + (rt.refused ? " warn" : ""), text: count(rt.refused || 0) }),
        h("td", { class: "num" + (errors ? " bad" : ""), text: count(errors), title: (m.backend_connect_failures || 0) + " backend connect failures" }));
    }));
  }

  function renderIps(frame, snap) {
    const el = $("ips");
    if (!frame.per_ip) {
      replace(el, [h("div", { class: "none" }, "Per-IP series are off. Set ", h("code", { text: "[metrics] per_ip = true" }), " to see the busiest clients.")]);
      return;
    }
    const ips = snap.ips || [];
    if (!ips.length) { replace(el, [h("div", { class: "none", text: "no client yet" })]); return; }
    const rows = ips.slice(0, 10).map(function (ip) {
      const w = windowRate(ip.throughput, 10);
      return h("tr", { "data-ip": ip.ip }, h("td", { text: ip.ip }), h("td", { class: "num", text: count(ip.active) }),
        h("td", { class: "num", text: rate(w.in + w.out) }), h("td", { class: "num", text: bytes(ip.bytes_in + ip.bytes_out) }));
    });
    replace(el, [h("div", { class: "table-wrap" }, h("table", null,
      h("thead", null, h("tr", null, h("th", { text: "Client" }), h("th", { class: "num", text: "Open" }), h("th", { class: "num", text: "Rate" }), h("th", { class: "num", text: "Bytes" }))),
      h("tbody", null, ...rows)))]);
  }

  function renderCerts(snap) {
    const el = $("certs");
    const certs = (snap.certificates || []).slice().sort(function (a, b) { return a.expiry_timestamp_seconds - b.expiry_timestamp_seconds; });
    if (!certs.length) { replace(el, [h("div", { class: "none", text: "no terminating route" })]); return; }
    const now = snap.meta.now;
    replace(el, [h("div", { class: "table-wrap" }, h("table", null,
      h("thead", null, h("tr", null, h("th", { text: "Route" }), h("th", { text: "Domain" }), h("th", { class: "num", text: "Expires in" }))),
      h("tbody", null, ...certs.map(function (c) {
        const days = (c.expiry_timestamp_seconds - now) / 86400;
        const cls = days < 7 ? "bad" : days < 21 ? "warn" : "good";
        return h("tr", { "data-cert": c.route + "/" + c.domain }, h("td", { text: c.route }), h("td", { text: c.domain }),
          h("td", { class: "num " + cls, title: new Date(c.expiry_timestamp_seconds * 1000).toISOString(), text: days < 0 ? "expired" : days < 2 ? duration(days * 86400) : days > 365 ? "until " + new Date(c.expiry_timestamp_seconds * 1000).toISOString().slice(0, 10) : Math.floor(days) + " days" }));
      }))))]);
  }

  function renderReloads(frame, snap) {
    const list = frame.reloads || [];
    const r = snap.reloads || { ok: 0, failed: 0 };
    $("reload-counts").textContent = r.ok + " applied · " + r.failed + " refused";
    const el = $("reloads");
    if (!list.length) { replace(el, [h("li", { class: "none", text: "no reload since start" })]); return; }
    replace(el, list.map(function (x) {
      return h("li", { "data-ok": String(x.ok) },
        h("span", { class: "badge " + (x.ok ? "ok" : "refused"), text: x.ok ? "applied" : "refused" }),
        h("span", null, clock(x.time) + " · " + (x.trigger || "reload") + " · " + ago(x.time, snap.meta.now)),
        h("span", { class: "msg", text: x.message || "" }));
    }));
  }

  function render(frame) {
    state.frames++;
    state.lastFrame = frame;
    const snap = frame.snapshot;
    const m = snap.meta;
    $("version").textContent = "v" + String(m.version).replace(/^smartproxy\s*/, "");
    $("uptime").textContent = duration(m.uptime_seconds);
    const tp = snap.throughput.instant;
    setFigure("tp-in", tp.in, rate(tp.in));
    setFigure("tp-out", tp.out, rate(tp.out));
    setFigure("conn-active", snap.connections.active, count(snap.connections.active));
    $("ips-active").textContent = count(snap.connections.ips_active);
    setFigure("conn-total", snap.totals.connections, count(snap.totals.connections));
    setFigure("req-rate", snap.requests.per_second, perSec(snap.requests.per_second));
    setFigure("req-total", snap.requests.total, count(snap.requests.total));
    setFigure("bytes-in", snap.totals.bytes_in, bytes(snap.totals.bytes_in));
    setFigure("bytes-out", snap.totals.bytes_out, bytes(snap.totals.bytes_out));
    const refused = Object.keys(snap.refused || {}).reduce(function (a, k) { return a + snap.refused[k]; }, 0);
    setFigure("refused-total", refused, count(refused));
    setFigure("backend-failures", snap.backend.connect_failures, count(snap.backend.connect_failures));

    (snap.throughput.history || []).forEach(function (p) { if (state.range <= 3600) pushPoint(p); });
    if (state.chart) state.chart.setData(chartData());

    renderRoutes(frame, snap);
    const classes = httpClasses(snap);
    bars($("http-classes"), Object.keys(classes).sort().map(function (k) { return [k, classes[k]]; }), function (k) { return "c" + k; });
    const http = snap.http || {};
    setFigure("http-inflight", http.in_flight || 0, count(http.in_flight || 0));
    const errs = Object.keys(http.errors || {}).filter(function (k) { return http.errors[k] > 0; });
    replace($("http-errors"), errs.map(function (k) { return h("span", { "data-key": k, "data-value": String(http.errors[k]) }, k.replace(/_/g, " ") + ": " + count(http.errors[k])); }));

    const reasons = Object.keys(snap.refused || {}).filter(function (k) { return snap.refused[k] > 0; })
      .map(function (k) { return [k, snap.refused[k]]; }).sort(function (a, b) { return b[1] - a[1]; });
    bars($("refusals"), reasons);

    const pp = snap.proxy_headers || { accepted: {}, rejected: [] };
    const acc = Object.keys(pp.accepted || {}).reduce(function (a, k) { return a + pp.accepted[k]; }, 0);
    const rej = (pp.rejected || []).reduce(function (a, r) { return a + r.count; }, 0);
    setFigure("pp-accepted", acc, count(acc));
    setFigure("pp-rejected", rej, count(rej));
    $("pp-accepted-by").textContent = Object.keys(pp.accepted || {}).map(function (k) { return k + " " + count(pp.accepted[k]); }).join(" · ");
    $("pp-rejected-by").textContent = (pp.rejected || []).map(function (r) { return r.reason + " (" + r.version + ") " + count(r.count); }).join(" · ");

    renderIps(frame, snap);
    renderCerts(snap);
    renderReloads(frame, snap);
    document.body.dataset.frames = String(state.frames);
  }

  // ---------------------------------------------------------------- transport
  let source = null;
  let pollTimer = null;
  function setMode(mode) {
    state.mode = mode;
    const el = $("live");
    el.dataset.mode = mode;
    el.textContent = mode === "live" ? "live" : mode === "polling" ? "polling" : mode === "offline" ? "offline" : "connecting";
  }
  function accept(frame) {
    state.lastFrameAt = Date.now();
    try { render(frame); } catch (e) { console.error("render:", e); }
  }
  function poll() {
    fetch("api/dashboard", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
      .then(function (f) { if (state.mode !== "live") setMode("polling"); accept(f); })
      .catch(function () { if (state.mode !== "live") setMode("offline"); });
  }
  function startPolling() {
    if (pollTimer) return;
    pollTimer = setInterval(poll, 1000);
    poll();
  }
  function stopPolling() {
    if (!pollTimer) return;
    clearInterval(pollTimer);
    pollTimer = null;
  }
  function startStream() {
    if (!window.EventSource) { startPolling(); return; }
    source = new EventSource("api/events");
    source.addEventListener("frame", function (e) {
      setMode("live");
      stopPolling();
      let f;
      try { f = JSON.parse(e.data); } catch (err) { return; }
      accept(f);
    });
    // EventSource reconnects by itself; meanwhile the page polls.
    source.onerror = function () { if (state.mode === "live") setMode("connecting"); startPolling(); };
  }
  // A stream that went quiet (a proxy in front buffering it) falls back to polling too.
  setInterval(function () {
    if (state.lastFrameAt && Date.now() - state.lastFrameAt > 3500 && state.mode === "live") { setMode("connecting"); startPolling(); }
  }, 1000);

  function init() {
    initTheme();
    initChart();
    // ?transport=poll: the fallback on its own (what a browser without EventSource gets).
    if (new URLSearchParams(location.search).get("transport") === "poll") startPolling();
    else startStream();
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
