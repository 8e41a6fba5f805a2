// Draws each run's charts from its <script type="application/json" class="gradwatch-data"> block.
(function () {
  "use strict";
  var ZERO = 65533, NONFINITE = 65534, MISSING = 65535, TOP = 65000;
  var LEFT = 150, RIGHT = 100, HEAD = 20, FOOT = 24;
  var VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
    [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  var PLASMA = [[13, 8, 135], [84, 2, 163], [139, 10, 165], [185, 50, 137], [219, 92, 104], [244, 136, 73],
    [254, 188, 43], [240, 249, 33]];
  var KIND = { vanishing: "#2b6cb0", exploding: "#dd6b20", nonfinite: "#c53030" };

  function ramp(stops, t) {
    t = Math.min(Math.max(t, 0), 1) * (stops.length - 1);
    var i = Math.min(Math.floor(t), stops.length - 2), f = t - i, a = stops[i], b = stops[i + 1];
    return [0, 1, 2].map(function (k) { return Math.round(a[k] + f * (b[k] - a[k])); });
  }
  function fit(ctx, text, width) {  // the end of a long layer name, which tells layers apart
    if (ctx.measureText(text).width <= width) return text;
    while (text.length > 1 && ctx.measureText("\u2026" + text).width > width) text = text.slice(1);
    return "\u2026" + text;
  }
  function css(rgb) { return "rgb(" + rgb.join(",") + ")"; }
  function decode(b64) {
    var bin = atob(b64), out = new Uint16Array(bin.length / 2);
    for (var i = 0; i < out.length; i++) out[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    return out;
  }
  function log10(d, code) { return d.low + (code / TOP) * (d.high - d.low); }
  function totalLog10(d, code) { return d.total_low + (code / TOP) * (d.total_high - d.total_low); }
  function sci(log) { return Math.pow(10, log).toExponential(2); }
  function setup(canvas, height) {
    var width = Math.max(canvas.parentElement.clientWidth || 900, 500), ratio = window.devicePixelRatio || 1;
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    var ctx = canvas.getContext("2d");
    ctx.scale(ratio, ratio);
    ctx.font = "11px system-ui, sans-serif";
    return { ctx: ctx, width: width, height: height, plotW: width - LEFT - RIGHT };
  }
  function column(d, step) {  // the column holding step
    var lo = 0, hi = d.columns.length - 1;
    while (lo < hi) { var mid = (lo + hi + 1) >> 1; if (d.columns[mid] <= step) lo = mid; else hi = mid - 1; }
    return lo;
  }
  function xOf(d, g, col) { return LEFT + ((col + 0.5) * g.plotW) / d.columns.length; }
  function stepX(d, g, step) {  // a step between two columns' first steps, in proportion
    var col = column(d, step), next = col + 1 < d.columns.length ? d.columns[col + 1] : d.last_step + 1;
    var frac = next > d.columns[col] ? (step - d.columns[col]) / (next - d.columns[col]) : 0;
    return LEFT + ((col + 0.5 + frac) * g.plotW) / d.columns.length;
  }
  function stepAxis(d, g, y) {
    var ctx = g.ctx, first = d.columns[0], last = d.last_step, span = Math.max(last - first, 1);
    var raw = span / 6, unit = Math.pow(10, Math.floor(Math.log10(raw)));
    var tick = [1, 2, 5, 10].map(function (m) { return m * unit; }).find(function (t) { return t >= raw; });
    tick = Math.max(1, Math.round(tick));  // steps are whole numbers: a short run's ticks are 0, 1, 2, ...
    ctx.fillStyle = "#4a5568"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (var k = Math.ceil(first / tick); k * tick <= last; k++) {
      var s = k * tick, x = stepX(d, g, s);
      ctx.fillRect(x, y, 1, 4);
      ctx.fillText(String(s), x, y + 5);
    }
    ctx.textAlign = "left"; ctx.fillText("step", LEFT + g.plotW + 8, y + 5);
  }
  function flags(d, g, top, bottom) {
    var ctx = g.ctx;
    d.alerts.forEach(function (a, i) {
      var x = stepX(d, g, a.step), color = KIND[a.kind] || "#2d3748";
      ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(x, top); ctx.lineTo(x, bottom); ctx.stroke(); ctx.setLineDash([]);
      ctx.fillStyle = color; ctx.fillRect(x - 8, top - 17, 16, 15);
      ctx.fillStyle = "#fff"; ctx.textAlign = "center"; ctx.textBaseline = "middle";
      ctx.fillText(String(i + 1), x, top - 9.5);
    });
  }
  function yAxis(g, low, high, top, height, fmt) {
    var ctx = g.ctx, step = Math.max(1, Math.ceil((high - low) / 8));
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (var v = Math.ceil(low); v <= high; v += step) {
      var y = top + height - ((v - low) / (high - low)) * height;
      ctx.fillStyle = "#edf2f7"; ctx.fillRect(LEFT, y, g.plotW, 1);
      ctx.fillStyle = "#4a5568"; ctx.fillText(fmt(v), LEFT - 6, y);
    }
  }
  function readout(canvas, text) { document.getElementById(canvas.id + "-readout").textContent = text || "\u00a0"; }

  function heatmap(canvas, d) {
    var n = d.layers.length, cols = d.columns.length, codes = decode(d.norms);
    var row = Math.max(2, Math.min(16, Math.floor(440 / Math.max(n, 1)))), h = row * n;
    var g = setup(canvas, h + HEAD + FOOT), ctx = g.ctx;
    var off = document.createElement("canvas"); off.width = cols; off.height = n;
    var octx = off.getContext("2d"), img = octx.createImageData(cols, n);
    for (var i = 0; i < n * cols; i++) {
      var c = codes[i], rgb = c === MISSING ? [247, 250, 252] : c === ZERO ? [0, 0, 0] :
        c === NONFINITE ? [229, 62, 62] : ramp(VIRIDIS, c / TOP);
      img.data.set([rgb[0], rgb[1], rgb[2], 255], 4 * i);
    }
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, LEFT, HEAD, g.plotW, h);
    var placed = [], rows = d.layers.map(function (_, r) { return r; });
    rows.sort(function (a, b) { return !!d.marked[b] - !!d.marked[a] || a - b; });  // marked layers first
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    rows.forEach(function (r) {
      var y = HEAD + (r + 0.5) * row, marked = !!d.marked[r];
      if (marked) { ctx.fillStyle = "#c53030"; ctx.fillRect(LEFT - 5, HEAD + r * row, 4, Math.max(row - 1, 1)); }
      if (placed.some(function (p) { return Math.abs(p - y) < 12; })) return;  // no label over another
      placed.push(y);
      ctx.fillStyle = marked ? "#c53030" : "#2d3748";
      ctx.font = (marked ? "bold " : "") + "11px system-ui, sans-serif";
      ctx.fillText(fit(ctx, d.layers[r], LEFT - 12), LEFT - 8, y);
    });
    ctx.font = "11px system-ui, sans-serif";
    var barX = LEFT + g.plotW + 10;  // colour bar: log10 norm
    for (var y = 0; y < h; y++) { ctx.fillStyle = css(ramp(VIRIDIS, 1 - y / h)); ctx.fillRect(barX, HEAD + y, 12, 1); }
    ctx.fillStyle = "#4a5568"; ctx.textAlign = "left";
    var step = Math.max(1, Math.ceil((d.high - d.low) / Math.max(2, Math.floor(h / 18))));
    for (var v = d.low; v <= d.high; v += step) {
      ctx.fillText("1e" + v, barX + 15, HEAD + h - ((v - d.low) / (d.high - d.low)) * h);
    }
    stepAxis(d, g, HEAD + h + 2);
    flags(d, g, HEAD, HEAD + h);
    canvas.addEventListener("mousemove", function (ev) {
      var box = canvas.getBoundingClientRect(), x = ev.clientX - box.left - LEFT, y = ev.clientY - box.top - HEAD;
      if (x < 0 || y < 0 || x >= g.plotW || y >= h) return readout(canvas, "");
      var col = Math.floor((x / g.plotW) * cols), r = Math.floor(y / row), c = codes[r * cols + col];
      var end = col + 1 < cols ? d.columns[col + 1] - 1 : d.last_step;
      var value = c === MISSING ? "not measured" : c === ZERO ? "0" : c === NONFINITE ? "NaN/Inf" : sci(log10(d, c));
      readout(canvas, d.layers[r] + "  steps " + d.columns[col] + "-" + end + "  gradient norm " + value +
        (d.marked[r] ? "  (" + d.marked[r] + ")" : ""));
    });
  }

  function layers(canvas, d) {
    var n = d.layers.length, cols = d.columns.length, codes = decode(d.norms), h = 300;
    var g = setup(canvas, h + HEAD + FOOT), ctx = g.ctx;
    function yOf(log) { return HEAD + h - ((log - d.low) / (d.high - d.low)) * h; }
    yAxis(g, d.low, d.high, HEAD, h, function (v) { return "1e" + v; });
    var order = d.layers.map(function (_, i) { return i; }).sort(function (a, b) { return !!d.marked[a] - !!d.marked[b]; });
    var ends = [];
    order.forEach(function (r) {
      var marked = !!d.marked[r], last = null;
      ctx.strokeStyle = css(ramp(PLASMA, n > 1 ? r / (n - 1) : 1));
      ctx.lineWidth = marked ? 2.6 : 1; ctx.globalAlpha = marked ? 1 : 0.55; ctx.lineCap = "round";
      ctx.beginPath();
      var pen = false;
      for (var col = 0; col < cols; col++) {
        var c = codes[r * cols + col];
        if (c >= ZERO) { pen = false; continue; }
        var x = xOf(d, g, col), y = yOf(log10(d, c));
        if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); ctx.lineTo(x + 0.5, y); }  // a lone point: a dot
        pen = true; last = y;
      }
      ctx.stroke(); ctx.globalAlpha = 1;
      if (marked && last !== null) ends.push({ y: last, text: d.layers[r], color: ctx.strokeStyle });
    });
    ends.sort(function (a, b) { return a.y - b.y; });
    ctx.textAlign = "left"; ctx.textBaseline = "middle"; ctx.font = "bold 11px system-ui, sans-serif";
    var free = -Infinity;  // each label below the one above; those pushed past the chart are left out (hover names them)
    ends.forEach(function (e) {
      var y = Math.max(e.y, free);
      if (y > HEAD + h + FOOT - 6) return;
      ctx.fillStyle = e.color; ctx.fillText(fit(ctx, e.text, RIGHT - 10), LEFT + g.plotW + 6, y); free = y + 11;
    });
    ctx.font = "11px system-ui, sans-serif";
    stepAxis(d, g, HEAD + h + 2);
    flags(d, g, HEAD, HEAD + h);
    canvas.addEventListener("mousemove", function (ev) {
      var box = canvas.getBoundingClientRect(), x = ev.clientX - box.left - LEFT, y = ev.clientY - box.top;
      if (x < 0 || x >= g.plotW) return readout(canvas, "");
      var col = Math.floor((x / g.plotW) * cols), best = -1, dist = Infinity;
      for (var r = 0; r < n; r++) {
        var c = codes[r * cols + col];
        if (c < ZERO && Math.abs(yOf(log10(d, c)) - y) < dist) { dist = Math.abs(yOf(log10(d, c)) - y); best = r; }
      }
      if (best < 0) return readout(canvas, "");
      readout(canvas, d.layers[best] + " (layer " + (best + 1) + " of " + n + ")  step " + d.columns[col] +
        "  gradient norm " + sci(log10(d, codes[best * cols + col])) + (d.marked[best] ? "  (" + d.marked[best] + ")" : ""));
    });
  }

  function total(canvas, d) {
    var cols = d.columns.length, h = 180, g = setup(canvas, h + HEAD + FOOT), ctx = g.ctx;
    var keys = Object.keys(d.totals), series = {}, low = Infinity, high = -Infinity;
    keys.forEach(function (key) {
      series[key] = {};
      Object.keys(d.totals[key]).forEach(function (name) {
        var codes = decode(d.totals[key][name]);
        series[key][name] = codes;
        codes.forEach(function (c) { if (c < ZERO) { var v = totalLog10(d, c); low = Math.min(low, v); high = Math.max(high, v); } });
      });
    });
    if (!isFinite(low)) { low = d.total_low; high = d.total_high; }
    low = Math.floor(low - 0.05); high = Math.ceil(high + 0.05); if (high <= low) high = low + 1;
    function yOf(log) { return HEAD + h - ((log - low) / (high - low)) * h; }
    yAxis(g, low, high, HEAD, h, function (v) { return "1e" + v; });
    var styles = { max: ["#a0aec0", 1.2, []], mean: ["#2d3748", 1.8, []], clip: ["#dd6b20", 2, [6, 4]],
      spike: ["#c53030", 2, [2, 3]] };
    keys.forEach(function (key) {
      ["max", "mean", "clip", "spike"].forEach(function (name) {
        var codes = series[key][name];
        if (!codes) return;
        var style = styles[name], pen = false;
        ctx.strokeStyle = style[0]; ctx.lineWidth = style[1]; ctx.setLineDash(style[2]); ctx.lineCap = "round";
        ctx.beginPath();
        for (var col = 0; col < cols; col++) {
          var c = codes[col];
          if (c >= ZERO) { pen = false; continue; }
          var x = xOf(d, g, col), y = yOf(totalLog10(d, c));
          if (pen) ctx.lineTo(x, y); else { ctx.moveTo(x, y); ctx.lineTo(x + 0.5, y); }  // a lone point: a dot
          pen = true;
        }
        ctx.stroke(); ctx.setLineDash([]);
      });
      if (keys.length > 1) {
        var c = series[key].mean, col = cols - 1;
        while (col > 0 && c[col] >= ZERO) col--;
        ctx.fillStyle = "#2d3748"; ctx.textAlign = "left";
        if (c[col] < ZERO) ctx.fillText(key, LEFT + g.plotW + 6, yOf(totalLog10(d, c[col])));
      }
    });
    stepAxis(d, g, HEAD + h + 2);
    flags(d, g, HEAD, HEAD + h);
    canvas.addEventListener("mousemove", function (ev) {
      var box = canvas.getBoundingClientRect(), x = ev.clientX - box.left - LEFT;
      if (x < 0 || x >= g.plotW) return readout(canvas, "");
      var col = Math.floor((x / g.plotW) * cols), parts = ["step " + d.columns[col]];
      keys.forEach(function (key) {
        Object.keys(series[key]).forEach(function (name) {
          var c = series[key][name][col];
          if (c < ZERO) parts.push((keys.length > 1 ? key + " " : "") + name + " " + sci(totalLog10(d, c)));
        });
      });
      readout(canvas, parts.join("  "));
    });
  }

  function draw() {
    document.querySelectorAll("script.gradwatch-data").forEach(function (block) {
      var d = JSON.parse(block.textContent), i = block.getAttribute("data-run");
      if (!d.columns.length) return;
      heatmap(document.getElementById("heatmap-" + i), d);
      layers(document.getElementById("layers-" + i), d);
      total(document.getElementById("total-" + i), d);
    });
    document.body.setAttribute("data-drawn", "true");
  }
  draw();
})();
