// Live state of one job: the job row, its metrics by key, its events, fed by the SSE stream
// (`GET /v1/jobs/{id}/stream`) or, where the server has no stream route, by polling the REST
// lists. Both paths dedupe (metrics by key+step, events by id), so the backlog loaded over REST
// and a stream that replays it agree.

import { call } from "./api.js";
import { parseIso } from "./dom.js";
import { followJobStream } from "./sse.js";

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL_MS = 2000;

export class JobLive {
  constructor(jobId, onChange) {
    this.jobId = jobId;
    this.onChange = onChange;
    this.job = null;
    this.metrics = new Map(); // key -> Map(step -> {step, value, t})
    this.events = new Map(); // id -> event
    this.transport = "connecting";
    this.stream = null;
    this.timer = null;
    this.closed = false;
  }

  addMetric(m) {
    if (!m || typeof m.key !== "string") return;
    let series = this.metrics.get(m.key);
    if (!series) this.metrics.set(m.key, (series = new Map()));
    series.set(m.step, { step: m.step, value: Number(m.value), t: parseIso(m.created_at) || Date.now() });
  }

  addEvent(e) {
    if (e && e.id !== undefined) this.events.set(e.id, e);
  }

  setJob(job) {
    if (job && job.id === this.jobId) this.job = job;
  }

  series(key) {
    const series = this.metrics.get(key);
    return series ? [...series.values()].sort((a, b) => a.step - b.step) : [];
  }

  latest(key) {
    const points = this.series(key);
    return points.length ? points[points.length - 1] : null;
  }

  lastEventId() {
    return this.events.size ? Math.max(...this.events.keys()) : null;
  }

  maxStep() {
    let max = 0;
    for (const series of this.metrics.values()) for (const step of series.keys()) max = Math.max(max, step);
    return max;
  }

  async loadBacklog() {
    const [job, metrics, events] = await Promise.all([
      call(`/v1/jobs/${encodeURIComponent(this.jobId)}`),
      call(`/v1/jobs/${encodeURIComponent(this.jobId)}/metrics`, { params: { limit: 100000 } }),
      call(`/v1/jobs/${encodeURIComponent(this.jobId)}/events`, { params: { limit: 1000 } }),
    ]);
    this.setJob(job);
    metrics.items.forEach((m) => this.addMetric(m));
    events.items.forEach((e) => this.addEvent(e));
  }

  async start() {
    await this.loadBacklog();
    this.onChange();
    if (this.closed || TERMINAL.has(this.job.status)) {
      this.transport = "finished";
      this.onChange();
      return;
    }
    this.stream = followJobStream(this.jobId, {
      open: () => ((this.transport = "stream"), this.onChange()),
      status: (job) => (this.setJob(job), this.onChange()),
      event: (event) => (this.addEvent(event), this.onChange()),
      metric: (metric) => (this.addMetric(metric), this.onChange()),
      end: () => this.finish(),
      unavailable: () => this.startPolling(),
    });
  }

  /** Follow again after a resume (the stream ended when the job paused). */
  restart() {
    if (this.closed || this.stream || this.timer) return;
    this.start().catch(() => {});
  }

  async finish() {
    this.stream?.close();
    this.stream = null;
    clearInterval(this.timer);
    this.timer = null;
    if (this.closed) return;
    await this.poll().catch(() => {});
    this.transport = "finished";
    this.onChange();
  }

  async poll() {
    const id = encodeURIComponent(this.jobId);
    const afterId = this.lastEventId();
    const [job, metrics, events] = await Promise.all([
      call(`/v1/jobs/${id}`),
      call(`/v1/jobs/${id}/metrics`, { params: { step_min: this.maxStep(), limit: 100000 } }),
      call(`/v1/jobs/${id}/events`, { params: { after_id: afterId, limit: 1000 } }),
    ]);
    this.setJob(job);
    metrics.items.forEach((m) => this.addMetric(m));
    events.items.forEach((e) => this.addEvent(e));
    this.onChange();
    return job;
  }

  startPolling() {
    this.transport = "polling";
    this.onChange();
    this.timer = setInterval(async () => {
      try {
        const job = await this.poll();
        if (TERMINAL.has(job.status)) this.finish();
      } catch {
        // A failed poll is retried on the next tick; a 401 is handled by the page.
      }
    }, POLL_MS);
  }

  close() {
    this.closed = true;
    this.stream?.close();
    clearInterval(this.timer);
  }
}

/**
 * Steps per second and the time left, from the steps recorded so far: the rate between the
 * first and last flush of train/loss (metrics arrive in batches, each stamped when flushed),
 * else the steps done since the job started.
 */
export function stepRateAndEta(job, lossPoints, now = Date.now()) {
  const step = job?.progress?.step || 0;
  const total = job?.progress?.total_steps || null;
  let rate = null;
  if (lossPoints.length >= 2) {
    const first = lossPoints[0];
    const last = lossPoints[lossPoints.length - 1];
    const seconds = (last.t - first.t) / 1000;
    if (seconds > 0.5 && last.step > first.step) rate = (last.step - first.step) / seconds;
  }
  if (rate === null && job?.started_at && step > 0) {
    const seconds = (now - parseIso(job.started_at)) / 1000;
    if (seconds > 0) rate = step / seconds;
  }
  const eta = rate && total && !TERMINAL.has(job.status) ? Math.max(0, total - step) / rate : null;
  return { step, total, rate, eta };
}
