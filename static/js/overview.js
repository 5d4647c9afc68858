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
                   q: (table.dataset.filterQ || "").toLowerCase() };
  const PAGE = 50;
  const counts = document.getElementById("counts");
  const empty = document.getElementById("no-jobs");
  let countTimer = null;

  function matches(job) {
    if (filter.state && job.state !== filter.state) return false;
    if (filter.study && job.study !== filter.study) return false;
    if (filter.q && (job.job_id || "").toLowerCase().indexOf(filter.q) < 0 &&
        (job.image || "").toLowerCase().indexOf(filter.q) < 0) return false;
    return true;
  }

  function cell(row, name) { return row.querySelector('[data-col="' + name + '"]'); }

  function buildRow(job) {
    const row = document.createElement("tr");
    row.dataset.job = job.id;
    ["state", "job_id", "study", "image", "started", "duration", "return_code"].forEach(function (name) {
      const td = document.createElement("td");
      td.dataset.col = name;
      if (name === "image") td.className = "wrap";
      row.appendChild(td);
    });
    const badge = document.createElement("span");
    cell(row, "state").appendChild(badge);
    const link = document.createElement("a");
    link.href = "/jobs/" + encodeURIComponent(job.id) + "/";
    cell(row, "job_id").appendChild(link);
    return row;
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
    cell(row, "job_id").querySelector("a").textContent = job.job_id;
    cell(row, "study").textContent = job.study || "";
    cell(row, "image").textContent = job.image || "";
    cell(row, "started").textContent = L.fmtUtc(job.started_at);
    cell(row, "duration").textContent = L.duration(job.started_at, job.finished_at);
    cell(row, "return_code").textContent = job.return_code === null || job.return_code === undefined ? "" : job.return_code;
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

  function apply(job) {
    if (!job || job.site !== site) return;
    let row = body.querySelector('tr[data-job="' + Number(job.id) + '"]');
    if (row && !matches(job)) {
      row.remove();
    } else if (row) {
      patch(row, job);
    } else if (matches(job) && firstPage) {
      row = buildRow(job);
      patch(row, job);
      insert(row, Number(job.id));
    }
    empty.hidden = body.rows.length > 0;
    refreshCounts();
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
      if (row.dataset.started && !row.dataset.finished) {
        cell(row, "duration").textContent = L.duration(row.dataset.started, null);
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
