// CareBus coordinator dashboard: live updates without inline script (the CSP forbids it).
// Polls /tableau/version; when the bus has news, fetches the same page as a fragment
// and swaps the content in. A lost session goes back to the login page.
(function () {
  "use strict";
  var body = document.body;
  if (!body || body.dataset.live !== "1") {
    return;
  }
  var every = Math.max(500, Number(body.dataset.refresh || "2") * 1000);
  var version = body.dataset.version;
  var refreshed = Date.now();
  var badge = document.getElementById("direct");

  function status(ok) {
    if (badge) {
      badge.textContent = ok ? "En direct" : "Connexion perdue";
      badge.classList.toggle("perdu", !ok);
    }
  }

  function reload(next) {
    return fetch(window.location.href, {
      headers: { "X-Tableau-Fragment": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (page) {
      if (page.status === 401) {
        window.location.assign("/tableau/connexion");
        return;
      }
      if (!page.ok) {
        return;
      }
      return page.text().then(function (html) {
        document.getElementById("contenu").innerHTML = html;
        version = next;
        body.dataset.version = next;
        refreshed = Date.now();
      });
    });
  }

  function tick() {
    fetch("/tableau/version", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          window.location.assign("/tableau/connexion");
          return null;
        }
        return r.json();
      })
      .then(function (v) {
        if (!v) {
          return;
        }
        status(true);
        var next = String(v.version);
        // relative times ("dans 2 h") also age: refresh at least every 30 s
        if (next !== version || Date.now() - refreshed > 30000) {
          return reload(next);
        }
      })
      .catch(function () {
        status(false);
      })
      .then(function () {
        window.setTimeout(tick, every);
      });
  }

  window.setTimeout(tick, every);
})();
