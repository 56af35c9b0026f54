// edgert view: draws the newest frame with its overlay, and says at once when the AI is offline or its result is old.
// Rules: an overlay is drawn only on the frame it belongs to (they arrive together in one message); when the AI is
// offline or the frame is older than max_age_ms the overlay disappears and a banner says why; every frame received
// is acknowledged (painted or superseded), so the server sends the newest frame only when this page can take it.
"use strict";
(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  const canvas = document.getElementById("video");
  const ctx = canvas.getContext("2d");
  const body = document.body;
  const $ = (id) => document.getElementById(id);
  const LINK_TIMEOUT_MS = 1000; // the server sends a status five times a second
  const HEAT = [[0, 0, 128], [0, 96, 255], [0, 220, 220], [255, 230, 0], [255, 40, 0]]; // as edge_runtime/sdk/overlay.py
  const ALPHA = 0.4;

  let ws = null;
  let retryMs = 250;
  let lastMessageAt = -Infinity;
  let status = { link: "waiting", reason: "connecting", max_age_ms: 500, preview: true, display_ms: null };
  let pending = null; // the newest decoded frame not yet painted
  let shown = null; // the frame on screen
  let arrivals = 0; // arrival order: decoding may finish out of order, the newest arrival still wins
  let overlayOn = true;
  let contoursOnly = false;
  let frozen = false;
  let painted = 0;
  const paintTimes = [];
  let toReport = []; // frames drawn in this animation frame: their paint time is taken at the next one
  let dirty = true;
  let lastKind = "";
  let legendKey = "";

  const send = (obj) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); };
  const epochMs = () => performance.timeOrigin + performance.now();
  const rgb = (c, a = 1) => `rgba(${c[0]},${c[1]},${c[2]},${a})`;

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    ws = new WebSocket(`${proto}//${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : ""));
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { retryMs = 250; };
    ws.onmessage = (ev) => {
      lastMessageAt = performance.now();
      if (typeof ev.data === "string") onText(JSON.parse(ev.data));
      else onFrame(ev.data);
    };
    ws.onclose = () => {
      ws = null;
      if (pending) { release(pending); pending = null; }
      dirty = true;
      setTimeout(connect, retryMs);
      retryMs = Math.min(2000, retryMs * 2);
    };
  }

  function onText(msg) {
    if (msg.type === "status") {
      status = msg;
    } else if (msg.type === "clock") {
      send({ type: "clock", t0: msg.t0, tc: epochMs() });
    }
  }

  function release(frame, acknowledge = true) {
    frame.image.close();
    if (frame.overlay) frame.overlay.close();
    if (acknowledge) send({ type: "ack", seq: frame.meta.seq, painted: false });
  }

  async function onFrame(buffer) {
    const order = ++arrivals;
    const head = new DataView(buffer, 0, 8);
    if (String.fromCharCode(...new Uint8Array(buffer, 0, 4)) !== "EVF1") return;
    const metaLen = head.getUint32(4, true);
    const meta = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, metaLen)));
    const arrivedAt = performance.now();
    const start = 8 + metaLen;
    const parts = [createImageBitmap(new Blob([new Uint8Array(buffer, start, meta.image_bytes)], { type: "image/jpeg" }))];
    if (meta.overlay_bytes) {
      const png = new Uint8Array(buffer, start + meta.image_bytes, meta.overlay_bytes);
      parts.push(createImageBitmap(new Blob([png], { type: "image/png" })));
    }
    let bitmaps;
    try {
      bitmaps = await Promise.all(parts);
    } catch (e) {
      send({ type: "ack", seq: meta.seq, painted: false });
      return;
    }
    const frame = { meta, image: bitmaps[0], overlay: bitmaps[1] || null, arrivedAt, order };
    // Defence in depth: the image must have its frame's aspect and the mask its frame's size.
    const aspect = Math.abs(frame.image.width / frame.image.height - meta.width / meta.height);
    const maskOk = !frame.overlay || (frame.overlay.width === meta.width && frame.overlay.height === meta.height);
    if (aspect > 0.02 || !maskOk || frozen || (pending && pending.order > order)) {
      release(frame);
      return;
    }
    if (pending) release(pending);
    pending = frame;
  }

  const ageMs = (frame) => frame.meta.age_ms + (performance.now() - frame.arrivedAt);

  // What the display may show now: `kind` names the banner ("" when all is well), `live` whether overlays may be drawn.
  function displayState() {
    const linkLost = !ws || ws.readyState !== WebSocket.OPEN || performance.now() - lastMessageAt > LINK_TIMEOUT_MS;
    if (linkLost) return { kind: "disconnected", text: "DISPLAY DISCONNECTED — reconnecting to edgert view", live: false };
    if (status.link === "offline" || status.link === "stopped") {
      return { kind: "offline", text: `AI OFFLINE — ${status.reason}`, live: false };
    }
    if (status.link === "waiting") return { kind: "waiting", text: "WAITING FOR THE AI DAEMON", live: false };
    if (!status.preview) {
      return { kind: "nopreview", text: "NO PREVIEW STREAM — start the daemon with --preview ENDPOINT", live: false };
    }
    if (frozen) return { kind: "", text: "", live: true };
    if (!shown) return { kind: "stale", text: "WAITING FOR FRAMES", live: false };
    const age = ageMs(shown);
    if (age > status.max_age_ms) {
      return { kind: "stale", text: `NO CURRENT AI RESULT — last frame ${(age / 1000).toFixed(1)} s old`, live: false };
    }
    return { kind: "", text: "", live: true };
  }

  function tick(ts) {
    if (toReport.length) { // drawn in the previous animation frame: painted by now
      const paintMs = epochMs();
      for (const f of toReport) send({ type: "ack", seq: f.meta.seq, painted: true, paint_ms: paintMs, capture_ms: f.meta.capture_ms });
      toReport = [];
    }
    if (pending && !frozen) {
      if (shown) release(shown, false);
      shown = pending;
      pending = null;
      toReport.push(shown);
      painted += 1;
      paintTimes.push(ts);
      dirty = true;
    }
    while (paintTimes.length && ts - paintTimes[0] > 1000) paintTimes.shift();
    const state = displayState();
    if (state.kind !== lastKind) { lastKind = state.kind; dirty = true; }
    if (dirty) { draw(state); dirty = false; }
    chrome(state);
    requestAnimationFrame(tick);
  }

  function draw(state) {
    const f = shown;
    if (!f) { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); return; }
    const W = f.meta.width, H = f.meta.height;
    if (canvas.width !== W || canvas.height !== H) { canvas.width = W; canvas.height = H; }
    ctx.globalAlpha = 1;
    ctx.imageSmoothingEnabled = true;
    ctx.drawImage(f.image, 0, 0, W, H);
    if (state.live && overlayOn && f.meta.status === "ok") drawOverlay(f, W, H);
    if (!state.live) { ctx.fillStyle = "rgba(0,0,0,0.55)"; ctx.fillRect(0, 0, W, H); }
  }

  function drawOverlay(f, W, H) {
    const m = f.meta;
    const lw = Math.max(2, Math.round(W / 320));
    if (m.task === "segmentation") {
      if (!contoursOnly && f.overlay) {
        ctx.globalAlpha = ALPHA;
        ctx.imageSmoothingEnabled = false;
        ctx.drawImage(f.overlay, 0, 0, W, H);
        ctx.globalAlpha = 1;
      }
      ctx.lineWidth = lw;
      ctx.lineJoin = "round";
      for (const c of m.contours || []) {
        const p = c.points;
        if (p.length < 4) continue;
        ctx.strokeStyle = rgb(m.colors[c.class]);
        ctx.beginPath();
        ctx.moveTo(p[0] + 0.5, p[1] + 0.5);
        for (let i = 2; i < p.length; i += 2) ctx.lineTo(p[i] + 0.5, p[i + 1] + 0.5);
        ctx.closePath();
        ctx.stroke();
      }
    } else if (m.task === "detection") {
      ctx.lineWidth = lw;
      ctx.font = `${Math.max(12, Math.round(H / 28))}px system-ui, sans-serif`;
      ctx.textBaseline = "top";
      for (const [x1, y1, x2, y2, cls, score, track] of [...(m.boxes || [])].reverse()) {
        const color = m.colors[cls];
        ctx.strokeStyle = rgb(color);
        ctx.strokeRect(x1 + lw / 2, y1 + lw / 2, Math.max(0, x2 - x1 - lw), Math.max(0, y2 - y1 - lw));
        label(`${m.labels[cls]} ${score.toFixed(2)}${track ? ` #${track}` : ""}`, x1, y1, color, true);
      }
    } else if (m.task === "classification") {
      if (!contoursOnly && m.saliency) drawSaliency(m.saliency, W, H);
      if (m.classes && m.classes.length) {
        ctx.font = `${Math.max(14, Math.round(H / 22))}px system-ui, sans-serif`;
        ctx.textBaseline = "top";
        const [top, p] = m.classes[0];
        let text = `${m.labels[top]} ${p.toFixed(2)}`;
        if (m.classes.length > 1) text += `   (${m.labels[m.classes[1][0]]} ${m.classes[1][1].toFixed(2)})`;
        label(text, 8, 8, m.colors[top], false);
      }
    }
  }

  function label(text, x, y, color, above) {
    const w = ctx.measureText(text).width + 8;
    const h = parseInt(ctx.font, 10) + 6;
    const top = above && y >= h ? y - h : y;
    ctx.fillStyle = rgb(color);
    ctx.fillRect(x, top, w, h);
    ctx.fillStyle = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 ? "#000" : "#fff";
    ctx.fillText(text, x + 4, top + 3);
  }

  const heatCanvas = document.createElement("canvas");
  function drawSaliency(s, W, H) {
    heatCanvas.width = s.width;
    heatCanvas.height = s.height;
    const hc = heatCanvas.getContext("2d");
    const img = hc.createImageData(s.width, s.height);
    for (let i = 0; i < s.values.length; i++) {
      const v = s.values[i] / 255;
      const pos = v * (HEAT.length - 1);
      const k = Math.min(Math.floor(pos), HEAT.length - 2);
      const t = pos - k;
      for (let ch = 0; ch < 3; ch++) img.data[4 * i + ch] = HEAT[k][ch] * (1 - t) + HEAT[k + 1][ch] * t;
      img.data[4 * i + 3] = Math.min(1, 0.35 * 1.6 * v) * 255; // no tint where the model did not look
    }
    hc.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(heatCanvas, 0, 0, W, H);
  }

  function chrome(state) {
    const banner = $("banner");
    banner.hidden = !state.kind;
    if (state.kind) {
      banner.className = `banner ${state.kind}`;
      if (banner.textContent !== state.text) banner.textContent = state.text;
    }
    const link = state.kind === "disconnected" ? "disconnected" : status.link;
    const pill = $("link");
    pill.className = `pill ${link}`;
    pill.textContent = link === "online" && status.state === "degraded" ? "degraded" : link;
    $("frozen").hidden = !frozen;
    const f = shown;
    if (f) {
      const m = f.meta;
      $("model").textContent = `${m.model.name} ${m.model.version}`;
      $("frame").textContent = `stream ${m.stream} · frame ${m.seq} · ${m.width}×${m.height}`;
      $("error").hidden = m.status === "ok";
      $("error").textContent = m.status === "ok" ? "" : "AI error on this frame: no overlay";
      legend(m);
    } else if (status.model) {
      $("model").textContent = `${status.model.name} ${status.model.version}`;
    }
    $("fps").textContent = `${paintTimes.length} fps`;
    const d = status.display_ms;
    $("latency").textContent = d ? `${d.p50.toFixed(0)} ms capture→paint` : "– ms";
    $("modes").textContent = [overlayOn ? "" : "overlay off", contoursOnly ? "contours only" : ""].filter(Boolean).join(" · ");
    body.dataset.link = link;
    body.dataset.banner = state.kind || "none";
    body.dataset.painted = String(painted);
    body.dataset.seq = String(f ? f.meta.seq : -1);
    body.dataset.overlay = overlayOn ? "on" : "off";
    body.dataset.mode = contoursOnly ? "contours" : "fill";
    body.dataset.frozen = String(frozen);
  }

  function legend(m) {
    const key = JSON.stringify([m.labels, m.colors, m.areas_mm2 || m.areas_px || null]);
    if (key === legendKey) return;
    legendKey = key;
    const list = $("legend");
    list.replaceChildren();
    m.labels.forEach((name, i) => {
      if (m.task === "segmentation" && i === 0) return; // the background
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = rgb(m.colors[i]);
      item.append(swatch, name);
      const area = m.areas_mm2 ? m.areas_mm2[name] : null;
      if (area != null) item.append(` ${area.toFixed(0)} mm²`);
      list.append(item);
    });
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const key = ev.key.toLowerCase();
    if (key === "o") overlayOn = !overlayOn;
    else if (key === "c") contoursOnly = !contoursOnly;
    else if (key === "f" || key === " ") frozen = !frozen;
    else return;
    ev.preventDefault();
    dirty = true;
  });

  connect();
  requestAnimationFrame(tick);
})();
