"use strict";
// The keel dashboard: one page over the /v1 JSON API. The API key lives in sessionStorage (this
// tab only) and goes out as a Bearer header, so the API's own auth decides what a user sees:
// the jobs of the key's project. Live curves come from the job's SSE stream, read with fetch()
// because EventSource cannot send an Authorization header. Charts are plain SVG.

const KEY = "keel.apiKey";
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#2f6fde", "#e07b39", "#3a9d5d", "#8e44ad"];
// [title, [[metric name, legend], ...]]: the stability signals of docs/concepts/algorithm.md §10.
const CHARTS = [
  ["Reward (mean)", [["reward/mean", "reward"]]],
  ["Held-out accuracy", [["eval/accuracy", "greedy"]]],
  ["KL(μ‖π_old)", [["mismatch/kl_k1", "k1"], ["mismatch/kl_k3", "k3"]]],
  ["IS truncated fraction", [["is/truncated_frac", "truncated"]]],
  ["Clip fraction by sign of Â", [["clip/frac_pos", "Â > 0"], ["clip/frac_neg", "Â < 0"]]],
  ["Entropy", [["train/entropy", "entropy"]]],
  ["Step time (s)", [["time/step_s", "step"]]],
];
const HEATMAPS = [
  ["routing/infer_vs_train_L", "Routing disagreement, engine vs trainer (e^μ_old vs e^π_old)"],
  ["routing/old_vs_current_L", "Routing disagreement, θ_old vs θ (e^π_old vs e^π_θ)"],
];

const state = { view: null, stop: null, episode: null };

// ---- small helpers ---------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "onclick") el.addEventListener("click", v);
    else el.setAttribute(k, v);
  }
  for (const child of children) el.append(child ?? "");
  return el;
}

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

function fmt(value) {
  if (value === null || value === undefined) return "–";
  if (value === 0) return "0";
  const abs = Math.abs(value);
  return abs >= 1e4 || abs < 1e-2 ? value.toExponential(2) : String(Number(value.toPrecision(4)));
}

function showOnly(id) {
  for (const section of ["sign-in", "jobs", "job"]) $(section).hidden = section !== id;
  $("sign-out").hidden = id === "sign-in";
}

// ---- the API ---------------------------------------------------------------------------------

