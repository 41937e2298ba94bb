// The trainer dashboard: polls GET /v1/jobs, /v1/adapters and /health, and follows each
// running job's event stream (GET /v1/jobs/{id}/events) for live progress. Read-only.
// Every value from the server goes into the page as text (textContent, attributes), never as
// markup. Auth: the session cookie (same origin) that POST /login set, or none where the
// trainer has no key.
"use strict";

const JOBS_EVERY_MS = 3000;
const ADAPTERS_EVERY_MS = 10000;
// Browsers allow ~6 HTTP/1.1 connections per host: keep some for polling.
const MAX_STREAMS = 4;
const MAX_JOB_ROWS = 200;
const SPARK_POINTS = 200;
const TERMINAL = ["succeeded", "failed", "cancelled"];

const jobs = new Map(); // id -> JobRecord (from the last poll, updated by stream events)
const live = new Map(); // id -> {progress, losses: number[]} from the job's event stream
const streams = new Map(); // id -> EventSource
// id -> terminal state a stream reported: a poll answered just before it is older and must
// not bring the job back to `running` (nor reopen its stream).
const ended = new Map();
let adapters = [];
let renderQueued = false;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtNumber(x) {
  if (typeof x !== "number" || !Number.isFinite(x)) return "—";
  const a = Math.abs(x);
  if (a >= 1000) return Math.round(x).toLocaleString("en-US");
  if (a >= 100) return x.toFixed(1);
  if (a >= 0.001 || a === 0) return x.toFixed(3);
  return x.toExponential(2);
}

function fmtDuration(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, "0")}m`;
}

function fmtTime(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "—";
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
    `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function baseName(path) {
  const parts = String(path).split("/").filter(Boolean);
  return parts.length ? parts[parts.length - 1] : String(path);
}

function setConnection(status, text) {
  const node = document.getElementById("connection");
  node.dataset.status = status;
  node.textContent = text;
  const banner = document.getElementById("banner");
  if (status === "signed-out") {
    banner.replaceChildren(
      "This page is no longer signed in (the trainer's key may have changed). ",
      el("a", { href: "/login" }, "Sign in again"),
    );
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
}

class SignedOut extends Error {}

async function getJson(url) {
  const response = await fetch(url, {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
    cache: "no-store",
  });
  if (response.status === 401) throw new SignedOut();
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

// -- progress -------------------------------------------------------------------------------

function progressOf(job) {
  // The stream is usually newer than the last poll; a poll can be newer while a stream
  // replays its backlog. Show whichever saw the later step.
  const polled = job.progress || {};
  const streamed = live.get(job.id)?.progress;
  if (streamed && (streamed.step || 0) >= (polled.step || 0)) return streamed;
  return polled;
}

function lossesOf(job) {
  return live.get(job.id)?.losses || [];
}

function onProgress(jobId, event) {
  const entry = live.get(jobId) || { progress: null, losses: [] };
  entry.progress = event.progress;
  const loss = event.progress?.metrics?.loss;
  if (typeof loss === "number" && Number.isFinite(loss)) {
    entry.losses.push(loss);
    if (entry.losses.length > SPARK_POINTS) entry.losses.splice(0, entry.losses.length - SPARK_POINTS);
  }
  live.set(jobId, entry);
  scheduleRender();
}

function onState(jobId, event) {
  const job = jobs.get(jobId);
  if (job && event.state) job.state = event.state;
  if (TERMINAL.includes(event.state)) {
    ended.set(jobId, event.state);
    closeStream(jobId);
    refreshJobs();
    if (event.state === "succeeded") refreshAdapters();
  }
  scheduleRender();
}

function openStream(jobId) {
  const source = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  const parse = (handler) => (message) => {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    handler(jobId, event);
  };
  source.addEventListener("progress", parse(onProgress));
  source.addEventListener("state", parse(onState));
  source.onerror = () => {
    // CONNECTING: the browser retries with Last-Event-ID by itself. CLOSED (a refusal such
    // as 401): drop it; the next poll opens a new one if the job still runs.
    if (source.readyState === EventSource.CLOSED) closeStream(jobId);
  };
  streams.set(jobId, source);
}

function closeStream(jobId) {
  const source = streams.get(jobId);
  if (source) source.close();
  streams.delete(jobId);
}

function syncStreams() {
  for (const id of [...streams.keys()]) {
    if (jobs.get(id)?.state !== "running") closeStream(id);
  }
  const running = [...jobs.values()].filter((j) => j.state === "running");
  for (const job of running) {
    if (streams.size >= MAX_STREAMS) break;
    if (!streams.has(job.id)) openStream(job.id);
  }
}

// -- polling --------------------------------------------------------------------------------

let jobsTimer = null;
async function refreshJobs() {
  clearTimeout(jobsTimer);
  try {
    const [list, health] = await Promise.all([getJson("/v1/jobs?limit=10000"), getJson("/health")]);
    jobs.clear();
    for (const job of list.jobs) {
      if (ended.has(job.id) && !TERMINAL.includes(job.state)) job.state = ended.get(job.id);
      jobs.set(job.id, job);
    }
    renderHealth(health);
    syncStreams();
    setConnection("live", "live");
    scheduleRender();
  } catch (error) {
    if (error instanceof SignedOut) {
      setConnection("signed-out", "signed out");
      for (const id of [...streams.keys()]) closeStream(id);
      return; // stop polling: nothing will load until the page signs in again
    }
    setConnection("offline", "trainer unreachable, retrying");
  }
  clearTimeout(jobsTimer); // a refresh that overlapped this one may have set one
  jobsTimer = setTimeout(refreshJobs, JOBS_EVERY_MS);
}

let adaptersTimer = null;
async function refreshAdapters() {
  clearTimeout(adaptersTimer);
  try {
    adapters = (await getJson("/v1/adapters")).adapters;
    scheduleRender();
  } catch (error) {
    if (error instanceof SignedOut) return;
  }
  clearTimeout(adaptersTimer);
  adaptersTimer = setTimeout(refreshAdapters, ADAPTERS_EVERY_MS);
}

// -- rendering ------------------------------------------------------------------------------

function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    renderJobs();
    renderAdapters();
  });
}

