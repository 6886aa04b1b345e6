// One job, live: progress and ETA, loss / eval / throughput curves, result, produced model,
// checkpoints, the events log and a cancel button. Fed by JobLive (SSE, else polling).

import { ApiError, call, download } from "../api.js";
import { lineChart } from "../chart.js";
import { fmtBytes, fmtDuration, fmtNumber, fmtTime, h, replace, shortHash, statusBadge } from "../dom.js";
import { JobLive, TERMINAL, stepRateAndEta } from "../job_live.js";
import { jobMethod } from "./jobs.js";

// The cross-entropy part sits on another scale than the KD loss, so it has its own chart.
const LOSS_KEYS = ["train/loss", "train/loss_kd"];
const PAUSABLE = new Set(["queued", "running"]);

function stat(label, value, id) {
  return h("div", { class: "stat" }, h("div", { class: "muted small" }, label), h("div", { class: "stat-value", id }, value));
}

function resultTable(result) {
  const rows = ["teacher", "initial_student", "student"].filter((part) => result?.[part]);
  if (!rows.length) return null;
  return h("table", { class: "table compact", id: "result-table" },
    h("thead", {}, h("tr", {}, ["", "held-out loss", "exact match", "ROUGE-L", "examples"].map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.map((part) => h("tr", {},
      h("th", {}, part.replace("_", " ")),
      ["loss", "exact_match", "rouge_l", "examples"].map((k) => h("td", {}, fmtNumber(result[part][k])))))));
}

export function renderJob({ view }, jobId) {
  const head = h("div", { class: "page-head" });
  const notice = h("p", { class: "error", id: "job-error", role: "alert" });
  const stats = h("div", { class: "stats", id: "job-stats" });
  const charts = h("div", { class: "charts" });
  const outputs = h("div", { class: "columns" });
  const eventsBody = h("tbody", { id: "events-rows" });
  const checkpointsBody = h("tbody", { id: "checkpoint-rows" });
  let checkpointsLoadedAt = 0;
  let drawQueued = false;

  const live = new JobLive(jobId, () => {
    if (drawQueued) return;
    drawQueued = true;
    setTimeout(() => ((drawQueued = false), draw()), 150);
  });

  async function act(action) {
    try {
      live.setJob(await call(`/v1/jobs/${encodeURIComponent(jobId)}/${action}`, { method: "POST" }));
      notice.textContent = "";
      draw();
      if (action === "resume") live.restart();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) throw err;
      notice.textContent = err instanceof ApiError ? err.message : String(err);
    }
  }

  function cancel() {
    if (window.confirm(`Cancel job ${live.job.name || live.job.id}?`)) act("cancel");
  }

  async function loadCheckpoints() {
    checkpointsLoadedAt = Date.now();
    const page = await call(`/v1/jobs/${encodeURIComponent(jobId)}/checkpoints`);
    replace(checkpointsBody, page.items.length
      ? page.items.map((c) => h("tr", {}, h("td", {}, c.step), h("td", {}, fmtBytes(c.bytes)), h("td", {}, shortHash(c.sha256)), h("td", {}, fmtTime(c.created_at))))
      : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No checkpoints kept.")));
  }

  function draw() {
    const job = live.job;
    if (!job) return;
    const loss = live.series("train/loss");
    const { step, total, rate, eta } = stepRateAndEta(job, loss);
    const tokens = live.latest("train/tokens_per_s");
    const cancelButton = h("button", { type: "button", id: "cancel-job", class: "danger", disabled: TERMINAL.has(job.status) || job.status === "cancelling", onclick: cancel }, "Cancel job");
    const pauseButton = job.status === "paused"
      ? h("button", { type: "button", id: "resume-job", onclick: () => act("resume") }, "Resume")
      : h("button", { type: "button", id: "pause-job", disabled: !PAUSABLE.has(job.status), onclick: () => act("pause") }, "Pause");
    replace(head,
      h("div", {}, h("h1", {}, job.name || job.id), h("div", { class: "muted small" }, `${job.id} · ${job.kind} · ${jobMethod(job)} · queue ${job.queue}`)),
      h("div", { class: "head-actions" }, statusBadge(job.status), h("span", { class: "muted small", id: "transport" }, live.transport), pauseButton, cancelButton));
    const fraction = total ? Math.min(1, step / total) : 0;
    replace(stats,
      h("div", { class: "stat wide" },
        h("div", { class: "muted small" }, "progress"),
        h("progress", { id: "job-progress", max: total || 1, value: total ? step : 0 }),
        h("div", { class: "stat-value" }, total ? `${step} / ${total} steps (${Math.round(fraction * 100)}%)` : `${step} steps`)),
      stat("tokens/s", tokens ? fmtNumber(tokens.value, 4) : "–", "tokens-per-s"),
      stat("steps/s", rate ? fmtNumber(rate, 3) : "–", "step-rate"),
      stat("ETA", TERMINAL.has(job.status) ? "done" : fmtDuration(eta), "eta"),
      job.queue_position ? stat("queue position", String(job.queue_position), "queue-position") : null,
      stat("device", job.device || "–"),
      stat("attempts", String(job.attempts)),
      stat("created", fmtTime(job.created_at)),
      stat("finished", fmtTime(job.finished_at)));
    notice.textContent = job.error || "";

    const evalKeys = [...live.metrics.keys()].filter((k) => k.startsWith("eval/")).sort();
    const evalLoss = evalKeys.filter((k) => k.endsWith("loss"));
    const evalScores = evalKeys.filter((k) => !k.endsWith("loss"));
    const toSeries = (keys) => keys.map((key) => ({ label: key, points: live.series(key).map((p) => [p.step, p.value]) }));
    replace(charts,
      h("div", { class: "card", id: "loss-chart" }, lineChart(toSeries(LOSS_KEYS), { title: "Training loss" }),
        live.metrics.has("train/loss_ce") ? lineChart(toSeries(["train/loss_ce"]), { title: "Cross-entropy on the data (train/loss_ce)", height: 160 }) : null),
      h("div", { class: "card", id: "eval-chart" },
        lineChart(toSeries([...evalLoss, "train/loss"].filter((k) => live.metrics.has(k))), { title: "Held-out loss (eval/*) against train/loss", empty: "No evaluation yet (the job evaluates at eval_every and at the end)." }),
        evalScores.length ? lineChart(toSeries(evalScores), { title: "Held-out scores", height: 180 }) : null),
      h("div", { class: "card", id: "throughput-chart" }, lineChart(toSeries(["train/tokens_per_s"]), { title: "Throughput (tokens/s)", height: 180 })));

    const model = job.output_model_id
      ? h("p", { id: "produced-model" }, "Produced model ", h("a", { href: `#/models/${encodeURIComponent(job.output_model_id)}` }, job.output_model_id), " ",
          h("button", { type: "button", onclick: () => download(`/v1/models/${encodeURIComponent(job.output_model_id)}/download`, `${job.output_model_id}.tar.gz`) }, "Download"))
      : h("p", { class: "muted", id: "produced-model" }, TERMINAL.has(job.status) ? "No model was produced." : "The model is registered when the job succeeds.");
    replace(outputs,
      h("div", { class: "card" }, h("h2", {}, "Result"), model, resultTable(job.result) || h("p", { class: "muted" }, "No result yet.")),
      h("div", { class: "card" }, h("h2", {}, "Checkpoints"),
        h("table", { class: "table compact" }, h("thead", {}, h("tr", {}, ["step", "size", "sha256", "written"].map((t) => h("th", {}, t)))), checkpointsBody)));

    const events = [...live.events.values()].sort((a, b) => b.id - a.id);
    replace(eventsBody, events.length
      ? events.map((e) => h("tr", { class: `level-${e.level}` }, h("td", {}, fmtTime(e.created_at)), h("td", {}, h("span", { class: `badge level-${e.level}` }, e.level)), h("td", {}, e.message),
          h("td", {}, Object.keys(e.data || {}).length ? h("code", { class: "small" }, JSON.stringify(e.data)) : "")))
      : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No events yet.")));
    if (Date.now() - checkpointsLoadedAt > 3000 || TERMINAL.has(job.status)) loadCheckpoints().catch(() => {});
  }

  replace(view, head, notice, stats, charts, outputs,
    h("div", { class: "card" }, h("h2", {}, "Events"),
      h("table", { class: "table compact", id: "events-table" }, h("thead", {}, h("tr", {}, ["time", "level", "message", "data"].map((t) => h("th", {}, t)))), eventsBody)));
  live.start().catch((err) => {
    if (err instanceof ApiError && err.status === 401) throw err;
    replace(view, h("p", { class: "error" }, err instanceof ApiError && err.status === 404 ? `No job ${jobId} in this project.` : String(err)));
  });
  return () => live.close();
}
