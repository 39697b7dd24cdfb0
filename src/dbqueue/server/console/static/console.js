// dbqueue console. Plain JavaScript, no build step, no library.
//
// Every value from the server (queue names, payloads, error messages) enters the document as
// text: through `el` (text nodes), `textContent` or an attribute set with setAttribute, never as
// markup. The server's Content-Security-Policy allows no inline script besides.
"use strict";

(() => {
  const API = "/console/api/";
  let csrf = null;
  let overview = null; // the last overview received
  let events = null; // the EventSource of the overview, while open
  let pollTimer = null; // the fallback poll, while the stream is down
  let sortKey = "name";
  let sortDir = 1;
  let current = null; // the queue page's key (hex), or null on the overview

  const $ = (id) => document.getElementById(id);

  // --- building the document as text ------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    return node;
  }

  function show(view) {
    for (const id of ["login-view", "overview-view", "queue-view"]) $(id).hidden = id !== view;
  }

  function flash(text, isError) {
    const box = $("flash");
    box.textContent = text;
    box.className = isError ? "error" : "";
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(() => { box.hidden = true; }, isError ? 12000 : 5000);
  }

  // --- formats ------------------------------------------------------------------------

  const number = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));
  const rate = (r) => (r === null || r === undefined ? "—" : r >= 100 ? Math.round(r).toLocaleString("en-US") : r.toFixed(1));

  function age(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 90) return `${seconds.toFixed(1)} s`;
    if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  const hexOf = (text) => Array.from(new TextEncoder().encode(text), (b) => b.toString(16).padStart(2, "0")).join("");

  // --- the API ------------------------------------------------------------------------

  class Refusal extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function call(method, name, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (method === "POST") {
      init.headers["Content-Type"] = "application/json";
      init.headers["X-Dbqueue-Csrf"] = csrf || "";
      init.body = JSON.stringify(body || {});
    }
    const response = await fetch(API + name, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) {
      if (response.status === 401 && name !== "login") loggedOut();
      throw new Refusal(response.status, (data && data.error) || `${response.status} ${response.statusText}`);
    }
    return data;
  }

  async function act(method, name, body, success) {
    try {
      const answer = await call(method, name, body);
      flash(answer && answer.message ? answer.message : success || "done", false);
      return answer;
    } catch (error) {
      flash(`Refused: ${error.message}`, true);
      return null;
    }
  }

  function confirmAction(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("confirm-cancel").focus();
    });
  }

  // --- session ------------------------------------------------------------------------

  async function begin() {
    let session;
    try {
      session = await call("GET", "session");
    } catch (error) {
      flash(`The console is not available: ${error.message}`, true);
      return;
    }
    if (!session.authenticated) {
      loggedOut();
      return;
    }
    csrf = session.csrf;
    $("server-name").textContent = session.server;
    $("logout").hidden = !session.login_required;
    route();
  }

  function loggedOut() {
    csrf = null;
    closeStream();
    $("logout").hidden = true;
    $("server-name").textContent = "";
    show("login-view");
    $("login-token").focus();
  }

  $("login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("login-error");
    error.hidden = true;
    $("login-submit").disabled = true;
    try {
      await call("POST", "login", { token: $("login-token").value });
      $("login-token").value = "";
      await begin();
    } catch (refusal) {
      error.textContent = refusal.status === 401 ? "Wrong token." : refusal.message;
      error.hidden = false;
    } finally {
      $("login-submit").disabled = false;
    }
  });

  $("logout").addEventListener("click", async () => {
    try { await call("POST", "logout"); } catch (_) { /* logged out either way */ }
    loggedOut();
  });

  // --- live figures -------------------------------------------------------------------

  // One stream a page: the overview every second, and on a queue's page that page too ("queue" events),
  // so an open console costs the server one write a second and no request.
  function openStream(key) {
    closeStream();
    events = new EventSource(API + (key ? `events?q=${key}` : "events"));
    events.onmessage = (event) => { received(JSON.parse(event.data)); };
    events.addEventListener("queue", (event) => {
      const data = JSON.parse(event.data);
      if (key !== current) return;
      if (data.gone) queueGone();
      else renderQueue(data);
    });
    events.onerror = () => {
      // The browser reconnects by itself; meanwhile poll, in case the stream cannot come back
      // (a proxy that buffers it, the session ended).
      $("live").textContent = "reconnecting…";
      if (!pollTimer) pollTimer = setInterval(poll, 2000);
    };
    events.onopen = () => {
      clearInterval(pollTimer);
      pollTimer = null;
    };
  }

  function closeStream() {
    if (events) events.close();
    events = null;
    clearInterval(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    try { received(await call("GET", "overview")); } catch (_) { /* shown by the next success */ }
  }

  function received(data) {
    overview = data;
    $("live").textContent = `live · ${new Date(data.sampled_at * 1000).toLocaleTimeString()} · `
      + `${number(data.connections)} connections · ${data.store} store`;
    const store = $("store-warning");
    store.hidden = !data.store_unavailable;
    store.textContent = data.store_unavailable
      ? `The store cannot commit (${data.store_unavailable}): sends, creates, purges and deletes are refused until it can.`
      : "";
    if (current === null) renderOverview();
  }

  // --- overview -----------------------------------------------------------------------

  function rowOf(queue) {
    const held = queue.ready + queue.in_flight + queue.delayed;
    const rates = queue.rates || {};
    return {
      queue,
      name: queue.name,
      ready: queue.ready,
      in_flight: queue.in_flight,
      delayed: queue.delayed,
      waiting: queue.waiting,
      consumers: queue.consumers,
      use: queue.capacity ? held / queue.capacity : -1,
      held,
      sent_rate: rates.sent ?? -1,
      confirmed_rate: rates.confirmed ?? -1,
      requeued_rate: rates.requeued ?? -1,
      dead_lettered_rate: rates.dead_lettered ?? -1,
      oldest: queue.oldest_ready_age_ms ?? -1,
      dead_letter_queue: queue.dead_letter_queue || "",
    };
  }

  function sparkline(values) {
    const width = 120, height = 24;
    const box = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img" });
    if (!values || values.length === 0) return box;
    const top = Math.max(1, ...values);
    const step = width / Math.max(1, 59);
    const offset = (60 - values.length) * step;
    box.append(svg("line", { x1: 0, y1: height - 1, x2: width, y2: height - 1, class: "base" }));
    const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 3)).toFixed(1)}`);
    box.append(svg("polyline", { points: points.join(" ") }));
    const title = svg("title", {});
    title.textContent = `ready + in flight, last ${values.length} s: now ${values[values.length - 1]}, peak ${top}`;
    box.append(title);
    return box;
  }

  function renderOverview() {
    if (!overview) return;
    const filter = $("filter").value.trim().toLowerCase();
    let rows = overview.queues.map(rowOf);
    const total = rows.length;
    if (filter) rows = rows.filter((row) => row.name.toLowerCase().includes(filter));
    rows.sort((a, b) => {
      const x = a[sortKey], y = b[sortKey];
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return (order || a.name.localeCompare(b.name)) * sortDir;
    });
    for (const th of document.querySelectorAll("#queues th[data-key]")) {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir === 1);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir === -1);
    }
    const body = el("tbody");
    for (const row of rows) {
      const q = row.queue;
      const use = q.capacity
        ? el("span", {}, `${number(row.held)} / ${number(q.capacity)}`,
            el("span", { class: row.use >= 0.9 ? "use high" : "use", title: `${Math.round(row.use * 100)}% used` },
              el("span", { style: null })))
        : el("span", { class: "muted" }, "unbounded");
      const tr = el("tr", { "data-queue": q.key },
        el("td", { class: "text name" }, el("a", { href: `#/queue/${q.key}` }, q.name)),
        el("td", { class: "f-ready" }, number(q.ready)),
        el("td", { class: "f-in_flight" }, number(q.in_flight)),
        el("td", { class: "f-delayed" }, number(q.delayed)),
        el("td", { class: "f-waiting" }, number(q.waiting)),
        el("td", { class: "f-consumers" }, number(q.consumers)),
        el("td", { class: "f-capacity" }, use),
        el("td", { class: "f-sent" }, rate(q.rates && q.rates.sent)),
        el("td", { class: "f-confirmed" }, rate(q.rates && q.rates.confirmed)),
        el("td", { class: "f-requeued" }, rate(q.rates && q.rates.requeued)),
        el("td", { class: "f-dead_lettered" }, rate(q.rates && q.rates.dead_lettered)),
        el("td", { class: "f-oldest" }, q.oldest_ready_age_ms === undefined ? "—" : q.ready ? age(q.oldest_ready_age_ms / 1000) : "—"),
        el("td", { class: "text f-dead_letter_queue" },
          q.dead_letter_key ? el("a", { href: `#/queue/${q.dead_letter_key}` }, q.dead_letter_queue) : ""),
        el("td", { class: "text f-spark" }, q.sparkline ? sparkline(q.sparkline) : el("span", { class: "muted" }, "not sampled")));
      const bar = tr.querySelector(".use > span");
      if (bar) bar.style.width = `${Math.min(100, Math.round(row.use * 100))}%`;
      body.append(tr);
    }
    $("queues").replaceChild(body, $("queues").tBodies[0]);
    const sum = (key) => rows.reduce((s, row) => s + (row.queue[key] || 0), 0);
    const sumRate = (key) => rows.reduce((s, row) => s + ((row.queue.rates && row.queue.rates[key]) || 0), 0);
    const foot = el("tfoot", {},
      el("tr", { id: "totals" },
        el("td", { class: "text" }, filter ? `Total of ${rows.length} shown` : "Total"),
        el("td", { class: "f-ready" }, number(sum("ready"))),
        el("td", { class: "f-in_flight" }, number(sum("in_flight"))),
        el("td", { class: "f-delayed" }, number(sum("delayed"))),
        el("td", {}, number(sum("waiting"))),
        el("td", {}, number(sum("consumers"))),
        el("td", {}, ""),
        el("td", {}, rate(sumRate("sent"))),
        el("td", {}, rate(sumRate("confirmed"))),
        el("td", {}, rate(sumRate("requeued"))),
        el("td", {}, rate(sumRate("dead_lettered"))),
        el("td", {}, ""), el("td", {}, ""), el("td", {}, "")));
    $("queues").replaceChild(foot, $("queues").tFoot);
    $("queue-count").textContent = filter ? `(${rows.length} of ${total})` : `(${total})`;
    $("no-queues").hidden = total !== 0;
    const members = overview.members || [];
    const group = $("group");
    if (members.length > 1) {
      group.hidden = false;
      group.textContent = `This is member ${overview.member_index} of a group of ${members.length}: the first table `
        + "holds its own part of each queue; the group's members and totals follow it.";
    } else {
      group.hidden = true;
    }
    renderGroup(overview.group);
    fillDeadLetterChoices();
  }

  function renderGroup(group) {
    $("group-view").hidden = !group;
    if (!group) return;
    const head = (texts, ...names) => el("thead", {}, el("tr", {}, ...names.map((n, i) => el("th", { class: i < texts ? "text" : "" }, n))));
    const sum = (queues, key) => queues.reduce((s, q) => s + (q[key] || 0), 0);
    const sumRate = (queues, key) => queues.reduce((s, q) => s + ((q.rates && (q.rates[key] ?? q.rates.enqueued)) || 0), 0);
    const memberRows = group.members.map((m) => el("tr", { "data-member": m.index },
      el("td", { class: "text" }, `${m.index}${m.self ? " (this one)" : ""}`),
      el("td", { class: "text" }, m.address),
      el("td", { class: m.error ? "text error" : "text" }, m.error ? m.error : "answering"),
      el("td", {}, number(m.queues.length)),
      el("td", { class: "f-ready" }, number(sum(m.queues, "ready"))),
      el("td", { class: "f-in_flight" }, number(sum(m.queues, "in_flight"))),
      el("td", {}, number(sum(m.queues, "delayed"))),
      el("td", {}, number(sum(m.queues, "consumers")))));
    $("members").replaceChildren(
      head(3, "Member", "Address", "Status", "Queues", "Ready", "In flight", "Delayed", "Consumers"),
      el("tbody", {}, ...memberRows));
    const indexes = group.members.map((m) => String(m.index));
    const rows = group.queues.map((q) => el("tr", { "data-queue": hexOf(q.name) },
      el("td", { class: "text name" }, q.name),
      el("td", { class: "f-ready" }, number(q.ready)),
      el("td", { class: "f-in_flight" }, number(q.in_flight)),
      el("td", {}, number(q.delayed)),
      el("td", {}, number(q.waiting)),
      el("td", {}, number(q.consumers)),
      el("td", {}, rate(q.rates.sent)),
      el("td", {}, rate(q.rates.confirmed)),
      ...indexes.map((i) => el("td", { class: `f-member-${i}` }, q.members[i] === undefined ? "—" : number(q.members[i])))));
    const totals = el("tr", { id: "group-totals" },
      el("td", { class: "text" }, "Group total"),
      el("td", { class: "f-ready" }, number(sum(group.queues, "ready"))),
      el("td", { class: "f-in_flight" }, number(sum(group.queues, "in_flight"))),
      el("td", {}, number(sum(group.queues, "delayed"))),
      el("td", {}, number(sum(group.queues, "waiting"))),
      el("td", {}, number(sum(group.queues, "consumers"))),
      el("td", {}, rate(sumRate(group.queues, "sent"))),
      el("td", {}, rate(sumRate(group.queues, "confirmed"))),
      ...indexes.map((i) => el("td", {}, number(group.queues.reduce((s, q) => s + (q.members[i] || 0), 0)))));
    $("group-queues").replaceChildren(
      head(1, "Queue", "Ready", "In flight", "Delayed", "Waiting", "Consumers", "Sent/s", "Confirmed/s",
        ...indexes.map((i) => `Ready on ${i}`)),
      el("tbody", {}, ...rows), el("tfoot", {}, totals));
  }

  function fillDeadLetterChoices() {
    const select = $("create-dead-letter");
    if (document.activeElement === select) return;
    const chosen = select.value;
    const names = overview.queues.map((q) => q.name).sort();
    if (select.dataset.names === JSON.stringify(names)) return;
    select.dataset.names = JSON.stringify(names);
    select.replaceChildren(el("option", { value: "" }, "(none)"), ...names.map((n) => el("option", { value: n }, n)));
    select.value = names.includes(chosen) ? chosen : "";
  }

  for (const th of document.querySelectorAll("#queues th[data-key]")) {
    th.addEventListener("click", () => {
      if (sortKey === th.dataset.key) sortDir = -sortDir;
      else { sortKey = th.dataset.key; sortDir = th.classList.contains("text") ? 1 : -1; }
      renderOverview();
    });
  }
  $("filter").addEventListener("input", renderOverview);

  $("show-create").addEventListener("click", () => { $("create-form").hidden = false; $("create-name").focus(); });
  $("create-cancel").addEventListener("click", () => { $("create-form").hidden = true; });
  $("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await act("POST", "create", {
      name: $("create-name").value,
      capacity: $("create-capacity").value,
      max_deliveries: $("create-max-deliveries").value,
      dead_letter_queue: $("create-dead-letter").value,
      visibility_timeout: $("create-visibility").value,
    });
    if (answer) {
      $("create-form").reset();
      $("create-form").hidden = true;
      poll();
    }
  });

  // --- queue page -------------------------------------------------------------------

  function route() {
    if (!csrf) return;
    const match = /^#\/queue\/([0-9a-f]*)$/.exec(location.hash);
    if (match) {
      current = match[1];
      show("queue-view");
      $("messages").replaceChildren();
      $("peek-note").textContent = "";
      $("queue-gone").hidden = true;
      lastQueue = null;
      openStream(current);
    } else {
      current = null;
      document.title = "dbqueue console";
      show("overview-view");
      openStream(null);
      renderOverview();
    }
  }
  window.addEventListener("hashchange", route);

  function definition(list, entries) {
    list.replaceChildren(...entries.flatMap(([term, value]) => [el("dt", {}, term), el("dd", {}, value)]));
  }

  let lastQueue = null;

  // After an action: the page at once, not at the next tick.
  async function loadQueue() {
    const key = current;
    let data;
    try {
      data = await call("GET", `queue?q=${key}`);
    } catch (error) {
      if (key === current && error.status === 404) queueGone();
      return;
    }
    if (key === current) renderQueue(data);
  }

  function queueGone() {
    $("queue-gone").hidden = false;
  }

  function renderQueue(data) {
    $("queue-gone").hidden = true;
    lastQueue = data;
    const q = data.queue;
    $("queue-name").textContent = q.name;
    document.title = `${q.name} · dbqueue console`;
    definition($("queue-figures"), [
      ["Ready", number(q.ready)],
      ["In flight", number(q.in_flight)],
      ["Delayed", number(q.delayed)],
      ["Waiting reads", number(q.waiting)],
      ["Consumers", number(q.consumers)],
      ["Oldest ready", q.oldest_ready_age_ms === undefined || !q.ready ? "—" : age(q.oldest_ready_age_ms / 1000)],
      ["Payload bytes", bytes(q.bytes)],
      ["Sent, all time", number(q.enqueued)],
      ["Confirmed", number(q.confirmed)],
      ["Requeued", number(q.requeued)],
      ["Dead-lettered", number(q.dead_lettered)],
      ["Purged", number(q.purged)],
    ]);
    const deadLetter = q.dead_letter_key ? el("a", { href: `#/queue/${q.dead_letter_key}` }, q.dead_letter_queue) : "none";
    const sources = q.sources.length
      ? el("span", {}, ...q.sources.flatMap((s, i) => [i ? ", " : "", el("a", { href: `#/queue/${s.key}` }, s.name)]))
      : "none";
    definition($("queue-options"), [
      ["Capacity", q.capacity ? `${number(q.capacity)} messages` : "unbounded"],
      ["Max deliveries", q.max_deliveries ? number(q.max_deliveries) : "no limit"],
      ["Dead-letter queue", deadLetter],
      ["Dead letters of", sources],
      ["Visibility timeout", q.visibility_timeout_ms === undefined ? "server default"
        : q.visibility_timeout_ms === 4294967295 ? "never" : age(q.visibility_timeout_ms / 1000)],
      ["Samples kept", `${data.ring.fine_samples} × 1 s and ${data.ring.coarse_samples} × ${data.ring.coarse_step} s, `
        + `${bytes(data.ring.bytes_per_queue)} a queue, shared by every viewer`],
    ]);
    const redrive = $("redrive-form");
    redrive.hidden = q.sources.length === 0;
    const to = $("redrive-to");
    if (document.activeElement !== to && to.dataset.keys !== q.sources.map((s) => s.key).join()) {
      to.dataset.keys = q.sources.map((s) => s.key).join();
      to.replaceChildren(...q.sources.map((s) => el("option", { value: s.key }, s.name)));
    }
    drawCharts();
  }

  function drawCharts() {
    if (!lastQueue) return;
    const ring = document.querySelector('input[name="span"]:checked').value;
    $("span-label").textContent = ring === "coarse" ? "hour" : "2 minutes";
    const history = lastQueue.history;
    if (!history) {
      $("chart-depth").replaceChildren(el("p", { class: "muted" }, `No samples: ${lastQueue.unsampled}.`));
      $("chart-rates").replaceChildren();
      return;
    }
    const samples = history[ring];
    const slots = ring === "coarse" ? lastQueue.ring.coarse_samples : lastQueue.ring.fine_samples;
    const perSecond = (values) => values.map((v) => v / samples.step);
    $("chart-depth").replaceChildren(chart([
      ["ready", samples.ready], ["in flight", samples.in_flight], ["delayed", samples.delayed],
    ], samples.step, slots));
    $("chart-rates").replaceChildren(chart([
      ["sent", perSecond(samples.sent)], ["confirmed", perSecond(samples.confirmed)],
      ["requeued", perSecond(samples.requeued)], ["dead-lettered", perSecond(samples.dead_lettered)],
    ], samples.step, slots));
  }
  for (const radio of document.querySelectorAll('input[name="span"]')) radio.addEventListener("change", drawCharts);

  function chart(series, step, slots) {
    const width = 600, height = 180, left = 44, bottom = 18, top = 8, right = 8;
    const box = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
    const peak = Math.max(1, ...series.flatMap(([, values]) => values));
    const plotW = width - left - right, plotH = height - top - bottom;
    box.append(svg("line", { x1: left, y1: top + plotH, x2: left + plotW, y2: top + plotH, class: "axis" }));
    box.append(svg("line", { x1: left, y1: top, x2: left, y2: top + plotH, class: "axis" }));
    const label = (x, y, text, anchor) => {
      const t = svg("text", { x, y, "text-anchor": anchor });
      t.textContent = text;
      box.append(t);
    };
    label(left - 4, top + 8, peak >= 100 ? Math.round(peak).toLocaleString("en-US") : String(+peak.toFixed(1)), "end");
    label(left - 4, top + plotH, "0", "end");
    label(left, height - 4, `${age(slots * step)} ago`, "start");
    label(left + plotW, height - 4, "now", "end");
    series.forEach(([name, values], index) => {
      if (values.length === 0) return;
      const x = (i) => left + plotW - (values.length - 1 - i) * (plotW / Math.max(1, slots - 1));
      const y = (v) => top + plotH - (v / peak) * plotH;
      const points = values.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
      if (values.length === 1) points.unshift(`${(x(0) - 3).toFixed(1)},${y(values[0]).toFixed(1)}`);
      const line = svg("polyline", { points: points.join(" "), class: `s${index}` });
      const title = svg("title", {});
      title.textContent = `${name}: now ${+values[values.length - 1].toFixed(2)}, peak ${+Math.max(...values).toFixed(2)}`;
      line.append(title);
      box.append(line);
    });
    const legend = el("div", { class: "legend" },
      ...series.map(([name], index) => el("span", {}, el("i", { class: `s${index}` }), name)));
    const wrap = el("div");
    wrap.append(box, legend);
    return wrap;
  }

  $("send-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const answer = await act("POST", "send", { q: current, text: $("send-data").value, delay: $("send-delay").value });
    if (answer) loadQueue();
  });

  $("purge").addEventListener("click", async () => {
    const name = $("queue-name").textContent;
    if (!(await confirmAction(`Purge queue “${name}”?\nEvery ready and delayed message is dropped; messages in flight stay.`))) return;
    if (await act("POST", "purge", { q: current })) loadQueue();
  });

  $("delete").addEventListener("click", async () => {
    const name = $("queue-name").textContent;
    if (!(await confirmAction(`Delete queue “${name}” and every message it holds?`))) return;
    if (await act("POST", "delete", { q: current })) location.hash = "#/";
  });

  $("redrive-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const to = $("redrive-to");
    const all = document.querySelector('input[name="redrive-count"]:checked').value === "all";
    const count = all ? null : Number($("redrive-n").value);
    const target = to.options[to.selectedIndex] ? to.options[to.selectedIndex].textContent : "";
    const what = all ? "every ready message" : `the first ${count} ready messages`;
    if (!(await confirmAction(`Move ${what} of “${$("queue-name").textContent}” back to “${target}”?`))) return;
    if (await act("POST", "redrive", { q: current, to: to.value, count })) loadQueue();
  });

  // --- peek -------------------------------------------------------------------------

  function bytesOf(base64) {
    const raw = atob(base64);
    const out = new Uint8Array(raw.length);
    for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
    return out;
  }

  function hexDump(data) {
    const lines = [];
    for (let offset = 0; offset < data.length; offset += 16) {
      const row = data.subarray(offset, offset + 16);
      const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
      const text = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
      lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
    }
    return lines.join("\n");
  }

  function render(data, format) {
    let text = null;
    try { text = new TextDecoder("utf-8", { fatal: true }).decode(data); } catch (_) { text = null; }
    if (format === "hex" || (format === "auto" && text === null)) return ["hex", hexDump(data)];
    if (format === "json" || format === "auto") {
      if (text !== null) {
        try {
          const trimmed = text.trim();
          if (format === "json" || trimmed.startsWith("{") || trimmed.startsWith("[")) {
            return ["JSON", JSON.stringify(JSON.parse(text), null, 2)];
          }
        } catch (_) {
          if (format === "json") return ["text (not JSON)", text];
        }
      }
    }
    return ["text", text !== null ? text : new TextDecoder("utf-8").decode(data)];
  }

  $("peek").addEventListener("click", async () => {
    const count = Math.max(1, Math.min(100, Number($("peek-count").value) || 10));
    const query = `peek?q=${current}&count=${count}&in_flight=${$("peek-in-flight").checked ? 1 : 0}`
      + `&delayed=${$("peek-delayed").checked ? 1 : 0}`;
    let answer;
    try {
      answer = await call("GET", query);
    } catch (error) {
      flash(`Refused: ${error.message}`, true);
      return;
    }
    const format = $("peek-format").value;
    $("peek-note").textContent = answer.messages.length
      ? `${answer.messages.length} messages, oldest first, as of ${new Date().toLocaleTimeString()}.`
      : "No messages to show.";
    $("messages").replaceChildren(...answer.messages.map((m) => {
      const data = bytesOf(m.data);
      const [shownAs, text] = render(data, format);
      const origin = m.origin
        ? el("span", { class: "origin" }, `dead letter of “${m.origin.queue}” (id ${m.origin.id}, `
            + `${m.origin.deliveries} deliveries there, first enqueued ${age(m.origin.age)} ago)`)
        : null;
      // A message sent over SQS: `data` is its body (the envelope opened on the server), `sqs` the rest.
      const sqs = m.sqs
        ? el("span", { class: "origin" }, `sent over SQS by “${m.sqs.sender}” ${age(m.sqs.sent_age)} ago, `
            + `body ${bytes(m.sqs.body_size)}`)
        : null;
      const attributeLine = (a) => `${a.name} (${a.type}): ${a.text !== undefined ? a.text : `base64 ${a.base64}`}`;
      const attributes = m.sqs && (m.sqs.attributes.length || m.sqs.system_attributes.length)
        ? el("pre", { class: "attributes" },
            [...m.sqs.attributes, ...m.sqs.system_attributes].map(attributeLine).join("\n"))
        : null;
      return el("article", { class: `message ${m.state}`, "data-id": m.id },
        el("div", { class: "head" },
          el("span", { class: "badge" }, m.state.replace("_", " ")),
          el("span", {}, `id ${m.id}`),
          el("span", {}, `${m.deliveries} deliveries`),
          el("span", {}, m.age === null ? "" : `age ${age(m.age)}`),
          el("span", {}, `${bytes(m.size)}${m.truncated ? " (first 64 KiB shown)" : ""}`),
          el("span", { class: "muted" }, shownAs),
          sqs,
          origin),
        attributes,
        el("pre", {}, text));
    }));
  });

  begin();
})();