function renderHealth(health) {
  const items = [
    ["device", health.device],
    ["workers", health.workers],
    ["running", health.running],
    ["queued", health.queue_depth],
    ["version", health.version],
  ];
  document.getElementById("health").replaceChildren(
    ...items.map(([name, value]) => el("div", {}, el("dt", {}, name), el("dd", {}, value))),
  );
}

function sparkline(values) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 64 18");
  svg.setAttribute("preserveAspectRatio", "none");
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const points = values.map((v, i) => {
    const x = values.length === 1 ? 32 : (i / (values.length - 1)) * 64;
    const y = 17 - ((v - lo) / span) * 16;
    return `${x.toFixed(1)},${y.toFixed(1)}`;
  });
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  svg.append(line);
  return svg;
}

function progressCell(job, progress) {
  const step = progress.step || 0;
  const total = progress.total_steps;
  const bar = el("progress", { class: job.state });
  if (job.state === "succeeded") {
    bar.max = 1;
    bar.value = 1;
  } else if (total) {
    bar.max = total;
    bar.value = Math.min(step, total);
  } else if (job.state !== "running") {
    bar.max = 1;
    bar.value = 0;
  } // running without a total: indeterminate
  const text = total ? `${step} / ${total}` : step ? `step ${step}` : "—";
  return el("td", {}, el("div", { class: "progress" }, bar, el("span", { class: "step" }, text)));
}

function etaText(job, progress) {
  if (job.state === "running") return fmtDuration(progress.eta_seconds);
  if (job.state === "queued") return job.position === null || job.position === undefined
    ? "queued" : job.position === 0 ? "next" : `${job.position} ahead`;
  if (job.started_at && job.finished_at) {
    return `took ${fmtDuration((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}`;
  }
  return "—";
}

