// Upload page: drag and drop onto the drop zone, and an upload with a progress bar. Without this
// script the form posts normally and the server redirects to the result page.
(function () {
  "use strict";

  var form = document.getElementById("upload-form");
  if (!form || !window.FormData || !window.XMLHttpRequest) return;

  var input = document.getElementById("id_image");
  var dropzone = document.getElementById("dropzone");
  var fileName = document.getElementById("file-name");
  var progress = document.getElementById("upload-progress");
  var bar = document.getElementById("upload-progress-bar");
  var statusText = document.getElementById("upload-status");
  var percent = document.getElementById("upload-percent");
  var errorBox = document.getElementById("upload-error");
  var errorMessage = document.getElementById("upload-error-message");
  var errorTitle = errorBox.querySelector(".alert-title");
  var submit = document.getElementById("upload-submit");
  var maxBytes = Number(form.getAttribute("data-max-bytes")) || 0;

  function formatSize(bytes) {
    if (bytes < 1024) return bytes + " B";
    if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(0) + " KB";
    return (bytes / (1024 * 1024)).toFixed(1) + " MB";
  }

  function showError(title, message) {
    errorTitle.textContent = title;
    errorMessage.textContent = message;
    errorBox.hidden = false;
    errorBox.scrollIntoView({ block: "nearest" });
  }

  function clearError() {
    errorBox.hidden = true;
  }

  function chosenFile() {
    return input.files && input.files.length ? input.files[0] : null;
  }

  function showChosen() {
    var file = chosenFile();
    fileName.textContent = file ? file.name + " · " + formatSize(file.size) : "";
    dropzone.classList.toggle("has-file", !!file);
    if (file) clearError();
  }

  function setBusy(busy) {
    submit.disabled = busy;
    submit.textContent = busy ? "Working…" : "Analyse";
    form.setAttribute("aria-busy", busy ? "true" : "false");
  }

  input.addEventListener("change", showChosen);

  // Back from the result page may restore this page from the back/forward cache exactly as it was
  // left: busy, with the progress bar. Make it usable again.
  window.addEventListener("pageshow", function (event) {
    if (!event.persisted) return;
    setBusy(false);
    progress.hidden = true;
    showChosen();
  });

  ["dragenter", "dragover"].forEach(function (type) {
    dropzone.addEventListener(type, function (event) {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
      dropzone.classList.add("is-dragover");
    });
  });
  ["dragleave", "dragend"].forEach(function (type) {
    dropzone.addEventListener(type, function () {
      dropzone.classList.remove("is-dragover");
    });
  });
  dropzone.addEventListener("drop", function (event) {
    event.preventDefault();
    dropzone.classList.remove("is-dragover");
    var files = event.dataTransfer && event.dataTransfer.files;
    if (!files || !files.length) return;
    input.files = files;
    showChosen();
  });
  // A file dropped beside the drop zone would make the browser leave the page to open it.
  window.addEventListener("dragover", function (event) { event.preventDefault(); });
  window.addEventListener("drop", function (event) { event.preventDefault(); });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    // A second click (or Enter) while the first upload runs sends nothing; the server also answers
    // a repeat of this form's nonce with the first result.
    if (submit.disabled) return;
    var file = chosenFile();
    if (!file) {
      showError("No file chosen", "Choose a PNG, JPEG or DICOM file to upload.");
      return;
    }
    if (maxBytes && file.size > maxBytes) {
      showError("The file was refused", "The file is " + formatSize(file.size) +
        "; the largest accepted upload is " + formatSize(maxBytes) + ".");
      return;
    }
    clearError();
    setBusy(true);
    progress.hidden = false;
    bar.value = 0;
    percent.textContent = "0 %";
    statusText.textContent = "Uploading " + file.name + "…";

    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("X-Requested-With", "XMLHttpRequest");
    xhr.setRequestHeader("Accept", "application/json");
    var token = form.querySelector("input[name=csrfmiddlewaretoken]");
    if (token) xhr.setRequestHeader("X-CSRFToken", token.value);

    xhr.upload.addEventListener("progress", function (event) {
      if (!event.lengthComputable) return;
      var value = Math.round((event.loaded / event.total) * 100);
      bar.value = value;
      bar.textContent = value + " %";
      percent.textContent = value + " %";
    });
    xhr.upload.addEventListener("load", function () {
      bar.value = 100;
      percent.textContent = "100 %";
      statusText.textContent = "Uploaded. Analysing the image…";
    });
    xhr.addEventListener("load", function () {
      var data = null;
      try { data = JSON.parse(xhr.responseText); } catch (ignored) { data = null; }
      if (xhr.status >= 200 && xhr.status < 300 && data && data.redirect) {
        statusText.textContent = "Done. Opening the result…";
        window.location.assign(data.redirect);
        return;
      }
      if (!data && xhr.responseURL && xhr.responseURL.indexOf("/login/") !== -1) {
        // The session ended while the page was open: the server sent us to the login page.
        window.location.assign(xhr.responseURL);
        return;
      }
      setBusy(false);
      progress.hidden = true;
      var message = data && data.error && data.error.message
        ? data.error.message
        : "The server answered " + xhr.status + " " + xhr.statusText + ".";
      showError(xhr.status === 503 ? "The service is unavailable (HTTP 503)"
        : "The file was refused (HTTP " + xhr.status + ")", message);
    });
    xhr.addEventListener("error", function () {
      setBusy(false);
      progress.hidden = true;
      showError("Upload failed", "The connection to the server was lost. Check the network and try again.");
    });
    xhr.send(new FormData(form));
  });
})();
