// iotkv console, edge pages: devices, the live key browser, a key's
// history, the edge's health.
"use strict";

(() => {
  const { el, show, ago, bytes, num, json, api, watch, poll, table, td, errorBox, hashFor, lineChart, login } = iotkv;
  const enc = encodeURIComponent;
  const keyPath = (key) => key.split("/").map(enc).join("/");

  // ---- devices ----
  function devicesPage() {
    const body = el("div", { id: "devices-body" }, el("p", { class: "muted", text: "loading…" }));
    show(el("section", { class: "card" }, el("h1", { text: "Devices" }), body));
    return poll(async () => {
      try {
        const { devices } = await api("/v1/devices");
        devices.sort((a, b) => a.device.localeCompare(b.device));
        const rows = devices.map((d) => el("tr", { "data-device": d.device },
          td("Device", el("a", { href: hashFor("keys", d.device), class: "device-link", text: d.device })),
          td("Connected", el("span", { class: d.connected ? "dot on" : "dot off", text: d.connected ? "connected" : "offline" })),
          td("Last seq", num(d.last_seq), { class: "num" }),
          td("Last write", ago(d.last_write)),
          td("Keys", d.keys === undefined ? "—" : num(d.keys), { class: "num" }),
          td("Bytes", d.bytes === undefined ? "—" : bytes(d.bytes), { class: "num" })));
        body.replaceChildren(devices.length
          ? table("devices", ["Device", "Connected", "Last seq", "Last write", "Keys", "Bytes"], rows)
          : el("p", { class: "muted", text: "No device has connected or written yet." }));
      } catch (e) {
        body.replaceChildren(errorBox(e));
      }
    }, 2000);
  }

  // ---- key browser ----
  function keysPage(params, query) {
    const device = params[0] || (login().role === "device" ? login().name : "");
    const prefix = query.get("prefix") || "";
    const devIn = el("input", { id: "kb-device", name: "device", value: device, placeholder: "device", required: true, autocapitalize: "off" });
    const preIn = el("input", { id: "kb-prefix", name: "prefix", value: prefix, placeholder: "key prefix (optional)", autocapitalize: "off" });
    const form = el("form", { class: "inline", method: "post" }, devIn, preIn, el("button", { type: "submit", text: "Show" }));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const p = preIn.value ? "?prefix=" + enc(preIn.value) : "";
      location.hash = hashFor("keys", devIn.value.trim()) + p;
    });
    const state = el("span", { id: "live-state", class: "badge" });
    const body = el("div", { id: "keys-body" });
    show(el("section", { class: "card" }, el("h1", {}, "Keys ", device ? el("small", { text: device }) : null, state), form, body));
    if (!device) {
      body.append(el("p", { class: "muted", text: "Pick a device (from the Devices page, or type its name)." }));
      return null;
    }

    const rows = new Map(); // key -> {tr, seq}
    let tbody = null, loaded = false, pending = [], next = "";
    const more = el("button", { id: "more", type: "button", text: "More keys", hidden: true });

    function cellsFor(tr, rec, changeSeq, fresh) {
      tr.replaceChildren(
        td("Key", el("a", { href: hashFor("key", device, ...rec.key.split("/")), class: "key-link", text: rec.key })),
        td("Value", el("code", { class: "value", text: json(rec.value) })),
        td("Updated", ago(rec.updated_at || rec.at || Date.now())),
        td("Device ts", rec.ts ? new Date(rec.ts).toISOString() : "—"));
      tr.dataset.key = rec.key;
      tr.dataset.changeSeq = String(changeSeq || 0);
      if (fresh) {
        tr.classList.remove("flash");
        void tr.offsetWidth; // restart the highlight animation
        tr.classList.add("flash");
      }
    }
    function upsert(rec, changeSeq, fresh) {
      let r = rows.get(rec.key);
      if (r && changeSeq && r.seq >= changeSeq) return; // already shown
      if (!r) {
        r = { tr: el("tr", {}), seq: 0 };
        rows.set(rec.key, r);
        const after = [...rows.keys()].filter((k) => k > rec.key).sort()[0];
        const before = after ? rows.get(after).tr : null;
        tbody.insertBefore(r.tr, before && before.parentNode === tbody ? before : null);
      }
      r.seq = changeSeq || r.seq;
      cellsFor(r.tr, rec, r.seq, fresh);
    }
    function remove(key, changeSeq) {
      const r = rows.get(key);
      if (!r || (changeSeq && r.seq >= changeSeq)) return;
      r.tr.remove();
      rows.delete(key);
    }
    function apply(type, d, id) {
      if (!d || d.device !== device || !d.key.startsWith(prefix)) return;
      const cs = Number(id) || 0;
      if (!loaded) { pending.push([type, d, cs]); return; }
      if (type === "put") upsert({ key: d.key, value: d.value, ts: d.ts, updated_at: Date.now() }, cs, true);
      else remove(d.key, cs);
    }
    async function loadPage(after) {
      const q = new URLSearchParams({ limit: "200" });
      if (prefix) q.set("prefix", prefix);
      if (after) q.set("after", after);
      const res = await api("/v1/kv/" + enc(device) + "?" + q);
      for (const rec of res.items) upsert(rec, rec.change_seq, false);
      next = res.next || "";
      more.hidden = !next;
    }
    async function reload() {
      loaded = false;
      rows.clear();
      tbody = el("tbody", {});
      body.replaceChildren(el("table", { id: "keys", class: "grid" },
        el("thead", {}, el("tr", {}, ["Key", "Value", "Updated", "Device ts"].map((h) => el("th", { text: h })))), tbody), more);
      try {
        await loadPage("");
      } catch (e) {
        body.replaceChildren(errorBox(e));
        return;
      }
      loaded = true;
      for (const [type, d, cs] of pending.splice(0)) apply(type, d, cs);
      if (!rows.size) tbody.append(el("tr", { class: "empty" }, el("td", { colspan: "4", class: "muted", text: "No keys" + (prefix ? " under " + prefix : "") + " yet; new ones appear here live." })));
    }
    more.addEventListener("click", () => loadPage(next).catch((e) => body.append(errorBox(e))));

    // The stream starts first and its events wait until the list is in:
    // a change made between the two is then either in the list or in the
    // stream (and both are applied by change seq, newest wins).
    let started = false;
    const w = watch("/v1/watch/" + enc(device) + (prefix ? "?prefix=" + enc(prefix) : ""), {
      put: (d, id) => { const e = tbody && tbody.querySelector("tr.empty"); if (e) e.remove(); apply("put", d, id); },
      del: (d, id) => apply("del", d, id),
      reset: () => reload(),
      state: (s) => {
        state.textContent = s;
        state.className = "badge " + (s === "live" ? "live" : "warn");
        if (s === "live" && !started) { started = true; reload(); }
        if (s.startsWith("error") && !started) { started = true; reload(); }
      },
    });
    return () => w.stop();
  }

  // ---- one key: value and history ----
  function keyPage(params) {
    const device = params[0], key = params.slice(1).join("/");
    const range = el("select", { id: "range" },
      [["1h", 3600e3], ["6h", 6 * 3600e3], ["24h", 86400e3], ["7d", 7 * 86400e3]].map(([t, ms]) => el("option", { value: String(ms), text: "last " + t })));
    const current = el("div", { id: "current" });
    const chartBox = el("div", { id: "history-chart", class: "chart-box" });
    const list = el("div", { id: "history-list" });
    show(el("section", { class: "card" },
      el("p", {}, el("a", { href: hashFor("keys", device), text: "← " + device })),
      el("h1", {}, el("code", { text: key })),
      current,
      el("div", { class: "row" }, el("h2", { text: "History" }), range),
      chartBox, list));

    let items = [];
    function render() {
      const pts = items.filter((i) => i.op === "put" && typeof i.value === "number").map((i) => ({ x: i.at, y: i.value }));
      chartBox.replaceChildren(lineChart(pts, { label: "history of " + key }));
      const last = items.slice(-50).reverse();
      list.replaceChildren(table("history", ["When", "Op", "Value", "Seq"], last.map((i) =>
        el("tr", {}, td("When", new Date(i.at).toISOString().replace("T", " ").slice(0, 23)), td("Op", i.op),
          td("Value", el("code", { class: "value", text: i.op === "put" ? json(i.value) : "—" })), td("Seq", num(i.seq), { class: "num" }))), "compact"));
      const cur = items.length ? items[items.length - 1] : null;
      current.replaceChildren(el("p", { class: "current" }, "Now: ",
        el("code", { id: "current-value", class: "value big", text: cur ? (cur.op === "put" ? json(cur.value) : "deleted") : "—" })));
    }
    async function load() {
      const since = Date.now() - Number(range.value);
      items = [];
      let after = "";
      try {
        for (let page = 0; page < 20; page++) {
          const q = new URLSearchParams({ since: String(since), limit: "1000" });
          if (after) q.set("after", after);
          const res = await api("/v1/history/" + enc(device) + "/" + keyPath(key) + "?" + q);
          items.push(...res.items);
          if (!res.next || !res.items.length) break;
          after = String(res.next);
        }
      } catch (e) {
        chartBox.replaceChildren(errorBox(e));
        return;
      }
      render();
    }
    range.addEventListener("change", load);
    let started = false;
    const w = watch("/v1/watch/" + enc(device) + "?prefix=" + enc(key), {
      put: (d, id) => { if (d.key === key) { items.push({ op: "put", value: d.value, ts: d.ts, seq: Number(id), at: Date.now() }); render(); } },
      del: (d, id) => { if (d.key === key) { items.push({ op: "del", seq: Number(id), at: Date.now() }); render(); } },
      reset: () => load(),
      state: (s) => { if (!started && (s === "live" || s.startsWith("error"))) { started = true; load(); } },
    });
    return () => w.stop();
  }

  // ---- health ----
  // ops/s and commit p99 are computed between two polls of /v1/stats.
  function quantile(buckets, q) {
    const total = buckets.length ? buckets[buckets.length - 1].count : 0;
    if (!total) return null;
    const want = q * total;
    let prevLE = 0, prevCount = 0;
    for (const b of buckets) {
      if (b.count >= want) {
        const span = b.count - prevCount;
        return span ? prevLE + ((b.le - prevLE) * (want - prevCount)) / span : b.le;
      }
      prevLE = b.le; prevCount = b.count;
    }
    return buckets[buckets.length - 1].le; // beyond the last bucket
  }
  function healthPage() {
    if (login().role === "device") {
      show(el("section", { class: "card" }, el("h1", { text: "Health" }),
        el("p", { class: "muted", text: "The edge's health is shown to reader, writer and admin accounts." })));
      return null;
    }
    const tile = (id, label) => el("div", { class: "tile" }, el("div", { class: "label", text: label }), el("div", { id, class: "value", text: "—" }));
    const err = el("div", {});
    show(el("section", { class: "card" }, el("h1", { text: "Health" }),
      el("div", { class: "tiles" }, tile("h-ops", "Ingest ops/s"), tile("h-p99", "Commit p99"),
        tile("h-conn", "Connected devices"), tile("h-disk", "Disk use")),
      el("p", { class: "muted", text: "Rates over the last poll interval (2 s)." }), err));
    let prev = null;
    const set = (id, v) => { document.getElementById(id).textContent = v; };
    return poll(async () => {
      let st;
      try {
        st = await api("/v1/stats");
      } catch (e) {
        err.replaceChildren(errorBox(e));
        return;
      }
      err.replaceChildren();
      set("h-conn", num(st.connected_devices) + " of " + num(st.devices));
      set("h-disk", bytes(st.disk_bytes));
      if (prev) {
        const dt = (st.at - prev.at) / 1000;
        set("h-ops", dt > 0 ? num(Math.round((st.ops_applied_total - prev.ops_applied_total) / dt)) : "—");
        const delta = st.commit_seconds_buckets.map((b, i) => ({ le: b.le, count: b.count - ((prev.commit_seconds_buckets[i] || {}).count || 0) }));
        const p99 = quantile(delta, 0.99);
        set("h-p99", p99 === null ? "no commits" : (p99 * 1000).toFixed(p99 < 0.01 ? 2 : 1) + " ms");
      }
      prev = st;
    }, 2000);
  }

  iotkv.start({ devices: devicesPage, keys: keysPage, key: keyPage, health: healthPage }, "devices");
})();
