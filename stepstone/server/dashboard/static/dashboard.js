// stepstone dashboard: the little that htmx does not do by itself. No build step; see VENDORED.md for htmx.
(function () {
  "use strict";
  // Live parts poll only while the user is not in the middle of something inside them.
  window.stepstoneIdle = function (id) {
    var root = document.getElementById(id);
    if (!root) return false;
    if (root.querySelector("input.sel:checked")) return false;
    var active = document.activeElement;
    return !(active && root.contains(active) && active.matches("input, textarea, select"));
  };
  // A live swap keeps open step details, the focused control and the scroll position.
  var kept = null;
  document.addEventListener("htmx:beforeSwap", function (ev) {
    var target = ev.detail.target;
    if (!target || (target.id !== "live" && target.id !== "rows" && target.id !== "workflows")) return;
    var open = [];
    target.querySelectorAll("details[open][id]").forEach(function (d) { open.push(d.id); });
    var active = document.activeElement;
    kept = { open: open, focus: active && active.id && target.contains(active) ? active.id : null };
  });
  document.addEventListener("htmx:afterSettle", function () {
    if (!kept) return;
    kept.open.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
    if (kept.focus) { var f = document.getElementById(kept.focus); if (f) f.focus({ preventScroll: true }); }
    kept = null;
  });
})();
