// apiscope flamegraph: click to zoom, reset, search. Works in a standalone SVG and inlined in
// an HTML page (several graphs per page), so it finds its own <svg> and touches nothing else.
(function () {
  "use strict";
  var script = document.currentScript;
  var svg = script ? (script.ownerSVGElement || script.closest("svg")) : document.documentElement;
  var width = Number(svg.getAttribute("data-width"));
  var pad = Number(svg.getAttribute("data-pad"));
  var charWidth = Number(svg.getAttribute("data-char"));
  var inner = width - 2 * pad;
  var frames = Array.prototype.slice.call(svg.querySelectorAll("g.frame"));
  var details = svg.querySelector(".details");
  var matchedText = svg.querySelector(".matched");
  var resetButton = svg.querySelector(".reset");
  var searchButton = svg.querySelector(".search");
  var EPS = 1e-6;  // positions are written with 7 decimals
  var searching = null;

  function num(g, name) { return Number(g.getAttribute(name)); }

  function fit(g, px) {
    var name = g.getAttribute("data-n");
    var chars = Math.floor((px - 6) / charWidth);
    var text = g.querySelector("text");
    if (chars < 3) { text.textContent = ""; return; }
    text.textContent = name.length <= chars ? name : name.slice(0, chars - 2) + "..";
  }

  function place(g, x, w) {
    var rect = g.querySelector("rect");
    var px = pad + x * inner;
    rect.setAttribute("x", px.toFixed(2));
    rect.setAttribute("width", (w * inner).toFixed(2));
    g.querySelector("text").setAttribute("x", (px + 3).toFixed(2));
    fit(g, w * inner);
  }

  // Zoom on a frame: it and everything above it inside its range fill the width; its callers
  // become full-width bars (dimmed); the rest is hidden.
  function zoom(target) {
    var zx = num(target, "data-x"), zw = num(target, "data-w"), zd = num(target, "data-d");
    frames.forEach(function (g) {
      var x = num(g, "data-x"), w = num(g, "data-w"), d = num(g, "data-d");
      g.classList.remove("parent");
      if (d < zd && x <= zx + EPS && x + w >= zx + zw - EPS) {
        g.classList.remove("hidden");
        g.classList.add("parent");
        place(g, 0, 1);
      } else if (d >= zd && x >= zx - EPS && x + w <= zx + zw + EPS) {
        g.classList.remove("hidden");
        place(g, (x - zx) / zw, w / zw);
      } else {
        g.classList.add("hidden");
      }
    });
    resetButton.classList.remove("hidden");
  }

  function resetZoom() {
    frames.forEach(function (g) {
      g.classList.remove("hidden", "parent");
      place(g, num(g, "data-x"), num(g, "data-w"));
    });
    resetButton.classList.add("hidden");
  }

  function matcher(term) {
    try {
      var re = new RegExp(term);
      return function (name) { return re.test(name); };
    } catch (e) {
      return function (name) { return name.indexOf(term) !== -1; };
    }
  }

  // Highlight the frames whose label matches; the share counts nested matches once.
  function search(term) {
    clearSearch();
    if (!term) { return 0; }
    var test = matcher(term);
    var spans = [];
    frames.forEach(function (g) {
      if (num(g, "data-d") === 0 || !test(g.getAttribute("data-n"))) { return; }
      var rect = g.querySelector("rect");
      rect.setAttribute("data-fill", rect.getAttribute("fill"));
      rect.setAttribute("fill", "rgb(230,0,230)");
      g.classList.add("match");
      spans.push([num(g, "data-x"), num(g, "data-x") + num(g, "data-w")]);
    });
    spans.sort(function (a, b) { return a[0] - b[0]; });
    var share = 0, end = -1;
    spans.forEach(function (s) {
      if (s[0] >= end) { share += s[1] - s[0]; end = s[1]; }
      else if (s[1] > end) { share += s[1] - end; end = s[1]; }
    });
    searching = term;
    matchedText.textContent = "Matched: " + (100 * share).toFixed(1) + "% (" + spans.length +
      " frames)";
    searchButton.textContent = "Clear search";
    return share;
  }

  function clearSearch() {
    svg.querySelectorAll("g.frame.match").forEach(function (g) {
      var rect = g.querySelector("rect");
      rect.setAttribute("fill", rect.getAttribute("data-fill"));
      g.classList.remove("match");
    });
    searching = null;
    matchedText.textContent = "";
    searchButton.textContent = "Search";
  }

  function askSearch() {
    if (searching !== null) { clearSearch(); return; }
    var term = window.prompt("Search frames (regular expression, or plain text)", "");
    if (term) { search(term); }
  }

  svg.addEventListener("click", function (event) {
    var g = event.target.closest("g.frame");
    if (g) { zoom(g); }
    else if (event.target === resetButton) { resetZoom(); }
    else if (event.target === searchButton) { askSearch(); }
  });
  svg.addEventListener("mouseover", function (event) {
    var g = event.target.closest("g.frame");
    if (g) { details.textContent = g.querySelector("title").textContent.replace("\n", ": "); }
  });
  svg.addEventListener("mouseout", function () { details.textContent = " "; });
  if (document.documentElement === svg) {  // standalone: Ctrl-F searches, Escape resets
    window.addEventListener("keydown", function (event) {
      if ((event.ctrlKey || event.metaKey) && event.key === "f") {
        event.preventDefault();
        askSearch();
      } else if (event.key === "Escape") {
        resetZoom();
        clearSearch();
      }
    });
  }
  // For the HTML page (its search box) and for scripts driving the graph.
  svg.flamegraph = { zoom: zoom, reset: resetZoom, search: search, clearSearch: clearSearch };
})();
