// mochi-serve's page: a client of the public API, with the key its user signs in with (kept
// in this tab's session storage). No framework, no build step.

const KEY_STORAGE = "mochi.apiKey";
const PAGE_SIZE = 8;
const ESTIMATE_DELAY_MS = 350;

const $ = (id) => document.getElementById(id);

/** An error answered by the API: its code, sentence and the field it names. */
class ApiError extends Error {
  constructor(status, body) {
    const detail = (body && body.error) || {};
    super(detail.message || `the server answered ${status}`);
    this.status = status;
    this.code = detail.code || "unknown";
    this.field = detail.field || detail.param || null;
  }
}

// ---------------------------------------------------------------- API

// False when the server asks for no key (`mochi up --no-auth`): no sign-in then.
let authRequired = true;

function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE);
}

function authHeaders() {
  return authRequired ? { Authorization: `Bearer ${apiKey()}` } : {};
}

async function api(method, path, body) {
  const headers = authHeaders();
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = toJson(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, { error: { message: "the server cannot be reached; check the connection and retry" } });
  }
  const text = await response.text();
  let json = null;
  try {
    json = text ? parseJson(text) : null;
  } catch (_) {
    json = null;
  }
  if (!response.ok) {
    if (response.status === 401) signOut("Your key is no longer accepted: " + new ApiError(401, json).message);
    throw new ApiError(response.status, json);
  }
  return json;
}

/** A seed is a 64-bit integer, beyond what a JavaScript number holds exactly: the form
 *  keeps it as the digits typed and they go into the JSON as they are. */
class Digits {
  constructor(text) {
    this.text = text;
  }
}

function toJson(body) {
  const digits = [];
  const text = JSON.stringify(body, (_, value) => {
    if (value instanceof Digits) {
      digits.push(value.text);
      return `\u0000mochi-digits-${digits.length - 1}\u0000`;
    }
    return value;
  });
  return text.replace(/"\\u0000mochi-digits-(\d+)\\u0000"/g, (_, index) => digits[Number(index)]);
}

/** JSON.parse, with every seed kept as its exact digits (a string). */
function parseJson(text) {
  return JSON.parse(text.replace(/"seed":\s*(\d{16,})/g, '"seed":"$1"'));
}

// ---------------------------------------------------------------- formatting

