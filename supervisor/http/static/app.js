// The little JavaScript the dashboard has: local times, relative times, auto-refresh.
// Everything works without it (times then show in UTC, refresh is the browser's).
(function () {
  "use strict";
  function relative(ms) {
    var s = Math.round((Date.now() - ms) / 1000), future = s < 0, a = Math.abs(s), text;
    if (a >= 86400) text = Math.floor(a / 86400) + " d";
    else if (a >= 3600) text = Math.floor(a / 3600) + " h";
    else if (a >= 60) text = Math.floor(a / 60) + " min";
    else text = a + " s";
    return future ? "in " + text : text + " ago";
  }
  function localize() {
    document.querySelectorAll("time[datetime]").forEach(function (el) {
      var ms = Date.parse(el.getAttribute("datetime"));
      if (isNaN(ms)) return;
      el.textContent = relative(ms);
      el.title = new Date(ms).toLocaleString();
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var tz = Intl.DateTimeFormat().resolvedOptions().timeZone;
    var tzEl = document.getElementById("tz");
    if (tzEl && tz) tzEl.textContent = tz + " (hover a time)";
    localize();
    setInterval(localize, 1000);
    var every = parseInt(document.body.dataset.refresh || "0", 10);
    var state = document.getElementById("refresh-state");
    if (!every) { if (state) state.textContent = ""; return; }
    var busy = false;  // never reload while someone types into a form
    document.addEventListener("focusin", function (e) { busy = /INPUT|TEXTAREA|SELECT/.test(e.target.tagName); });
    setInterval(function () {
      if (!busy && !document.hidden) location.reload();
    }, every * 1000);
  });
})();
