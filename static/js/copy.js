// Copy buttons (token page): a button with data-copy="ID" copies that element's value or text.
// Without JavaScript the buttons stay hidden and the text stays selectable.
"use strict";
(function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    const source = document.getElementById(button.dataset.copy);
    if (!source) return;
    const label = button.textContent;
    button.hidden = false;
    button.addEventListener("click", function () {
      const text = "value" in source && source.tagName === "INPUT" ? source.value : source.textContent;
      const done = function (ok) {
        button.textContent = ok ? "Copied" : "Select and copy";
        window.setTimeout(function () { button.textContent = label; }, 2000);
      };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(function () { done(true); }, function () { done(false); });
      } else {
        const range = document.createRange();
        range.selectNodeContents(source);
        const selection = window.getSelection();
        selection.removeAllRanges();
        selection.addRange(range);
        if (source.select) source.select();
        let ok = false;
        try { ok = document.execCommand("copy"); } catch (e) { ok = false; }
        done(ok);
      }
    });
  });
})();
