// Result page: switch the heatmap without a reload and set its opacity. Without this script the
// finding links and the selector load the page with ?heatmap=Name instead.
(function () {
  "use strict";

  var overlay = document.getElementById("heatmap");
  var select = document.getElementById("heatmap-select");
  if (!overlay || !select) return;

  var viewer = document.getElementById("viewer");
  var nameOut = document.getElementById("heatmap-name");
  var percentOut = document.getElementById("heatmap-percent");
  var errorBox = document.getElementById("heatmap-error");
  var slider = document.getElementById("heatmap-opacity");
  var sliderOut = document.getElementById("heatmap-opacity-value");
  var rows = document.querySelectorAll("#findings tbody tr");

  function show(name) {
    var option = null;
    for (var i = 0; i < select.options.length; i++) {
      if (select.options[i].value === name) option = select.options[i];
    }
    if (!option) return;
    select.value = name;
    errorBox.hidden = true;
    overlay.src = option.getAttribute("data-src");
    overlay.alt = "Heatmap of " + option.getAttribute("data-label") + " over the X-ray";
    nameOut.textContent = option.getAttribute("data-label");
    percentOut.textContent = option.getAttribute("data-percent");
    rows.forEach(function (row) {
      row.classList.toggle("is-selected", row.getAttribute("data-finding") === name);
    });
    if (window.history && window.history.replaceState) {
      window.history.replaceState(null, "", "?heatmap=" + encodeURIComponent(name));
    }
  }

  select.addEventListener("change", function () { show(select.value); });

  document.querySelectorAll("[data-heatmap]").forEach(function (link) {
    link.addEventListener("click", function (event) {
      event.preventDefault();
      show(link.getAttribute("data-heatmap"));
      var top = viewer.getBoundingClientRect().top;
      if (top < 0 || top > window.innerHeight * 0.6) viewer.scrollIntoView({ behavior: "smooth", block: "start" });
    });
  });

  overlay.addEventListener("error", function () { errorBox.hidden = false; });
  overlay.addEventListener("load", function () { errorBox.hidden = true; });

  if (slider) {
    var apply = function () {
      overlay.style.opacity = String(slider.value / 100);
      sliderOut.textContent = slider.value + " %";
    };
    slider.addEventListener("input", apply);
    apply();
  }
})();
