// iotkv console: what the edge and master pages share. Plain JavaScript,
// no framework, no build step. Every value shown comes from devices and is
// untrusted: the DOM is built with textContent only, never innerHTML.
"use strict";

const iotkv = (() => {
  const storeKey = "iotkv.login"; // sessionStorage: this tab only, gone when it closes

  // ---- DOM ----
  function el(tag, attrs, ...children) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") n.className = v;
      else if (k === "text") n.textContent = v;
      else if (k.startsWith("on")) n.addEventListener(k.slice(2), v);
      else n.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      n.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return n;
  }
  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const n = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") n.textContent = v;
      else n.setAttribute(k, v);
    }
    for (const c of children.flat()) if (c) n.append(c);
    return n;
  }
  function main() { return document.getElementById("main"); }
  function show(...nodes) { main().replaceChildren(...nodes); }

  // ---- formatting ----
  function ago(ms) {
    if (!ms) return "never";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + " s ago";
    if (s < 3600) return Math.floor(s / 60) + " min ago";
    if (s < 86400) return Math.floor(s / 3600) + " h ago";
    return new Date(ms).toISOString().slice(0, 16).replace("T", " ");
  }
  function bytes(n) {
    if (n === undefined || n === null) return "—";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  function num(n) { return n === undefined || n === null ? "—" : Number(n).toLocaleString("en"); }
  function json(v) { return v === undefined ? "" : JSON.stringify(v); }

  // ---- login and API calls ----
  function login() {
    try { return JSON.parse(sessionStorage.getItem(storeKey) || "null"); } catch (e) { return null; }
  }
  function basic(user, pass) {
    const b = new TextEncoder().encode(user + ":" + pass);
    let s = "";
    for (const c of b) s += String.fromCharCode(c);
    return "Basic " + btoa(s);
  }
  class HTTPError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }
  // fetch with the tab's credentials. credentials:"omit" keeps the browser
  // from adding credentials of its own and from opening its Basic auth
  // dialog on a 401.
  async function call(path, opts) {
    const l = login();
    const headers = Object.assign({ Accept: "application/json" }, (opts && opts.headers) || {});
    if (l) headers.Authorization = l.auth;
    const res = await fetch(path, Object.assign({}, opts, { headers, credentials: "omit", cache: "no-store" }));
    if (res.status === 401 && l) { logout("Your login was refused; log in again."); }
    return res;
  }
  async function api(path, opts) {
    const res = await call(path, opts);
    let body = null;
    try { body = await res.json(); } catch (e) { /* not JSON */ }
    if (!res.ok) {
      const e = (body && body.error) || {};
      throw new HTTPError(res.status, e.code || "http_" + res.status, e.message || res.statusText);
    }
    return body;
  }

  // ---- Server-Sent Events over fetch() ----
  // EventSource cannot send an Authorization header, so the stream is read
  // with fetch() and parsed here (the text/event-stream format: fields
  // "event", "data", "id", comment lines starting with ":", a blank line
  // ends an event). It reconnects with Last-Event-ID until stopped.
  function watch(path, handlers) {
    const ctl = new AbortController();
    let lastId = handlers.lastId || "";
    let stopped = false;
    const setState = (s) => handlers.state && handlers.state(s);
    async function once() {
      const headers = { Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await call(path, { headers, signal: ctl.signal });
      if (!res.ok) {
        let msg = res.statusText;
        try { msg = (await res.json()).error.message; } catch (e) { /* keep statusText */ }
        throw new HTTPError(res.status, "http_" + res.status, msg);
      }
      setState("live");
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "", ev = { event: "", data: [], id: null };
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buf += value;
        const lines = buf.split(/\r\n|\r|\n/);
        buf = lines.pop();
        for (const line of lines) {
          if (line === "") {
            if (ev.id !== null) lastId = ev.id;
            if (ev.data.length || ev.event) dispatch(ev.event || "message", ev.data.join("\n"), ev.id);
            ev = { event: "", data: [], id: null };
            continue;
          }
          if (line[0] === ":") continue; // heartbeat
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          let v = i < 0 ? "" : line.slice(i + 1);
          if (v[0] === " ") v = v.slice(1);
          if (field === "event") ev.event = v;
          else if (field === "data") ev.data.push(v);
          else if (field === "id") ev.id = v;
        }
      }
    }
    function dispatch(type, data, id) {
      let d = null;
      try { d = data ? JSON.parse(data) : null; } catch (e) { d = data; }
      const h = handlers[type];
      if (h) h(d, id);
    }
    (async () => {
      let backoff = 500;
      while (!stopped) {
        try {
          await once();
          backoff = 500;
        } catch (e) {
          if (stopped) return;
          if (e.status === 401 || e.status === 403 || e.status === 404) {
            setState("error: " + e.message);
            return;
          }
        }
        if (stopped) return;
        setState("reconnecting");
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(backoff * 2, 10000);
      }
    })();
    return { stop() { stopped = true; ctl.abort(); }, lastId: () => lastId };
  }

  // ---- pages ----
  // A page is a function(params) that renders into #main and returns a
  // cleanup function (stops its timers and streams) or nothing.
  let routes = {}, cleanup = null, defaultRoute = "";
  function route() {
    if (cleanup) { cleanup(); cleanup = null; }
    const l = login();
    document.getElementById("nav").hidden = !l;
    document.getElementById("logout").hidden = !l;
    document.getElementById("who").textContent = l ? l.name + " (" + l.role + ")" : "";
    if (!l) { loginPage(); return; }
    const hash = location.hash.replace(/^#\/?/, "") || defaultRoute;
    const [pathPart, query] = hash.split("?");
    const parts = pathPart.split("/").map((p) => { try { return decodeURIComponent(p); } catch (e) { return p; } });
    const page = routes[parts[0]] || routes[defaultRoute];
    for (const a of document.querySelectorAll("#nav a")) {
      a.classList.toggle("active", a.dataset.page === parts[0]);
    }
    cleanup = page(parts.slice(1), new URLSearchParams(query || "")) || null;
  }
  function hashFor(...parts) { return "#/" + parts.map(encodeURIComponent).join("/"); }

  function loginPage(message) {
    const user = el("input", { id: "user", name: "username", autocomplete: "username", required: true, autocapitalize: "off" });
    const pass = el("input", { id: "password", name: "password", type: "password", autocomplete: "current-password", required: true });
    const err = el("p", { id: "login-error", class: "error", role: "alert", text: message || "" });
    const form = el("form", { id: "login", class: "card narrow", method: "post" },
      el("h1", { text: "Log in" }),
      el("label", { for: "user", text: "Account" }), user,
      el("label", { for: "password", text: "Password" }), pass,
      el("button", { type: "submit", text: "Log in" }), err);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      err.textContent = "";
      const auth = basic(user.value, pass.value);
      try {
        const res = await fetch("/v1/whoami", { headers: { Authorization: auth, Accept: "application/json" }, credentials: "omit", cache: "no-store" });
        const body = await res.json().catch(() => null);
        if (!res.ok) {
          err.textContent = (body && body.error && body.error.message) || res.statusText;
          return;
        }
        sessionStorage.setItem(storeKey, JSON.stringify({ auth, name: body.name, role: body.role }));
        pass.value = "";
        route();
      } catch (e) {
        err.textContent = "cannot reach the server: " + e.message;
      }
    });
    show(form);
    user.focus();
  }
  function logout(message) {
    sessionStorage.removeItem(storeKey);
    if (cleanup) { cleanup(); cleanup = null; }
    route();
    if (message) document.getElementById("login-error").textContent = message;
  }

  function start(pageTable, def) {
    routes = pageTable;
    defaultRoute = def;
    document.getElementById("logout").addEventListener("click", () => logout());
    window.addEventListener("hashchange", route);
    route();
  }

  // poll calls fn now and every ms until the returned stop is called.
  function poll(fn, ms) {
    let timer = null, stopped = false;
    const tick = async () => {
      try { await fn(); } catch (e) { /* fn shows its own errors */ }
      if (!stopped) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stopped = true; clearTimeout(timer); };
  }

  function table(id, headers, rows, cls) {
    return el("table", { id, class: "grid " + (cls || "") },
      el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
      el("tbody", {}, rows));
  }
  // td with a label for the narrow (phone) layout, where rows become cards.
  function td(label, content, attrs) {
    return el("td", Object.assign({ "data-label": label }, attrs || {}), content);
  }
  function errorBox(e) { return el("p", { class: "error", role: "alert", text: e.message || String(e) }); }

  // lineChart draws points [{x: ms, y: number}] as an SVG line chart.
  function lineChart(points, opts) {
    const W = 960, H = 300, L = 60, R = 12, T = 12, B = 30;
    const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": (opts && opts.label) || "chart" });
    if (!points.length) {
      s.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "muted", text: "no numeric values in this range" }));
      return s;
    }
    let x0 = Math.min(...points.map((p) => p.x)), x1 = Math.max(...points.map((p) => p.x));
    let y0 = Math.min(...points.map((p) => p.y)), y1 = Math.max(...points.map((p) => p.y));
    if (x0 === x1) { x0 -= 1000; x1 += 1000; }
    if (y0 === y1) { y0 -= 1; y1 += 1; }
    const pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    const X = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
    const Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = y0 + ((y1 - y0) * i) / 4, y = Y(v);
      s.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "gridline" }));
      s.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end", class: "axis", text: Number(v.toPrecision(4)).toString() }));
    }
    for (let i = 0; i <= 3; i++) {
      const t = x0 + ((x1 - x0) * i) / 3;
      s.append(svg("text", { x: X(t), y: H - 8, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle", class: "axis", text: new Date(t).toLocaleTimeString("en-GB") }));
    }
    s.append(svg("polyline", { points: points.map((p) => X(p.x).toFixed(1) + "," + Y(p.y).toFixed(1)).join(" "), class: "line" }));
    for (const p of points.slice(-200)) {
      s.append(svg("circle", { cx: X(p.x).toFixed(1), cy: Y(p.y).toFixed(1), r: 2.5, class: "dot" },
        svg("title", { text: new Date(p.x).toISOString() + " " + p.y })));
    }
    return s;
  }

  return { el, svg, show, ago, bytes, num, json, api, call, watch, start, poll, table, td, errorBox, hashFor, lineChart, login, HTTPError };
})();