function authHeaders() {
  return { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` };
}

async function api(path, { method = "GET", body } = {}) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const isJson = (response.headers.get("content-type") || "").includes("json");
  const data = isJson ? await response.json() : null;
  if (response.status === 401) {
    signOut("That API key was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(data?.detail || `${response.status} ${response.statusText}`);
  return data;
}

// Reads a job's Server-Sent Events; reconnects with Last-Event-ID until the job has ended.
async function streamEvents(jobId, onEvent, signal) {
  let lastId = "0";
  let ended = false;
  while (!signal.aborted && !ended) {
    try {
      const response = await fetch(`/v1/jobs/${jobId}/events`, {
        headers: { ...authHeaders(), "Last-Event-ID": lastId }, signal,
      });
      if (!response.ok) throw new Error(`${response.status}`);
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = parseEvent(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
          if (!event) continue;
          lastId = event.id ?? lastId;
          if (event.type === "status" && TERMINAL.has(event.data.status)) ended = true;
          onEvent(event);
        }
      }
    } catch (error) {
      if (signal.aborted) return;
    }
    if (!ended) await sleep(1000);
  }
}

function parseEvent(block) {
  const event = { id: null, type: "message", data: "" };
  for (const line of block.split("\n")) {
    if (line.startsWith("id: ")) event.id = line.slice(4);
    else if (line.startsWith("event: ")) event.type = line.slice(7);
    else if (line.startsWith("data: ")) event.data += line.slice(6);
  }
  if (!event.data) return null;
  event.data = JSON.parse(event.data).data;
  return event;
}

// ---- sign in ---------------------------------------------------------------------------------

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  $("sign-in-error").textContent = message;
  location.hash = "#/";
  route();
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("api-key").value.trim());
  try {
    await api("/v1/jobs?limit=1");
    $("api-key").value = "";
    $("sign-in-error").textContent = "";
    route();
  } catch (error) {
    if (error.message !== "unauthorized") signOut(`Cannot sign in: ${error.message}`);
  }
}

// ---- jobs list -------------------------------------------------------------------------------

function actionButtons(job, after) {
  const buttons = [];
  const act = (verb) => async () => {
    try {
      await api(`/v1/jobs/${job.id}/${verb}`, { method: "POST" });
    } catch (error) {
      alert(`${verb} failed: ${error.message}`);
    }
    after();
  };
  if (!TERMINAL.has(job.status) && job.status !== "paused" && !job.requested) {
    buttons.push(h("button", { "data-action": "pause", onclick: act("pause") }, "Pause"));
  }
  if (job.status === "paused") {
    buttons.push(h("button", { "data-action": "resume", onclick: act("resume") }, "Resume"));
  }
  if (!TERMINAL.has(job.status)) {
    buttons.push(h("button", { "data-action": "cancel", onclick: act("cancel") }, "Cancel"));
  }
  return buttons;
}

async function latestReward(job) {
  if (job.step < 1) return null;
  const points = await api(
    `/v1/jobs/${job.id}/metrics?name=reward/mean&step_min=${job.step}&step_max=${job.step}`,
  );
  return points.length ? points[0].value : null;
}

async function renderJobs() {
  const page = await api("/v1/jobs?limit=50");
  const rewards = await Promise.all(page.data.map(latestReward));
  const body = $("jobs-body");
  body.replaceChildren(...page.data.map((job, i) => h("tr", { "data-job": job.id },
    h("td", {}, h("a", { href: `#/jobs/${job.id}` }, job.id)),
    h("td", {}, job.name || ""),
    h("td", {}, h("span", { class: `status ${job.status}` }, job.status),
      job.requested ? ` (${job.requested} requested)` : "",
      job.guard?.triggers ? h("span", { class: "guard-count", title: job.guard.last_reason },
        ` ⚠ guard ×${job.guard.triggers}`) : ""),
    h("td", {}, `${job.step} / ${job.steps ?? "?"}`),
    h("td", {}, fmt(rewards[i])),
    h("td", { class: "actions" }, ...actionButtons(job, renderJobs)),
  )));
  $("jobs-empty").hidden = page.data.length > 0;
}

async function showJobs(signal) {
  showOnly("jobs");
  while (!signal.aborted) {
    await renderJobs().catch(() => {});
    await sleep(2000);
  }
}

// ---- one job ---------------------------------------------------------------------------------

