// Batch jobs: the submit form sends a folder's files with their relative paths (webkitdirectory)
// to the API, and the job page polls the API for progress until the job has finished.
(function () {
  "use strict";

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  var form = document.getElementById("job-form");
  if (form && window.fetch && window.FormData) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var data = new FormData();
      var folder = document.getElementById("job-folder").files;
      for (var i = 0; i < folder.length; i++) {
        data.append("images", folder[i], folder[i].webkitRelativePath || folder[i].name);
      }
      var archive = document.getElementById("job-archive").files;
      if (archive.length) { data.append("archive", archive[0], archive[0].name); }
      fetch("/api/v1/jobs/", {
        method: "POST", body: data, credentials: "same-origin",
        headers: { "X-CSRFToken": csrfToken() }
      }).then(function (response) {
        return response.json().then(function (body) { return { ok: response.ok, body: body }; });
      }).then(function (result) {
        if (result.ok) { window.location = "/jobs/" + result.body.id + "/"; return; }
        var box = document.getElementById("job-error");
        document.getElementById("job-error-message").textContent =
          (result.body.error && result.body.error.message) || "The submission was refused.";
        box.hidden = false;
      });
    });
  }

  var panel = document.getElementById("job-progress");
  if (!panel || !window.fetch) { return; }
  var running = function (state) { return state === "queued" || state === "running"; };
  function render(job) {
    var bar = document.getElementById("job-bar");
    var finished = job.done + job.refused + job.failed;
    bar.max = Math.max(job.total, 1);
    // Indeterminate (no value) until the first batch finishes, rather than a bar stuck at 0.
    if (finished > 0) { bar.value = finished; } else { bar.removeAttribute("value"); }
    document.getElementById("job-state").textContent = job.state.charAt(0).toUpperCase() + job.state.slice(1);
    document.getElementById("job-counts").textContent = finished + " of " + job.total + " finished · " +
      job.done + " logged · " + job.refused + " refused · " + job.failed + " failed";
    document.getElementById("job-untrained").hidden = !job.warning;
    document.getElementById("job-warning").textContent = job.warning || "";
    var list = document.getElementById("job-versions");
    list.textContent = "";
    job.versions.forEach(function (v) {
      var item = document.createElement("li");
      item.textContent = v.version_name + " (" + v.sha256.slice(0, 12) + "): " + v.images + " images";
      list.appendChild(item);
    });
  }
  function poll() {
    fetch(panel.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.json(); })
      .then(function (job) {
        render(job);
        if (running(job.state)) {
          setTimeout(poll, 1500);
        } else {
          // Finished: the page again, with every image's result and the CSV.
          window.location.reload();
        }
      });
  }
  if (running(panel.dataset.state)) { poll(); }
})();
