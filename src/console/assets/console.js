// idbridge console: live job progress over Server-Sent Events. The only script of the console;
// every other page works without JavaScript (the job page then refreshes itself).
(function () {
  "use strict";
  var root = document.getElementById("job");
  if (!root || !window.EventSource) { return; }
  var url = root.getAttribute("data-events");
  if (!url) { return; }
  var stop = document.getElementById("no-js-refresh");
  if (stop) { stop.parentNode.removeChild(stop); }
  function set(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }
  function show(p) {
    set("done", String(p.done));
    set("failed", String(p.failed));
    set("remaining", String(p.remaining));
    set("total", String(p.total));
    set("percent", p.percent + "%");
    set("rate", p.rate);
    set("eta", p.eta);
    set("state", p.state);
    var bar = document.getElementById("bar");
    if (bar) { bar.value = p.percent; bar.textContent = p.percent + "%"; }
    if (p.errors && p.errors.length) {
      var list = document.getElementById("errors");
      var tbody = list && list.querySelector("tbody");
      if (tbody) {
        while (tbody.firstChild) { tbody.removeChild(tbody.firstChild); }
        p.errors.forEach(function (e) {
          var tr = document.createElement("tr");
          [e.device_id, e.error].forEach(function (v) {
            var td = document.createElement("td");
            td.textContent = v;
            tr.appendChild(td);
          });
          tbody.appendChild(tr);
        });
        list.hidden = false;
      }
    }
  }
  var source = new EventSource(url);
  set("live", "Live updates on.");
  source.addEventListener("progress", function (ev) { show(JSON.parse(ev.data)); });
  source.addEventListener("end", function (ev) {
    show(JSON.parse(ev.data));
    set("live", "Finished.");
    source.close();
  });
  source.onerror = function () { set("live", "Live updates interrupted; retrying..."); };
}());
