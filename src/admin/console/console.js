// The admin console: polls GET /api/state once a second and updates the page in place, so rows keep their
// identity (and a button its focus) between updates. Every string from the proxy goes into the page through
// textContent or an attribute, never as markup, and nothing here may throw out of an event handler or timer.
(function () {
  "use strict";

  const POLL_INTERVAL_MS = 1000;
  const STATE_TIMEOUT_MS = 4000;
  const ACTION_TIMEOUT_MS = 20000;
  const ANSWERS_KEPT = 6;
  const DASH = "—";
  const KNOWN_STATES = ["healthy", "unhealthy", "ejected", "draining", "slow_start", "circuit_open"];
  const KNOWN_EVENT_KINDS = ["health", "reload", "drain"];
  // An ACME name's state shown in the colour of the backend state it resembles; any other is state-other.
  const ACME_STATE_CLASSES = new Map([
    ["valid", "state-healthy"],
    ["ordering", "state-slow-start"],
    ["waiting", "state-draining"],
    ["failed", "state-unhealthy"],
  ]);
  const CERTIFICATE_SOURCES = ["file", "acme", "self_signed"];
  // Days left under which a certificate is urgent (the CertificateExpiringSoon alert) and due soon, as the
  // dashboard's Certificates panel colours them.
  const DAYS_URGENT = 14;
  const DAYS_SOON = 30;

  // The admin token lives only in this variable: never in storage or cookies, gone when the tab closes.
  let adminToken = null;

  let pollTimer = null;
  let polling = false;
  let pollAgain = false;
  let unreachableSince = null;
  let shownGeneration = null;
  let eventsSignature = null;
  const upstreamViews = new Map();

  const $ = (id) => document.getElementById(id);

  // --- small DOM helpers ---------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "" : String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  function setAttr(node, name, value) {
    if (value === null || value === undefined) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, String(value));
    }
  }

  function setClass(node, className) {
    if (node.className !== className) node.className = className;
  }

  // --- formatting ------------------------------------------------------------------------------------------

  const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
  const isText = (value) => typeof value === "string" && value.length > 0;

  function formatRate(value) {
    if (!isNumber(value)) return DASH;
    return value >= 100 ? String(Math.round(value)) : value.toFixed(1);
  }

  function formatRatio(value) {
    if (!isNumber(value)) return DASH;
    if (value === 0) return "0%";
    if (value < 0.001) return "<0.1%";
    return (value * 100).toFixed(value < 0.1 ? 1 : 0) + "%";
  }

  function formatMs(value) {
    if (!isNumber(value)) return DASH;
    if (value < 1) return value.toFixed(2) + " ms";
    if (value < 10) return value.toFixed(1) + " ms";
    if (value < 10000) return Math.round(value) + " ms";
    return (value / 1000).toFixed(1) + " s";
  }

  function formatDuration(seconds) {
    if (!isNumber(seconds) || seconds < 0) return DASH;
    const total = Math.floor(seconds);
    const days = Math.floor(total / 86400);
    const hours = Math.floor((total % 86400) / 3600);
    const minutes = Math.floor((total % 3600) / 60);
    const secs = total % 60;
    if (days > 0) return days + "d " + hours + "h " + minutes + "m";
    if (hours > 0) return hours + "h " + minutes + "m " + secs + "s";
    if (minutes > 0) return minutes + "m " + secs + "s";
    return secs + "s";
  }

  function formatAgo(iso, now) {
    const at = Date.parse(iso);
    if (!isText(iso) || Number.isNaN(at)) return DASH;
    const seconds = Math.max(0, (now - at) / 1000);
    if (seconds < 60) return seconds.toFixed(1) + " s ago";
    return formatDuration(seconds) + " ago";
  }

  function formatClock(iso) {
    const at = new Date(iso);
    if (!isText(iso) || Number.isNaN(at.getTime())) return DASH;
    return at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  // A Unix time in seconds as its UTC date and minute, "2026-03-01 12:00 UTC".
  function formatDate(seconds) {
    if (!isNumber(seconds)) return DASH;
    const at = new Date(seconds * 1000);
    if (Number.isNaN(at.getTime())) return DASH;
    return at.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }

  // A Unix time in seconds relative to `now` (milliseconds): "in 4m 10s" or "2h 3m 0s ago".
  function formatWhen(seconds, now) {
    if (!isNumber(seconds)) return "";
    const delta = seconds - now / 1000;
    return delta >= 0 ? "in " + formatDuration(delta) : formatDuration(-delta) + " ago";
  }

  // Whole days from `now` (milliseconds) until a Unix time in seconds, rounded down: the dashboard's
  // (tls_certificate_expiry_timestamp_seconds - time()) / 86400 without its fraction. Null when unknown.
  function daysLeft(seconds, now) {
    return isNumber(seconds) ? Math.floor((seconds * 1000 - now) / 86400000) : null;
  }

  function formatDaysLeft(days) {
    if (days === null) return DASH;
    if (days < 0) return "expired";
    return days + (days === 1 ? " day left" : " days left");
  }

  function expiryClass(days) {
    if (days === null) return "expiry-unknown";
    if (days < DAYS_URGENT) return "expiry-urgent";
    if (days < DAYS_SOON) return "expiry-soon";
    return "expiry-ok";
  }

  function stateWord(state) {
    return isText(state) ? state.replace(/_/g, " ") : "unknown";
  }

  // Only known states get their own colour; the class name never comes from the proxy's text.
  function stateClass(state) {
    return KNOWN_STATES.includes(state) ? "state-" + state.replace(/_/g, "-") : "state-other";
  }

  function describeError(error) {
    if (error && error.name === "AbortError") return "no answer in time";
    if (error && error.name === "TimeoutError") return "no answer in time";
    if (error && isText(error.message)) return error.message;
    return String(error);
  }

  // --- HTTP ------------------------------------------------------------------------------------------------

  async function request(path, options, timeoutMs) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      return await fetch(path, Object.assign({ cache: "no-store", credentials: "omit" }, options, {
        signal: controller.signal,
      }));
    } finally {
      clearTimeout(timer);
    }
  }

  // The body of an answer as JSON when it is JSON, else as trimmed text.
  async function readAnswer(response) {
    let text = "";
    try {
      text = await response.text();
    } catch (error) {
      return { text: "(body unreadable: " + describeError(error) + ")", json: null };
    }
    let json = null;
    if ((response.headers.get("content-type") || "").includes("json")) {
      try {
        json = JSON.parse(text);
      } catch (error) {
        json = null;
      }
    }
    return { text: text.trim(), json: json };
  }

  // --- live state ------------------------------------------------------------------------------------------

  function schedulePoll(delay) {
    if (pollTimer !== null) clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, delay);
  }

  async function poll() {
    pollTimer = null;
    if (polling) {
      pollAgain = true;
      return;
    }
    polling = true;
    try {
      const response = await request("/api/state", { headers: { Accept: "application/json" } }, STATE_TIMEOUT_MS);
      if (!response.ok) throw new Error("GET /api/state answered " + response.status);
      const state = await response.json();
      if (!state || typeof state !== "object" || Array.isArray(state)) {
        throw new Error("GET /api/state answered something unexpected");
      }
      showReachable();
      try {
        render(state);
      } catch (error) {
        console.error("console: could not show the state", error);
      }
    } catch (error) {
      showUnreachable(error);
    } finally {
      polling = false;
      const again = pollAgain;
      pollAgain = false;
      schedulePoll(again ? 0 : POLL_INTERVAL_MS);
    }
  }

  function showReachable() {
    unreachableSince = null;
    $("unreachable").hidden = true;
    document.body.classList.remove("stale");
    const connection = $("connection");
    setClass(connection, "connection connection-live");
    setText(connection, "Live · updated " + formatClock(new Date().toISOString()));
  }

  function showUnreachable(error) {
    if (unreachableSince === null) unreachableSince = new Date();
    const since = formatClock(unreachableSince.toISOString());
    const banner = $("unreachable");
    setText(banner, "The proxy is unreachable since " + since + " (" + describeError(error) +
      "). What is shown is the last state received; retrying every second.");
    banner.hidden = false;
    document.body.classList.add("stale");
    const connection = $("connection");
    setClass(connection, "connection connection-down");
    setText(connection, "Unreachable since " + since);
  }

  function render(state) {
    const startedAt = Date.parse(state.started_at);
    const now = !Number.isNaN(startedAt) && isNumber(state.uptime_seconds)
      ? startedAt + state.uptime_seconds * 1000
      : Date.now();
    renderSummary(state);
    renderUpstreams(Array.isArray(state.upstreams) ? state.upstreams : [], now);
    renderRoutes(Array.isArray(state.routes) ? state.routes : []);
    renderCertificates(Array.isArray(state.certificates) ? state.certificates : [], now);
    renderAcme(state.acme && typeof state.acme === "object" ? state.acme : null, now);
    renderEvents(Array.isArray(state.events) ? state.events : []);
    if (state.generation !== shownGeneration) {
      shownGeneration = state.generation;
      loadConfig();
    }
  }

  function renderSummary(state) {
    setText($("version"), isText(state.version) ? "v" + state.version : "");
    const ready = $("ready");
    if (state.ready === true) {
      setClass(ready, "pill pill-good");
      setText(ready, "Ready");
    } else {
      setClass(ready, "pill pill-warn");
      setText(ready, "Not ready" + (isText(state.not_ready_reason) ? ": " + state.not_ready_reason : ""));
    }
    setText($("uptime"), formatDuration(state.uptime_seconds));
    setAttr($("uptime"), "title", isText(state.started_at) ? "started " + state.started_at : null);
    setText($("generation"), state.generation === undefined || state.generation === null
      ? DASH : "generation " + state.generation);
    setText($("digest"), isText(state.digest) ? state.digest : "");
    const connections = state.connections && typeof state.connections === "object" ? state.connections : {};
    const parts = Object.keys(connections).map((protocol) => protocol + " " + connections[protocol]);
    setText($("connections"), parts.length ? parts.join(" · ") : DASH);

    let healthy = 0;
    let total = 0;
    for (const upstream of Array.isArray(state.upstreams) ? state.upstreams : []) {
      if (!upstream || typeof upstream !== "object") continue;
      if (isNumber(upstream.healthy_backends)) healthy += upstream.healthy_backends;
      if (isNumber(upstream.total_backends)) total += upstream.total_backends;
    }
    const title = "quic-proxy · " + healthy + "/" + total + " healthy";
    if (document.title !== title) document.title = title;
  }

  // --- routes ---------------------------------------------------------------------------------------------

  let routesSignature = null;

  function describeCounts(counts) {
    if (!counts || typeof counts !== "object") return DASH;
    const parts = [];
    for (const action of Object.keys(counts)) {
      const results = counts[action];
      if (!results || typeof results !== "object") continue;
      const shown = Object.keys(results)
        .filter((result) => isNumber(results[result]) && results[result] > 0)
        .map((result) => result + " " + results[result]);
      if (shown.length) parts.push(action + ": " + shown.join(", "));
    }
    return parts.length ? parts.join(" · ") : DASH;
  }

  function renderRoutes(routes) {
    const signature = JSON.stringify(routes);
    if (signature === routesSignature) return;
    routesSignature = signature;
    const rows = [];
    for (const route of routes) {
      if (!route || typeof route !== "object") continue;
      const row = el("tr");
      row.dataset.route = isText(route.route) ? route.route : "";
      const name = el("th", "col-route", isText(route.route) ? route.route : DASH);
      name.scope = "row";
      const actions = Array.isArray(route.actions) ? route.actions.filter(isText) : [];
      let limit = "";
      if (route.rate_limit && typeof route.rate_limit === "object" && isNumber(route.rate_limit.keys)) {
        limit = " (rate limit: " + route.rate_limit.keys + " keys tracked)";
      }
      row.append(
        name,
        el("td", "col-target", isText(route.target) ? route.target : DASH),
        el("td", "col-actions", (actions.length ? actions.join(", ") : "none") + limit),
        el("td", "col-counts", describeCounts(route.counts)),
      );
      rows.push(row);
    }
    $("routes").replaceChildren(...rows);
  }

  // --- certificates --------------------------------------------------------------------------------------

  // Rows are rebuilt only when what the proxy says about them changes; the cells that depend on the time (days
  // left, "in 4m 10s") are brought up to date on every poll by each row's tick.
  let certificatesSignature = null;
  let certificateTicks = [];
  let acmeSignature = null;
  let acmeTicks = [];

  // A table cell with the column's class and, for the narrow layout, its heading as data-label.
  function cell(tag, key, label, text) {
    const node = el(tag, "col-" + key, text);
    node.dataset.label = label;
    return node;
  }

  function emptyRow(columns, text) {
    const tr = el("tr", "empty");
    const td = el("td", null, text);
    td.colSpan = columns;
    tr.append(td);
    return tr;
  }

  // The days-left text and colours of a certificate's row, as of `now`.
  function showDaysLeft(row, node, notAfter, now) {
    const days = daysLeft(notAfter, now);
    setText(node, formatDaysLeft(days));
    setAttr(node, "data-days", days === null ? null : String(days));
    const tone = days === null ? "" : days < DAYS_URGENT ? " bad" : days < DAYS_SOON ? " warn" : "";
    setClass(node, "col-days-left" + tone);
    setClass(row, "row " + expiryClass(days));
  }

  function renderCertificates(certificates, now) {
    const signature = JSON.stringify(certificates);
    if (signature !== certificatesSignature) {
      certificatesSignature = signature;
      certificateTicks = [];
      const rows = [];
      for (const certificate of certificates) {
        if (!certificate || typeof certificate !== "object") continue;
        const names = Array.isArray(certificate.names) ? certificate.names.filter(isText) : [];
        const source = isText(certificate.source) ? certificate.source : "unknown";
        const row = el("tr");
        row.dataset.source = source;
        row.dataset.names = names.join(" ");
        const name = cell("th", "names", "Names");
        name.scope = "row";
        for (const text of names) name.append(el("span", "certificate-name", text));
        if (names.length === 0) name.append(el("span", "certificate-name", DASH));
        if (isText(certificate.file)) name.append(el("span", "certificate-file muted", certificate.file));
        const kind = cell("td", "source", "Source");
        const badge = CERTIFICATE_SOURCES.includes(source) ? "source-" + source.replace(/_/g, "-") : "state-other";
        kind.append(el("span", "badge " + badge, source.replace(/_/g, " ")));
        const expires = cell("td", "expires", "Expires", formatDate(certificate.not_after));
        const days = cell("td", "days-left", "Days left");
        const serial = cell("td", "serial", "Serial", isText(certificate.serial) ? certificate.serial : DASH);
        row.append(name, kind, expires, days, serial);
        rows.push(row);
        certificateTicks.push((at) => showDaysLeft(row, days, certificate.not_after, at));
      }
      if (rows.length === 0) rows.push(emptyRow(5, "None: without server.tls only the plain HTTP listener runs."));
      $("certificates").replaceChildren(...rows);
    }
    for (const tick of certificateTicks) tick(now);
  }

  // An absolute time with its distance from now under it; the distance is the tick's to update.
  function timeCell(key, label, seconds) {
    const node = cell("td", key, label);
    const relative = el("span", "sub muted");
    node.append(el("span", null, formatDate(seconds)), relative);
    return { node: node, tick: (at) => setText(relative, formatWhen(seconds, at)) };
  }

  function renderAcme(acme, now) {
    const section = $("acme");
    if (acme === null) {
      section.hidden = true;
      if (acmeSignature !== null) $("acme-names").replaceChildren();
      acmeSignature = null;
      acmeTicks = [];
      return;
    }
    section.hidden = false;
    setText($("acme-directory"), isText(acme.directory) ? "Directory " + acme.directory : "");
    const names = Array.isArray(acme.names) ? acme.names : [];
    const signature = JSON.stringify(names);
    if (signature !== acmeSignature) {
      acmeSignature = signature;
      acmeTicks = [];
      const rows = [];
      for (const entry of names) {
        if (!entry || typeof entry !== "object") continue;
        const state = isText(entry.state) ? entry.state : "unknown";
        const stateClass = ACME_STATE_CLASSES.get(state) || "state-other";
        const row = el("tr", "row " + stateClass);
        row.dataset.name = isText(entry.name) ? entry.name : "";
        row.dataset.state = state;
        const name = cell("th", "name", "Name", isText(entry.name) ? entry.name : DASH);
        name.scope = "row";
        const badge = cell("td", "state", "State");
        badge.append(el("span", "badge " + stateClass, stateWord(state)));
        const expires = timeCell("expires", "Expires", entry.not_after);
        const renew = timeCell("renew-at", "Renew at", entry.renew_at);
        const next = timeCell("next-attempt", "Next attempt", entry.next_attempt);
        const error = cell("td", "last-error", "Last error");
        if (isText(entry.last_error)) error.append(el("span", "acme-error", entry.last_error));
        else error.textContent = DASH;
        row.append(name, badge, expires.node, renew.node, next.node, error);
        rows.push(row);
        acmeTicks.push(expires.tick, renew.tick, next.tick);
      }
      if (rows.length === 0) rows.push(emptyRow(6, "No names to order certificates for."));
      $("acme-names").replaceChildren(...rows);
    }
    for (const tick of acmeTicks) tick(now);
  }

  // --- upstreams and backends ------------------------------------------------------------------------------

  const COLUMNS = [
    ["backend", "Backend"],
    ["state", "State"],
    ["weight", "Weight"],
    ["in-flight", "In flight"],
    ["rate", "Requests/s"],
    ["errors", "Errors"],
    ["p50", "p50"],
    ["p99", "p99"],
    ["last-check", "Last check"],
    ["last-error", "Last error"],
    ["action", "Action"],
  ];

  function renderUpstreams(upstreams, now) {
    const container = $("upstreams");
    const seen = new Set();
    if (upstreams.length === 0) {
      upstreamViews.clear();
      container.replaceChildren(el("p", "muted", "No upstreams configured."));
      return;
    }
    let index = 0;
    for (const upstream of upstreams) {
      if (!upstream || typeof upstream !== "object") continue;
      const name = isText(upstream.name) ? upstream.name : "(unnamed)";
      if (seen.has(name)) continue;
      seen.add(name);
      let view = upstreamViews.get(name);
      if (!view) {
        view = createUpstreamView(name);
        upstreamViews.set(name, view);
      }
      updateUpstreamView(view, upstream, now);
      if (container.children[index] !== view.root) container.insertBefore(view.root, container.children[index] || null);
      index += 1;
    }
    for (const [name, view] of upstreamViews) {
      if (!seen.has(name)) {
        view.root.remove();
        upstreamViews.delete(name);
      }
    }
    while (container.children.length > index) container.lastElementChild.remove();
  }

  function createUpstreamView(name) {
    const root = el("article", "upstream");
    root.dataset.upstream = name;
    const head = el("div", "upstream-head");
    const title = el("h3", null, name);
    const meta = el("p", "upstream-meta muted");
    const count = el("span", "pill");
    head.append(title, count, meta);

    const table = el("table", "backends");
    const caption = el("caption", "visually-hidden", "Backends of upstream " + name);
    const thead = el("thead");
    const headRow = el("tr");
    for (const [key, label] of COLUMNS) {
      const th = el("th", "col-" + key, label);
      th.scope = "col";
      headRow.append(th);
    }
    thead.append(headRow);
    const tbody = el("tbody");
    table.append(caption, thead, tbody);
    const wrap = el("div", "table-wrap");
    wrap.append(table);
    root.append(head, wrap);
    return { root: root, meta: meta, count: count, tbody: tbody, rows: new Map() };
  }

  function updateUpstreamView(view, upstream, now) {
    const meta = [];
    if (isText(upstream.algorithm)) meta.push(upstream.algorithm.replace(/_/g, " "));
    if (isText(upstream.when_all_unhealthy)) meta.push("when all unhealthy: " + upstream.when_all_unhealthy.replace(/_/g, " "));
    setText(view.meta, meta.join(" · "));
    const healthy = isNumber(upstream.healthy_backends) ? upstream.healthy_backends : 0;
    const total = isNumber(upstream.total_backends) ? upstream.total_backends : 0;
    setText(view.count, healthy + " of " + total + " healthy");
    setClass(view.count, "pill " + (healthy === total && total > 0 ? "pill-good" : healthy === 0 ? "pill-bad" : "pill-warn"));

    const backends = Array.isArray(upstream.backends) ? upstream.backends : [];
    const seen = new Set();
    let index = 0;
    for (const backend of backends) {
      if (!backend || typeof backend !== "object") continue;
      const name = isText(backend.name) ? backend.name : "(unnamed)";
      if (seen.has(name)) continue;
      seen.add(name);
      let row = view.rows.get(name);
      if (!row) {
        row = createRow(view.root.dataset.upstream, name);
        view.rows.set(name, row);
      }
      updateRow(row, backend, now);
      if (view.tbody.children[index] !== row.tr) view.tbody.insertBefore(row.tr, view.tbody.children[index] || null);
      index += 1;
    }
    for (const [name, row] of view.rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        view.rows.delete(name);
      }
    }
    if (backends.length === 0) {
      const tr = el("tr", "empty");
      const td = el("td", null, "No backends.");
      td.colSpan = COLUMNS.length;
      tr.append(td);
      view.tbody.replaceChildren(tr);
    } else {
      for (const stray of view.tbody.querySelectorAll("tr.empty")) stray.remove();
    }
  }

  function createRow(upstream, name) {
    const tr = el("tr");
    tr.dataset.upstream = upstream;
    tr.dataset.backend = name;
    const cells = {};
    for (const [key, label] of COLUMNS) {
      const td = el(key === "backend" ? "th" : "td", "col-" + key);
      if (key === "backend") td.scope = "row";
      td.dataset.label = label;
      cells[key] = td;
      tr.append(td);
    }
    const row = {
      tr: tr,
      cells: cells,
      name: el("span", "backend-name", name),
      url: el("span", "backend-url muted"),
      badge: el("span", "badge"),
      reason: el("span", "reason"),
      weight: el("span"),
      effective: el("span", "sub muted"),
      checkedAgo: el("span"),
      checkLatency: el("span", "sub muted"),
      inFlight: el("span"),
      connections: el("span", "sub muted"),
      button: el("button"),
    };
    row.button.type = "button";
    row.button.dataset.upstream = upstream;
    row.button.dataset.backend = name;
    cells.backend.append(row.name, row.url);
    cells.state.append(row.badge, row.reason);
    cells.weight.append(row.weight, row.effective);
    cells["in-flight"].append(row.inFlight, row.connections);
    cells["last-check"].append(row.checkedAgo, row.checkLatency);
    cells.action.append(row.button);
    return row;
  }

  function updateRow(row, backend, now) {
    const state = isText(backend.state) ? backend.state : "unknown";
    row.tr.dataset.state = state;
    setClass(row.tr, "row " + stateClass(state));
    setText(row.url, isText(backend.url) ? backend.url : "");

    setClass(row.badge, "badge " + stateClass(state));
    setText(row.badge, stateWord(state));
    let reason = isText(backend.state_reason) ? backend.state_reason : "";
    if (backend.drained === true && state !== "draining") reason = reason ? "drained · " + reason : "drained";
    setText(row.reason, reason);
    row.reason.hidden = reason === "";

    setText(row.weight, isNumber(backend.weight) ? String(backend.weight) : DASH);
    setText(row.effective, isNumber(backend.effective_weight) ? "effective " + backend.effective_weight.toFixed(2) : "");

    setText(row.inFlight, isNumber(backend.in_flight) ? String(backend.in_flight) : DASH);
    const links = [];
    if (isNumber(backend.connections)) links.push(backend.connections + (backend.connections === 1 ? " conn" : " conns"));
    if (isNumber(backend.pending) && backend.pending > 0) links.push(backend.pending + " waiting");
    setText(row.connections, links.join(" · "));
    setText(row.cells.rate, formatRate(backend.requests_per_second));
    setText(row.cells.errors, formatRatio(backend.error_ratio));
    setClass(row.cells.errors, "col-errors" + (isNumber(backend.error_ratio) && backend.error_ratio >= 0.05 ? " bad" : ""));
    setText(row.cells.p50, formatMs(backend.p50_ms));
    setText(row.cells.p99, formatMs(backend.p99_ms));

    setText(row.checkedAgo, formatAgo(backend.last_check, now));
    setAttr(row.cells["last-check"], "title", isText(backend.last_check) ? backend.last_check : null);
    setText(row.checkLatency, isNumber(backend.last_latency_ms) ? formatMs(backend.last_latency_ms) : "");

    const lastError = isText(backend.last_error) ? backend.last_error : DASH;
    setText(row.cells["last-error"], lastError);
    setClass(row.cells["last-error"], "col-last-error" + (isText(backend.last_error) ? " bad" : ""));

    const drained = backend.drained === true;
    const action = drained ? "undrain" : "drain";
    if (row.button.dataset.action !== action) {
      row.button.dataset.action = action;
      setText(row.button, drained ? "Undrain" : "Drain");
      setAttr(row.button, "aria-label", (drained ? "Undrain " : "Drain ") + row.tr.dataset.backend +
        " (upstream " + row.tr.dataset.upstream + ")");
    }
  }

  // --- timeline --------------------------------------------------------------------------------------------

  function renderEvents(events) {
    const last = events.length ? events[events.length - 1] : null;
    const signature = events.length + "|" + (last ? String(last.at) + "|" + String(last.message) : "");
    if (signature === eventsSignature) return;
    eventsSignature = signature;
    const list = $("events");
    if (events.length === 0) {
      list.replaceChildren(el("li", "muted", "No events yet."));
      return;
    }
    const items = [];
    for (let i = events.length - 1; i >= 0; i -= 1) {
      const event = events[i] && typeof events[i] === "object" ? events[i] : {};
      const kind = isText(event.kind) ? event.kind : "event";
      const item = el("li", "event kind-" + (KNOWN_EVENT_KINDS.includes(kind) ? kind : "other"));
      const message = isText(event.message) ? event.message : "";
      const arrow = /->\s*([a-z_]+)/.exec(message);
      if (arrow) item.dataset.to = arrow[1];
      item.classList.add(arrow ? stateClass(arrow[1]) : "state-none");
      const time = el("time", "event-time", formatClock(event.at));
      if (isText(event.at)) time.dateTime = event.at;
      const subject = [event.upstream, event.backend].filter(isText).join("/");
      const head = el("div", "event-head");
      head.append(time, el("span", "event-kind", kind));
      if (subject) head.append(el("span", "event-subject", subject));
      item.append(head, el("p", "event-message", message));
      items.push(item);
    }
    list.replaceChildren(...items);
  }

  // --- configuration ---------------------------------------------------------------------------------------

  // Two reloads in quick succession start two loads; only the latest may write, whichever answers last.
  let configLoads = 0;

  async function loadConfig() {
    const target = $("config");
    const load = ++configLoads;
    try {
      const response = await request("/api/config", { headers: { Accept: "application/yaml, text/yaml, text/plain" } }, STATE_TIMEOUT_MS);
      const answer = await readAnswer(response);
      if (load !== configLoads) return;
      if (!response.ok) {
        setText(target, "GET /api/config answered " + response.status + (answer.text ? ": " + answer.text : ""));
        return;
      }
      setText(target, answer.text);
    } catch (error) {
      if (load === configLoads) setText(target, "The configuration could not be loaded: " + describeError(error));
    }
  }

  // --- admin token -----------------------------------------------------------------------------------------

  let tokenResolve = null;
  let tokenResult = null;

  function askToken(purpose) {
    const dialog = $("token-dialog");
    if (tokenResolve) return Promise.resolve(null);
    return new Promise((resolve) => {
      tokenResolve = resolve;
      tokenResult = null;
      setText($("token-purpose"), "The admin API needs the token to " + purpose + ".");
      $("token-input").value = "";
      if (typeof dialog.showModal === "function") dialog.showModal();
      else dialog.setAttribute("open", "");
      $("token-input").focus();
    });
  }

  function closeTokenDialog(result) {
    tokenResult = result;
    const dialog = $("token-dialog");
    if (typeof dialog.close === "function" && dialog.open) dialog.close();
    else finishTokenDialog();
  }

  function finishTokenDialog() {
    $("token-input").value = "";
    const resolve = tokenResolve;
    const result = tokenResult;
    tokenResolve = null;
    tokenResult = null;
    if (resolve) resolve(result);
  }

  function showTokenState() {
    const held = adminToken !== null;
    $("token-state").hidden = !held;
    $("forget-token").hidden = !held;
  }

  async function tokenFor(purpose) {
    if (adminToken !== null) return adminToken;
    const entered = await askToken(purpose);
    if (entered === null) return null;
    adminToken = entered;
    showTokenState();
    return adminToken;
  }

  // --- actions ---------------------------------------------------------------------------------------------

  function addAnswer(outcome, title, detail) {
    const list = $("answers");
    const item = el("li", "answer answer-" + outcome);
    const head = el("div", "answer-head");
    head.append(el("time", "answer-time", formatClock(new Date().toISOString())), el("strong", null, title));
    item.append(head);
    if (detail) item.append(el("p", "answer-detail", detail));
    list.prepend(item);
    while (list.children.length > ANSWERS_KEPT) list.lastElementChild.remove();
  }

  // Sends a state-changing request with the token; returns the answer, or null when nothing was sent.
  async function act(path, purpose, title) {
    const token = await tokenFor(purpose);
    if (token === null) {
      addAnswer("info", title + ": cancelled", "No token was given, nothing was sent.");
      return null;
    }
    let response;
    try {
      response = await request(path, { method: "POST", headers: { Authorization: "Bearer " + token } }, ACTION_TIMEOUT_MS);
    } catch (error) {
      addAnswer("error", title + ": no answer", describeError(error));
      return null;
    }
    const answer = await readAnswer(response);
    if (response.status === 401 || response.status === 403) {
      adminToken = null;
      showTokenState();
    }
    return { status: response.status, statusText: response.statusText, ok: response.ok, answer: answer };
  }

  function errorDetail(result) {
    const json = result.answer.json;
    if (json && typeof json === "object" && isText(json.error)) return json.error;
    return result.answer.text || "(empty answer)";
  }

  function statusLine(result) {
    return result.status + (result.statusText ? " " + result.statusText : "");
  }

  async function drain(button) {
    const upstream = button.dataset.upstream || "";
    const backend = button.dataset.backend || "";
    const action = button.dataset.action === "undrain" ? "undrain" : "drain";
    const title = (action === "drain" ? "Drain " : "Undrain ") + upstream + "/" + backend;
    const path = "/api/backends/" + encodeURIComponent(upstream) + "/" + encodeURIComponent(backend) + "/" + action;
    button.disabled = true;
    try {
      const result = await act(path, action + " " + backend + " in upstream " + upstream, title);
      if (result === null) return;
      if (result.ok) {
        const json = result.answer.json || {};
        const detail = (json.drained === true ? "drained: it gets no new requests" : "back in rotation") +
          (isNumber(json.in_flight) ? "; " + json.in_flight + " in flight" : "");
        addAnswer("ok", title + ": " + statusLine(result), detail);
      } else {
        addAnswer("error", title + ": " + statusLine(result), errorDetail(result));
      }
      schedulePoll(0);
    } finally {
      button.disabled = false;
    }
  }

  async function reload(button) {
    const title = "Reload configuration";
    button.disabled = true;
    try {
      const result = await act("/api/reload", "reload the configuration", title);
      if (result === null) return;
      if (result.ok) {
        const json = result.answer.json || {};
        const changes = Array.isArray(json.changes) ? json.changes.map(String) : [];
        const restart = Array.isArray(json.restart_required) ? json.restart_required.map(String) : [];
        let detail = "generation " + String(json.generation) + (isText(json.digest) ? " (" + json.digest + ")" : "");
        detail += changes.length ? "; changes: " + changes.join("; ") : "; no changes";
        if (restart.length) detail += "; needs a restart to apply: " + restart.join("; ");
        addAnswer("ok", title + ": " + statusLine(result), detail);
        shownGeneration = null;
      } else {
        addAnswer("error", title + ": " + statusLine(result), errorDetail(result));
      }
      schedulePoll(0);
    } finally {
      button.disabled = false;
    }
  }

  function guarded(handler) {
    return (event) => {
      Promise.resolve()
        .then(() => handler(event))
        .catch((error) => {
          addAnswer("error", "The console hit an error", describeError(error));
          console.error("console:", error);
        });
    };
  }

  // --- wiring ----------------------------------------------------------------------------------------------

  function start() {
    $("upstreams").addEventListener("click", guarded((event) => {
      const button = event.target instanceof Element ? event.target.closest("button[data-action]") : null;
      if (button && !button.disabled) return drain(button);
      return undefined;
    }));
    $("reload").addEventListener("click", guarded(() => reload($("reload"))));
    $("forget-token").addEventListener("click", () => {
      adminToken = null;
      showTokenState();
      addAnswer("info", "Admin token forgotten", "The next action asks for it again.");
    });
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      if (value === "") {
        $("token-input").focus();
        return;
      }
      closeTokenDialog(value);
    });
    $("token-cancel").addEventListener("click", () => closeTokenDialog(null));
    $("token-dialog").addEventListener("close", finishTokenDialog);
    showTokenState();
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