async function showJob(jobId, signal) {
  showOnly("job");
  const series = new Map(); // metric name -> Map(step -> value)
  const guardEvents = []; // the job's `guard` events, oldest first (the stream replays them)
  let job = await api(`/v1/jobs/${jobId}`);
  let drawPending = false;

  const renderHeader = () => {
    $("job-title").textContent = job.name || job.id;
    $("job-status").textContent = job.requested ? `${job.status} (${job.requested} requested)`
      : job.status;
    $("job-status").className = `status ${job.status}`;
    const model = job.config?.model?.name ?? "";
    // What the worker is doing and when it last moved: a stuck job shows an old time here.
    const phase = job.phase && job.progress_at
      ? ` · ${job.phase} since ${new Date(job.progress_at).toLocaleTimeString()}` : "";
    $("job-summary").textContent =
      `${job.id} · ${model} · step ${job.step} / ${job.steps ?? "?"} · attempt ${job.attempts}`
      + phase;
    $("job-error").textContent = job.error || "";
    renderStability(job);
    $("job-actions").replaceChildren(...actionButtons(job, refreshJob));
    $("live").textContent = TERMINAL.has(job.status) ? "" : "● live";
  };
  const refreshJob = async () => {
    job = await api(`/v1/jobs/${jobId}`);
    renderHeader();
  };
  const scheduleDraw = () => {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      drawCharts(series, guardEvents);
      drawHeatmaps(series);
    });
  };

  renderHeader();
  drawCharts(series, guardEvents);
  renderGuardEvents(guardEvents);
  $("heatmaps").replaceChildren();
  $("rollouts-body").replaceChildren();
  $("rollout-detail").hidden = true;
  state.episode = null; // an episode still loading from the job before stays unshown
  $("rollout-step").value = Math.max(job.step, 1);
  const agent = job.prompts?.type === "agent"; // its rollouts are episodes of turns
  $("rollout-filter").onsubmit = (event) => {
    event.preventDefault();
    showRollouts(jobId, Number($("rollout-step").value), agent);
  };
  showRollouts(jobId, Math.max(job.step, 1), agent);
  showCheckpoints(jobId);

  await streamEvents(jobId, (event) => {
    if (event.type === "metrics") {
      for (const [name, value] of Object.entries(event.data.values)) {
        if (!series.has(name)) series.set(name, new Map());
        series.get(name).set(event.data.step, value);
      }
      scheduleDraw();
      refreshJob();
    } else if (event.type === "status") {
      refreshJob();
    } else if (event.type === "checkpoint") {
      showCheckpoints(jobId);
    } else if (event.type === "guard") {
      guardEvents.push(event.data);
      renderGuardEvents(guardEvents);
      scheduleDraw();
      refreshJob();
    }
  }, signal);
  if (!signal.aborted) await refreshJob();
}

// The guard's summary (`Job.guard`) and the Routing Replay mode in force (`Job.routing_replay`).
function renderStability(job) {
  const guard = job.guard ?? { triggers: 0 };
  const rollbacks = guard.rollbacks ? ` · ${guard.rollbacks} rollback(s), learning rate × `
    + `${fmt(guard.lr_scale)}` : "";
  $("job-guard").textContent = guard.triggers
    ? `Guard: ${guard.triggers} trigger(s) fired${rollbacks} · last: ${guard.last_reason}`
    : "Guard: no trigger has fired.";
  $("job-guard").className = guard.triggers ? "fired" : "";
  const replay = job.routing_replay;
  $("job-replay").textContent = replay
    ? `Routing Replay: ${replay.mode} (asked: ${replay.requested}; decided at step `
      + `${replay.decided_at_step}, ${replay.switches} switch(es)) · ${replay.reason}`
    : "";
}

function renderGuardEvents(events) {
  $("guard-events").hidden = !events.length;
  $("guard-events-body").replaceChildren(...events.map((e) => h("tr",
    { "data-guard-step": e.step, "data-guard-trigger": e.trigger },
    h("td", {}, String(e.step)),
    h("td", {}, e.trigger),
    h("td", {}, e.action),
    h("td", {}, fmt(e.value)),
    h("td", {}, fmt(e.reference)),
    h("td", {}, e.reason),
  )));
}

function drawCharts(series, guardEvents) {
  const guardSteps = [...new Set(guardEvents.map((e) => e.step))];
  $("charts").replaceChildren(...CHARTS.map(([title, lines]) => {
    const present = lines.filter(([name]) => series.has(name));
    const box = h("div", { class: "chart", "data-chart": lines[0][0] });
    box.dataset.points = String(series.get(lines[0][0])?.size ?? 0);
    box.append(h("h3", {}, title));
    if (!present.length) {
      box.append(h("p", { class: "empty" }, "no data yet"));
      return box;
    }
    box.append(lineChart(present.map(([name]) => series.get(name)), guardSteps));
    box.append(h("div", { class: "legend" }, ...present.map(([name, label], i) => {
      const last = [...series.get(name).entries()].sort((a, b) => a[0] - b[0]).pop();
      const span = h("span", {}, `${label}: ${fmt(last?.[1])}`);
      span.style.color = COLORS[i];
      return span;
    })));
    return box;
  }));
}

