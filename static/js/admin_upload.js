// The admin's "add model version" form: posts the weights file (tens of MB) with a progress bar
// instead of a page that seems stuck while it uploads. Without this script the form posts normally.
(function () {
  "use strict";

  var form = document.getElementById("modelversion_form");
  var box = document.getElementById("upload-progress");
  if (!form || !box || !window.FormData || !window.XMLHttpRequest) return;
  var bar = document.getElementById("upload-progress-bar");
  var label = document.getElementById("upload-progress-label");
  var percent = document.getElementById("upload-progress-percent");
  var sending = false;

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (sending) return;
    sending = true;
    var data = new FormData(form, event.submitter || undefined);
    form.querySelectorAll("[type=submit]").forEach(function (button) { button.disabled = true; });
    box.hidden = false;
    label.textContent = "Uploading the weights…";

    var xhr = new XMLHttpRequest();
    xhr.open("POST", form.action || window.location.href);
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      var value = Math.round((e.loaded / e.total) * 100);
      bar.value = value;
      percent.textContent = value + " % of " + (e.total / 1048576).toFixed(1) + " MB";
    });
    xhr.upload.addEventListener("load", function () {
      bar.removeAttribute("value"); // indeterminate while the server checks the weights
      percent.textContent = "";
      label.textContent = "Uploaded. Checking that the weights load (sha256, architecture, outputs)…";
    });
    xhr.addEventListener("load", function () {
      if (xhr.responseURL && xhr.responseURL.split("#")[0] !== window.location.href.split("#")[0]) {
        window.location.assign(xhr.responseURL); // saved: the admin redirected to the list or the new row
        return;
      }
      // Refused (the form with its errors) or anything else: show what the server answered.
      document.open();
      document.write(xhr.responseText);
      document.close();
    });
    xhr.addEventListener("error", function () {
      sending = false;
      form.querySelectorAll("[type=submit]").forEach(function (button) { button.disabled = false; });
      label.textContent = "The upload failed: the connection to the server was lost. Try again.";
    });
    xhr.send(data);
  });
})();
