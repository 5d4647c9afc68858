// The overview's live job table: rows change, appear and leave as job.update messages arrive.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const L = window.Launcher;
  const table = document.getElementById("jobs");
  if (!table) return;
  const body = table.tBodies[0];
  const site = table.dataset.site;
  const firstPage = table.dataset.firstPage === "1";
  const filter = { state: table.dataset.filterState, study: table.dataset.filterStudy,
                   q: (table.dataset.filterQ || "").toLowerCase(),
                   after: table.dataset.filterAfter || "", before: table.dataset.filterBefore || "" };
  const selectable = table.dataset.selectable === "1";
  const TERMINAL = ["succeeded", "failed", "aborted", "launch_failed", "lost"];
  const PAGE = 50;
  const counts = document.getElementById("counts");
  const empty = document.getElementById("no-jobs");
  const latest = {};   // job id -> the newest payload, while its row is being fetched
  const fetching = {};
  let countTimer = null;

  // Everything but the name search: the payload has no name, the row fragment has (see fetchRow).
  function matchesBase(job) {
    if (filter.state && job.state !== filter.state) return false;
    if (filter.study && job.study !== filter.study) return false;
    const day = (job.created_at || "").slice(0, 10);  // the site's time zone, as the server filters
    if (filter.after && day < filter.after) return false;
    if (filter.before && day > filter.before) return false;
    return true;
  }

  function textMatches(name, jobId) {
    return !filter.q || (name || "").toLowerCase().indexOf(filter.q) >= 0 ||
      (jobId || "").toLowerCase().indexOf(filter.q) >= 0;
  }

  function cell(row, name) { return row.querySelector('[data-col="' + name + '"]'); }

  function buildRow(job) {
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    const names = ["job", "state", "study", "submitter", "created", "duration", "return_code"];
    if (selectable) names.unshift("select");
    names.forEach(function (name) {
      const td = document.createElement("td");
      td.dataset.col = name;
      row.appendChild(td);
    });
    if (selectable) {
      const box = document.createElement("input");
      box.type = "checkbox";
      box.name = "job";
      box.value = job.id;
      box.setAttribute("form", "bulk");
      box.setAttribute("aria-label", "Select " + job.job_id);
      cell(row, "select").appendChild(box);
    }
    const badge = document.createElement("span");
    cell(row, "state").appendChild(badge);
    const jobCell = cell(row, "job");
    jobCell.className = "job-cell";
    const link = document.createElement("a");
    link.href = "/jobs/" + encodeURIComponent(job.id) + "/";
    link.dataset.col = "name";
    link.textContent = job.job_id;  // until the row fragment brings the name
    const id = document.createElement("span");
    id.className = "job-id muted";
    id.dataset.col = "job_id";
    jobCell.append(link, " ", id);
    return row;
  }

  // The name and submitter are not in the payload: take them from the server-rendered row.
  function fetchRow(id) {
    if (fetching[id]) return fetching[id];
    fetching[id] = fetch("?row=" + encodeURIComponent(id), { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return null;
        // Parsed inert, never put into the page: only the cells' text is copied over.
        const doc = new DOMParser().parseFromString("<table><tbody>" + html + "</tbody></table>", "text/html");
        return doc.querySelector("tr");
      }).catch(function () { return null; })
      .finally(function () { delete fetching[id]; });
    return fetching[id];
  }

  function fillFromServer(row, rendered) {
    ["name", "submitter"].forEach(function (name) {
      const from = cell(rendered, name), to = cell(row, name);
      if (from && to) { to.textContent = from.textContent; if (from.title) to.title = from.title; }
    });
    const box = cell(row, "select") && cell(row, "select").querySelector("input");
    const name = cell(row, "name").textContent;
    if (box) box.setAttribute("aria-label", "Select " + name);
  }

  function patch(row, job) {
    const changed = row.dataset.state !== job.state;
    row.dataset.state = job.state;
    row.dataset.started = job.started_at || "";
    row.dataset.finished = job.finished_at || "";
    const badge = cell(row, "state").querySelector(".badge") || cell(row, "state").firstChild;
    badge.className = "badge state-" + job.state;
    badge.textContent = job.state;
    let round = cell(row, "state").querySelector("[data-progress]");  // "round 3/5" (Launcher.progressShort)
    if (!round && L.progressShort(job.progress)) {
      round = document.createElement("span");
      round.className = "muted";
      round.dataset.progress = "";
      cell(row, "state").append(" ", round);
    }
    if (round) round.textContent = L.progressShort(job.progress);
    cell(row, "job_id").textContent = job.job_id;
    cell(row, "study").textContent = job.study || "";
    row.dataset.created = job.created_at || "";
    L.showTime(cell(row, "created"), job.created_at);  // local time, UTC on hover
    cell(row, "duration").textContent = L.duration(job.started_at, job.finished_at, job.created_at);
    cell(row, "return_code").textContent = job.return_code === null || job.return_code === undefined ? "" : job.return_code;
    const box = cell(row, "select") && cell(row, "select").querySelector("input");
    if (box) {
      box.disabled = TERMINAL.indexOf(job.state) >= 0;
      if (box.disabled) box.checked = false;
    }
    if (changed) {
      row.classList.remove("flash");
      void row.offsetWidth;  // restart the highlight animation
      row.classList.add("flash");
    }
  }

  function insert(row, id) {
    const rows = Array.prototype.slice.call(body.rows);
    const after = rows.find(function (r) { return Number(r.dataset.job) < id; });
    if (after) body.insertBefore(row, after);
    else if (rows.length < PAGE) body.appendChild(row);
    else return false;
    while (body.rows.length > PAGE) body.deleteRow(body.rows.length - 1);
    return true;
  }

  function add(job) {
    const id = Number(job.id);
    latest[id] = job;
    const show = function (rendered) {
      const current = latest[id];
      delete latest[id];
      if (!current || body.querySelector('tr[data-job="' + id + '"]') || !matchesBase(current)) return;
      if (rendered) {
        if (!textMatches(cell(rendered, "name").textContent, current.job_id)) return;
      } else if (!textMatches("", current.job_id)) return;
      const row = buildRow(current);
      patch(row, current);
      if (rendered) fillFromServer(row, rendered);
      if (insert(row, id)) { empty.hidden = true; selectionChanged(); }
      return row;
    };
    if (textMatches("", job.job_id)) {  // shown at once; the name follows
      const row = show(null);
      if (row) fetchRow(id).then(function (rendered) { if (rendered) fillFromServer(row, rendered); });
    } else if (filter.q) {
      fetchRow(id).then(show);
    }
  }

  function apply(job) {
    if (!job || job.site !== site) return;
    if (latest[Number(job.id)]) latest[Number(job.id)] = job;  // a row still being fetched: keep the newest
    const row = body.querySelector('tr[data-job="' + Number(job.id) + '"]');
    if (row && !matchesBase(job)) {
      row.remove();
    } else if (row) {
      patch(row, job);
    } else if (matchesBase(job) && firstPage) {
      add(job);
    }
    empty.hidden = body.rows.length > 0;
    selectionChanged();
    refreshCounts();
  }

  // Terminate selected: the button counts the selection; the server asks for confirmation.
  const bulk = document.getElementById("bulk");
  const bulkButton = document.getElementById("terminate-selected");
  const selectedCount = document.getElementById("selected-count");
  function selectionChanged() {
    if (!bulk) return;
    const n = body.querySelectorAll('input[name="job"]:checked').length;
    bulkButton.disabled = n === 0;
    selectedCount.textContent = n ? n + " selected" : "";
  }
  if (bulk) {
    body.addEventListener("change", selectionChanged);
    selectionChanged();
  }

  function refreshCounts() {
    clearTimeout(countTimer);
    countTimer = setTimeout(function () {
      fetch(counts.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) {
          if (!data) return;
          Object.keys(data.counts).forEach(function (state) {
            const el = counts.querySelector('[data-count="' + state + '"]');
            if (el) el.textContent = data.counts[state];
          });
        }).catch(function () {});
    }, 300);
  }

  setInterval(function () {
    body.querySelectorAll("tr[data-started]").forEach(function (row) {
      if ((row.dataset.started || row.dataset.created) && !row.dataset.finished) {  // running for / queued since
        cell(row, "duration").textContent = L.duration(row.dataset.started, null, row.dataset.created);
      }
    });
  }, 1000);

  L.live("/ws/sites/" + encodeURIComponent(site) + "/jobs/", {
    seq: table.dataset.seq,
    onMessage: function (message) {
      if (message.type === "job.update") apply(message.job);
      else if (message.type === "snapshot") (message.jobs || []).forEach(apply);
    },
  });
});