// `marks`: steps at which the guard fired, drawn as dashed red verticals.
function lineChart(lines, marks = [], width = 320, height = 150) {
  const pad = { left: 48, right: 8, top: 8, bottom: 20 };
  const points = lines.map((line) => [...line.entries()]
    .filter(([, v]) => v !== null && Number.isFinite(v)).sort((a, b) => a[0] - b[0]));
  const all = points.flat();
  const chart = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}` });
  if (!all.length) return chart;
  const [x0, x1] = [Math.min(...all.map((p) => p[0])), Math.max(...all.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...all.map((p) => p[1])), Math.max(...all.map((p) => p[1]))];
  if (y0 === y1) [y0, y1] = [y0 - (Math.abs(y0) || 1) * 0.1, y1 + (Math.abs(y1) || 1) * 0.1];
  const x = (s) => pad.left + (x1 === x0 ? 0.5 : (s - x0) / (x1 - x0))
    * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - ((v - y0) / (y1 - y0)) * (height - pad.top - pad.bottom);
  const axis = { stroke: "#aab", "stroke-width": 1 };
  chart.append(svg("line", { x1: pad.left, y1: pad.top, x2: pad.left, y2: height - pad.bottom,
    ...axis }));
  chart.append(svg("line", { x1: pad.left, y1: height - pad.bottom, x2: width - pad.right,
    y2: height - pad.bottom, ...axis }));
  const label = (text, attrs) => {
    const el = svg("text", { "font-size": 10, fill: "#6b7385", ...attrs });
    el.textContent = text;
    chart.append(el);
  };
  label(fmt(y1), { x: 2, y: pad.top + 8 });
  label(fmt(y0), { x: 2, y: height - pad.bottom });
  label(`step ${x0}`, { x: pad.left, y: height - 4 });
  label(`${x1}`, { x: width - pad.right - 20, y: height - 4 });
  for (const step of marks.filter((s) => s >= x0 && s <= x1)) {
    const mark = svg("line", { class: "guard-mark", x1: x(step), x2: x(step), y1: pad.top,
      y2: height - pad.bottom, stroke: "#c0392b", "stroke-dasharray": "3 3" });
    const tip = svg("title");
    tip.textContent = `guard fired at step ${step}`;
    mark.append(tip);
    chart.append(mark);
  }
  points.forEach((line, i) => {
    const d = line.map(([s, v], j) => `${j ? "L" : "M"}${x(s).toFixed(1)},${y(v).toFixed(1)}`);
    chart.append(svg("path", { d: d.join(""), fill: "none", stroke: COLORS[i],
      "stroke-width": 1.5 }));
    for (const [s, v] of line) {
      chart.append(svg("circle", { cx: x(s), cy: y(v), r: 2, fill: COLORS[i] }));
    }
  });
  return chart;
}

function drawHeatmaps(series) {
  const maps = [];
  for (const [prefix, title] of HEATMAPS) {
    const layers = [...series.keys()].filter((n) => n.startsWith(prefix))
      .map((n) => Number(n.slice(prefix.length))).filter(Number.isInteger).sort((a, b) => a - b);
    if (!layers.length) continue;
    const steps = [...new Set(layers.flatMap((l) => [...series.get(prefix + l).keys()]))]
      .sort((a, b) => a - b);
    const values = layers.flatMap((l) => [...series.get(prefix + l).values()])
      .filter((v) => v !== null);
    const top = Math.max(0, ...values);
    const cell = 14;
    const chart = svg("svg",
      { width: 40 + steps.length * cell, height: 20 + layers.length * cell });
    layers.forEach((layer, row) => {
      const name = svg("text", { x: 0, y: 12 + row * cell, "font-size": 10, fill: "#6b7385" });
      name.textContent = `L${layer}`;
      chart.append(name);
      steps.forEach((step, col) => {
        const v = series.get(prefix + layer).get(step);
        const rect = svg("rect", { x: 40 + col * cell, y: 2 + row * cell, width: cell - 1,
          height: cell - 1, fill: v === null || v === undefined ? "#eee"
            : `rgba(192, 57, 43, ${(0.08 + 0.92 * (top ? v / top : 0)).toFixed(3)})` });
        const tip = svg("title");
        tip.textContent = `layer ${layer}, step ${step}: ${v === undefined ? "missing" : fmt(v)}`;
        rect.append(tip);
        chart.append(rect);
      });
    });
    maps.push(h("div", { class: "heatmap", "data-heatmap": prefix },
      h("h3", {}, title), chart,
      h("p", { class: "legend" }, `rows: MoE layers · columns: steps ${steps[0]}–${steps.at(-1)}`
        + ` · darkest = ${fmt(top)} of tokens routed differently (hover a cell: its value)`)));
  }
  $("heatmaps").replaceChildren(...maps);
}

async function showRollouts(jobId, step, agent) {
  const page = await api(`/v1/jobs/${jobId}/rollouts?step=${step}&limit=200`);
  $("rollouts-body").replaceChildren(...page.data.map((r) => h("tr",
    { class: "clickable", "data-rollout": r.id, onclick: () => showRollout(r, agent) },
    h("td", {}, `${r.group_index}.${r.sample_index}`),
    h("td", { class: "clip" }, r.prompt),
    h("td", { class: "clip" }, r.completion),
    h("td", {}, fmt(r.reward)),
    h("td", {}, r.status.replace("_", " ")),
  )));
  if (!page.data.length) {
    $("rollouts-body").append(h("tr", {}, h("td", { colspan: 5 }, `no rollouts at step ${step}`)));
  }
}

// `agent`: the rollout is an agent episode (its prompt is the task), shown as its turns.
function showRollout(r, agent) {
  $("rollout-detail").hidden = false;
  $("rollout-detail-title").textContent = `${agent ? "Episode" : "Rollout"} ${r.id} · step `
    + `${r.step} · group ${r.group_index} · sample ${r.sample_index}`;
  $("rollout-prompt-label").textContent = agent ? "Task" : "Prompt";
  $("rollout-prompt").textContent = r.prompt;
  document.querySelector("#rollout-detail .single-turn").hidden = agent;
  $("rollout-completion").textContent = r.completion;
  $("rollout-reference").textContent = r.reference ?? "–";
  $("rollout-reward").textContent = fmt(r.reward);
  $("rollout-status").textContent = r.status;
  $("episode").hidden = !agent;
  state.episode = agent ? r.id : null;
  if (agent) showEpisode(r.id);
}

// ---- an agent episode: its turns (docs/concepts/agents.md §4) ---------------------------------

async function showEpisode(episodeId) {
  $("episode-summary").textContent = "Loading the turns…";
  $("episode-turns").replaceChildren();
  let episode;
  try {
    episode = await api(`/v1/episodes/${episodeId}`);
  } catch (error) {
    if (state.episode === episodeId) {
      $("episode-summary").textContent = `Cannot load the episode: ${error.message}`;
    }
    return;
  }
  if (state.episode !== episodeId) return; // another rollout was opened meanwhile
  const turns = episode.turns;
  const total = (key) => turns.reduce((n, turn) => n + turn[key], 0);
  const sequences = new Set(turns.map((turn) => turn.sequence_index)).size;
  $("episode-summary").textContent = turns.length
    ? `${turns.length} turn(s) in ${sequences} sequence(s) · ${total("context_tokens")} context `
      + `tokens (no loss) · ${total("sampled_tokens")} sampled tokens (trained)`
    : "No model call yet.";
  $("episode-turns").replaceChildren(...turns.map((turn, i) => episodeTurn(turn, turns[i - 1])));
}

// One model call: the messages the harness added since the previous call (context, no loss),
// then the reply the policy sampled (the trained tokens).
function episodeTurn(turn, previous) {
  const newSequence = previous !== undefined && turn.sequence_index !== previous.sequence_index;
  return h("li", { class: "turn", "data-turn": turn.index, "data-sequence": turn.sequence_index },
    newSequence ? h("p", { class: "new-sequence", "data-new-sequence": turn.sequence_index },
      `history edited: new sequence ${turn.sequence_index}`) : "",
    turn.messages.length
      ? h("div", { class: "context", "data-part": "context" }, ...turn.messages.map(chatMessage))
      : "",
    h("div", { class: "sampled", "data-part": "sampled" },
      h("span", { class: "role" }, "assistant · sampled by the policy · trained"),
      ...messageParts(turn.reply)),
    h("p", { class: "turn-meta", "data-turn-meta": turn.index },
      `context ${turn.context_tokens} tokens (no loss) · sampled ${turn.sampled_tokens} tokens `
      + `(trained) · policy v${turn.policy_version} · sequence ${turn.sequence_index} · `
      + `finish ${turn.finish_reason}`),
  );
}

function chatMessage(message) {
  const role = message.role === "tool" && message.tool_call_id
    ? `tool result (${message.tool_call_id})` : String(message.role);
  return h("div", { class: "message", "data-role": message.role },
    h("span", { class: "role" }, role), ...messageParts(message));
}

// A message's text, then each of its tool calls as `name(arguments)`.
function messageParts(message) {
  const text = contentText(message.content);
  return [
    text ? h("pre", { class: "content" }, text) : "",
    ...(message.tool_calls ?? []).map((call) => {
      const name = call.function?.name ?? "?";
      const args = call.function?.arguments;
      return h("code", { class: "tool-call", "data-tool-call": name },
        `${name}(${typeof args === "string" ? args : JSON.stringify(args ?? {})})`);
    }),
  ];
}

// OpenAI content: a string, a list of parts ({type: "text", text}), or null; a completions
// call's prompt may also be token ids.
function contentText(content) {
  if (content === null || content === undefined) return "";
  if (typeof content === "string") return content;
  if (Array.isArray(content) && content.every((part) => typeof part?.text === "string")) {
    return content.map((part) => part.text).join("");
  }
  return JSON.stringify(content);
}

async function showCheckpoints(jobId) {
  const page = await api(`/v1/jobs/${jobId}/checkpoints?limit=100`);
  $("checkpoints-body").replaceChildren(...page.data.map((c) => h("tr", { "data-checkpoint": c.id },
    h("td", {}, String(c.step)),
    h("td", {}, String(c.policy_version)),
    ...checkpointCells(c),
  )));
}

// The model weights (the default download kind), or what retention left of the checkpoint.
function checkpointCells(c) {
  const weights = c.kinds.weights;
  if (!weights) {
    return [h("td", {}, c.deleted_at ? "deleted" : "–"), h("td", {}, ""), h("td", {}, "")];
  }
  return [
    h("td", {}, `${(weights.size_bytes / 1e6).toFixed(1)} MB`),
    h("td", {}, h("code", {}, weights.sha256.slice(0, 16))),
    h("td", {}, h("button", { onclick: () => download(c) }, "Download .tar")),
  ];
}

// The download needs the Authorization header, so it goes through fetch and a blob URL.
async function download(checkpoint) {
  const response = await fetch(`/v1/checkpoints/${checkpoint.id}/download?kind=weights`,
    { headers: authHeaders() });
  if (!response.ok) return alert(`download failed: ${response.status}`);
  const url = URL.createObjectURL(await response.blob());
  const link = h("a", { href: url, download: `${checkpoint.id}.tar` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

// ---- routing: #/ = jobs, #/jobs/<id> = one job -----------------------------------------------

function route() {
  state.stop?.abort();
  const controller = new AbortController();
  state.stop = controller;
  if (!sessionStorage.getItem(KEY)) {
    showOnly("sign-in");
    return;
  }
  $("whoami").textContent = "signed in";
  const match = location.hash.match(/^#\/jobs\/([\w-]+)/);
  const shown = match ? showJob(match[1], controller.signal) : showJobs(controller.signal);
  shown.catch((error) => {
    if (error.message !== "unauthorized") $("job-error").textContent = error.message;
  });
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  route();
});
