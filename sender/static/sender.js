// latentwire sender page: upload with fetch, then show original / reconstruction / same-bytes JPEG
// for each image and follow its delivery status; the link panel follows GET /v1/link. No dependencies.
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
  else if (form.elements.rate.value === "auto") params.set("quality", "auto");
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
    refreshLink();
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

// quality=auto: the budget chosen and why; max_bytes: whether the budget limited the stream at all.
const REASONS = {
  target: "its share of the link within the target",
  pace: "its share of what the link carries between uploads",
  start: "what the start rate carries in a second (the link is not measured yet)",
  floor: "the floor (the link is too slow for the target)",
  ceiling: "not binding: quality 1 fitted in the link's share",
  codec_minimum: "the codec's smallest stream (the link is too slow for the floor)",
  replan: "coded again while queued, after the link slowed",
};
function budgetNote(image) {
  const b = image.budget;
  if (b) {
    return `auto budget ${kib(b.bytes)}: ${REASONS[b.reason] || b.reason}; link ${b.link_kbps} kbit/s (${b.link_source}), ` +
      `${kib(b.queued_bytes)} queued ahead, expected at the receiver in ${b.expected_latency_s.toFixed(1)} s ` +
      `of a ${b.target_s} s target` + (b.late ? " (late)" : "");
  }
  if (image.max_bytes !== null && image.max_bytes !== undefined) {
    return `byte budget ${kib(image.max_bytes)}: ` +
      (image.budget_binding ? "binding" : "not binding (the best stream fits under it)");
  }
  return "";
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
  const budget = budgetNote(image);
  if (budget) {
    const el = card.querySelector(".budget");
    el.textContent = budget;
    el.hidden = false;
    if (image.budget && image.budget.late) el.classList.add("late");
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

// The link panel: the page renders it once; this keeps it current.
const linkFields = {
  goodput: (l) => (l.goodput_kbps === null ? "not measured yet" : `${l.goodput_kbps.toFixed(1)} kbit/s`),
  rtt: (l) => (l.rtt_s === null ? "-" : `${(l.rtt_s * 1000).toFixed(0)} ms`),
  source: (l) => l.source,
  queued: (l) => `${l.queued_bytes} B in ${l.queued_frames} frame(s)`,
  drain: (l) => (l.drain_s === null ? "-" : `${l.drain_s.toFixed(1)} s`),
};
async function refreshLink() {
  try {
    const response = await fetch("/v1/link");
    if (!response.ok) return;
    const l = await response.json();
    for (const [name, text] of Object.entries(linkFields)) {
      document.getElementById(`link-${name}`).textContent = text(l);
    }
  } catch (err) {
    // the sender is restarting: the next poll tries again
  }
}
setInterval(refreshLink, 2000);

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
