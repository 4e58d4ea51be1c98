// The placement page: reads the admin API's JSON endpoints (the same ones any client
// uses) and draws pods as bars of capacity with their models inside. No framework and no
// build step. It polls with fetch() rather than an EventSource because fetch can send
// `Authorization: Bearer <token>`, which reads will need once the token guards them.
"use strict";

(() => {
  const POLL_MS = Math.max(250, Number(new URLSearchParams(location.search).get("interval")) || 2000);
  const TOKEN_KEY = "meshserve.adminToken";
  const EVENTS_SHOWN = 40;

  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    selected: selectedFromPath(location.pathname),
    hovered: null,
    timer: null,
    inFlight: false,
    again: false,
  };

  function selectedFromPath(path) {
    const m = /^\/ui\/models\/([^/]+)$/.exec(path);
    return m ? decodeURIComponent(m[1]) : null;
  }

  // -- small DOM helpers (text always goes in as text, never as HTML) --------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "style") {
        for (const [prop, v] of Object.entries(value)) {
          if (prop.startsWith("--")) node.style.setProperty(prop, v);
          else node.style[prop] = v;
        }
      }
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = Number(n);
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i += 1;
    }
    return `${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
  }

  function hue(id) {
    // FNV-1a, spread by the golden angle so that similar ids get distant colours
    let h = 0x811c9dc5;
    for (const c of id) h = Math.imul(h ^ c.codePointAt(0), 0x01000193) >>> 0;
    return Math.round((h % 1000) * 137.508) % 360;
  }

  function clock(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString([], { hour12: false });
  }

  function ago(iso) {
    if (!iso) return "never";
    const s = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 1000));
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    return `${Math.round(s / 3600)}h ago`;
  }

  function modelHref(id) {
    return `/ui/models/${encodeURIComponent(id)}`;
  }

  // -- the admin API ---------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
    }
    return body;
  }

  async function allModels() {
    const items = [];
    for (let offset = 0; ; offset += 1000) {
      const page = await api(`/v1/models?limit=1000&offset=${offset}`);
      items.push(...page.items);
      if (!page.items.length || items.length >= page.total) return items;
    }
  }

  async function refresh() {
    if (state.inFlight) {
      state.again = true; // e.g. a token pasted while a poll is out: read again with it
      return;
    }
    state.inFlight = true;
    try {
      const selected = state.selected;
      const [pods, models, events, detail] = await Promise.all([
        api("/v1/pods"),
        allModels(),
        api(`/v1/events?limit=${EVENTS_SHOWN}`),
        selected ? api(`/v1/models/${encodeURIComponent(selected)}`).catch((err) => err) : null,
      ]);
      render({ pods: pods.items, models, events: events.items, detail });
      setStatus("live", `live · updated ${new Date().toLocaleTimeString([], { hour12: false })}`);
      banner(null);
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        setStatus("error", "needs a token");
        banner("This admin API needs a token to read: paste it above and press Use.");
        document.getElementById("token").focus();
      } else {
        setStatus("error", `cannot reach the admin API (${err.message}); retrying`);
      }
    } finally {
      state.inFlight = false;
      document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
      if (state.again) {
        state.again = false;
        refresh();
      }
    }
  }

  function setStatus(kind, text) {
    const node = document.getElementById("status");
    node.className = `status ${kind}`;
    node.textContent = text;
  }

  function banner(text) {
    const node = document.getElementById("banner");
    node.hidden = !text;
    node.textContent = text || "";
  }

  // -- rendering -------------------------------------------------------------------------
  function render({ pods, models, events, detail }) {
    const byId = new Map(models.map((m) => [m.id, m]));
    renderPods(pods, byId);
    renderUnplaced(models);
    renderDetail(detail);
    renderEvents(detail && !(detail instanceof Error) ? detail.events : events, !!state.selected);
    applyHighlight();
  }

  function copyState(model, podId) {
    const copy = model && model.copies.find((c) => c.pod === podId);
    return copy ? copy.state : null;
  }

  function renderPods(pods, byId) {
    const root = document.getElementById("pods");
    if (!pods.length) {
      root.replaceChildren(el("p", { class: "empty" }, "No runtime pods have registered."));
      return;
    }
    pods = [...pods].sort((a, b) => a.id.localeCompare(b.id));
    root.replaceChildren(...pods.map((pod) => renderPod(pod, byId)));
  }

  function renderPod(pod, byId) {
    const capacity = pod.capacityBytes || 0;
    const held = new Map(pod.models.map((m) => [m.id, m.bytes]));
    // a copy the model lists on this pod but the pod holds no bytes for (yet): still shown
    for (const model of byId.values()) {
      if (model.copies.some((c) => c.pod === pod.id) && !held.has(model.id)) held.set(model.id, 0);
    }
    const segments = [...held.entries()]
      .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
      .map(([id, reserved]) => renderSegment(pod, byId.get(id), id, reserved, capacity));
    const free = Math.max(0, capacity - pod.allocatedBytes);
    segments.push(
      el("div", { class: "seg free", style: { flexGrow: "1" }, title: `${bytes(free)} free` },
        el("span", { class: "seg-label" }, `${bytes(free)} free`)),
    );
    const usedPct = capacity ? Math.min(100, (100 * pod.measuredUsedBytes) / capacity) : 0;
    const allocPct = capacity ? Math.min(100, (100 * pod.allocatedBytes) / capacity) : 0;
    return el("section", { class: `pod${pod.draining ? " draining" : ""}`, dataset: { pod: pod.id } },
      el("div", { class: "pod-head" },
        el("h3", { class: "pod-id" }, pod.id),
        el("span", { class: "tag runtime" }, pod.runtime || "any runtime"),
        pod.loading ? el("span", { class: "tag loading" }, `loading ${pod.loading}/${pod.maxLoadingConcurrency}`) : null,
        pod.draining ? el("span", { class: "tag draining" }, "draining") : null,
        el("span", { class: "pod-beat", title: pod.lastHeartbeat || "" }, `heartbeat ${ago(pod.lastHeartbeat)}`),
      ),
      el("div", { class: "bar", role: "list", "aria-label": `models on ${pod.id}` }, segments),
      el("div", {
        class: `meter${capacity && pod.measuredUsedBytes > capacity ? " over" : ""}`,
        title: "bytes reserved (light) and measured in use (dark) of the pod's capacity, to scale",
      },
        el("div", { class: "meter-reserved", style: { width: `${allocPct}%` } }),
        el("div", { class: "meter-measured", style: { width: `${usedPct}%` } }),
      ),
      el("div", { class: "pod-stats" },
        el("span", {}, "reserved ", el("b", { class: "pod-reserved" }, bytes(pod.allocatedBytes))),
        el("span", {}, "measured ", el("b", { class: "pod-measured" }, bytes(pod.measuredUsedBytes))),
        el("span", {}, "capacity ", el("b", { class: "pod-capacity" }, bytes(capacity))),
        el("span", {}, el("b", {}, String(held.size)), held.size === 1 ? " model" : " models"),
      ),
    );
  }

  function sizeText(sizes, reserved) {
    const parts = [];
    if (sizes.declared) parts.push(`decl ${bytes(sizes.declared)}`);
    if (sizes.measured) parts.push(`meas ${bytes(sizes.measured)}`);
    if (!parts.length) parts.push(`res ${bytes(reserved)}`);
    return parts.join(" · ");
  }

  function renderSegment(pod, model, id, reserved, capacity) {
    const copyOf = copyState(model, pod.id) || "reserved";
    const sizes = (model && model.sizes) || {};
    const copies = model ? model.copies.length : 1;
    const pct = capacity ? (100 * reserved) / capacity : 0;
    // declared (light band) and measured (solid) on one scale inside the box
    const top = Math.max(sizes.declared || 0, sizes.measured || 0, 1);
    const title = [
      `${id} on ${pod.id}: ${copyOf}`,
      `reserved here ${bytes(reserved)} (${pct.toFixed(1)}% of the pod)`,
      `declared ${bytes(sizes.declared)} · predicted ${bytes(sizes.predicted)} · measured ${bytes(sizes.measured)}`,
      copies > 1 ? `${copies} copies: ${model.copies.map((c) => c.pod).join(", ")}` : "1 copy",
    ].join("\n");
    return el("a", {
      class: `seg model ${copyOf}`,
      href: modelHref(id),
      role: "listitem",
      title,
      dataset: { model: id, pod: pod.id, state: copyOf, reserved: String(reserved) },
      style: { "--hue": String(hue(id)), flexBasis: `max(11.5rem, ${pct}%)` },
      onmouseenter: () => hover(id),
      onmouseleave: () => hover(null),
      onclick: (event) => navigate(event, id),
    },
      sizes.declared ? el("span", { class: "seg-declared", style: { width: `${(100 * sizes.declared) / top}%` } }) : null,
      sizes.measured ? el("span", { class: "seg-measured", style: { width: `${(100 * sizes.measured) / top}%` } }) : null,
      el("span", { class: "seg-label" }, id,
        copies > 1 ? el("span", { class: "copies", title: `${copies} copies` }, ` ×${copies}`) : null),
      el("span", { class: "seg-size" }, copyOf === "loading" ? "loading… " : "", sizeText(sizes, reserved)),
    );
  }

  function renderUnplaced(models) {
    const root = document.getElementById("unplaced");
    const unplaced = models.filter((m) => !m.copies.length).sort((a, b) => a.id.localeCompare(b.id));
    if (!unplaced.length) {
      root.replaceChildren(el("p", { class: "empty" }, "Every registered model has a copy on a pod."));
      return;
    }
    root.replaceChildren(...unplaced.map((m) =>
      el("a", {
        class: `chip ${m.status.toLowerCase()}`,
        href: modelHref(m.id),
        dataset: { model: m.id, state: m.state },
        style: { "--hue": String(hue(m.id)) },
        title: m.lastFailure ? `${m.state}: ${m.lastFailure.message}` : m.state,
        onmouseenter: () => hover(m.id),
        onmouseleave: () => hover(null),
        onclick: (event) => navigate(event, m.id),
      }, el("span", { class: "chip-id" }, m.id), el("span", { class: "chip-state" }, m.state)),
    ));
  }

  function row(label, ...value) {
    return el("tr", {}, el("th", {}, label), el("td", {}, ...value));
  }

  function renderDetail(detail) {
    const root = document.getElementById("detail");
    document.title = state.selected ? `${state.selected} · meshserve placement` : "meshserve placement";
    if (!state.selected) {
      root.hidden = true;
      root.replaceChildren();
      return;
    }
    root.hidden = false;
    const close = el("a", { class: "close", href: "/ui", onclick: (event) => navigate(event, null), title: "back to all models" }, "×");
    if (detail instanceof Error) {
      const gone = detail.status === 404 || detail.status === 422;
      root.replaceChildren(close, el("h2", { id: "detail-missing" },
        gone ? `No model '${state.selected}'` : `Cannot read '${state.selected}'`),
      el("p", {}, gone ? "It is not registered (any more)." : detail.message));
      return;
    }
    const m = detail;
    const failure = m.lastFailure;
    root.replaceChildren(
      close,
      el("h2", { id: "detail-id", style: { "--hue": String(hue(m.id)) } }, el("span", { class: "swatch" }), m.id),
      el("p", {}, el("span", { id: "detail-state", class: `tag state ${m.status.toLowerCase()}` }, m.state),
        " ", el("span", { class: "muted" }, `${m.format}${m.formatVersion ? " " + m.formatVersion : ""} · runtime ${m.runtime || "auto"}`)),
      el("table", { class: "facts" },
        el("tbody", {},
          row("copies", el("span", { id: "detail-copies" },
            m.copies.length ? m.copies.map((c, i) => [i ? ", " : "", el("b", {}, c.pod), ` (${c.state}, since ${clock(c.since)})`]) : "none")),
          row("min / max copies", `${m.minCopies} / ${m.maxCopies || "no limit"}`),
          row("declared", bytes(m.sizes.declared)),
          row("predicted", bytes(m.sizes.predicted)),
          row("measured", el("span", { id: "detail-measured" }, bytes(m.sizes.measured))),
          row("storage", m.storageUri || [m.storageKey, m.storagePath].filter(Boolean).join(":") || "–"),
          row("requests", `${m.requests} (${m.requestsPerMinute}/min), last ${m.lastUsed ? ago(m.lastUsed) : "never"}`),
          row("registered", m.createdAt ? new Date(m.createdAt).toLocaleString() : "–"),
          failure ? row("last failure", el("span", { class: "failure" },
            `${failure.reason || "failed"}${failure.pod ? " on " + failure.pod : ""}: ${failure.message || ""}`)) : null,
        ),
      ),
    );
  }

  function renderEvents(events, forModel) {
    document.getElementById("events-title").textContent =
      forModel ? `Events of ${state.selected}` : "Recent placement events";
    const list = document.getElementById("events");
    if (!events || !events.length) {
      list.replaceChildren(el("li", { class: "empty" }, "No events yet."));
      return;
    }
    list.replaceChildren(...events.map((e) =>
      el("li", { class: "event", dataset: { model: e.model || "", pod: e.pod || "", kind: e.kind } },
        el("div", { class: "ev-head" },
          el("time", { datetime: e.time, title: e.time }, clock(e.time)),
          el("span", { class: `tag kind kind-${e.kind}` }, e.kind),
          e.model ? el("a", {
            class: "ev-model",
            href: modelHref(e.model),
            onclick: (event) => navigate(event, e.model),
            onmouseenter: () => hover(e.model),
            onmouseleave: () => hover(null),
          }, e.model) : null,
          e.pod ? el("span", { class: "ev-pod" }, e.model ? `on ${e.pod}` : e.pod) : null,
        ),
        e.message ? el("div", { class: "ev-msg" }, e.message) : null,
      ),
    ));
  }

  // -- copies of one model highlighted together --------------------------------------------
  function hover(id) {
    state.hovered = id;
    applyHighlight();
  }

  function applyHighlight() {
    const focus = state.hovered || state.selected;
    document.body.classList.toggle("focusing", !!focus);
    for (const node of document.querySelectorAll("[data-model]")) {
      node.classList.toggle("hl", !!focus && node.dataset.model === focus);
      node.classList.toggle("selected", !!state.selected && node.dataset.model === state.selected);
    }
  }

  // -- navigation without reloading: /ui and /ui/models/<id> ------------------------------
  function navigate(event, id) {
    if (event && (event.metaKey || event.ctrlKey || event.shiftKey || event.button === 1)) return;
    if (event) event.preventDefault();
    state.selected = id;
    history.pushState({ id }, "", id ? modelHref(id) : "/ui");
    refresh();
  }

  window.addEventListener("popstate", () => {
    state.selected = selectedFromPath(location.pathname);
    refresh();
  });

  // -- the token: kept for this browser tab only (sessionStorage) --------------------------
  const input = document.getElementById("token");
  input.value = state.token;
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = input.value.trim();
    if (state.token) sessionStorage.setItem(TOKEN_KEY, state.token);
    else sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });
  document.getElementById("token-clear").addEventListener("click", () => {
    input.value = "";
    state.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    refresh();
  });

  refresh();
  state.timer = setInterval(refresh, POLL_MS);
})();
