// hasupd dashboard: live updates from /live (server-sent events). Rows change in place; no reload.
"use strict";
(function () {
  var status = document.getElementById("live-status");
  var table = document.getElementById("units");
  var onOverview = document.body.dataset.page === "overview";
  if (!table || !window.EventSource) { return; }

  function duration(s) {
    s = Math.max(0, Math.floor(s));
    var units = [["d", 86400, "h", 3600], ["h", 3600, "m", 60], ["m", 60, "s", 1]];
    for (var i = 0; i < units.length; i++) {
      var u = units[i];
      if (s >= u[1]) {
        var rest = Math.floor((s % u[1]) / u[3]);
        return Math.floor(s / u[1]) + u[0] + (rest ? " " + rest + u[2] : "");
      }
    }
    return s + "s";
  }
  function text(el, value) { if (el && el.textContent !== value) { el.textContent = value; } }
  function cell(row, name) { return row.querySelector('[data-field="' + name + '"]'); }

  function newRow(u) {
    var tr = document.createElement("tr");
    tr.dataset.unit = u.name;
    var th = document.createElement("th");
    th.scope = "row";
    var a = document.createElement("a");
    a.href = "/service/" + encodeURIComponent(u.service);
    a.textContent = u.name;
    th.appendChild(a);
    tr.appendChild(th);
    ["state", "health", "uptime", "restarts", "last_exit", "incident", "pid"].forEach(function (f) {
      var td = document.createElement("td");
      td.dataset.field = f;
      if (f === "restarts" || f === "pid") { td.className = "num"; }
      tr.appendChild(td);
    });
    table.tBodies[0].appendChild(tr);
    return tr;
  }

  function setRow(u) {
    var row = table.querySelector('tr[data-unit="' + CSS.escape(u.name) + '"]');
    if (!row) {
      if (!onOverview) { return; }
      row = newRow(u);
    }
    var before = row.className;
    row.className = "state-" + u.state;
    var state = cell(row, "state");
    var label = u.state + (u.result && u.result !== "success" ? " " : "");
    if (state.dataset.value !== u.state + "/" + u.result) {
      state.dataset.value = u.state + "/" + u.result;
      state.textContent = "";
      var badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = u.state;
      state.appendChild(badge);
      if (u.result && u.result !== "success") {
        var small = document.createElement("small");
        small.textContent = " " + u.result;
        state.appendChild(small);
      }
    }
    text(cell(row, "health"), u.health || "–");
    var up = cell(row, "uptime");
    up.dataset.since = u.active_since || "";
    text(up, u.active_since ? duration(Date.now() / 1000 - u.active_since) : "–");
    text(cell(row, "restarts"), String(u.restarts));
    text(cell(row, "last_exit"), u.last_exit || "–");
    text(cell(row, "pid"), u.pid ? String(u.pid) : "–");
    var inc = cell(row, "incident");
    if (inc.dataset.value !== String(u.incident)) {
      inc.dataset.value = String(u.incident);
      inc.textContent = u.incident ? "" : "–";
      if (u.incident) {
        var link = document.createElement("a");
        link.href = "/incident/" + u.incident;
        link.textContent = u.incident.slice(0, 8);
        inc.appendChild(link);
      }
    }
    if (before && before !== row.className) {
      row.classList.add("flash");
      setTimeout(function () { row.classList.remove("flash"); }, 1500);
    }
    return label;
  }

  function counts() {
    var rows = table.tBodies[0].rows;
    var down = 0;
    for (var i = 0; i < rows.length; i++) { if (!rows[i].classList.contains("state-running")) { down++; } }
    text(document.getElementById("unit-count"), String(rows.length));
    text(document.getElementById("down-count"), String(down));
  }

  function addEvents(events) {
    var list = document.getElementById("latest");
    if (!list) { return; }
    events.forEach(function (r) {
      var li = document.createElement("li");
      li.className = "level-" + r.level;
      li.dataset.event = r.event;
      if (r.service) { li.dataset.service = r.service; }
      var t = document.createElement("time");
      t.textContent = (r.time || "").replace("T", " ").slice(0, 19);
      li.appendChild(t);
      li.appendChild(document.createTextNode(" " + r.message + " "));
      if (r.incident) {
        var a = document.createElement("a");
        a.href = "/incident/" + r.incident;
        a.textContent = "incident " + r.incident.slice(0, 8);
        li.appendChild(a);
      }
      list.insertBefore(li, list.firstChild);
    });
    while (list.children.length > 100) { list.removeChild(list.lastChild); }
  }

  function setBackups(jobs) {
    jobs.forEach(function (b) {
      var row = document.querySelector('#backups tr[data-job="' + CSS.escape(b.job) + '"]');
      if (!row) { return; }
      row.className = b.stale ? "stale" : "";
      text(cell(row, "state"), b.state || "–");
      text(cell(row, "age"), (b.age_sec !== null ? duration(b.age_sec) + " old" : "none") + (b.stale ? " (stale)" : ""));
      var d = b.last_drill;
      text(cell(row, "drill"), d ? (d.ok ? "passed " : "FAILED ") + String(d.time).replace("T", " ").slice(0, 19) : "never");
    });
  }

  function setDaemon(d) {
    var spool = document.querySelector('[data-daemon="spool_depth"]');
    text(spool, d.spool_depth === null ? "–" : String(d.spool_depth));
    var up = document.querySelector('[data-daemon="uptime"]');
    if (up) { up.dataset.since = d.started; }
  }

  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("[data-since]").forEach(function (el) {
      if (el.dataset.since) { text(el, duration(now - parseFloat(el.dataset.since))); }
    });
  }
  setInterval(tick, 1000);

  var source = new EventSource("/live");
  source.onopen = function () { status.textContent = "live"; status.className = "live on"; };
  source.onerror = function () { status.textContent = "reconnecting…"; status.className = "live off"; };
  source.onmessage = function (message) {
    var m = JSON.parse(message.data);
    (m.units || []).forEach(setRow);
    (m.removed || []).forEach(function (name) {
      var row = table.querySelector('tr[data-unit="' + CSS.escape(name) + '"]');
      if (row && onOverview) { row.parentNode.removeChild(row); }
    });
    if (m.events) { addEvents(m.events); }
    if (m.backups) { setBackups(m.backups); }
    if (m.daemon) { setDaemon(m.daemon); }
    if (onOverview) { counts(); }
    document.body.dataset.updates = String((parseInt(document.body.dataset.updates || "0", 10)) + 1);
  };
})();
