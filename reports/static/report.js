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

  // [[stack id, count], ...] -> {name, value (inclusive), children}, frames from the shared table.
  function buildTree(rootName, list) {
    var stacks = data.stacks || [], names = data.frames || [];
    var root = {name: rootName, value: 0, children: []};
    var index = new Map();
    list.forEach(function (entry) {
      var ids = stacks[entry[0]] || [], n = entry[1], node = root;
      root.value += n;
      ids.forEach(function (k) {
        var kids = index.get(node);
        if (!kids) { kids = new Map(); index.set(node, kids); }
        var name = String(names[k]), child = kids.get(name);
        if (!child) { child = {name: name, value: 0, children: []}; kids.set(name, child); node.children.push(child); }
        child.value += n;
        node = child;
      });
    });
    return root;
  }

  function drawFlames() {
    var lib = window.flamegraph && (window.flamegraph["default"] || window.flamegraph.flamegraph);
    if (!lib || !window.d3 || !data.flames) return;
    data.flames.forEach(function (f) {
      var host = document.getElementById(f.id);
      if (!host || !f.stacks) return;
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
      window.d3.select(host).datum(buildTree(f.root, f.stacks)).call(chart);
    });
  }

  function wireTimelines() {
    var stacks = data.stacks || [], names = data.frames || [];
    Array.prototype.forEach.call(document.querySelectorAll("svg.tl"), function (svg) {
      var box = svg.parentNode.querySelector(".stack.picked");
      if (!box) return;
      function show(ev) {
        var t = ev.target;
        if (!t || !t.hasAttribute || !t.hasAttribute("data-i")) return;
        var frames = (stacks[parseInt(t.getAttribute("data-i"), 10)] || []).map(function (k) { return names[k]; });
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