function duration(seconds) {
  if (seconds == null || !isFinite(seconds)) return "unknown";
  if (seconds < 1) return "under a second";
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function stepTime(seconds) {
  return seconds < 10 ? `${seconds.toFixed(seconds < 0.1 ? 3 : 2)} s` : duration(seconds);
}

function bytes(n) {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(1)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(0)} MiB`;
  return `${n} B`;
}

function when(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString();
}

// ---------------------------------------------------------------- sign-in

function signedIn() {
  return !authRequired || Boolean(apiKey());
}

function showSignedIn() {
  const inside = signedIn();
  $("signin").hidden = inside;
  $("workspace").hidden = !inside;
  $("session").hidden = !inside;
  $("sign-out").hidden = !authRequired;
  if (!authRequired) {
    $("session-label").textContent = "Authentication is off on this server";
  } else if (inside) {
    $("session-label").textContent = `Signed in with ${apiKey().slice(0, 12)}…`;
  }
}

function signOut(reason) {
  sessionStorage.removeItem(KEY_STORAGE);
  stopFollowing();
  current = null;
  $("job").hidden = true;
  $("history-list").replaceChildren();
  showSignedIn();
  $("api-key").value = "";
  setFieldError("api-key", reason || "");
  $("api-key").focus();
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) {
    setFieldError("api-key", "enter your API key (it starts with mk_)");
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  try {
    await api("GET", "/v1/videos?limit=1");
  } catch (error) {
    sessionStorage.removeItem(KEY_STORAGE);
    setFieldError("api-key", error.message);
    $("api-key").focus();
    return;
  }
  setFieldError("api-key", "");
  $("api-key").value = "";
  showSignedIn();
  history.reset();
  $("prompt").focus();
}

// ---------------------------------------------------------------- form errors

function setFieldError(field, message) {
  const input = $(field);
  const slot = $(`${field}-error`);
  if (!slot) return false;
  slot.textContent = message;
  if (input) {
    if (message) input.setAttribute("aria-invalid", "true");
    else input.removeAttribute("aria-invalid");
  }
  return true;
}

const FORM_FIELDS = ["prompt", "negative_prompt", "duration_s", "num_frames", "fps", "resolution",
  "width", "height", "steps", "guidance_scale", "seed", "priority"];

/** Where the API's field names land in the form. */
function fieldOf(apiField) {
  if (!apiField) return null;
  const name = apiField.replace(/^spec\./, "");
  const aliases = { seconds: "duration_s", size: "resolution" };
  const field = aliases[name] || name;
  if ((field === "width" || field === "height") && $("resolution").value !== "custom") return "resolution";
  return FORM_FIELDS.includes(field) ? field : null;
}

function clearCreateErrors() {
  for (const field of FORM_FIELDS) setFieldError(field, "");
  $("create-error").textContent = "";
}

/** Shows an API error next to the field it names, else above the submit button. */
function showCreateError(error) {
  const field = fieldOf(error.field);
  if (field && setFieldError(field, error.message)) {
    return field;
  }
  $("create-error").textContent = error.message;
  return null;
}

// ---------------------------------------------------------------- the create form

function formBody() {
  const body = { prompt: $("prompt").value };
  const negative = $("negative_prompt").value;
  if (negative.trim()) body.negative_prompt = negative;
  const number = (id) => {
    const raw = $(id).value.trim();
    return raw === "" ? undefined : Number(raw);
  };
  if ($("length-frames").checked) body.num_frames = number("num_frames");
  else body.duration_s = number("duration_s");
  body.fps = number("fps");
  const resolution = $("resolution").value;
  if (resolution === "custom") {
    body.width = number("width");
    body.height = number("height");
  } else {
    body.resolution = resolution;
  }
  body.steps = number("steps");
  body.guidance_scale = number("guidance_scale");
  const seed = $("seed").value.trim();
  if (seed !== "") body.seed = /^\d+$/.test(seed) ? new Digits(seed) : seed;
  body.priority = $("priority").value;
  for (const [name, value] of Object.entries(body)) {
    if (value === undefined) delete body[name];
    // A value the browser could not read as a number goes as the text typed, for the API
    // to name what is wrong with it.
    if (typeof value === "number" && Number.isNaN(value)) body[name] = $(name).value;
  }
  return body;
}

let estimateTimer = null;
let estimateSerial = 0;

function scheduleEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(runEstimate, ESTIMATE_DELAY_MS);
}

async function runEstimate() {
  const out = $("estimate");
  if (!$("prompt").value.trim()) {
    out.textContent = "Type a prompt to see what the job will take.";
    return;
  }
  const serial = ++estimateSerial;
  try {
    const e = await api("POST", "/v1/videos/estimate", formBody());
    if (serial !== estimateSerial) return;
    for (const field of FORM_FIELDS) setFieldError(field, "");
    const where = e.gpu_class ? `on ${e.gpu_class}` : "on an H100 (no GPU seen yet)";
    const parts = [
      `${e.num_frames} frames (${e.seconds} s) at ${e.size}`,
      `about ${duration(e.gpu_seconds)} ${where}`,
      `${stepTime(e.step_seconds)} per step`,
      `peak memory ${bytes(e.peak_memory_bytes)}`,
      `${e.lane} lane`,
      `${e.queued_jobs} job${e.queued_jobs === 1 ? "" : "s"} waiting`,
    ];
    out.textContent = parts.join(" · ");
    out.classList.toggle("warn", !e.fits);
    if (!e.fits && e.message) out.textContent = `No GPU can hold this job: ${e.message}`;
  } catch (error) {
    if (serial !== estimateSerial) return;
    out.classList.remove("warn");
    if (error.status >= 400 && error.status < 500 && fieldOf(error.field)) {
      out.textContent = "Fix the marked field to see an estimate.";
      setFieldError(fieldOf(error.field), error.message);
    } else {
      out.textContent = `No estimate: ${error.message}`;
    }
  }
}

async function submitJob(event) {
  event.preventDefault();
  clearCreateErrors();
  const button = $("submit");
  button.disabled = true;
  try {
    const job = await api("POST", "/v1/videos", formBody());
    openJob(job, true);
    history.reset();
  } catch (error) {
    const field = showCreateError(error);
    (field ? $(field) : $("prompt")).focus();
  } finally {
    button.disabled = false;
  }
}

function syncFormVisibility() {
  const frames = $("length-frames").checked;
  $("frames-box").hidden = !frames;
  $("duration-box").hidden = frames;
  $("custom-size").hidden = $("resolution").value !== "custom";
}

// ---------------------------------------------------------------- one job

let current = null; // the job shown
let follow = null; // AbortController of its event stream

const PHASE = {
  queued: "Queued",
  in_progress: "Running",
  completed: "Completed",
  failed: "Failed",
};

function stateLabel(job) {
  const labels = {
    queued: "Queued", assigned: "Starting", running: "Running", encoding: "Decoding",
    preempted: "Paused", succeeded: "Completed", failed: "Failed", cancelled: "Cancelled",
    aborted: "Failed", dead: "Failed",
  };
  return labels[job.state] || PHASE[job.status] || job.state;
}

function isTerminal(job) {
  return ["succeeded", "failed", "cancelled", "aborted", "dead"].includes(job.state);
}

let lastAnnounced = -1;

function announce(text) {
  $("job-live").textContent = text;
}

function setProgress(percent, stepText) {
  $("job-progress").value = percent;
  $("job-progress-label").textContent = `Progress: ${percent} %`;
  if (stepText !== undefined) $("job-steps").textContent = stepText;
  // Screen readers hear every quarter, not every step.
  const quarter = Math.floor(percent / 25);
  if (quarter !== lastAnnounced) {
    lastAnnounced = quarter;
    announce(`${percent} percent done`);
  }
}

function showQueue(queue) {
  if (!queue || queue.position == null) {
    $("job-queue").textContent = "Waiting for the scheduler's estimate…";
    return;
  }
  const parts = [`Position ${queue.position + 1} of ${queue.queued} in the ${queue.lane} lane`];
  if (queue.eta_start_ms) {
    const wait = Math.max(0, (queue.eta_start_ms - Date.now()) / 1000);
    parts.push(`starts in about ${duration(wait)}`);
  }
  if (queue.eta_finish_ms) {
    const total = Math.max(0, (queue.eta_finish_ms - Date.now()) / 1000);
    parts.push(`ready in about ${duration(total)}`);
  }
  $("job-queue").textContent = parts.join(" · ");
}

/** Renders the whole job object (from a status call or a final event). */
function renderJob(job) {
  current = job;
  $("job-prompt").textContent = job.prompt;
  const badge = $("job-state");
  badge.textContent = stateLabel(job);
  badge.className = `badge ${job.state}`;
  const seed = job.seed != null ? ` · seed ${job.seed}` : "";
  $("job-meta").textContent = `${job.seconds} s · ${job.size} · ${job.steps} steps${seed} · created ${when(job.created_at)}`;
  if (job.state === "queued" || job.state === "preempted") showQueue(job.queue);
  else $("job-queue").textContent = "";
  const done = job.denoising ? `Step ${job.denoising.step}/${job.denoising.total_steps}` : "";
  if (job.state === "encoding") setProgress(job.progress, "Decoding the video…");
  else if (isTerminal(job)) setProgress(job.progress, job.state === "succeeded" ? "Done" : done);
  else setProgress(job.progress, done);
  $("job-error").textContent = job.error && job.state !== "succeeded"
    ? (job.state === "cancelled" ? "Cancelled." : job.error.message)
    : "";
  const terminal = isTerminal(job);
  $("cancel").hidden = terminal;
  $("delete").hidden = false;
  const link = job.links && job.links.signed_content;
  const player = $("player");
  if (job.state === "succeeded" && link) {
    if (player.dataset.job !== job.id) {
      player.dataset.job = job.id;
      player.src = link;
      if (job.links.signed_thumbnail) player.poster = job.links.signed_thumbnail;
    }
    player.hidden = false;
    const download = $("download");
    download.href = link;
    download.setAttribute("download", `${job.id}.mp4`);
    download.hidden = false;
  } else {
    player.hidden = true;
    player.pause();
    player.removeAttribute("src");
    delete player.dataset.job;
    $("download").hidden = true;
  }
  // A remix takes the job's settings and seed, whatever became of it.
  $("remix-form").hidden = false;
  history.mark(job.id);
}

function openJob(job, focus) {
  stopFollowing();
  lastAnnounced = -1;
  $("job").hidden = false;
  $("remix-prompt").value = job.prompt;
  setFieldError("remix-prompt", "");
  renderJob(job);
  if (focus) $("job-title").focus();
  if (!isTerminal(job)) followJob(job.id);
}

function stopFollowing() {
  if (follow) follow.abort();
  follow = null;
}

/** Follows a job's Server-Sent Events (fetch, so that the key goes in a header), resuming
 *  with Last-Event-ID after a dropped connection, until the final event. */
async function followJob(id) {
  const controller = new AbortController();
  follow = controller;
  let lastId = null;
  let finished = false;
  let failures = 0;
  while (!finished && !controller.signal.aborted) {
    try {
      const headers = { ...authHeaders(), Accept: "text/event-stream" };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const response = await fetch(`/v1/videos/${id}/events`, { headers, signal: controller.signal });
      if (response.status === 204) break;
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        throw new ApiError(response.status, body);
      }
      failures = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const event = parseEvent(block);
          if (!event) continue;
          if (event.id) lastId = event.id;
          if (onEvent(id, event.name, event.data)) finished = true;
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) {
        $("job-error").textContent = error.message;
        return;
      }
      failures += 1;
    }
    if (!finished && !controller.signal.aborted) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** failures)));
    }
  }
  if (!controller.signal.aborted && current && current.id === id) {
    // The final state, with fresh signed links.
    try {
      renderJob(await api("GET", `/v1/videos/${id}`));
    } catch (_) {
      /* the final event already showed it */
    }
    history.reset(true);
  }
}

function parseEvent(block) {
  let name = "message";
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
    else if (field === "id") id = value;
  }
  if (!data.length) return null;
  try {
    return { name, id, data: JSON.parse(data.join("\n")) };
  } catch (_) {
    return null;
  }
}

/** Applies one event to the page; true once the job has ended. */
function onEvent(id, name, data) {
  if (!current || current.id !== id) return true;
  const badge = $("job-state");
  const setBadge = (text, cls) => { badge.textContent = text; badge.className = `badge ${cls}`; };
  switch (name) {
    case "queued":
      setBadge("Queued", "queued");
      showQueue(data);
      return false;
    case "started":
    case "resumed":
      setBadge("Running", "running");
      $("job-queue").textContent = "";
      announce("Running");
      return false;
    case "progress": {
      setBadge("Running", "running");
      $("job-queue").textContent = "";
      const per = data.step_seconds != null ? ` · ${data.step_seconds.toFixed(2)} s per step` : "";
      setProgress(data.percent, `Step ${data.step}/${data.total_steps}${per}`);
      return false;
    }
    case "preempted":
      setBadge("Paused", "preempted");
      $("job-steps").textContent = `Paused after step ${data.step} to let a shorter job run`;
      return false;
    case "decoding":
      setBadge("Decoding", "encoding");
      setProgress(Math.max($("job-progress").value, 95), "Decoding the video…");
      announce("Decoding the video");
      return false;
    case "completed":
    case "failed":
    case "cancelled":
      renderJob(data);
      announce(name === "completed" ? "The video is ready" : `The job ${name}`);
      return true;
    default:
      return false;
  }
}

async function jobAction(action) {
  if (!current) return;
  const id = current.id;
  $("job-error").textContent = "";
  try {
    if (action === "cancel") {
      renderJob(await api("POST", `/v1/videos/${id}/cancel`));
      history.reset(true);
    } else if (action === "delete") {
      if (!window.confirm("Delete this video and its files?")) return;
      await api("DELETE", `/v1/videos/${id}`);
      stopFollowing();
      current = null;
      $("job").hidden = true;
      $("player").removeAttribute("src");
      history.reset(true);
      $("prompt").focus();
    }
  } catch (error) {
    $("job-error").textContent = error.message;
  }
}

async function remix(event) {
  event.preventDefault();
  if (!current) return;
  setFieldError("remix-prompt", "");
  try {
    const job = await api("POST", `/v1/videos/${current.id}/remix`, { prompt: $("remix-prompt").value });
    openJob(job, true);
    history.reset();
  } catch (error) {
    setFieldError("remix-prompt", error.message);
    $("remix-prompt").focus();
  }
}

// ---------------------------------------------------------------- history

const history = {
  cursors: [null], // `after` of each page seen; the last is the current page's
  hasMore: false,
  serial: 0, // of the latest load: an older answer arriving late is dropped

  reset(keepPage) {
    if (!keepPage) this.cursors = [null];
    this.load();
  },

  async load() {
    const after = this.cursors[this.cursors.length - 1];
    const params = new URLSearchParams({ limit: String(PAGE_SIZE) });
    if (after) params.set("after", after);
    const status = $("history-filter").value;
    if (status) params.set("status", status);
    $("history-error").textContent = "";
    const serial = ++this.serial;
    let page;
    try {
      page = await api("GET", `/v1/videos?${params}`);
      if (serial !== this.serial) return;
    } catch (error) {
      if (serial !== this.serial) return;
      if (error.code === "not_found" && this.cursors.length > 1) {
        // The page's first job was deleted: start over.
        this.cursors = [null];
        return this.load();
      }
      $("history-error").textContent = error.message;
      return;
    }
    this.hasMore = page.has_more;
    this.render(page.data);
  },

  render(jobs) {
    const list = $("history-list");
    list.replaceChildren(...jobs.map((job) => this.item(job)));
    $("history-empty").hidden = jobs.length > 0;
    $("history-older").disabled = !this.hasMore;
    $("history-newer").disabled = this.cursors.length <= 1;
    $("history-page").textContent = `Page ${this.cursors.length}`;
    this.lastId = jobs.length ? jobs[jobs.length - 1].id : null;
    if (current) this.mark(current.id);
  },

  item(job) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "history-item";
    button.dataset.id = job.id;
    const thumb = job.links && job.links.signed_thumbnail;
    const image = document.createElement(thumb ? "img" : "span");
    image.className = thumb ? "thumb" : "thumb none";
    if (thumb) {
      image.src = thumb;
      image.alt = "";
      image.loading = "lazy";
      image.width = 96;
      image.height = 54;
    }
    const text = document.createElement("span");
    text.className = "history-text";
    const prompt = document.createElement("span");
    prompt.className = "line";
    prompt.textContent = job.prompt;
    const meta = document.createElement("span");
    meta.className = "line small";
    meta.textContent = `${stateLabel(job)} · ${job.progress} % · ${when(job.created_at)}`;
    text.append(prompt, meta);
    button.append(image, text);
    button.addEventListener("click", async () => {
      try {
        openJob(await api("GET", `/v1/videos/${job.id}`), true);
      } catch (error) {
        $("history-error").textContent = error.message;
      }
    });
    li.append(button);
    return li;
  },

  mark(id) {
    for (const button of document.querySelectorAll(".history-item")) {
      if (button.dataset.id === id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  },

  older() {
    if (!this.hasMore || !this.lastId) return;
    this.cursors.push(this.lastId);
    this.load();
  },

  newer() {
    if (this.cursors.length <= 1) return;
    this.cursors.pop();
    this.load();
  },
};

// ---------------------------------------------------------------- wiring

async function loadSettings() {
  try {
    const response = await fetch("/ui/config.json");
    if (response.ok) authRequired = (await response.json()).auth !== false;
  } catch (_) {
    authRequired = true;
  }
}

async function start() {
  await loadSettings();
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut(""));
  $("create-form").addEventListener("submit", submitJob);
  $("create-form").addEventListener("input", (event) => {
    if (event.target && event.target.id) setFieldError(event.target.id, "");
    syncFormVisibility();
    scheduleEstimate();
  });
  $("create-form").addEventListener("change", () => {
    syncFormVisibility();
    scheduleEstimate();
  });
  $("cancel").addEventListener("click", () => jobAction("cancel"));
  $("delete").addEventListener("click", () => jobAction("delete"));
  $("remix-form").addEventListener("submit", remix);
  $("history-filter").addEventListener("change", () => history.reset());
  $("history-refresh").addEventListener("click", () => history.reset(true));
  $("history-older").addEventListener("click", () => history.older());
  $("history-newer").addEventListener("click", () => history.newer());
  syncFormVisibility();
  showSignedIn();
  if (signedIn()) history.reset();
}

start();
