// Live refresh: every data-refresh seconds, fetch this page again and swap in its <main id="live">.
// Skipped while the tab is hidden or a field of the page has the focus (the user is typing).
(function () {
  "use strict";
  var main = document.getElementById("live");
  var seconds = main && parseFloat(main.getAttribute("data-refresh"));
  if (!seconds || seconds <= 0) return;
  function busy() {
    var el = document.activeElement;
    return el && /^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName);
  }
  function refresh() {
    if (document.hidden || busy()) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Pgjobs-Refresh": "1" } })
      .then(function (r) { return r.ok && !r.redirected ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("live");
        var current = document.getElementById("live");
        if (fresh && current) current.replaceWith(document.adoptNode(fresh));
      })
      .catch(function () { /* the next round tries again */ });
  }
  window.setInterval(refresh, seconds * 1000);
})();
