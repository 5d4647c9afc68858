// Shared by every page: small progressive enhancements and the live websocket client.
// Data is only ever written with textContent / createElement, never innerHTML.
"use strict";
(function () {
  document.documentElement.classList.add("js");

  function pad(n) { return String(n).padStart(2, "0"); }

  function fmtUtc(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }

  // "YYYY-MM-DD HH:MM:SS" in the browser's own time zone.
  function fmtLocal(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  // "just now", "40 s ago", "3 min ago", "2 h ago", "5 days ago" (or "in 3 min").
  function fmtAgo(iso, now) {
    if (!iso) return "";
    const d = new Date(iso);
    if (isNaN(d)) return "";
    const diff = Math.round(((now || new Date()) - d) / 1000), s = Math.abs(diff);
    if (s < 5) return "just now";
    let text;
    if (s < 60) text = s + " s";
    else if (s < 3600) text = Math.floor(s / 60) + " min";
    else if (s < 86400) text = Math.floor(s / 3600) + " h";
    else text = Math.floor(s / 86400) + (s < 172800 ? " day" : " days");
    return diff >= 0 ? text + " ago" : "in " + text;
  }

  // A <time datetime> shows local time (data-format="ago": relative only, "both": local and
  // relative), and UTC on hover. The server renders UTC text, so the page reads right without JS.
  function showTime(el, iso, format) {
    if (!el) return;
    if (iso === undefined) iso = el.getAttribute("datetime");
    if (el.tagName !== "TIME") {  // a cell: put a <time> in it
      const inner = el.querySelector("time") || document.createElement("time");
      if (!inner.parentNode) { el.textContent = ""; el.appendChild(inner); }
      el.removeAttribute("title");
      el = inner;
    }
    if (format) el.dataset.format = format;
    if (!iso) { el.removeAttribute("datetime"); el.removeAttribute("title"); el.textContent = "—"; return; }
    el.setAttribute("datetime", iso);
    el.title = fmtUtc(iso) + " UTC";
    const mode = el.dataset.format || "local";
    if (mode === "ago") el.textContent = fmtAgo(iso);
    else if (mode === "both") el.textContent = fmtLocal(iso) + " (" + fmtAgo(iso) + ")";
    else el.textContent = fmtLocal(iso);
  }

  function showTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach(function (el) { showTime(el); });
  }

  function fmtDuration(seconds) {
    if (seconds > 0 && seconds < 1) return "<1s";  // never "0s" for a run that took a moment
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60), s = seconds % 60;
    if (h) return h + "h " + pad(m) + "m " + pad(s) + "s";
    if (m) return m + "m " + pad(s) + "s";
    return s + "s";
  }

  // How long a job ran (or has been running); for a job not started yet, given when it was
  // submitted: "queued 3 min".
  function duration(started, finished, created) {
    if (!started) return created && !finished ? "queued " + fmtAgo(created) : "";
    const end = finished ? new Date(finished) : new Date();
    return fmtDuration((end - new Date(started)) / 1000);
  }

  // A job's training progress (the payload's `progress`) as one line of text, e.g. "Round 3 of 5 ·
  // last aggregation 12s ago (2 updates)"; "" when the job's output showed none.
  function progressText(p, now) {
    if (!p) return "";
    let text = p.finished ? "Finished · " : "";
    if (typeof p.round === "number") text += "Round " + (p.round + 1) + (p.total_rounds ? " of " + p.total_rounds : "");
    else text += "Training started";
    const at = p.last_aggregation_at ? new Date(p.last_aggregation_at) : null;
    if (at && !isNaN(at)) {
      text += " · last aggregation " + fmtDuration(((now || new Date()) - at) / 1000) + " ago";
      if (typeof p.aggregated_updates === "number") {
        text += " (" + p.aggregated_updates + (p.aggregated_updates === 1 ? " update)" : " updates)");
      }
    }
    return text;
  }

  // The same for a list cell: "round 3/5", "" when none.
  function progressShort(p) {
    if (!p || typeof p.round !== "number") return "";
    return "round " + (p.round + 1) + (p.total_rounds ? "/" + p.total_rounds : "");
  }

  // A websocket that reconnects by itself with capped, jittered backoff, resumes with what the page
  // holds, and shows its state in the #live indicator. The page holds every change up to `seq`
  // (the page's own, then the server's snapshots and heartbeats say so) and, per job, the latest
  // seq it got after that: changes come from several server processes, so a lower seq can still be
  // on its way when a higher one arrives, and the server must know which jobs the page is missing.
  function live(path, options) {
    const indicator = document.getElementById("live");
    let seq = Number(options.seq) || 0;
    const held = {};  // job id -> latest seq received, for jobs changed after `seq`

    function holdUpTo(complete) {
      if (complete <= seq) return;
      seq = complete;
      Object.keys(held).forEach(function (id) { if (held[id] <= seq) delete held[id]; });
    }

    let socket = null, attempt = 0, lastMessage = 0, stopped = false;

    function show(status, text) {
      if (!indicator) return;
      indicator.hidden = false;
      indicator.dataset.status = status;
      indicator.textContent = text;
      indicator.title = status === "live" ? "Live updates are connected" : "Live updates are not connected";
    }

    function connect() {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      show("connecting", attempt ? "reconnecting…" : "connecting…");
      socket = new WebSocket(scheme + location.host + path);
      socket.addEventListener("open", function () {
        attempt = 0;
        lastMessage = Date.now();
        show("live", "live");
        socket.send(JSON.stringify({ type: "resume", seq: seq, jobs: held }));
        if (options.onOpen) options.onOpen();
      });
      socket.addEventListener("message", function (event) {
        lastMessage = Date.now();
        let message;
        try { message = JSON.parse(event.data); } catch (e) { return; }
        // Under load the server sends a site's changes of the last 100 ms as one frame.
        const messages = message.type === "job.updates" ? (message.updates || []) : [message];
        messages.forEach(function (m) {
          if (m.type === "job.update" && typeof m.seq === "number" && m.seq > seq && m.job) {
            held[m.job.id] = Math.max(held[m.job.id] || 0, m.seq);
          } else if ((m.type === "snapshot" || m.type === "heartbeat") && typeof m.seq === "number") {
            // A change pushed while the snapshot was read is newer than the snapshot's row.
            if (m.type === "snapshot") m.jobs = (m.jobs || []).filter(function (j) { return !(held[j.id] > m.seq); });
            holdUpTo(m.seq);
          }
          if (m.type !== "heartbeat") options.onMessage(m);
        });
      });
      socket.addEventListener("close", function (event) {
        socket = null;
        if (stopped) return;
        if (event.code === 4401 || event.code === 4403) {
          show("offline", event.code === 4401 ? "signed out" : "no access");
          return;
        }
        retry();
      });
    }

    function retry() {
      attempt += 1;
      const delay = Math.min(30000, 500 * Math.pow(2, Math.min(attempt - 1, 6))) * (0.5 + Math.random() / 2);
      show("offline", "offline, retrying in " + Math.ceil(delay / 1000) + " s");
      setTimeout(connect, delay);
    }

    // Heartbeats arrive at least every 25 s: a silent socket is a dead one.
    setInterval(function () {
      if (socket && socket.readyState === WebSocket.OPEN && Date.now() - lastMessage > 60000) socket.close();
    }, 10000);
    window.addEventListener("pagehide", function () { stopped = true; if (socket) socket.close(); });
    connect();
    return { get seq() { return seq; } };
  }

  function jsonData(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : {};
  }

  window.Launcher = { live: live, fmtUtc: fmtUtc, fmtLocal: fmtLocal, fmtAgo: fmtAgo, showTime: showTime,
    showTimes: showTimes, duration: duration, fmtDuration: fmtDuration, jsonData: jsonData, progressText: progressText,
    progressShort: progressShort };

  // On a phone, tables in cards stack their cells (launcher.css): each cell is labelled with its
  // column's header, taken from the table itself.
  function labelCells(root) {
    (root || document).querySelectorAll("table.plain:not(.sr-only)").forEach(function (table) {
      const heads = Array.prototype.map.call(table.querySelectorAll("thead th"), function (th) {
        return th.querySelector(".sr-only") ? "" : th.textContent.trim();
      });
      table.querySelectorAll("tbody tr").forEach(function (tr) {
        Array.prototype.forEach.call(tr.cells, function (td, i) {
          if (heads[i] && td.colSpan === 1 && !td.dataset.label) td.dataset.label = heads[i];
        });
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    showTimes();
    labelCells();
    const note = document.getElementById("tz-note");
    if (note) {
      let zone = "";
      try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
      note.textContent = "Times are in your time zone" + (zone ? " (" + zone + ")" : "") + "; hover a time for UTC.";
    }
    // Relative times keep counting.
    setInterval(function () {
      document.querySelectorAll('time[datetime][data-format="ago"], time[datetime][data-format="both"]')
        .forEach(function (el) { showTime(el); });
    }, 15000);
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  });
})();
