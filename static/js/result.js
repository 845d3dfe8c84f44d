// Result page viewer (docs/viewer.md): the X-ray windowed on its full bit depth, the findings drawn
// over it, zoom, pan, invert and full screen, with the mouse, the keyboard and touch.
//
// - Window/level: the page fetches the image's gray levels (16-bit where the stored copy is) as raw
//   little-endian uint16 from /predictions/<id>/pixels and maps them to the screen through a lookup
//   table on a canvas; an <img> of the stored PNG shows until they arrive (and stays if they fail).
// - Findings layer: each finding's Grad-CAM map (7x7 numbers in the page, on the case's scale) is
//   upsampled by cubic convolution; "Outline" draws the iso-line of every positive finding (and of
//   a negative one the reader picks), labelled with its score; "Filled" colours the picked
//   finding's map above that line. Marching squares give the lines.
// Without this script the image, the finding selector and the server's heat layer still work.
(function () {
  "use strict";

  var dataNode = document.getElementById("viewer-data");
  var stage = document.getElementById("viewer-stage");
  var box = document.getElementById("viewer-canvas");
  var base = document.getElementById("viewer-base");
  if (!dataNode || !stage || !box || !base) return;

  var data = JSON.parse(dataNode.textContent);
  var pixCanvas = document.getElementById("viewer-pixels");
  var layerCanvas = document.getElementById("viewer-layer");
  var viewer = document.getElementById("viewer");
  var readout = document.getElementById("viewer-readout");
  var loading = document.getElementById("viewer-loading");
  var errorBox = document.getElementById("viewer-error");
  var keyBox = document.getElementById("viewer-key");
  var keyList = document.getElementById("key-findings");
  var keyBar = document.getElementById("key-bar");
  var layerText = document.getElementById("layer-text");

  var findings = data.findings;
  var byName = {};
  findings.forEach(function (f) { byName[f.name] = f; });
  var positives = findings.filter(function (f) { return f.positive; });
  // Okabe-Ito colours (distinct for the common colour-vision deficiencies), light ones first:
  // they stand out on both the dark lungs and the bright mediastinum, over a dark halo.
  var OUTLINE_COLOURS = ["#E69F00", "#56B4E9", "#F0E442", "#009E73", "#D55E00", "#CC79A7", "#0072B2"];
  positives.forEach(function (f, i) { f.colour = OUTLINE_COLOURS[i % OUTLINE_COLOURS.length]; });

  var state = {
    zoom: 1, x: 0, y: 0, tool: "wl", invert: false,
    level: 127.5, width: 255, preset: "auto",
    layer: data.layerOn ? "outline" : "off",
    lastLayer: "outline",
    selected: data.selected,
  };

  function clamp(value, low, high) {
    return Math.min(high, Math.max(low, value));
  }

  // ---- gray levels and window/level --------------------------------------------------------
  var px = null; // {width, height, max, levels: Uint16Array, cumulative: Float64Array}
  var pixContext = null;
  var imageData = null;
  var out32 = null;
  var lut = null;
  var littleEndian = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

  // Percentile pairs of the image's own levels: radiographs carry no Hounsfield scale, so the
  // presets are relative to each image (docs/viewer.md).
  var PRESETS = {
    auto: { label: "Auto", range: [0.5, 99.5] },
    lung: { label: "Lung", range: [2, 70] },
    mediastinum: { label: "Mediastinum", range: [35, 99.5] },
    bone: { label: "Bone", range: [60, 100] },
  };
  var PRESET_KEYS = { "1": "auto", "2": "lung", "3": "mediastinum", "4": "bone" };

  function percentile(p) {
    var target = (p / 100) * px.levels.length;
    var c = px.cumulative;
    var low = 0;
    var high = c.length - 1;
    while (low < high) {
      var mid = (low + high) >> 1;
      if (c[mid] >= target) high = mid; else low = mid + 1;
    }
    return low;
  }

  function presetWindow(name) {
    if (!px) return { low: 0, high: 255 };
    if (name === "auto" && px.max === 255) return { low: 0, high: 255 }; // 8-bit: as analysed
    var range = PRESETS[name].range;
    var low = percentile(range[0]);
    var high = Math.max(percentile(range[1]), low + 1);
    return { low: low, high: high };
  }

  function span() {
    var auto = presetWindow("auto");
    return Math.max(auto.high - auto.low, 16);
  }

  function setPreset(name) {
    var w = presetWindow(name);
    state.preset = name;
    state.width = w.high - w.low;
    state.level = (w.high + w.low) / 2;
    document.querySelectorAll("[data-preset]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-preset") === name ? "true" : "false");
    });
    schedule();
  }

  function customWindow() {
    if (state.preset === null) return;
    state.preset = null;
    document.querySelectorAll("[data-preset]").forEach(function (button) {
      button.setAttribute("aria-pressed", "false");
    });
  }

  function drawPixels() {
    if (!px) return;
    var low = state.level - state.width / 2;
    var scale = 255 / state.width;
    for (var v = 0; v <= px.max; v++) {
      var g = Math.round((v - low) * scale);
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (state.invert) g = 255 - g;
      lut[v] = (0xff000000 | (g << 16) | (g << 8) | g) >>> 0;
    }
    var levels = px.levels;
    for (var i = 0; i < levels.length; i++) out32[i] = lut[levels[i]];
    pixContext.putImageData(imageData, 0, 0);
  }

  var frame = 0;
  function schedule() {
    if (frame) return;
    frame = window.requestAnimationFrame(function () {
      frame = 0;
      drawPixels();
      showReadout();
    });
  }

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = false;
  }

  function setLoading(busy) {
    loading.hidden = !busy;
    stage.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function loadPixels() {
    if (!window.fetch || !littleEndian || !pixCanvas) return;
    setLoading(true);
    fetch(data.pixels, { credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        var width = parseInt(response.headers.get("X-Image-Width"), 10);
        var height = parseInt(response.headers.get("X-Image-Height"), 10);
        var max = parseInt(response.headers.get("X-Image-Max"), 10);
        return response.arrayBuffer().then(function (buffer) {
          if (!(width > 0 && height > 0 && max > 0) || buffer.byteLength !== width * height * 2) {
            throw new Error("unexpected size");
          }
          return { width: width, height: height, max: max, levels: new Uint16Array(buffer) };
        });
      })
      .then(function (loaded) {
        var histogram = new Float64Array(loaded.max + 1);
        var levels = loaded.levels;
        for (var i = 0; i < levels.length; i++) histogram[Math.min(levels[i], loaded.max)] += 1;
        for (var v = 1; v < histogram.length; v++) histogram[v] += histogram[v - 1];
        loaded.cumulative = histogram;
        px = loaded;
        pixCanvas.width = px.width;
        pixCanvas.height = px.height;
        pixContext = pixCanvas.getContext("2d");
        imageData = pixContext.createImageData(px.width, px.height);
        out32 = new Uint32Array(imageData.data.buffer);
        lut = new Uint32Array(px.max + 1);
        setPreset(state.preset || "auto");
        drawPixels();
        pixCanvas.hidden = false;
        base.hidden = true;
        stage.setAttribute("data-bits", px.max > 255 ? "16" : "8");
        setLoading(false);
        sizeLayer();
        showReadout();
      })
      .catch(function () {
        setLoading(false);
        showError("The image's gray levels could not be loaded: window/level is unavailable; the image shows as stored.");
        document.querySelectorAll("[data-preset]").forEach(function (b) { b.disabled = true; });
      });
  }

  // ---- zoom and pan ----------------------------------------------------------------------------
  function applyTransform() {
    box.style.transform = "translate(" + state.x + "px, " + state.y + "px) scale(" + state.zoom + ")";
    showReadout();
  }

  var cursorText = "";
  function showReadout() {
    var parts = ["Zoom " + Math.round(state.zoom * 100) + " %"];
    if (px) {
      parts.push("W " + Math.round(state.width) + " L " + Math.round(state.level) + " of 0–" + px.max);
      parts.push(state.preset ? PRESETS[state.preset].label : "custom");
    }
    if (state.invert) parts.push("inverted");
    if (cursorText) parts.push(cursorText);
    readout.textContent = parts.join(" · ");
    // The window in gray levels, for scripts and tests: {level, width, max}.
    if (px) stage.dataset.window = JSON.stringify({ level: state.level, width: state.width, max: px.max });
  }

  function zoomAt(factor, sx, sy) {
    var zoom = clamp(state.zoom * factor, 1, 16);
    factor = zoom / state.zoom;
    var rect = stage.getBoundingClientRect();
    var cx = sx - rect.width / 2;
    var cy = sy - rect.height / 2;
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
    state.invert = false;
    setPressed("invert", false);
    setPreset("auto");
    applyTransform();
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

  function adjustWindow(dWidth, dLevel) {
    if (!px) return;
    customWindow();
    state.width = clamp(state.width + dWidth, 1, 2 * px.max);
    state.level = clamp(state.level + dLevel, -px.max / 2, 1.5 * px.max);
    schedule();
  }

  // The image pixel under a point of the screen (object-fit: contain inside the zoomed box).
  function imagePoint(clientX, clientY) {
    if (!px) return null;
    var rect = box.getBoundingClientRect();
    var scale = Math.min(rect.width / px.width, rect.height / px.height);
    var ix = Math.floor((clientX - rect.left - (rect.width - px.width * scale) / 2) / scale);
    var iy = Math.floor((clientY - rect.top - (rect.height - px.height * scale) / 2) / scale);
    if (ix < 0 || iy < 0 || ix >= px.width || iy >= px.height) return null;
    return { x: ix, y: iy, value: px.levels[iy * px.width + ix] };
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
    if (!pointer) {
      var at = imagePoint(event.clientX, event.clientY);
      cursorText = at ? "(" + at.x + ", " + at.y + ") = " + at.value : "";
      showReadout();
      return;
    }
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
      // As in OHIF: right widens the window, down raises the level (a darker image).
      var rect = stage.getBoundingClientRect();
      adjustWindow((dx / rect.width) * span() * 1.5, (dy / rect.height) * span());
    }
  });

  function release(event) {
    delete pointers[event.pointerId];
    if (pointerList().length < 2) pinch = null;
  }
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);
  stage.addEventListener("pointerleave", function () { cursorText = ""; showReadout(); });

  stage.addEventListener("wheel", function (event) {
    event.preventDefault();
    var point = stagePoint(event);
    zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, point.x, point.y);
  }, { passive: false });

  stage.addEventListener("dblclick", reset);

  // ---- the findings layer: maps upsampled, outlined, filled ----------------------------------
  var GRID = 160; // samples along the image's longer side

  function imageSize() {
    if (px) return { width: px.width, height: px.height };
    return { width: base.naturalWidth || 1, height: base.naturalHeight || 1 };
  }

  // Cubic convolution (Keys, a = -0.5) weights of `dst` samples from `src`, half-pixel centres,
  // edges clamped: the resampling Pillow's BICUBIC does.
  function cubicWeights(src, dst) {
    function kernel(t) {
      t = Math.abs(t);
      if (t <= 1) return 1.5 * t * t * t - 2.5 * t * t + 1;
      if (t < 2) return -0.5 * t * t * t + 2.5 * t * t - 4 * t + 2;
      return 0;
    }
    var rows = [];
    for (var d = 0; d < dst; d++) {
      var f = (d + 0.5) * (src / dst) - 0.5;
      var s = Math.floor(f);
      var taps = [];
      for (var k = -1; k <= 2; k++) {
        taps.push([clamp(s + k, 0, src - 1), kernel(f - (s + k))]);
      }
      rows.push(taps);
    }
    return rows;
  }

  function upsample(map, gw, gh) {
    var mh = map.length;
    var mw = map[0].length;
    var wx = cubicWeights(mw, gw);
    var wy = cubicWeights(mh, gh);
    var across = [];
    for (var r = 0; r < mh; r++) {
      var line = new Float32Array(gw);
      for (var x = 0; x < gw; x++) {
        var sum = 0;
        for (var k = 0; k < 4; k++) sum += map[r][wx[x][k][0]] * wx[x][k][1];
        line[x] = sum;
      }
      across.push(line);
    }
    var values = new Float32Array(gw * gh);
    for (var y = 0; y < gh; y++) {
      for (var xx = 0; xx < gw; xx++) {
        var v = 0;
        for (var j = 0; j < 4; j++) v += across[wy[y][j][0]][xx] * wy[y][j][1];
        values[y * gw + xx] = v > 0 ? v : 0;
      }
    }
    return values;
  }

  // A finding's map on the grid, its peak and outline level; null when nothing is to be drawn.
  function grid(f) {
    if (!f.map || f.map_state !== "shown") return null;
    var size = imageSize();
    var key = size.width + "x" + size.height;
    if (f.grid && f.grid.key === key) return f.grid;
    var long = Math.max(size.width, size.height);
    var gw = Math.max(8, Math.round((GRID * size.width) / long));
    var gh = Math.max(8, Math.round((GRID * size.height) / long));
    var values = upsample(f.map, gw, gh);
    var peak = 0;
    var peakAt = 0;
    for (var i = 0; i < values.length; i++) {
      if (values[i] > peak) { peak = values[i]; peakAt = i; }
    }
    var sorted = Float32Array.from(values).sort();
    var top = sorted[Math.min(sorted.length - 1, Math.floor((1 - data.topArea) * sorted.length))];
    var level = Math.max(data.halfPeak * peak, top);
    if (!(peak > 0) || level >= peak) return null;
    f.grid = { key: key, gw: gw, gh: gh, values: values, peak: peak, level: level,
      peakX: peakAt % gw, peakY: Math.floor(peakAt / gw) };
    return f.grid;
  }

  // Marching squares over the grid padded with zeros (so lines close at the image's edge):
  // segments [x1, y1, x2, y2] in grid coordinates.
  function isoSegments(g) {
    var gw = g.gw;
    var gh = g.gh;
    var t = g.level;
    function at(i, j) {
      return i < 0 || j < 0 || i >= gw || j >= gh ? 0 : g.values[j * gw + i];
    }
    var segments = [];
    for (var j = -1; j < gh; j++) {
      for (var i = -1; i < gw; i++) {
        var a = at(i, j), b = at(i + 1, j), c = at(i + 1, j + 1), d = at(i, j + 1);
        var index = (a >= t ? 8 : 0) | (b >= t ? 4 : 0) | (c >= t ? 2 : 0) | (d >= t ? 1 : 0);
        if (index === 0 || index === 15) continue;
        var top = [i + (t - a) / (b - a), j];
        var right = [i + 1, j + (t - b) / (c - b)];
        var bottom = [i + (t - d) / (c - d), j + 1];
        var left = [i, j + (t - a) / (d - a)];
        var centreInside = (a + b + c + d) / 4 >= t;
        var pairs = {
          1: [[left, bottom]], 2: [[bottom, right]], 3: [[left, right]], 4: [[top, right]],
          5: centreInside ? [[left, top], [bottom, right]] : [[left, bottom], [top, right]],
          6: [[top, bottom]], 7: [[left, top]], 8: [[left, top]], 9: [[top, bottom]],
          10: centreInside ? [[top, right], [left, bottom]] : [[left, top], [bottom, right]],
          11: [[top, right]], 12: [[left, right]], 13: [[bottom, right]], 14: [[left, bottom]],
        }[index];
        pairs.forEach(function (p) { segments.push([p[0][0], p[0][1], p[1][0], p[1][1]]); });
      }
    }
    return segments;
  }

  var layerContext = null;

  function sizeLayer() {
    if (!layerCanvas) return;
    var size = imageSize();
    var long = Math.max(size.width, size.height);
    var factor = Math.min(1, 1400 / long);
    layerCanvas.width = Math.max(1, Math.round(size.width * factor));
    layerCanvas.height = Math.max(1, Math.round(size.height * factor));
    layerContext = layerCanvas.getContext("2d");
    drawLayer();
  }

  function outline(g, colour, dashed, width) {
    var ctx = layerContext;
    var sx = layerCanvas.width / g.gw;
    var sy = layerCanvas.height / g.gh;
    var segments = isoSegments(g);
    function path() {
      ctx.beginPath();
      segments.forEach(function (s) {
        ctx.moveTo((s[0] + 0.5) * sx, (s[1] + 0.5) * sy);
        ctx.lineTo((s[2] + 0.5) * sx, (s[3] + 0.5) * sy);
      });
    }
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.setLineDash(dashed ? [width * 3, width * 2.5] : []);
    path();
    ctx.strokeStyle = "rgba(0, 0, 0, 0.75)";
    ctx.lineWidth = width * 2.4;
    ctx.stroke();
    path();
    ctx.strokeStyle = colour;
    ctx.lineWidth = width;
    ctx.stroke();
    ctx.setLineDash([]);
  }

  // Canvas pixels per CSS pixel of the fitted image: labels and lines keep their size on screen
  // whatever the stage's size (a phone, a wide screen).
  function canvasScale() {
    var rect = stage.getBoundingClientRect();
    var aspect = layerCanvas.width / layerCanvas.height;
    var shown = Math.min(rect.width, rect.height * aspect) || layerCanvas.width;
    return layerCanvas.width / shown;
  }

  function label(g, text, colour, placed) {
    var ctx = layerContext;
    var fontSize = Math.round(13 * canvasScale());
    ctx.font = "600 " + fontSize + "px system-ui, sans-serif";
    var w = ctx.measureText(text).width + fontSize * 0.8;
    var h = fontSize * 1.5;
    var x = clamp(((g.peakX + 0.5) * layerCanvas.width) / g.gw - w / 2, 2, layerCanvas.width - w - 2);
    // Not under the readout along the top edge.
    var top = 20 * canvasScale();
    var y = clamp(((g.peakY + 0.5) * layerCanvas.height) / g.gh - h / 2, top, layerCanvas.height - h - 2);
    for (var tries = 0; tries < 12; tries++) {
      var clash = placed.some(function (r) { return x < r.x + r.w && r.x < x + w && y < r.y + r.h && r.y < y + h; });
      if (!clash) break;
      y = y + h + 2 > layerCanvas.height - h ? top + tries * (h + 2) : y + h + 2;
    }
    placed.push({ x: x, y: y, w: w, h: h });
    ctx.fillStyle = "rgba(0, 0, 0, 0.78)";
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.strokeRect(x + 1, y + 1, w - 2, h - 2);
    ctx.fillStyle = "#ffffff";
    ctx.textBaseline = "middle";
    ctx.fillText(text, x + fontSize * 0.4, y + h / 2 + 1);
  }

  function fill(g) {
    var off = document.createElement("canvas");
    off.width = g.gw;
    off.height = g.gh;
    var offContext = off.getContext("2d");
    var pixels = offContext.createImageData(g.gw, g.gh);
    var range = g.peak - g.level;
    for (var i = 0; i < g.values.length; i++) {
      var v = g.values[i];
      if (v < g.level) continue;
      var t = (v - g.level) / range;
      var hex = data.colours[Math.round(t * 255)];
      pixels.data[i * 4] = parseInt(hex.slice(1, 3), 16);
      pixels.data[i * 4 + 1] = parseInt(hex.slice(3, 5), 16);
      pixels.data[i * 4 + 2] = parseInt(hex.slice(5, 7), 16);
      pixels.data[i * 4 + 3] = Math.round(255 * (0.3 + 0.3 * t));
    }
    offContext.putImageData(pixels, 0, 0);
    layerContext.imageSmoothingEnabled = true;
    layerContext.drawImage(off, 0, 0, layerCanvas.width, layerCanvas.height);
  }

  function keyItem(text, colour, dashed) {
    var item = document.createElement("li");
    var swatch = document.createElement("span");
    swatch.className = "key-swatch" + (dashed ? " is-dashed" : "");
    swatch.style.borderColor = colour;
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(text));
    keyList.appendChild(item);
  }

  function describe(f) {
    return f.label + " (score " + f.score + (f.positive ? ", positive" : ", negative") + ")";
  }

  function whyNothing(f) {
    if (f.map_state === "missing") return "no map stored";
    if (f.map_state === "empty") return "its map is zero everywhere";
    if (f.map_state === "faint") return "its map is under the " + Math.round(data.cutOff * 100) + " % cut-off of the case's strongest map";
    return "its map has no distinct region";
  }

  function drawLayer() {
    if (!layerContext) return;
    layerContext.clearRect(0, 0, layerCanvas.width, layerCanvas.height);
    keyList.textContent = "";
    keyBar.hidden = true;
    var selected = byName[state.selected] || null;
    var lineWidth = 2 * canvasScale();
    var text = "";
    if (state.layer === "outline") {
      var shown = positives.slice();
      if (selected && !selected.positive) shown.push(selected);
      var placed = [];
      var drawn = [];
      var skipped = [];
      shown.forEach(function (f) {
        var g = grid(f);
        var colour = f.colour || "#ffffff";
        if (!g) {
          skipped.push(f);
          keyItem(f.label + " " + f.score + " (not drawn)", "transparent", false);
          return;
        }
        var emphasis = selected && f.name === selected.name ? 1.4 : 1;
        outline(g, colour, !f.positive, lineWidth * emphasis);
        drawn.push(f);
        keyItem(f.label + " " + f.score, colour, !f.positive);
      });
      drawn.forEach(function (f) { label(grid(f), f.label + " " + f.score, f.colour || "#ffffff", placed); });
      if (!shown.length) {
        text = "No finding above its threshold: nothing outlined. Choose a finding in the table to outline its map.";
      } else {
        text = drawn.length ? "Outlined: " + drawn.map(describe).join("; ") + "." : "Nothing outlined.";
        skipped.forEach(function (f) { text += " " + f.label + ": not drawn, " + whyNothing(f) + "."; });
        if (drawn.some(function (f) { return !f.positive; })) text += " Dashed: a negative finding you picked.";
      }
    } else if (state.layer === "filled") {
      if (!selected) {
        text = "No finding to fill.";
      } else {
        var g = grid(selected);
        if (g) {
          fill(g);
          outline(g, "#ffffff", false, lineWidth * 0.6);
          keyItem(selected.label + " " + selected.score, "#ffffff", false);
          keyBar.hidden = false;
          text = "Filled: the map of " + describe(selected) + " above its outline, coloured from the outline level to the map's peak.";
        } else {
          text = "Filled: " + describe(selected) + ", nothing drawn: " + whyNothing(selected) + ".";
        }
      }
    } else {
      text = "Findings layer off: press O, or Outline or Filled, to show it.";
    }
    layerCanvas.hidden = state.layer === "off";
    keyBox.hidden = state.layer === "off" || !keyList.childNodes.length;
    layerText.textContent = text;
  }

  function setLayer(layer) {
    state.layer = layer;
    if (layer !== "off") state.lastLayer = layer;
    document.querySelectorAll("[data-layer]").forEach(function (button) {
      button.setAttribute("aria-pressed", button.getAttribute("data-layer") === layer ? "true" : "false");
    });
    drawLayer();
  }

  function showFinding(name) {
    if (!byName[name]) return;
    state.selected = name;
    if (state.layer === "off") setLayer(state.lastLayer); else drawLayer();
    document.querySelectorAll("#findings tbody tr").forEach(function (row) {
      row.classList.toggle("is-selected", row.getAttribute("data-finding") === name);
    });
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, "", "?heatmap=" + encodeURIComponent(name));
    }
  }

  document.querySelectorAll("[data-heatmap]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      showFinding(link.getAttribute("data-heatmap"));
      var top = viewer.getBoundingClientRect().top;
      if (top < 0 || top > window.innerHeight * 0.6) viewer.scrollIntoView({ behavior: "smooth", block: "start" });
    });
  });

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

  function centreZoom(factor) {
    var rect = stage.getBoundingClientRect();
    zoomAt(factor, rect.width / 2, rect.height / 2);
  }

  var actions = {
    "zoom-in": function () { centreZoom(1.25); },
    "zoom-out": function () { centreZoom(0.8); },
    reset: reset,
    invert: function () { state.invert = !state.invert; setPressed("invert", state.invert); schedule(); showReadout(); },
    fullscreen: fullscreen,
  };

  document.querySelectorAll("[data-action]").forEach(function (button) {
    button.addEventListener("click", function () { actions[button.getAttribute("data-action")](); });
  });
  document.querySelectorAll("[data-tool]").forEach(function (button) {
    button.addEventListener("click", function () { setTool(button.getAttribute("data-tool")); });
  });
  document.querySelectorAll("[data-preset]").forEach(function (button) {
    button.addEventListener("click", function () { setPreset(button.getAttribute("data-preset")); });
  });
  document.querySelectorAll("[data-layer]").forEach(function (button) {
    button.addEventListener("click", function () { setLayer(button.getAttribute("data-layer")); });
  });

  var keys = { "+": "zoom-in", "=": "zoom-in", "-": "zoom-out", "0": "reset", i: "invert", f: "fullscreen" };
  stage.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    var key = event.key.toLowerCase();
    var arrows = { arrowleft: [-1, 0], arrowright: [1, 0], arrowup: [0, -1], arrowdown: [0, 1] }[key];
    if (key === "w" || key === "p") {
      setTool(key === "w" ? "wl" : "pan");
    } else if (PRESET_KEYS[key]) {
      setPreset(PRESET_KEYS[key]);
    } else if (key === "o") {
      setLayer(state.layer === "off" ? state.lastLayer : "off");
    } else if (key === "m") {
      setLayer(state.layer === "filled" ? "outline" : "filled");
    } else if (keys[key]) {
      actions[keys[key]]();
    } else if (arrows && state.tool === "wl") {
      // Right/left: a wider/narrower window; down/up: a higher/lower level (as dragging does).
      var step = span() * (event.shiftKey ? 0.1 : 0.02);
      adjustWindow(arrows[0] * step, arrows[1] * step);
    } else if (arrows) {
      if (state.zoom === 1) return;
      state.x -= arrows[0] * 40;
      state.y -= arrows[1] * 40;
      applyTransform();
    } else {
      return;
    }
    event.preventDefault();
  });

  // ---- the draft report line -------------------------------------------------------------------
  var copy = document.getElementById("report-copy");
  var line = document.getElementById("report-line");
  var copied = document.getElementById("report-copied");
  if (line) {
    // The whole line in view, without an inner scroll bar.
    line.style.height = line.scrollHeight + 2 + "px";
  }
  if (copy && line) {
    copy.addEventListener("click", function () {
      function done() { copied.textContent = "Copied. Check it against your own reading before it goes into a report."; }
      function fallback() {
        line.select();
        try { document.execCommand("copy"); done(); } catch (e) { copied.textContent = "Select the text and copy it."; }
      }
      if (navigator.clipboard && navigator.clipboard.writeText) {
        navigator.clipboard.writeText(line.value).then(done, fallback);
      } else {
        fallback();
      }
    });
  }

  // ---- start -----------------------------------------------------------------------------------
  setTool("wl");
  setLayer(state.layer);
  applyTransform();
  if (base.complete && base.naturalWidth) sizeLayer(); else base.addEventListener("load", sizeLayer);
  var resizing = 0;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(drawLayer, 150);
  });
  layerCanvas.hidden = state.layer === "off";
  loadPixels();
})();
