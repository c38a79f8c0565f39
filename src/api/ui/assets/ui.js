// ferro web UI: copy buttons, relative times, the live event list, the
// "as of" slider and confirmations. The pages work without it; it only
// enhances. Text from the server is only ever set with textContent.
"use strict";
(function () {
  function relative(ns) {
    var s = Math.max(0, (Date.now() - ns / 1e6) / 1000);
    var n, unit;
    if (s < 45) return "just now";
    if (s < 5400) { n = Math.max(1, Math.ceil(s / 60)); unit = "minute"; }
    else if (s < 129600) { n = Math.round(s / 3600); unit = "hour"; }
    else { n = Math.round(s / 86400); unit = "day"; }
    return n + " " + unit + (n === 1 ? "" : "s") + " ago";
  }
  function refreshTimes() {
    document.querySelectorAll("time[data-ns] .rel").forEach(function (el) {
      el.textContent = relative(Number(el.parentNode.getAttribute("data-ns")));
    });
  }
  function copy(text, button) {
    function done() {
      button.classList.add("done");
      var old = button.textContent;
      button.textContent = "✓";
      setTimeout(function () { button.textContent = old; button.classList.remove("done"); }, 1200);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {
      var area = document.createElement("textarea");
      area.value = text;
      document.body.appendChild(area);
      area.select();
      try { document.execCommand("copy"); done(); } catch (e) {}
      document.body.removeChild(area);
    }
  }
  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest("button.copy");
    if (b) { e.preventDefault(); copy(b.getAttribute("data-copy"), b); }
  });
  document.addEventListener("submit", function (e) {
    var msg = e.target.getAttribute("data-confirm");
    if (msg && !window.confirm(msg)) e.preventDefault();
  });
  function timeEl(ns, iso) {
    var t = document.createElement("time");
    t.setAttribute("datetime", iso);
    t.setAttribute("title", iso);
    t.setAttribute("data-ns", String(ns));
    var rel = document.createElement("span");
    rel.className = "rel";
    rel.textContent = relative(ns);
    var abs = document.createElement("span");
    abs.className = "abs";
    abs.textContent = iso.slice(0, 19).replace("T", " ") + " UTC";
    t.appendChild(rel);
    t.appendChild(document.createTextNode(" "));
    t.appendChild(abs);
    return t;
  }
  function span(cls, text) {
    var s = document.createElement("span");
    s.className = cls;
    s.textContent = text;
    return s;
  }
  function live(list) {
    var after = Number(list.getAttribute("data-after")) || 0;
    function poll() {
      fetch("/ui/events?after=" + after, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (page) {
          var empty = list.querySelector(".empty");
          page.events.forEach(function (ev) {
            if (empty) { empty.remove(); empty = null; }
            var li = document.createElement("li");
            li.className = "fresh";
            li.appendChild(span("kind k-" + ev.kind, ev.kind));
            if (ev.repo) {
              var a = document.createElement("a");
              a.className = "repo";
              a.href = "/ui/r/" + ev.repo;
              a.textContent = ev.repo;
              li.appendChild(a);
            }
            li.appendChild(span("text", ev.text));
            li.appendChild(span("who", ev.user));
            li.appendChild(span("seq", "#" + ev.seq));
            li.appendChild(timeEl(ev.time_unix_ns, ev.time));
            list.insertBefore(li, list.firstChild);
          });
          while (list.children.length > 30) list.removeChild(list.lastChild);
          after = page.next;
          list.setAttribute("data-after", String(after));
          setTimeout(poll, 200);
        })
        .catch(function () { setTimeout(poll, 5000); });
    }
    poll();
  }
  document.addEventListener("DOMContentLoaded", function () {
    refreshTimes();
    setInterval(refreshTimes, 30000);
    var list = document.getElementById("events");
    if (list) live(list);
    var range = document.getElementById("asof-range");
    var at = document.getElementById("asof-at");
    if (range && at) {
      range.addEventListener("input", function () { at.value = range.value; });
    }
  });
})();