function jobRow(job) {
  const progress = progressOf(job);
  const metrics = progress.metrics || {};
  const final = job.result?.metrics || {};
  const metric = (name) => (name in metrics ? metrics[name] : final[name]);
  const losses = lossesOf(job);
  const lossCell = el("span", { class: "loss" });
  if (losses.length > 1) lossCell.append(sparkline(losses));
  lossCell.append(fmtNumber(metric("loss")));

  const stateCell = el("td", {}, el("span", { class: `state ${job.state}` }, job.state));
  if (job.error) stateCell.append(el("span", { class: "error-text", title: job.error }, job.error));

  const spec = job.spec || {};
  const subtitle = spec.output_name ? `→ ${spec.output_name}` : "";
  const detail = job.kind === "dpo"
    ? baseName(spec.base_model || "") + (spec.parent_adapter ? ` + ${spec.parent_adapter}` : "")
    : spec.adapter || "";
  return el(
    "tr",
    {
      "data-job-id": job.id,
      "data-state": job.state,
      "data-step": progress.step || 0,
      "data-total": progress.total_steps ?? "",
    },
    el("td", { class: "job" }, el("span", { class: "mono" }, job.id), el("span", { class: "sub" }, subtitle)),
    el("td", {}, job.kind, el("span", { class: "sub", title: spec.base_model || "" }, detail)),
    stateCell,
    el("td", { class: "nowrap", title: job.created_at }, fmtTime(job.created_at)),
    progressCell(job, progress),
    el("td", { class: "eta nowrap" }, etaText(job, progress)),
    el("td", { class: "num" }, lossCell),
    el("td", { class: "num" }, fmtNumber(metric("rewards/margins"))),
    el("td", { class: "num" }, fmtNumber(metric("rewards/accuracies"))),
    el("td", { class: "num" }, fmtNumber(progress.tokens_per_second)),
  );
}

function renderJobs() {
  const all = [...jobs.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  const shown = all.slice(0, MAX_JOB_ROWS);
  document.querySelector("#jobs tbody").replaceChildren(...shown.map(jobRow));
  document.getElementById("jobs-empty").hidden = all.length > 0;
  const running = all.filter((j) => j.state === "running").length;
  document.getElementById("jobs-count").textContent =
    `${all.length} total, ${running} running` + (all.length > shown.length ? `, newest ${shown.length} shown` : "");
}

function lineage(adapter, byName) {
  // base → ancestors → this adapter; `seen` stops a corrupt registry from looping forever.
  const chain = [];
  const seen = new Set([adapter.name]);
  let parent = adapter.parent_adapter;
  while (parent && !seen.has(parent) && chain.length < 50) {
    chain.unshift(parent);
    seen.add(parent);
    parent = byName.get(parent)?.parent_adapter;
  }
  const nodes = [el("span", { class: "node base", title: adapter.base_model }, baseName(adapter.base_model))];
  for (const name of chain) nodes.push(el("span", { class: "node" }, name));
  nodes.push(el("span", { class: "node self" }, adapter.name));
  const cell = el("div", { class: "lineage" });
  nodes.forEach((node, i) => {
    if (i) cell.append(el("span", { class: "arrow" }, "→"));
    cell.append(node);
  });
  return cell;
}

function metricsList(metrics) {
  const names = Object.keys(metrics || {}).sort();
  if (!names.length) return el("span", { class: "muted" }, "—");
  return el("div", { class: "metrics" },
    ...names.map((name) => el("span", {}, el("b", {}, name), fmtNumber(metrics[name]))));
}

function adapterRow(adapter, byName) {
  return el(
    "tr",
    { "data-adapter": adapter.name },
    el("td", { class: "nowrap" }, el("span", { class: "mono" }, adapter.name),
      adapter.job_id ? el("span", { class: "sub mono" }, adapter.job_id) : null),
    el("td", {}, adapter.kind),
    el("td", {}, lineage(adapter, byName)),
    el("td", { class: "nowrap" }, el("span", { class: "mono" }, adapter.dataset_id || "—")),
    el("td", { class: "num" }, adapter.rank ?? "—"),
    el("td", {}, metricsList(adapter.metrics)),
    el("td", { class: "nowrap", title: adapter.created_at }, fmtTime(adapter.created_at)),
  );
}

function renderAdapters() {
  const byName = new Map(adapters.map((a) => [a.name, a]));
  const sorted = [...adapters].sort((a, b) => (a.created_at < b.created_at ? 1 : -1));
  document.querySelector("#adapters tbody").replaceChildren(...sorted.map((a) => adapterRow(a, byName)));
  document.getElementById("adapters-empty").hidden = adapters.length > 0;
  document.getElementById("adapters-count").textContent = `${adapters.length}`;
}

refreshJobs();
refreshAdapters();
