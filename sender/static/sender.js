// latentwire sender page: upload with fetch, then show original / reconstruction / same-bytes JPEG
// for each image and follow its delivery status. No dependencies.
"use strict";

const form = document.getElementById("upload-form");
const fileInput = document.getElementById("file");
const quality = document.getElementById("quality");
const qualityValue = document.getElementById("quality-value");
const maxBytes = document.getElementById("max-bytes");
const formError = document.getElementById("form-error");
const results = document.getElementById("results");
const cardTemplate = document.getElementById("card");

quality.addEventListener("input", () => { qualityValue.textContent = Number(quality.value).toFixed(2); });

const fmt = (x, digits) => (x === null || x === undefined ? "exact" : Number(x).toFixed(digits));
const kib = (n) => (n >= 10240 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`);

function showError(message) {
  formError.textContent = message;
  formError.hidden = !message;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  showError("");
  const files = Array.from(fileInput.files);
  if (!files.length) { showError("Choose at least one image."); return; }
  const body = new FormData();
  files.forEach((f) => body.append("file", f, f.name));
  const params = new URLSearchParams();
  if (form.elements.rate.value === "max_bytes") params.set("max_bytes", maxBytes.value);
  else params.set("quality", quality.value);
  if (form.elements.mode) params.set("mode", form.elements.mode.value);
  const button = form.querySelector("button");
  button.disabled = true;
  try {
    const response = await fetch(`/v1/images?${params}`, { method: "POST", body });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      showError(`${data.error || response.status}: ${data.message || response.statusText}` +
                (retry ? ` (retry in ${retry} s)` : ""));
      return;
    }
    data.images.forEach((image, i) => addCard(image, files[i]));
  } catch (err) {
    showError(`Upload failed: ${err}`);
  } finally {
    button.disabled = false;
  }
});

// A byte budget too small for the full size: coded smaller, shown at the full size.
function resizeNote(image) {
  if (image.coded_width === image.width && image.coded_height === image.height) return "";
  return `; coded at ${image.coded_width}x${image.coded_height} to fit the budget, shown at ${image.width}x${image.height}`;
}

// Denoise mode: the sender's noise estimate, and whether it coded its own clean reconstruction.
function denoiseNote(image) {
  if (image.noise === null || image.noise === undefined) return "";
  return `; noise estimate ${image.noise.toFixed(1)} grey levels, ` +
    (image.cleaned ? "coded its clean reconstruction" : "coded the upload as it is");
}

function addCard(image, file) {
  const card = cardTemplate.content.firstElementChild.cloneNode(true);
  card.dataset.id = image.id;
  card.querySelector(".name").textContent = `${image.filename} (${image.width}x${image.height})`;
  card.querySelector(".original").src = URL.createObjectURL(file);
  card.querySelector(".original-caption").textContent =
    `original: ${kib(image.original_bytes)}, ${(image.original_bytes * 8 / (image.width * image.height)).toFixed(3)} bpp`;
  card.querySelector(".reconstruction").src = image.reconstruction_url;
  card.querySelector(".ours").textContent =
    `latentwire${image.mode === "denoise" ? " (denoise)" : ""}: ${kib(image.bytes)}, ${image.bpp.toFixed(3)} bpp, PSNR ${fmt(image.psnr, 2)} dB, ` +
    `quality ${image.quality.toFixed(3)}, ${image.ratio.toFixed(1)}x smaller` + resizeNote(image) + denoiseNote(image);
  const jpeg = image.jpeg_same_bytes;
  card.querySelector(".jpeg").src = image.jpeg_url;
  if (jpeg) {
    card.querySelector(".jpeg-caption").textContent =
      `JPEG q${jpeg.quality}: ${kib(jpeg.bytes)}, ${(jpeg.bytes * 8 / (image.width * image.height)).toFixed(3)} bpp, ` +
      `PSNR ${fmt(jpeg.psnr, 2)} dB` + (jpeg.fits ? "" : " (JPEG cannot get this small: quality 1 shown)");
  }
  results.prepend(card);
  setStatus(card, image);
  follow(card, image.id);
}

function setStatus(card, image) {
  const el = card.querySelector(".status");
  el.className = `status ${image.status}`;
  let text = image.status;
  if (image.status === "queued" && image.attempts > 0) text += `, ${image.attempts} attempt(s) so far`;
  if (image.status === "delivered") text += ` (${image.receiver_status}) after ${image.attempts} attempt(s)`;
  if (image.last_error) text += `: ${image.last_error.error}: ${image.last_error.message}`;
  el.textContent = text;
}

async function follow(card, id) {
  for (let wait = 500; ; wait = Math.min(wait * 1.5, 10000)) {
    await new Promise((r) => setTimeout(r, wait));
    try {
      const response = await fetch(`/v1/images/${id}`);
      if (!response.ok) return;
      const image = await response.json();
      setStatus(card, image);
      if (image.status !== "queued") return;
    } catch (err) {
      return;
    }
  }
}
