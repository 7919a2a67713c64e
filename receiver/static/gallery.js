// Live gallery: new reconstructions arrive as Server-Sent Events ("image", metadata JSON) from
// /v1/events and are prepended without a reload. Each time the stream (re)connects the newest
// page of /v1/images is fetched again, so images stored while it was down still show up.
"use strict";

(() => {
  const MAX_CARDS = 300; // keeps a long-running page's DOM bounded
  const gallery = document.getElementById("gallery");
  const template = document.getElementById("card-template");
  const empty = document.getElementById("empty");
  const count = document.getElementById("count");
  const liveDot = document.getElementById("live-dot");
  const liveText = document.getElementById("live-text");
  const older = document.getElementById("older");

  const fmt = {
    bytes: (n) => (n < 1000 ? `${n} B` : `${(n / 1000).toFixed(1)} kB`),
    ms: (v) => (v < 1000 ? `${v.toFixed(0)} ms` : `${(v / 1000).toFixed(2)} s`),
    // "2026-12-06 18:04:12" in the browser's local time zone (the title says which)
    time: (date) => {
      const p = (n) => String(n).padStart(2, "0");
      return `${date.getFullYear()}-${p(date.getMonth() + 1)}-${p(date.getDate())} ` +
        `${p(date.getHours())}:${p(date.getMinutes())}:${p(date.getSeconds())}`;
    },
    zone: (date) => {
      const minutes = -date.getTimezoneOffset();
      const p = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
      return `UTC${minutes < 0 ? "-" : "+"}${p(minutes / 60)}:${p(minutes % 60)}`;
    },
  };

  function setTime(el) {
    const date = new Date(Number(el.dataset.ts) * 1000);
    el.dateTime = date.toISOString();
    el.textContent = fmt.time(date);
    el.title = `received ${el.textContent} local time (${fmt.zone(date)}), ${el.dateTime}`;
  }

  function buildCard(item) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.id = item.id;
    const link = card.querySelector("a.frame");
    link.href = item.png_url;
    const img = card.querySelector("img");
    img.src = item.png_url;
    img.width = item.width;
    img.height = item.height;
    img.alt = `reconstruction ${item.id}`;
    const field = (name) => card.querySelector(`[data-field="${name}"]`);
    field("mode").textContent = item.mode;
    field("size").textContent = `${item.width}×${item.height}`;
    field("coded").textContent = `${item.coded_width}×${item.coded_height}`;
    card.querySelector('[data-box="coded"]').hidden =
      item.coded_width === item.width && item.coded_height === item.height;
    field("bytes").textContent = fmt.bytes(item.stream_bytes);
    field("bpp").textContent = item.bpp.toFixed(3);
    field("quality").textContent = item.quality.toFixed(2);
    field("decode").textContent = fmt.ms(item.decode_ms);
    field("latency").textContent = fmt.ms(item.latency_ms);
    field("id").textContent = item.id.slice(0, 8);
    const time = field("time");
    time.dataset.ts = String(item.received_at);
    setTime(time);
    return card;
  }

  function has(id) {
    return gallery.querySelector(`[data-id="${CSS.escape(id)}"]`) !== null;
  }

  function refreshCount() {
    const n = gallery.children.length;
    count.textContent = String(n);
    empty.hidden = n > 0;
  }

  function prepend(item, fresh) {
    if (has(item.id)) return;
    const card = buildCard(item);
    if (fresh) card.classList.add("new");
    gallery.prepend(card);
    while (gallery.children.length > MAX_CARDS) gallery.lastElementChild.remove();
    refreshCount();
  }

  function append(item) {
    if (has(item.id)) return;
    gallery.append(buildCard(item));
    refreshCount();
  }

  async function resync() {
    const response = await fetch("/v1/images?limit=50", { headers: { Accept: "application/json" } });
    if (!response.ok) return;
    const page = await response.json();
    for (const item of page.items.slice().reverse()) prepend(item, false);
  }

  async function loadOlder() {
    const before = older.dataset.next;
    if (!before) return;
    older.disabled = true;
    try {
      const response = await fetch(`/v1/images?limit=50&before=${encodeURIComponent(before)}`);
      if (!response.ok) return;
      const page = await response.json();
      page.items.forEach(append);
      older.dataset.next = page.next === null ? "" : String(page.next);
      older.hidden = page.next === null;
    } finally {
      older.disabled = false;
    }
  }

  function setLive(state, text) {
    liveDot.className = `dot ${state}`;
    liveText.textContent = text;
  }

  function connect() {
    const source = new EventSource("/v1/events");
    // On every (re)connect: images stored before the stream was up arrive by the list instead.
    source.addEventListener("open", () => {
      setLive("on", "live");
      resync().catch(() => {});
    });
    source.addEventListener("error", () => setLive("off", "reconnecting…"));
    source.addEventListener("image", (event) => prepend(JSON.parse(event.data), true));
  }

  gallery.querySelectorAll("time[data-ts]").forEach(setTime);
  older.addEventListener("click", () => loadOlder().catch(() => {}));
  refreshCount();
  connect();
})();
