// Result page viewer: zoom, pan, window/level, invert, full screen and the heat layer on/off, with
// the mouse, the keyboard and touch; switching the heatmap without a reload. Plain pointer events
// and CSS transforms: window/level is an SVG transfer function on the X-ray only, so the heat
// layer keeps its colours. Without this script the selector and links reload the page instead.
// Controls are described in docs/viewer.md.
(function () {
  "use strict";

  var stage = document.getElementById("viewer-stage");
  var canvas = document.getElementById("viewer-canvas");
  var base = document.getElementById("viewer-base");
  if (!stage || !canvas || !base) return;

  var overlay = document.getElementById("heatmap");
  var select = document.getElementById("heatmap-select");
  var viewer = document.getElementById("viewer");
  var loading = document.getElementById("viewer-loading");
  var readout = document.getElementById("viewer-readout");
  var errorBox = document.getElementById("heatmap-error");
  var overlayButton = document.getElementById("overlay-toggle");
  var offNote = document.getElementById("heatmap-off-note");

  // ---- window/level: out = (in - (level - width / 2)) / width, on 0-1 gray values -------------
  var svgNS = "http://www.w3.org/2000/svg";
  var svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("width", "0");
  svg.setAttribute("height", "0");
  svg.setAttribute("aria-hidden", "true");
  svg.style.position = "absolute";
  var filter = document.createElementNS(svgNS, "filter");
  filter.id = "viewer-wl";
  filter.setAttribute("color-interpolation-filters", "sRGB");
  var transfer = document.createElementNS(svgNS, "feComponentTransfer");
  var funcs = ["feFuncR", "feFuncG", "feFuncB"].map(function (name) {
    var f = document.createElementNS(svgNS, name);
    f.setAttribute("type", "linear");
    transfer.appendChild(f);
    return f;
  });
  filter.appendChild(transfer);
  svg.appendChild(filter);
  document.body.appendChild(svg);

  var state = { zoom: 1, x: 0, y: 0, width: 1, level: 0.5, invert: false, tool: "wl" };

  function applyWindow() {
    var slope = 1 / state.width;
    var intercept = 0.5 - state.level / state.width;
    if (state.invert) {
      slope = -slope;
      intercept = 1 - intercept;
    }
    funcs.forEach(function (f) {
      f.setAttribute("slope", slope.toFixed(4));
      f.setAttribute("intercept", intercept.toFixed(4));
    });
    var identity = state.width === 1 && state.level === 0.5 && !state.invert;
    base.style.filter = identity ? "" : "url(#viewer-wl)";
  }

  function applyTransform() {
    canvas.style.transform =
      "translate(" + state.x + "px, " + state.y + "px) scale(" + state.zoom + ")";
    readout.textContent =
      "Zoom " + Math.round(state.zoom * 100) + " % · W " + Math.round(state.width * 255) +
      " L " + Math.round(state.level * 255) + (state.invert ? " · inverted" : "");
  }

  function render() {
    applyWindow();
    applyTransform();
  }

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // Zoom by `factor` about a point given in stage coordinates (the point under it stays put).
  function zoomAt(factor, px, py) {
    var zoom = clamp(state.zoom * factor, 1, 16);
    factor = zoom / state.zoom;
    var rect = stage.getBoundingClientRect();
    var cx = px - rect.width / 2;
    var cy = py - rect.height / 2;
    state.x = cx - (cx - state.x) * factor;
    state.y = cy - (cy - state.y) * factor;
    state.zoom = zoom;
    if (zoom === 1) {
      state.x = 0;
      state.y = 0;
    }
    applyTransform();
  }

  function reset() {
    state.zoom = 1;
    state.x = 0;
    state.y = 0;
    state.width = 1;
    state.level = 0.5;
    state.invert = false;
    setPressed("invert", false);
    render();
  }

  function setPressed(action, on) {
    var button = document.querySelector('[data-action="' + action + '"]');
    if (button) button.setAttribute("aria-pressed", on ? "true" : "false");
  }

  function setTool(tool) {
    state.tool = tool;
    document.querySelectorAll("[data-tool]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-tool") === tool ? "true" : "false");
    });
    stage.setAttribute("data-tool", tool);
  }

  // ---- pointers: one drags (the active tool; middle button or Shift pans), two pinch ---------
  var pointers = {};
  var pinch = null;

  function stagePoint(event) {
    var rect = stage.getBoundingClientRect();
    return { x: event.clientX - rect.left, y: event.clientY - rect.top };
  }

  function pointerList() {
    return Object.keys(pointers).map(function (id) { return pointers[id]; });
  }

  stage.addEventListener("pointerdown", function (event) {
    if (event.pointerType === "mouse" && event.button !== 0 && event.button !== 1) return;
    event.preventDefault();
    stage.focus({ preventScroll: true });
    stage.setPointerCapture(event.pointerId);
    var point = stagePoint(event);
    pointers[event.pointerId] = {
      x: point.x, y: point.y,
      pan: state.tool === "pan" || event.button === 1 || event.shiftKey,
    };
    var list = pointerList();
    if (list.length === 2) {
      pinch = {
        distance: Math.hypot(list[0].x - list[1].x, list[0].y - list[1].y) || 1,
        mx: (list[0].x + list[1].x) / 2,
        my: (list[0].y + list[1].y) / 2,
      };
    }
  });

  stage.addEventListener("pointermove", function (event) {
    var pointer = pointers[event.pointerId];
    if (!pointer) return;
    var point = stagePoint(event);
    var dx = point.x - pointer.x;
    var dy = point.y - pointer.y;
    pointer.x = point.x;
    pointer.y = point.y;
    var list = pointerList();
    if (list.length >= 2 && pinch) {
      var distance = Math.hypot(list[0].x - list[1].x, list[0].y - list[1].y) || 1;
      var mx = (list[0].x + list[1].x) / 2;
      var my = (list[0].y + list[1].y) / 2;
      state.x += mx - pinch.mx;
      state.y += my - pinch.my;
      zoomAt(distance / pinch.distance, mx, my);
      pinch = { distance: distance, mx: mx, my: my };
      return;
    }
    if (pointer.pan) {
      if (state.zoom === 1) return; // nothing to pan to when the whole image fits
      state.x += dx;
      state.y += dy;
      applyTransform();
    } else {
      // As in OHIF: right widens the window, down raises the level (darker image).
      var rect = stage.getBoundingClientRect();
      state.width = clamp(state.width + (dx / rect.width) * 1.5, 0.02, 2);
      state.level = clamp(state.level + (dy / rect.height), -0.5, 1.5);
      render();
    }
  });

  function release(event) {
    delete pointers[event.pointerId];
    if (pointerList().length < 2) pinch = null;
  }
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);

  stage.addEventListener("wheel", function (event) {
    event.preventDefault();
    var point = stagePoint(event);
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, point.x, point.y);
  }, { passive: false });

  stage.addEventListener("dblclick", reset);

  // ---- the heat layer -----------------------------------------------------------------------
  var overlayOn = overlay ? !overlay.hidden : false;

  function setOverlay(on) {
    if (!overlay) return;
    overlayOn = on;
    overlay.hidden = !on;
    if (overlayButton) overlayButton.setAttribute("aria-pressed", on ? "true" : "false");
    if (offNote) offNote.hidden = on;
  }

  function setLoading(busy) {
    loading.hidden = !busy;
    stage.classList.toggle("is-loading", busy);
    stage.setAttribute("aria-busy", busy ? "true" : "false");
  }

  var stateText = {
    empty: function () { return "empty map, the model's evidence is zero everywhere; nothing to draw."; },
    faint: function (peak, cut) {
      return "peaks at " + peak + " % of the case scale, below the " + cut + " % cut-off; nothing drawn.";
    },
    missing: function () { return "no map stored."; },
    shown: function (peak) { return "peaks at " + peak + " % of the case scale."; },
  };

  function showHeatmap(name, userChose) {
    if (!select || !overlay) return;
    var option = null;
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === name) option = select.options[i];
    }
    if (!option) return;
    select.value = name;
    errorBox.hidden = true;
    var src = option.getAttribute("data-src");
    if (overlay.getAttribute("src") !== src) {
      setLoading(true);
      overlay.src = src;
    }
    overlay.alt = "Heat layer of " + option.getAttribute("data-label") + " over the X-ray";
    document.getElementById("heatmap-name").textContent = option.getAttribute("data-label");
    document.getElementById("heatmap-percent").textContent = option.getAttribute("data-percent");
    var cut = viewer.getAttribute("data-cut-off");
    var kind = option.getAttribute("data-state");
    document.getElementById("heatmap-state").textContent =
      (stateText[kind] || stateText.shown)(option.getAttribute("data-peak"), cut);
    // Choosing a finding shows its layer when it is positive, as on first load; the button wins after.
    if (!userChose) setOverlay(option.getAttribute("data-positive") === "1");
    document.querySelectorAll("#findings tbody tr").forEach(function (row) {
      row.classList.toggle("is-selected", row.getAttribute("data-finding") === name);
    });
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, "", "?heatmap=" + encodeURIComponent(name));
    }
  }

  if (overlay) {
    overlay.addEventListener("load", function () { setLoading(false); errorBox.hidden = true; });
    overlay.addEventListener("error", function () { setLoading(false); errorBox.hidden = false; });
    if (!overlay.complete) setLoading(true);
  }

  if (select) select.addEventListener("change", function () { showHeatmap(select.value, false); });

  document.querySelectorAll("[data-heatmap]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      showHeatmap(link.getAttribute("data-heatmap"), false);
      var top = viewer.getBoundingClientRect().top;
      if (top < 0 || top > window.innerHeight * 0.6) viewer.scrollIntoView({ behavior: "smooth", block: "start" });
    });
  });

  var slider = document.getElementById("heatmap-opacity");
  var sliderOut = document.getElementById("heatmap-opacity-value");
  if (slider && overlay) {
    var applyOpacity = function () {
      overlay.style.opacity = String(slider.value / 100);
      sliderOut.textContent = slider.value + " %";
    };
    slider.addEventListener("input", applyOpacity);
    applyOpacity();
  }

  // ---- buttons and keys -----------------------------------------------------------------------
  function fullscreen() {
    if (document.fullscreenElement) {
      document.exitFullscreen();
    } else if (viewer.requestFullscreen) {
      viewer.requestFullscreen();
    }
  }
  document.addEventListener("fullscreenchange", function () {
    setPressed("fullscreen", document.fullscreenElement === viewer);
  });

  var actions = {
    "zoom-in": function () { var r = stage.getBoundingClientRect(); zoomAt(1.25, r.width / 2, r.height / 2); },
    "zoom-out": function () { var r = stage.getBoundingClientRect(); zoomAt(0.8, r.width / 2, r.height / 2); },
    reset: reset,
    invert: function () { state.invert = !state.invert; setPressed("invert", state.invert); render(); },
    overlay: function () { setOverlay(!overlayOn); },
    fullscreen: fullscreen,
  };

  document.querySelectorAll("[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { actions[button.getAttribute("data-action")](); });
  });
  document.querySelectorAll("[data-tool]").forEach(function (button) {
    button.addEventListener("click", function () { setTool(button.getAttribute("data-tool")); });
  });

  var keys = {
    "+": "zoom-in", "=": "zoom-in", "-": "zoom-out", "0": "reset",
    i: "invert", o: "overlay", f: "fullscreen",
  };
  stage.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var key = event.key.toLowerCase();
    if (key === "w" || key === "p") {
      setTool(key === "w" ? "wl" : "pan");
    } else if (keys[key] && (key !== "o" || overlay)) {
      actions[keys[key]]();
    } else {
      var step = { arrowleft: [40, 0], arrowright: [-40, 0], arrowup: [0, 40], arrowdown: [0, -40] }[key];
      if (!step || state.zoom === 1) return;
      state.x += step[0];
      state.y += step[1];
      applyTransform();
    }
    event.preventDefault();
  });

  setTool("wl");
  render();
})();
