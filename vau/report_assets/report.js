// vau score report: the clip list. Inlined into report.html by vau/eval/html_report.py.
// Clip fields are model output: they only ever go into text nodes (textContent), never into markup.
(function () {
  "use strict";
  var PAGE = 50;
  var clips = JSON.parse(document.getElementById("clip-data").textContent);
  var thumbs = JSON.parse(document.getElementById("thumb-data").textContent);
  var $ = function (id) { return document.getElementById(id); };
  var filters = { wrong: $("f-wrong"), task: $("f-task"), source: $("f-source"), cls: $("f-class"), text: $("f-text") };
  var page = 0, shown = [];

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function seconds(x) { return (Math.round(x * 100) / 100) + " s"; }

  // Each select lists the values present, with how many clips have each.
  [["task", "task"], ["source", "source"], ["cls", "cls"]].forEach(function (pair) {
    var counts = {};
    clips.forEach(function (c) { counts[c[pair[1]]] = (counts[c[pair[1]]] || 0) + 1; });
    Object.keys(counts).sort().forEach(function (value) {
      var option = el("option", null, (value === "" ? "(none)" : value) + " (" + counts[value] + ")");
      option.value = value === "" ? "__none__" : value;
      filters[pair[0]].appendChild(option);
    });
  });

  function matches(c) {
    if (filters.wrong.checked && c.correct) return false;
    var keys = ["task", "source", "cls"];
    for (var i = 0; i < keys.length; i++) {
      var want = filters[keys[i]].value;
      if (want && (want === "__none__" ? c[keys[i]] !== "" : c[keys[i]] !== want)) return false;
    }
    var text = filters.text.value.trim().toLowerCase();
    return !text || c.video.toLowerCase().indexOf(text) >= 0;
  }

  function timeline(c) {
    var box = el("div");
    var bar = el("div", "timeline"), d = c.duration;
    var pct = function (x) { return Math.max(0, Math.min(100, 100 * x / d)) + "%"; };
    c.times.forEach(function (t) {
      var tick = el("div", "tick"); tick.style.left = pct(t); tick.title = "frame at " + seconds(t);
      bar.appendChild(tick);
    });
    (c.look_times || []).forEach(function (t) {
      var tick = el("div", "tick look"); tick.style.left = pct(t); tick.title = "looked-at frame at " + seconds(t);
      bar.appendChild(tick);
    });
    var segs = [["pred", c.pred, "predicted"], ["true", c["true"], "annotated"]];
    (c.looks || []).forEach(function (w) { segs.push(["look", w, "looked at again"]); });
    segs.forEach(function (s) {
      if (!s[1]) return;
      var seg = el("div", "seg " + s[0]);
      seg.style.left = pct(s[1][0]);
      seg.style.width = "calc(" + pct(s[1][1]) + " - " + pct(s[1][0]) + ")";
      seg.title = s[2] + ": " + seconds(s[1][0]) + " - " + seconds(s[1][1]);
      bar.appendChild(seg);
    });
    var axis = el("div", "axis");
    axis.appendChild(el("span", null, "0 s"));
    axis.appendChild(el("span", null, seconds(d)));
    box.appendChild(bar); box.appendChild(axis);
    return box;
  }

  function row(c) {
    var card = el("article", "clip" + (c.correct ? "" : " wrong"));
    card.dataset.task = c.task; card.dataset.source = c.source; card.dataset.cls = c.cls;
    card.dataset.correct = c.correct ? "1" : "0";
    var head = el("div", "head");
    head.appendChild(el("span", "mark", c.correct ? "\u2713 right" : "\u2717 wrong"));
    head.appendChild(el("span", "name", c.video));
    [c.task, c.source, c.cls].forEach(function (v) { if (v) head.appendChild(el("span", "chip", v)); });
    if (c.score !== null) head.appendChild(el("span", "score", "score " + c.score.toFixed(2)));
    card.appendChild(head);

    var left = el("div");
    var strip = el("div", "thumbs");
    if (c.thumbs && thumbs[c.thumbs]) {
      thumbs[c.thumbs].forEach(function (b64, i) {
        var img = el("img", "thumb");
        img.src = "data:image/jpeg;base64," + b64;
        img.alt = img.title = "frame at " + seconds(c.thumb_times[i]);
        strip.appendChild(img);
      });
    } else {
      strip.appendChild(el("div", "placeholder", c.why || "no thumbnails"));
    }
    left.appendChild(strip);
    if (c.duration) left.appendChild(timeline(c));
    card.appendChild(left);

    var right = el("div", "answers");
    var line = function (label, value) {
      var div = el("div"); div.appendChild(el("b", null, label)); div.appendChild(document.createTextNode(value));
      right.appendChild(div);
    };
    if (c.initial !== null && c.initial !== undefined) {
      line("first answer", c.initial === "" ? "(none parsed)" : c.initial);
    }
    line("answer", c.prediction === "" ? "(none parsed)" : c.prediction);
    line("truth", c.truth);
    right.appendChild(el("pre", "reply", c.response));
    card.appendChild(right);
    return card;
  }

  function render() {
    var list = $("list"), pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    list.textContent = "";
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (c) { list.appendChild(row(c)); });
    if (!shown.length) list.appendChild(el("div", "empty", "No clip matches these filters."));
    $("count").textContent = shown.length + " of " + clips.length + " clips";
    $("page").textContent = "page " + (page + 1) + " of " + pages;
    $("prev").disabled = page === 0;
    $("next").disabled = page >= pages - 1;
  }

  function refilter() { shown = clips.filter(matches); page = 0; render(); }

  ["wrong", "task", "source", "cls"].forEach(function (k) { filters[k].addEventListener("change", refilter); });
  filters.text.addEventListener("input", refilter);
  $("prev").addEventListener("click", function () { page -= 1; render(); window.scrollTo(0, $("clips").offsetTop); });
  $("next").addEventListener("click", function () { page += 1; render(); window.scrollTo(0, $("clips").offsetTop); });
  // A plot is shown small next to the tables; a click shows it at full size.
  Array.prototype.forEach.call(document.querySelectorAll(".cards figure img"), function (img) {
    img.addEventListener("click", function () { img.classList.toggle("big"); });
  });
  refilter();
})();
