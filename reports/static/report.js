/* diag report: draws the flame graphs and wires the timeline clicks. Reads its data from the
   JSON block #diag-data; every string from the target is written with textContent (via d3's
   .text() inside d3-flame-graph), never as HTML. Runs without network and without d3 when the
   report has no stacks. */
(function () {
  "use strict";
  var el = document.getElementById("diag-data");
  if (!el) return;
  var data;
  try { data = JSON.parse(el.textContent); } catch (e) { return; }

  function drawFlames() {
    var lib = window.flamegraph && (window.flamegraph["default"] || window.flamegraph.flamegraph);
    if (!lib || !window.d3 || !data.flames) return;
    data.flames.forEach(function (f) {
      var host = document.getElementById(f.id);
      if (!host || !f.tree) return;
      var width = Math.max(host.clientWidth || 600, 300);
      var chart = lib()
        .width(width)
        .cellHeight(16)
        .minFrameSize(2)
        .transitionDuration(250)
        .sort(true)
        .title("")
        .selfValue(false);
      // No tooltip: d3-flame-graph's tooltip writes HTML. Frames carry an SVG <title> (text).
      while (host.firstChild) host.removeChild(host.firstChild);
      window.d3.select(host).datum(f.tree).call(chart);
    });
  }

  function wireTimelines() {
    var stacks = data.stacks || {};
    Array.prototype.forEach.call(document.querySelectorAll("svg.tl"), function (svg) {
      var key = svg.getAttribute("data-tl");
      var list = stacks[key] || [];
      var box = svg.parentNode.querySelector(".stack.picked");
      if (!box) return;
      function show(ev) {
        var t = ev.target;
        if (!t || !t.hasAttribute || !t.hasAttribute("data-i")) return;
        var frames = list[parseInt(t.getAttribute("data-i"), 10)] || [];
        var ol = box.querySelector("ol");
        while (ol.firstChild) ol.removeChild(ol.firstChild);
        frames.forEach(function (fr) {
          var li = document.createElement("li");
          li.textContent = String(fr);
          ol.appendChild(li);
        });
        var title = t.querySelector("title");
        box.querySelector("h4").textContent = "Selected sample: " + (title ? title.textContent : "");
        box.hidden = false;
      }
      svg.addEventListener("click", show);
      svg.addEventListener("keydown", function (ev) { if (ev.key === "Enter") show(ev); });
    });
  }

  function start() {
    try { drawFlames(); } catch (e) { if (window.console) console.warn("flame graph: " + e); }
    wireTimelines();
    document.documentElement.setAttribute("data-diag-ready", "1");
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
