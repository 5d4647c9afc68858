// The job page: state, timeline and log lines arrive over /ws/jobs/<id>/ without a reload.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const L = window.Launcher;
  const root = document.getElementById("job");
  if (!root) return;
  const jobId = Number(root.dataset.job);
  const texts = L.jsonData("rc-texts");
  const logs = document.getElementById("logs");
  const follow = document.getElementById("follow");
  const pause = document.getElementById("pause");
  const timeline = document.getElementById("timeline");
  const TERMINAL = ["succeeded", "failed", "aborted", "launch_failed", "lost"];
  let buffered = [];
  let paused = false;
  let lastTimeline = 0;
  const progressEl = document.getElementById("job-progress");
  let progress = document.getElementById("job-progress-data") ? L.jsonData("job-progress-data") : null;

  function showProgress() {
    if (!progressEl) return;
    const text = L.progressText(progress);
    progressEl.textContent = text || "—";
    progressEl.title = progress && progress.last_aggregation_at ? "last aggregation " + L.fmtUtc(progress.last_aggregation_at) + " UTC" : "";
  }
  showProgress();
  // Resource use (jobs.services.usage_text says the same server-side).
  function size(b) {
    const units = [["GiB", 1073741824], ["MiB", 1048576], ["KiB", 1024]];
    for (let i = 0; i < units.length; i++) if (b >= units[i][1]) return String(Math.round(b / units[i][1] * 10) / 10) + " " + units[i][0];
    return b + " B";
  }
  function showUsage(u) {
    const el = document.getElementById("job-usage");
    if (!el || !u) return;
    const parts = [];
    if (u.available) {
      if (u.cpu_cores !== null && u.cpu_cores !== undefined) parts.push("CPU " + (Math.round(u.cpu_cores * 100) / 100) + " cores");
      if (u.memory_bytes !== null && u.memory_bytes !== undefined) parts.push("memory " + size(u.memory_bytes) + (u.memory_limit_bytes ? " of " + size(u.memory_limit_bytes) : ""));
    } else {
      parts.push("usage not available");
      if (u.cpu_limit_cores) parts.push("CPU limit " + u.cpu_limit_cores + " cores");
      if (u.memory_limit_bytes) parts.push("memory limit " + size(u.memory_limit_bytes));
    }
    parts.push("GPUs requested: " + (u.gpus_requested || 0));
    el.textContent = parts.join(" · ");
    el.title = u.sampled_at ? "sampled " + L.fmtUtc(u.sampled_at) + " UTC" : "";
  }
  timeline.querySelectorAll("li[data-seq]").forEach(function (li) { lastTimeline = Math.max(lastTimeline, Number(li.dataset.seq)); });

  // Terminate: a <dialog> instead of the confirmation page.
  const terminate = document.getElementById("terminate");
  const dialog = document.getElementById("terminate-dialog");
  if (terminate && dialog && typeof dialog.showModal === "function") {
    terminate.addEventListener("click", function (event) { event.preventDefault(); dialog.showModal(); });
    dialog.querySelector("[data-close]").addEventListener("click", function () { dialog.close(); });
  }

  function scrollLogs() { if (follow.checked) logs.scrollTop = logs.scrollHeight; }

  // The log viewer: one element per line (numbered by CSS from data-n), a class per NVFlare level
  // (" - ERROR - ") and for tracebacks, an in-page search (highlight, count, filter) and wrap.
  const search = document.getElementById("log-search");
  const only = document.getElementById("log-only");
  const count = document.getElementById("log-count");
  const wrap = document.getElementById("log-wrap");
  const fullButton = document.getElementById("log-full");
  const LIVE_MAX = 10000;  // lines kept while following; the full log is shown whole
  const LEVEL = / - (DEBUG|INFO|WARNING|ERROR|CRITICAL) - /;
  let lineNo = 0;
  let inTrace = false;
  let query = "";

  function levelOf(text) {
    const m = LEVEL.exec(text);
    if (m) { inTrace = false; return m[1].toLowerCase(); }
    if (text.indexOf("Traceback (most recent call last)") === 0) { inTrace = true; return "trace"; }
    if (inTrace && /^\s/.test(text)) return "trace";
    inTrace = false;
    return /^[A-Za-z_][\w.]*(Error|Exception)\b/.test(text) ? "error" : "";
  }

  function mark(el) {  // highlight the query in one line; text only, never HTML
    const text = el.dataset.text;
    const hit = query !== "" && text.toLowerCase().indexOf(query) >= 0;
    if (hit) {
      const parts = [];
      const lower = text.toLowerCase();
      let at = 0;
      let i;
      while ((i = lower.indexOf(query, at)) >= 0) {
        if (i > at) parts.push(document.createTextNode(text.slice(at, i)));
        const m = document.createElement("mark");
        m.textContent = text.slice(i, i + query.length);
        parts.push(m);
        at = i + query.length;
      }
      if (at < text.length) parts.push(document.createTextNode(text.slice(at)));
      el.replaceChildren.apply(el, parts);
    } else if (el.classList.contains("hit")) {
      el.textContent = text;
    }
    el.classList.toggle("hit", hit);
    el.hidden = only.checked && query !== "" && !hit;
    return hit;
  }

  function lineEl(text) {
    const el = document.createElement("span");
    lineNo += 1;
    el.className = "ll";
    const level = levelOf(text);
    if (level) el.classList.add("lvl-" + level);
    el.dataset.n = String(lineNo);
    el.dataset.text = text;
    el.textContent = text;
    if (query) mark(el);
    return el;
  }

  function showCount() {
    if (!query) { count.textContent = ""; return; }
    const n = logs.querySelectorAll(".ll.hit").length;
    count.textContent = n + " matching line" + (n === 1 ? "" : "s");
  }

  function setLines(text) {
    lineNo = 0;
    inTrace = false;
    const body = text.endsWith("\n") ? text.slice(0, -1) : text;
    const frag = document.createDocumentFragment();
    if (body) body.split("\n").forEach(function (line) { frag.appendChild(lineEl(line)); });
    logs.replaceChildren(frag);
    showCount();
    scrollLogs();
  }

  function appendLines(lines) {
    if (!lines.length) return;
    const frag = document.createDocumentFragment();
    lines.forEach(function (line) { frag.appendChild(lineEl(line)); });
    logs.appendChild(frag);
    while (logs.childElementCount > LIVE_MAX) logs.removeChild(logs.firstElementChild);
    showCount();
    scrollLogs();
  }

  let searchTimer = null;
  function applySearch() {
    query = search.value.trim().toLowerCase();
    logs.querySelectorAll(".ll").forEach(mark);
    showCount();
  }
  search.addEventListener("input", function () { clearTimeout(searchTimer); searchTimer = setTimeout(applySearch, 120); });
  search.addEventListener("keydown", function (event) {
    if (event.key !== "Enter") return;
    event.preventDefault();
    applySearch();
    const first = logs.querySelector(".ll.hit");
    if (first) { follow.checked = false; first.scrollIntoView({ block: "center" }); }
  });
  only.addEventListener("change", applySearch);
  function applyWrap() { logs.classList.toggle("nowrap", !wrap.checked); }
  wrap.addEventListener("change", applyWrap);
  applyWrap();
  fullButton.addEventListener("click", function () {
    fullButton.disabled = true;
    fetch(fullButton.dataset.url, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        fullButton.disabled = false;
        if (text === null) return;
        setLines(text);
        document.getElementById("logs-note").textContent = "The whole output of the job (" + lineNo + " lines).";
      }).catch(function () { fullButton.disabled = false; });
  });
  setLines(logs.textContent);

  pause.addEventListener("click", function () {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (!paused) { appendLines(buffered); buffered = []; }
  });
  follow.addEventListener("change", scrollLogs);

  function set(field, value) {
    const el = root.querySelector('[data-field="' + field + '"]');
    if (el) el.textContent = value || "—";
  }

  function applyJob(job) {
    if (!job || Number(job.id) !== jobId) return;
    const wasTerminal = TERMINAL.indexOf(root.dataset.state) >= 0;
    progress = job.progress || null;
    showProgress();
    showUsage(job.usage);
    // States only move forward: a progress push built before the exit may arrive after it.
    if (wasTerminal && TERMINAL.indexOf(job.state) < 0) return;
    root.dataset.state = job.state;
    root.dataset.started = job.started_at || "";
    root.dataset.finished = job.finished_at || "";
    const badge = document.getElementById("job-state");
    badge.className = "badge big state-" + job.state;
    badge.textContent = job.state;
    const hasCode = job.return_code !== null && job.return_code !== undefined;
    document.getElementById("rc").textContent = hasCode ? job.return_code : "—";
    document.getElementById("rc-text").textContent = hasCode ? (texts[String(job.return_code)] || "unknown return code") : "";
    set("image", job.image);
    set("handle", job.handle && job.handle.ref);
    L.showTime(root.querySelector('[data-field="started_at"]'), job.started_at, "local");
    L.showTime(root.querySelector('[data-field="finished_at"]'), job.finished_at, "both");
    set("reason", job.reason);
    set("detail", job.detail);
    document.getElementById("job-duration").textContent = L.duration(job.started_at, job.finished_at) || "—";
    if (job.state !== "queued") loadSpec(job);
    loadTimeline();
    if (TERMINAL.indexOf(job.state) >= 0) {
      if (terminate) terminate.hidden = true;
      if (dialog && dialog.open) dialog.close();
      if (!wasTerminal) loadSavedTail();
    }
  }

  // "Spec as launched": the job.update payload carries no spec (it goes to every page of the site),
  // so once the job has left "queued" the page asks the API for it, once.
  const specBox = document.getElementById("job-spec");
  let specState = specBox && specBox.querySelector("pre.spec") ? "shown" : "missing";

  function sorted(value) {  // keys in order, as the server renders the spec (sort_keys)
    if (Array.isArray(value)) return value.map(sorted);
    if (value && typeof value === "object") {
      const out = {};
      Object.keys(value).sort().forEach(function (k) { out[k] = sorted(value[k]); });
      return out;
    }
    return value;
  }

  function loadSpec(job) {
    if (!specBox || specState !== "missing" || !job.url) return;
    specState = "loading";
    fetch(job.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data || !data.spec) { specState = "missing"; return; }
        const pre = document.createElement("pre");
        pre.className = "spec";
        pre.textContent = JSON.stringify(sorted(data.spec), null, 2);
        specBox.replaceChildren(pre);
        specState = "shown";
      }).catch(function () { specState = "missing"; });
  }

  function loadTimeline() {
    fetch(root.dataset.timelineUrl + "?after=" + lastTimeline, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : null; })
      .then(function (data) {
        if (!data) return;
        data.events.forEach(function (e) {
          if (e.seq <= lastTimeline) return;
          lastTimeline = e.seq;
          const li = document.createElement("li");
          li.dataset.seq = e.seq;
          const time = document.createElement("time");
          L.showTime(time, e.at);
          const badge = document.createElement("span");
          const note = e.from === e.to;
          badge.className = "badge " + (note ? "note" : "state-" + e.to);
          badge.textContent = note ? "note" : e.to;
          const source = document.createElement("span");
          source.className = "source";
          source.textContent = e.source;
          const msg = document.createElement("span");
          msg.className = "msg wrap";
          msg.textContent = e.message;
          li.append(time, " ", badge, " ", source, " ", msg);
          timeline.appendChild(li);
        });
      }).catch(function () {});
  }

  function loadSavedTail() {
    // The job ended: its saved tail is the record (it also covers lines a dropped socket missed).
    fetch(root.dataset.logsUrl, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        if (text) setLines(text);
        document.getElementById("logs-note").textContent = "Saved tail of the finished job.";
        scrollLogs();
      }).catch(function () {});
  }

  setInterval(function () {
    if (root.dataset.started && !root.dataset.finished) {
      document.getElementById("job-duration").textContent = L.duration(root.dataset.started, null);
    }
    if (progress && progress.last_aggregation_at) showProgress();  // "12s ago" keeps counting
  }, 1000);

  L.live("/ws/jobs/" + jobId + "/", {
    seq: root.dataset.seq,
    onMessage: function (message) {
      if (message.type === "job.update") applyJob(message.job);
      else if (message.type === "snapshot") (message.jobs || []).forEach(applyJob);
      else if (message.type === "job.log" && Number(message.job) === jobId && message.saved) loadSavedTail();
      else if (message.type === "job.log" && Number(message.job) === jobId) {
        const lines = (message.lines || []).map(String);
        if (paused) buffered = buffered.concat(lines).slice(-5000);
        else appendLines(lines);
      }
    },
  });
});
