// A probe job's page: its report (#probe-result) is rendered from the saved logs tail, so it is
// fetched again (this page, the report only) whenever job.js shows a new state or the saved tail.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const root = document.getElementById("job");
  const logs = document.getElementById("logs");
  if (!root || !document.getElementById("probe-result")) return;
  let pending = false;
  let tries = 0;

  function refresh() {
    const current = document.getElementById("probe-result");
    if (!current || current.dataset.done === "true" || pending) return;
    pending = true;
    fetch(window.location.pathname, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) return;
        const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("probe-result");
        if (fresh) current.replaceWith(document.importNode(fresh, true));
      }).catch(function () {}).finally(function () { pending = false; });
  }

  const watch = new MutationObserver(refresh);
  watch.observe(root, { attributes: true, attributeFilter: ["data-state"] });
  watch.observe(logs, { childList: true, characterData: true, subtree: true });
  // In case a push was missed: look again now and then while the probe has not ended (about 2 min).
  const timer = setInterval(function () {
    const current = document.getElementById("probe-result");
    if (!current || current.dataset.done === "true" || ++tries > 60) { clearInterval(timer); return; }
    refresh();
  }, 2000);
});
