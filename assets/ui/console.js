// The web console's script: live fragments over one server-sent event stream per tab.
// Pages work without it (reading and forms); with it, parts marked data-live refresh on change.
(function () {
  "use strict";
  var live = document.querySelectorAll("[data-live]");
  var state = document.getElementById("live-state");
  var meta = document.querySelector('meta[name="las-version"]');
  var version = meta ? meta.getAttribute("content") : "";
  var source = null;
  var fetching = false;
  var again = false;

  function show(on) {
    if (!state) return;
    state.textContent = state.getAttribute(on ? "data-on" : "data-off");
    state.className = on ? "on" : "";
    document.documentElement.setAttribute("data-live-state", on ? "on" : "off");
  }

  // Re-fetches every stale fragment of this page (`?fragment=live`), one request at a time.
  function refresh() {
    if (fetching) { again = true; return; }
    fetching = true;
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "live");
    fetch(url.toString(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) return Promise.reject(r.status);
        var hash = r.headers.get("x-las-fragment-hash") || "";
        return r.text().then(function (html) { return [hash, html]; });
      })
      .then(function (got) {
        live.forEach(function (el) {
          // Unchanged content is left alone (the store changes often: status writes), so what
          // the reader points at or is about to click stays where it is.
          if (got[0] === "" || got[0] !== el.getAttribute("data-hash")) {
            el.innerHTML = got[1];
            el.setAttribute("data-hash", got[0]);
          }
          el.classList.remove("stale");
        });
        document.documentElement.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () {})
      .then(function () {
        fetching = false;
        if (again) { again = false; refresh(); }
      });
  }

  function open() {
    if (source || live.length === 0) return;
    var url = "/ui/stream" + (version ? "?since=" + encodeURIComponent(version) : "");
    source = new EventSource(url);
    source.addEventListener("open", function () { show(true); });
    source.addEventListener("changed", function (e) {
      version = e.lastEventId || version;
      live.forEach(function (el) { el.classList.add("stale"); });
      refresh();
    });
    source.addEventListener("error", function () { show(false); });
  }

  function close() {
    if (source) { source.close(); source = null; }
    show(false);
  }

  // Hidden tabs hold no connection (browsers allow six per origin); on return the stream
  // resumes after the last change it saw, and a missed change refreshes at once.
  document.addEventListener("visibilitychange", function () {
    if (document.hidden) close(); else open();
  });
  if (!document.hidden) open();
})();
