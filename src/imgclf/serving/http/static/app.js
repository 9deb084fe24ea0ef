"use strict";
// The classification page: every way of giving a photo ends in classify(file).
(function () {
  const $ = (id) => document.getElementById(id);
  const dropZone = $("drop-zone");
  let previewUrl = null;

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
  }

  function headers() {
    const key = $("api-key").value;
    return key ? { "X-API-Key": key } : {};
  }

  function renderBars(prediction) {
    const bars = $("bars");
    bars.replaceChildren();
    for (const entry of prediction.top_k) {
      const item = document.createElement("li");
      const percent = (entry.prob * 100).toFixed(1);
      item.innerHTML =
        '<div class="bar-label"><span class="name"></span><span class="prob"></span></div>' +
        '<div class="bar-track"><div class="bar-fill"></div></div>';
      item.querySelector(".name").textContent = entry.class;
      item.querySelector(".prob").textContent = percent + "%";
      item.querySelector(".bar-fill").style.width = percent + "%";
      item.dataset.class = entry.class;
      bars.appendChild(item);
    }
    $("top-class").textContent = prediction.class;
  }

  async function classify(file) {
    if (!file) return;
    $("error").hidden = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    $("result").hidden = false;
    $("top-class").textContent = "classifying…";
    $("bars").replaceChildren();
    const form = new FormData();
    form.append("file", file, file.name || "pasted-image");
    const topK = Math.max(1, parseInt($("top-k").value, 10) || 5);
    const started = performance.now();
    try {
      const response = await fetch("/predict?top_k=" + topK, {
        method: "POST", body: form, headers: headers(),
      });
      const body = await response.json().catch(() => ({ detail: response.statusText }));
      if (!response.ok) {
        if (response.status === 401) $("api-key-row").hidden = false;
        $("top-class").textContent = "";
        showError("Error " + response.status + ": " + (body.detail || "request failed"));
        return;
      }
      renderBars(body);
      const ms = Math.round(performance.now() - started);
      $("timing").textContent = body.model.name + " v" + body.model.version + " · " + ms + " ms";
      document.body.dataset.state = "done";
    } catch (err) {
      showError("Could not reach the server: " + err);
    }
  }

  $("file-input").addEventListener("change", (e) => classify(e.target.files[0]));
  $("camera-input").addEventListener("change", (e) => classify(e.target.files[0]));
  ["dragenter", "dragover"].forEach((type) =>
    dropZone.addEventListener(type, (e) => { e.preventDefault(); dropZone.classList.add("dragging"); }));
  ["dragleave", "drop"].forEach((type) =>
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragging")));
  dropZone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = Array.from(e.dataTransfer.files).find((f) => f.type.startsWith("image/"));
    if (file) classify(file); else showError("That is not an image file.");
  });
  document.addEventListener("paste", (e) => {
    const item = Array.from(e.clipboardData.items).find((i) => i.type.startsWith("image/"));
    if (item) classify(item.getAsFile());
  });

  fetch("/model", { headers: headers() })
    .then((r) => (r.ok ? r.json() : null))
    .then((info) => {
      $("model-info").textContent = info
        ? "Model " + info.name + " v" + info.version + " · " + info.labels.length + " classes: " +
          info.labels.join(", ")
        : "Model information unavailable";
    })
    .catch(() => { $("model-info").textContent = "Server unreachable"; });
})();
