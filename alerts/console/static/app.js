// gridwatch dispatcher console: plain JavaScript, no framework, nothing loaded from elsewhere.
// Every text from the server goes into the page with textContent (never innerHTML), and the
// Content-Security-Policy forbids inline scripts, so injected markup cannot run.
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
  const PAGE = 50;
  const GRADES = ["red", "yellow", "green"];

  const state = {
    me: null,
    csrf: null,
    view: "board",
    board: { grade: "", state: "", kind: "", grid: "", cursors: [null], page: 0, data: null },
    skewMs: 0,
    detailId: null,
    fresh: new Set(),
    es: null,
    catalogue: null,
    activations: [],
    deviceId: null,
    sound: localStorage.getItem("gw.sound") === "on",
    audio: null,
    timers: {},
  };

  // -- small helpers ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  const svgNS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}, text) {
    const node = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const nowMs = () => Date.now() + state.skewMs;
  const label = (s) => String(s || "").replace(/_/g, " ");
  const pad = (n) => String(n).padStart(2, "0");

  function fmtTime(ms) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function fmtDateTime(ms) {
    if (ms === null || ms === undefined) return "–";
    const d = new Date(ms);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${fmtTime(ms)}`;
  }
  function fmtAge(s) {
    s = Math.max(0, Math.round(s));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
    return `${Math.floor(s / 86400)} d`;
  }

  function toast(text, bad = false) {
    const t = $("#toast");
    t.textContent = text;
    t.className = bad ? "toast bad" : "toast";
    t.hidden = false;
    clearTimeout(state.timers.toast);
    state.timers.toast = setTimeout(() => (t.hidden = true), 4000);
  }

  function later(name, fn, ms = 120) {
    clearTimeout(state.timers[name]);
    state.timers[name] = setTimeout(() => fn().catch(report), ms);
  }

  function report(err) {
    if (err instanceof ApiError && err.status === 401) return;
    toast(err.message || String(err), true);
  }

  async function messageOf(r) {
    try {
      const body = await r.json();
      if (typeof body.detail === "string") return body.detail;
      if (body.message) return body.message;
      return JSON.stringify(body.detail);
    } catch (_) {
      return `${r.status} ${r.statusText}`;
    }
  }

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    if (r.status === 401 && path !== "/api/auth/login") {
      const msg = await messageOf(r);
      signedOut(msg);
      throw new ApiError(401, msg);
    }
    if (!r.ok) throw new ApiError(r.status, await messageOf(r));
    return r.json();
  }

  // -- sign in / out ---------------------------------------------------------------------

  async function onLogin(ev) {
    ev.preventDefault();
    const err = $("#login-error");
    err.hidden = true;
    $("#login-submit").disabled = true;
    try {
      const me = await api("/api/auth/login", {
        method: "POST",
        body: { name: $("#login-name").value.trim(), password: $("#login-password").value },
      });
      $("#login-password").value = "";
      signedIn(me);
    } catch (e) {
      err.textContent = e.message;
      err.hidden = false;
    } finally {
      $("#login-submit").disabled = false;
    }
  }

  function signedIn(me) {
    state.me = me;
    state.csrf = me.csrf_token;
    $("#app").className = "signed-in";
    $("#login-view").hidden = true;
    $("#topbar").hidden = false;
    $("#main").hidden = false;
    $("#who").textContent = `${me.name} · ${label(me.role)}${me.street ? " · " + me.street : ""}`;
    fillFilters();
    connectLive();
    if (!location.hash || location.hash === "#/") location.hash = "#/board";
    route();
    refreshBanners().catch(report);
  }

  function signedOut(message) {
    if (state.es) state.es.close();
    state.es = null;
    state.me = null;
    state.csrf = null;
    $("#app").className = "signed-out";
    $("#topbar").hidden = true;
    $("#main").hidden = true;
    $("#banners").hidden = true;
    $("#detail").hidden = true;
    $("#login-view").hidden = false;
    const err = $("#login-error");
    if (message) {
      err.textContent = message;
      err.hidden = false;
    }
  }

  async function logout() {
    try {
      await api("/api/auth/logout", { method: "POST" });
    } catch (_) {
      /* already gone */
    }
    signedOut("Signed out.");
  }

  // -- routing ---------------------------------------------------------------------------

  function route() {
    if (!state.me) return;
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const view = parts[0] || "board";
    for (const v of ["board", "grids", "plans", "device"]) $(`#${v}-view`).hidden = v !== view;
    for (const a of $$(".tabs a")) a.classList.toggle("active", a.dataset.view === view);
    state.view = view;
    if (view === "board") loadBoard().catch(report);
    else if (view === "grids") loadGrids().catch(report);
    else if (view === "plans") loadPlans().catch(report);
    else if (view === "device") {
      state.deviceId = decodeURIComponent(parts[1] || "");
      loadDevice().catch(report);
    }
  }

  // -- board -----------------------------------------------------------------------------

  function fillFilters() {
    const kind = $("#filter-kind");
    kind.replaceChildren(el("option", { value: "", text: "all kinds" }));
    for (const k of state.me.alert_kinds) kind.append(el("option", { value: k, text: label(k) }));
    const grid = $("#filter-grid");
    grid.replaceChildren(el("option", { value: "", text: "all my grids" }));
    for (const g of state.me.grids) grid.append(el("option", { value: g.id, text: g.id }));
  }

  function boardQuery() {
    const b = state.board;
    const q = new URLSearchParams({ limit: String(PAGE) });
    if (b.grade) q.append("grade", b.grade);
    if (b.state) q.append("state", b.state);
    if (b.kind) q.append("kind", b.kind);
    if (b.grid) q.append("grid", b.grid);
    const cursor = b.cursors[b.page];
    if (cursor) q.set("cursor", cursor);
    return q;
  }

  function resetPaging() {
    state.board.cursors = [null];
    state.board.page = 0;
  }

  async function loadBoard() {
    const data = await api(`/api/board?${boardQuery()}`);
    state.skewMs = data.now_ms - Date.now();
    state.board.data = data;
    renderBoard(data);
  }

  function placeText(p) {
    const parts = [p.street, p.community, p.grid, p.building].filter(Boolean);
    return parts.join(" › ") + (p.floor !== null && p.floor !== undefined ? ` · floor ${p.floor}` : "");
  }

  function renderBoard(data) {
    const c = data.counts;
    $("#count-all").textContent = c.red + c.yellow + c.green;
    for (const g of GRADES) $(`#count-${g}`).textContent = c[g];
    for (const chip of $$("#grade-chips .chip")) chip.classList.toggle("active", chip.dataset.grade === state.board.grade);
    const body = $("#board-body");
    const rows = data.items.map((a) => {
      const fresh = state.fresh.has(a.id);
      const tr = el(
        "tr",
        {
          class: `alert-row ${a.grade} state-${a.state}${fresh ? " fresh" : ""}${a.id === state.detailId ? " selected" : ""}`,
          "data-id": String(a.id),
          "data-grade": a.grade,
          tabindex: "0",
          on: {
            click: () => openDetail(a.id),
            keydown: (e) => e.key === "Enter" && openDetail(a.id),
          },
        },
        el("td", {}, el("span", { class: `badge ${a.grade}`, text: a.grade })),
        el("td", {}, el("b", { text: label(a.kind) }), a.count > 1 ? el("span", { class: "muted", text: ` ×${a.count}` }) : null),
        el("td", {}, a.device_id ? el("a", { href: `#/device/${encodeURIComponent(a.device_id)}`, text: a.device_id, on: { click: (e) => e.stopPropagation() } }) : el("span", { class: "muted", text: `${a.scope} ${a.scope_id}` })),
        el("td", { class: "place", text: placeText(a.place) }),
        el("td", {}, el("div", { class: "ev" }, a.headline.map((h) => el("span", { text: h })))),
        el("td", { class: "age", "data-opened": String(a.opened_ms), text: fmtAge((nowMs() - a.opened_ms) / 1000) }),
        el("td", {}, el("span", { class: `state ${a.state}`, text: label(a.state) })),
      );
      return tr;
    });
    body.replaceChildren(...rows);
    $("#board-empty").hidden = data.items.length > 0;
    const b = state.board;
    const from = b.page * PAGE + (data.items.length ? 1 : 0);
    const to = b.page * PAGE + data.items.length;
    $("#page-info").textContent = `${from}–${to} of ${c.total}`;
    $("#page-prev").disabled = b.page === 0;
    $("#page-first").disabled = b.page === 0;
    $("#page-next").disabled = !data.next_cursor;
  }

  function tickAges() {
    for (const td of $$("td.age")) td.textContent = fmtAge((nowMs() - Number(td.dataset.opened)) / 1000);
  }

  // -- alert detail ----------------------------------------------------------------------

  async function openDetail(id) {
    state.detailId = id;
    for (const tr of $$("tr.alert-row")) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
    await renderDetail();
  }

  function closeDetail() {
    state.detailId = null;
    $("#detail").hidden = true;
    for (const tr of $$("tr.alert-row.selected")) tr.classList.remove("selected");
  }

  function facts(dl, pairs) {
    dl.replaceChildren(...pairs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  }

  async function renderDetail() {
    const id = state.detailId;
    if (id === null) return;
    let data;
    try {
      data = await api(`/api/alerts/${id}`);
    } catch (e) {
      if (e.status === 404) closeDetail();
      throw e;
    }
    if (state.detailId !== id) return;
    const a = data.alert;
    const d = $("#detail");
    d.className = `drawer ${a.grade}`;
    d.dataset.id = String(a.id);
    d.dataset.state = a.state;
    $("#detail-title").replaceChildren(el("span", { class: `badge ${a.grade}`, text: a.grade }), ` ${label(a.kind)} #${a.id}`);
    $("#detail-place").textContent = placeText(a.place);
    facts($("#detail-facts"), [
      ["state", label(a.state)],
      ["device", a.device_id ? `${a.device_id} (${a.device_kind || "?"})` : `${a.scope} ${a.scope_id}`],
      ["evidence", a.headline.join(" · ") || "–"],
      ["opened", `${fmtDateTime(a.opened_ms)} (${fmtAge(a.age_s)} ago)`],
      ["detections", `${a.count}, last ${fmtDateTime(a.last_seen_ms)}`],
      ["acknowledged", a.acked_by ? `${a.acked_by} at ${fmtTime(a.acked_ms)}` : "–"],
      ["resolved", a.resolved_by ? `${a.resolved_by} at ${fmtTime(a.resolved_ms)}` : "–"],
      ["rule", a.rule],
    ]);
    const open = a.state !== "resolved";
    $('[data-action="ack"]', d).disabled = a.state !== "open";
    $('[data-action="start"]', d).disabled = !(a.state === "open" || a.state === "acknowledged");
    $("#resolve-form").hidden = !open;
    const dev = $("#detail-device");
    dev.hidden = !a.device_id;
    if (a.device_id) dev.setAttribute("href", `#/device/${encodeURIComponent(a.device_id)}`);
    $("#audit").replaceChildren(
      ...data.audit.map((e) =>
        el(
          "li",
          { "data-action": e.action },
          el("b", { text: label(e.action) }),
          ` by ${e.actor} at ${fmtDateTime(e.ts_ms)}`,
          e.to_state && e.from_state ? el("span", { class: "muted", text: ` (${label(e.from_state)} → ${label(e.to_state)})` }) : null,
          e.note ? el("span", { class: "note", text: e.note }) : null,
        ),
      ),
    );
    facts(
      $("#detail-evidence"),
      Object.entries(a.evidence).map(([k, v]) => [
        label(k),
        k.endsWith("_ms") && typeof v === "number" ? fmtDateTime(v) : typeof v === "number" ? String(Math.round(v * 1000) / 1000) : JSON.stringify(v),
      ]),
    );
    d.hidden = false;
  }

  async function act(action, body) {
    const id = state.detailId;
    if (id === null) return;
    const a = await api(`/api/alerts/${id}/${action}`, { method: "POST", body });
    toast(`Alert #${a.id} is now ${label(a.state)}.`);
    state.fresh.delete(id);
    await Promise.all([renderDetail(), refreshCurrent()]);
  }

  // -- grids -----------------------------------------------------------------------------

  async function loadGrids() {
    const data = await api("/api/overview");
    state.skewMs = data.now_ms - Date.now();
    const t = data.totals;
    $("#grid-totals").textContent = `${data.grids.length} grids · ${t.red} red · ${t.yellow} yellow · ${t.green} green open`;
    const streets = new Map();
    for (const g of data.grids) {
      if (!streets.has(g.street)) streets.set(g.street, new Map());
      const comms = streets.get(g.street);
      if (!comms.has(g.community)) comms.set(g.community, []);
      comms.get(g.community).push(g);
    }
    const out = [];
    for (const [street, comms] of streets) {
      const sec = el("section", { class: "street", "data-street": street }, el("h3", { text: `Street ${street}` }));
      for (const [comm, grids] of comms) {
        sec.append(
          el(
            "div",
            { class: "community" },
            el("h4", { text: `Community ${comm}` }),
            el(
              "div",
              { class: "tiles" },
              grids.map((g) =>
                el(
                  "button",
                  {
                    type: "button",
                    class: `tile ${g.worst || "none"}`,
                    "data-grid": g.grid,
                    title: `grid ${g.grid}: show its alerts`,
                    on: { click: () => showGrid(g.grid) },
                  },
                  el("span", { class: "id", text: g.grid }),
                  el("span", { class: "n", text: g.counts.total ? GRADES.filter((x) => g.counts[x]).map((x) => `${g.counts[x]} ${x}`).join(" · ") : "quiet" }),
                  g.open_tasks ? el("span", { class: "task", text: `⚑ ${g.open_tasks} plan task${g.open_tasks > 1 ? "s" : ""}` }) : null,
                ),
              ),
            ),
          ),
        );
      }
      out.push(sec);
    }
    $("#grid-map").replaceChildren(...out);
  }

  function showGrid(grid) {
    state.board.grid = grid;
    $("#filter-grid").value = grid;
    resetPaging();
    location.hash = "#/board";
  }

  // -- plans -----------------------------------------------------------------------------

  async function catalogue() {
    if (!state.catalogue) state.catalogue = (await api("/api/plans")).plans;
    return state.catalogue;
  }

  function areaOptions(level) {
    const me = state.me;
    const seen = new Set();
    const out = [];
    for (const g of me.grids) {
      const v = level === "street" ? g.street : level === "community" ? g.community : g.id;
      if (level === "street" && !me.streets.includes(v)) continue;
      if (!seen.has(v)) {
        seen.add(v);
        out.push(v);
      }
    }
    return out;
  }

  function gridsOfArea(level, area) {
    return state.me.grids.filter((g) => (level === "street" ? g.street : level === "community" ? g.community : g.id) === area);
  }

  function fillAreas() {
    const level = $("#level-select").value;
    $("#area-select").replaceChildren(...areaOptions(level).map((v) => el("option", { value: v, text: `${level} ${v}` })));
    describePlan();
  }

  function describePlan() {
    const name = $("#plan-select").value;
    const p = (state.catalogue || []).find((x) => x.name === name);
    const level = $("#level-select").value;
    const area = $("#area-select").value;
    const n = gridsOfArea(level, area).length;
    $("#plan-summary").textContent = p ? `${p.summary} One task goes to each of the ${n} grid${n === 1 ? "" : "s"} of ${level} ${area}.` : "";
  }

  async function loadPlans() {
    const plans = await catalogue();
    const form = $("#plan-form");
    form.hidden = !state.me.can_run_plans;
    if (state.me.can_run_plans && !$("#plan-select").options.length) {
      $("#plan-select").replaceChildren(...plans.map((p) => el("option", { value: p.name, text: p.title })));
      fillAreas();
    }
    $("#plan-catalogue").replaceChildren(
      ...plans.map((p) =>
        el(
          "div",
          { class: "card", "data-plan": p.name },
          el("h3", {}, el("span", { class: `badge ${p.grade}`, text: p.grade }), ` ${p.title}`),
          el("p", { class: "muted", text: p.summary }),
          el("ul", {}, p.tasks.map((t) => el("li", {}, el("b", { text: label(t.role) }), `: ${t.task}`, t.within_min ? el("span", { class: "muted", text: ` (within ${t.within_min} min)` }) : null))),
        ),
      ),
    );
    await loadActivations();
  }

  async function loadActivations() {
    const data = await api("/api/plans/activations");
    state.activations = data.activations;
    const box = $("#activations");
    box.replaceChildren(...data.activations.map(activationCard));
    $("#activations-empty").hidden = data.activations.length > 0;
  }

  function activationCard(a) {
    const mine = new Set(state.me.grids.map((g) => g.id));
    const pct = a.total ? Math.round((100 * a.acked) / a.total) : 0;
    const bar = el("i");
    bar.style.width = `${pct}%`;
    return el(
      "div",
      { class: `card activation ${a.state}`, "data-activation": String(a.id) },
      el(
        "header",
        {},
        el("div", { class: "grow" }, el("h3", { text: `${a.title} — ${a.level} ${a.area}` }), el("span", { class: "muted small", text: `#${a.id} activated by ${a.activated_by} at ${fmtDateTime(a.activated_ms)}${a.note ? " · " + a.note : ""}` })),
        el("div", {}, el("div", { class: "progress", title: `${a.acked} of ${a.total} grids acknowledged` }, bar), el("span", { class: "small", "data-role": "acked", text: `${a.acked}/${a.total} acknowledged` })),
        state.me.can_run_plans && a.state === "active" ? el("button", { type: "button", class: "ghost", "data-close": String(a.id), text: "Close plan", on: { click: () => closePlan(a) } }) : null,
      ),
      el(
        "div",
        { class: "taskgrid" },
        a.tasks.map((t) =>
          el(
            "div",
            { class: `taskchip${t.acked_ms ? " acked" : ""}`, "data-grid": t.grid },
            el("b", { text: `grid ${t.grid}` }),
            t.acked_ms ? el("span", { class: "small", text: `✓ ${t.acked_by} at ${fmtTime(t.acked_ms)}${t.note ? " · " + t.note : ""}` }) : el("span", { class: "small", text: "… waiting for acknowledgement" }),
            !t.acked_ms && a.state === "active" && mine.has(t.grid) && state.me.role !== "admin" && !state.me.can_run_plans
              ? el("button", { type: "button", class: "primary", "data-ack-task": t.grid, text: "Acknowledge", on: { click: () => ackTask(a.id, t.grid) } })
              : null,
          ),
        ),
      ),
    );
  }

  async function confirmDialog(title, text) {
    const dlg = $("#confirm");
    $("#confirm-title").textContent = title;
    $("#confirm-text").textContent = text;
    dlg.returnValue = "";
    dlg.showModal();
    return new Promise((resolve) => {
      dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    });
  }

  async function activate(plan, level, area, note, sourceAlertId) {
    const p = (await catalogue()).find((x) => x.name === plan);
    const n = gridsOfArea(level, area).length;
    const ok = await confirmDialog(
      `Activate “${p ? p.title : plan}”?`,
      `A task with the plan's instructions goes to the dispatch queue of each of the ${n} grid${n === 1 ? "" : "s"} of ${level} ${area}. Each grid must acknowledge it.`,
    );
    if (!ok) return;
    const body = { plan, level, area };
    if (note) body.note = note;
    if (sourceAlertId) body.source_alert_id = sourceAlertId;
    const a = await api("/api/plans/activations", { method: "POST", body });
    toast(`${a.title} active for ${a.level} ${a.area}: ${a.total} grid tasks sent.`);
    $("#plan-note").value = "";
    await Promise.all([refreshBanners(), state.view === "plans" ? loadActivations() : Promise.resolve()]);
  }

  async function closePlan(a) {
    const ok = await confirmDialog(`Close “${a.title}” for ${a.level} ${a.area}?`, "Tasks no grid has taken yet are withdrawn.");
    if (!ok) return;
    await api(`/api/plans/activations/${a.id}/close`, { method: "POST", body: {} });
    toast(`Plan #${a.id} closed.`);
    await Promise.all([loadActivations(), refreshBanners()]);
  }

  async function ackTask(activationId, grid) {
    await api(`/api/plans/activations/${activationId}/tasks/${encodeURIComponent(grid)}/ack`, { method: "POST", body: {} });
    toast(`Task of grid ${grid} acknowledged.`);
    await Promise.all([refreshBanners(), state.view === "plans" ? loadActivations() : Promise.resolve()]);
  }

  // -- banners: plan suggestions and my grids' plan tasks --------------------------------

  async function refreshBanners() {
    if (!state.me) return;
    const [sug, acts] = await Promise.all([api("/api/plans/suggestions"), api("/api/plans/activations")]);
    state.activations = acts.activations;
    const me = state.me;
    const suggestions = sug.suggestions.map((s) =>
      el(
        "div",
        { class: "banner suggest", "data-suggestion": String(s.alert.id) },
        el("span", { text: "⚠" }),
        el("div", { class: "grow" }, el("b", { text: `${s.title} suggested for ${s.level} ${s.area}` }), el("div", { class: "small", text: `${label(s.alert.kind)} #${s.alert.id}: ${s.alert.headline.join(" · ")}` })),
        me.can_run_plans
          ? el("button", { type: "button", class: "danger", "data-activate": s.plan, text: `Activate ${s.title}`, on: { click: () => activate(s.plan, s.level, s.area, "", s.alert.id).catch(report) } })
          : el("span", { class: "small muted", text: "your supervisor decides" }),
      ),
    );
    const tasks = [];
    if (!me.can_run_plans) {
      for (const a of acts.activations) {
        for (const t of a.tasks) {
          tasks.push(
            el(
              "div",
              { class: `banner task${t.acked_ms ? " acked" : ""}`, "data-task": `${a.id}/${t.grid}` },
              el("span", { text: "⚑" }),
              el(
                "div",
                { class: "grow" },
                el("b", { text: `PLAN ${a.title.toUpperCase()} — grid ${t.grid}` }),
                el("div", { class: "small", text: `activated by ${a.activated_by} at ${fmtTime(a.activated_ms)} for ${a.level} ${a.area}${a.note ? " · " + a.note : ""}` }),
                t.acked_ms ? null : el("ol", {}, a.instructions.map((i) => el("li", {}, el("b", { text: label(i.role) }), `: ${i.task}`))),
              ),
              t.acked_ms
                ? el("span", { class: "small", text: `✓ acknowledged by ${t.acked_by}` })
                : el("button", { type: "button", class: "primary", "data-ack-task": t.grid, text: "Acknowledge task", on: { click: () => ackTask(a.id, t.grid).catch(report) } }),
            ),
          );
        }
      }
    }
    $("#suggestions").replaceChildren(...suggestions);
    $("#tasks").replaceChildren(...tasks);
    $("#banners").hidden = suggestions.length + tasks.length === 0;
  }

  // -- device page -----------------------------------------------------------------------

  async function loadDevice() {
    const id = state.deviceId;
    const minutes = $("#device-window").value;
    const [dev, series] = await Promise.all([
      api(`/api/devices/${encodeURIComponent(id)}`),
      api(`/api/devices/${encodeURIComponent(id)}/readings?minutes=${minutes}`).catch((e) => {
        if (e.status === 404) return null;
        throw e;
      }),
    ]);
    if (state.deviceId !== id) return;
    $("#device-title").textContent = `${dev.device_id} · ${dev.kind}`;
    $("#device-place").textContent = placeText(dev.place) + (dev.floors ? ` · ${dev.floors} floors` : "");
    $("#device-constants").textContent = Object.entries(dev.constants).map(([k, v]) => `${label(k)} ${v}`).join(" · ");
    $("#device-window-info").textContent = series && series.last_reading_ms ? `latest reading ${fmtDateTime(series.last_reading_ms)} (${series.resolution})` : "no stored readings";
    renderCharts(series, dev.alerts);
    $("#device-alerts").replaceChildren(
      ...(dev.alerts.length
        ? dev.alerts.map((a) =>
            el(
              "li",
              { "data-id": String(a.id) },
              el("span", { class: `badge ${a.grade}`, text: a.grade }),
              " ",
              el("a", { href: "#/board", text: `${label(a.kind)} #${a.id}`, on: { click: (e) => { e.preventDefault(); location.hash = "#/board"; openDetail(a.id).catch(report); } } }),
              el("span", { class: "muted small", text: ` ${label(a.state)} · opened ${fmtDateTime(a.opened_ms)}${a.headline.length ? " · " + a.headline.join(" · ") : ""}` }),
            ),
          )
        : [el("li", { class: "muted", text: "no alerts" })]),
    );
    $("#device-silences").replaceChildren(
      ...(dev.silences.length
        ? dev.silences.map((s) =>
            el(
              "li",
              {},
              `${s.level} ${s.target} silenced until ${fmtDateTime(s.ends_ms)} by ${s.created_by}: ${s.reason} `,
              s.id ? el("button", { type: "button", class: "ghost", text: "end now", on: { click: () => revokeSilence(s.id).catch(report) } }) : null,
            ),
          )
        : [el("li", { class: "muted", text: "not silenced" })]),
    );
  }

  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) return [lo];
    const step0 = (hi - lo) / n;
    const mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) || step0;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9; v += step) out.push(Math.round(v * 1e6) / 1e6);
    return out;
  }

  function renderCharts(series, alerts) {
    const box = $("#device-charts");
    if (!series || !series.ts_ms.length) {
      box.replaceChildren(el("p", { class: "empty", text: "No readings in this window." }));
      return;
    }
    const W = 900, H = 150, L = 48, R = 8, T = 8, B = 20;
    const t0 = series.since_ms, t1 = series.until_ms;
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const charts = [];
    for (const [field, values] of Object.entries(series.fields)) {
      const vals = values.filter((v) => v !== null);
      if (!vals.length) continue;
      let lo = Math.min(...vals), hi = Math.max(...vals);
      if (hi === lo) { lo -= 1; hi += 1; }
      const padY = (hi - lo) * 0.08;
      lo -= padY; hi += padY;
      const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
      const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": `${field} over time` });
      // alert marks: a band from opened to resolved (or now), a line at the opening
      for (const a of alerts) {
        const start = Math.max(a.first_seen_ms, t0), end = Math.min(a.resolved_ms || t1, t1);
        if (end < t0 || start > t1) continue;
        root.append(svg("rect", { class: `mark ${a.grade}`, x: x(start), y: T, width: Math.max(2, x(end) - x(start)), height: H - T - B }));
        const line = svg("line", { class: `markline ${a.grade}`, x1: x(start), x2: x(start), y1: T, y2: H - B, "data-alert": String(a.id) });
        line.append(svg("title", {}, `${a.grade} ${label(a.kind)} #${a.id} at ${fmtDateTime(a.first_seen_ms)}`));
        root.append(line);
      }
      for (const v of niceTicks(lo, hi, 4)) {
        root.append(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
        root.append(svg("text", { class: "tick", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, String(v)));
      }
      const span = t1 - t0;
      const step = span <= 3600e3 ? 10 * 60e3 : span <= 6 * 3600e3 ? 3600e3 : 4 * 3600e3;
      for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
        root.append(svg("text", { class: "tick", x: x(t), y: H - 6, "text-anchor": "middle" }, fmtTime(t).slice(0, 5)));
      }
      root.append(svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: H - B }));
      root.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
      let d = "";
      let pen = false;
      values.forEach((v, i) => {
        if (v === null) { pen = false; return; }
        d += `${pen ? "L" : "M"}${x(series.ts_ms[i]).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      });
      root.append(svg("path", { class: "line", d, "vector-effect": "non-scaling-stroke" }));
      const unit = series.units[field] ? ` (${series.units[field]})` : "";
      const name = label(field.replace(/_(m|mps|mps2|kg|deg|mmph|s)$/, ""));
      charts.push(el("div", { class: "chart", "data-field": field }, el("h4", { text: `${name}${unit}` }), root));
    }
    box.replaceChildren(...charts);
  }

  async function silenceDevice(ev) {
    ev.preventDefault();
    const body = { duration_s: Number($("#silence-duration").value), reason: $("#silence-reason").value.trim() };
    const s = await api(`/api/devices/${encodeURIComponent(state.deviceId)}/silence`, { method: "POST", body });
    toast(`${s.target} silenced until ${fmtDateTime(s.ends_ms)}.`);
    $("#silence-reason").value = "";
    await loadDevice();
  }

  async function revokeSilence(id) {
    await api(`/api/silences/${id}/revoke`, { method: "POST", body: {} });
    toast("Silence ended.");
    await loadDevice();
  }

  // -- live feed -------------------------------------------------------------------------

  function setLive(on, text) {
    const live = $("#live");
    live.className = on ? "live on" : "live off";
    live.textContent = text;
  }

  function connectLive() {
    if (state.es) state.es.close();
    const es = new EventSource("/api/events");
    state.es = es;
    es.addEventListener("open", () => setLive(true, "live"));
    es.addEventListener("error", () => {
      setLive(false, "reconnecting…");
      if (es.readyState === EventSource.CLOSED) {
        // The server refused the stream (signed out, busy): check the session, retry.
        setTimeout(() => api("/api/me").then(() => state.me && connectLive()).catch(() => {}), 3000);
      }
    });
    es.addEventListener("hello", () => refreshAll());
    es.addEventListener("resync", () => refreshAll());
    es.addEventListener("alert", (m) => onAlert(JSON.parse(m.data)));
    es.addEventListener("plan", () => {
      later("banners", refreshBanners);
      if (state.view === "plans") later("activations", loadActivations);
      if (state.view === "grids") later("grids", loadGrids);
    });
    es.addEventListener("session_ended", (m) => {
      es.close();
      signedOut(`Session ended: ${JSON.parse(m.data).reason}`);
    });
  }

  function refreshCurrent() {
    if (state.view === "board") return loadBoard();
    if (state.view === "grids") return loadGrids();
    if (state.view === "plans") return loadActivations();
    if (state.view === "device") return loadDevice();
    return Promise.resolve();
  }

  function refreshAll() {
    later("current", refreshCurrent, 10);
    later("banners", refreshBanners, 10);
    if (state.detailId !== null) later("detail", renderDetail, 10);
  }

  function onAlert(e) {
    if (e.action === "opened" && e.grade === "red") {
      state.fresh.add(e.alert_id);
      setTimeout(() => state.fresh.delete(e.alert_id), 60_000);
      beep();
      $("#announce").textContent = `New red alert: ${label(e.kind)} ${e.device_id || ""} in ${e.grid || e.street}`;
    }
    if (state.view === "board" || state.view === "grids" || (state.view === "device" && e.device_id === state.deviceId)) {
      later("current", refreshCurrent, 50);
    }
    if (state.detailId === e.alert_id) later("detail", renderDetail, 50);
    if (e.suggested_plan) later("banners", refreshBanners);
  }

  // -- sound (optional): a two-tone chime made by WebAudio, no audio file -----------------

  function setSound(on) {
    state.sound = on;
    localStorage.setItem("gw.sound", on ? "on" : "off");
    const b = $("#sound");
    b.textContent = on ? "♪ sound on" : "sound off";
    b.setAttribute("aria-pressed", on ? "true" : "false");
    if (on && !state.audio && window.AudioContext) state.audio = new AudioContext();
  }

  function beep() {
    if (!state.sound || !state.audio) return;
    const ctx = state.audio;
    [880, 660, 880].forEach((f, i) => {
      const o = ctx.createOscillator();
      const g = ctx.createGain();
      o.frequency.value = f;
      g.gain.value = 0.15;
      o.connect(g).connect(ctx.destination);
      const t = ctx.currentTime + i * 0.18;
      o.start(t);
      o.stop(t + 0.15);
    });
  }

  // -- wiring ----------------------------------------------------------------------------

  function wire() {
    $("#login-form").addEventListener("submit", onLogin);
    $("#logout").addEventListener("click", () => logout());
    $("#sound").addEventListener("click", () => setSound(!state.sound));
    window.addEventListener("hashchange", route);
    for (const chip of $$("#grade-chips .chip")) {
      chip.addEventListener("click", () => {
        state.board.grade = chip.dataset.grade;
        resetPaging();
        loadBoard().catch(report);
      });
    }
    for (const [sel, key] of [["#filter-state", "state"], ["#filter-kind", "kind"], ["#filter-grid", "grid"]]) {
      $(sel).addEventListener("change", (e) => {
        state.board[key] = e.target.value;
        resetPaging();
        loadBoard().catch(report);
      });
    }
    $("#page-next").addEventListener("click", () => {
      const b = state.board;
      if (!b.data || !b.data.next_cursor) return;
      b.cursors[b.page + 1] = b.data.next_cursor;
      b.page += 1;
      loadBoard().then(() => window.scrollTo(0, 0)).catch(report);
    });
    $("#page-prev").addEventListener("click", () => {
      if (state.board.page > 0) state.board.page -= 1;
      loadBoard().then(() => window.scrollTo(0, 0)).catch(report);
    });
    $("#page-first").addEventListener("click", () => {
      resetPaging();
      loadBoard().catch(report);
    });
    $("#detail-close").addEventListener("click", closeDetail);
    document.addEventListener("keydown", (e) => e.key === "Escape" && !$("#confirm").open && closeDetail());
    $('[data-action="ack"]').addEventListener("click", () => act("ack", {}).catch(report));
    $('[data-action="start"]').addEventListener("click", () => act("start", {}).catch(report));
    $("#resolve-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const note = $("#resolve-note").value.trim();
      if (!note) return toast("Say what was done before resolving.", true);
      act("resolve", { note }).then(() => ($("#resolve-note").value = "")).catch(report);
    });
    $("#level-select").addEventListener("change", fillAreas);
    $("#area-select").addEventListener("change", describePlan);
    $("#plan-select").addEventListener("change", describePlan);
    $("#plan-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      activate($("#plan-select").value, $("#level-select").value, $("#area-select").value, $("#plan-note").value.trim()).catch(report);
    });
    $("#device-window").addEventListener("change", () => loadDevice().catch(report));
    $("#silence-form").addEventListener("submit", (ev) => silenceDevice(ev).catch(report));
    setSound(state.sound);
    setInterval(tickAges, 1000);
  }

  async function boot() {
    wire();
    try {
      const r = await fetch("/api/me", { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" });
      if (r.ok) signedIn(await r.json());
      else signedOut(null);
    } catch (_) {
      signedOut("The console is not reachable.");
    }
  }

  document.addEventListener("DOMContentLoaded", boot);
})();
