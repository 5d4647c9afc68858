// Site settings: show only the chosen backend's fieldset (without JS every fieldset is shown).
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  const form = document.getElementById("site-form");
  if (!form) return;
  const backend = form.querySelector('select[name="backend"]');
  function toggle() {
    form.querySelectorAll("fieldset[data-backend]").forEach(function (fs) {
      fs.hidden = fs.dataset.backend !== backend.value;
    });
  }
  backend.addEventListener("change", toggle);
  toggle();
});
