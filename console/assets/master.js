// iotkv console, master pages: every edge with its backup lag and last
// snapshot, and a device → edge finder.
"use strict";

(() => {
  const { el, show, ago, num, api, poll, table, td, errorBox } = iotkv;

  function edgesPage() {
    const body = el("div", { id: "edges-body" }, el("p", { class: "muted", text: "loading…" }));
    show(el("section", { class: "card" }, el("h1", { text: "Edges" }),
      el("p", { class: "muted", text: "Lag: changes the edge has that this master has not journaled yet. Snapshot: the change seq latest.json holds." }),
      body));
    return poll(async () => {
      try {
        const { edges } = await api("/v1/backups");
        const rows = edges.map((e) => el("tr", { "data-edge": e.edge, class: e.lag > 0 ? "lagging" : "" },
          td("Edge", el("strong", { text: e.edge })),
          td("Connected", el("span", { class: e.connected ? "dot on" : "dot off", text: e.connected ? "connected" : "down" })),
          td("Lag", el("span", { class: "lag", text: num(e.lag) }), { class: "num" }),
          td("Master seq", num(e.seq), { class: "num" }),
          td("Edge seq", num(e.edge_seq), { class: "num" }),
          td("Snapshot seq", num(e.snapshot_seq), { class: "num" }),
          td("Snapshot at", e.snapshot_at ? ago(Date.parse(e.snapshot_at)) : (e.pending ? num(e.pending) + " keys pending" : "up to date")),
          td("Keys", num(e.keys), { class: "num" }),
          td("Last contact", e.last_contact ? ago(Date.parse(e.last_contact)) : "never")));
        body.replaceChildren(edges.length
          ? table("edges", ["Edge", "Connected", "Lag", "Master seq", "Edge seq", "Snapshot seq", "Snapshot", "Keys", "Last contact"], rows)
          : el("p", { class: "muted", text: "No edge known yet." }));
      } catch (e) {
        body.replaceChildren(errorBox(e));
      }
    }, 2000);
  }

  function findPage(params, query) {
    const prefix = query.get("prefix") || "";
    const input = el("input", { id: "find-prefix", name: "prefix", value: prefix, placeholder: "device name or prefix", autocapitalize: "off" });
    const form = el("form", { class: "inline", method: "post" }, input, el("button", { type: "submit", text: "Find" }));
    const body = el("div", { id: "find-body" });
    show(el("section", { class: "card" }, el("h1", { text: "Find a device" }), form, body));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      location.hash = "#/find?prefix=" + encodeURIComponent(input.value.trim());
    });
    if (!query.has("prefix")) {
      body.append(el("p", { class: "muted", text: "Which edge holds a device: type its name, or a prefix." }));
      return null;
    }
    (async () => {
      try {
        const q = new URLSearchParams({ prefix, limit: "100" });
        const res = await api("/v1/fleet/devices?" + q);
        body.replaceChildren(res.items.length
          ? table("found", ["Device", "Edge", "Last seq", "Last write"], res.items.map((d) => el("tr", { "data-device": d.device },
            td("Device", d.device), td("Edge", el("strong", { text: d.edge }), { class: "edge" }), td("Last seq", num(d.last_seq), { class: "num" }),
            td("Last write", ago(d.last_write)))))
          : el("p", { class: "muted", text: "No device" + (prefix ? " starting with " + prefix : "") + "." }),
          res.next ? el("p", { class: "muted", text: "More devices match; narrow the prefix." }) : null);
      } catch (e) {
        body.replaceChildren(e.status === 404 && e.code === "not_found" && /no route/.test(e.message)
          ? el("p", { class: "muted", text: "This master has no device directory." }) : errorBox(e));
      }
    })();
    return null;
  }

  iotkv.start({ edges: edgesPage, find: findPage }, "edges");
})();
