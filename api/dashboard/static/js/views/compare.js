// Compare: pick several jobs, overlay one metric's curves (one colour per job, with a legend),
// and a table of each job's method, status and final values: "which method won".

import { call } from "../api.js";
import { PALETTE, lineChart } from "../chart.js";
import { fmtNumber, h, replace, statusBadge } from "../dom.js";
import { jobMethod } from "./jobs.js";

export function renderCompare({ view, params, navigate }) {
  const ids = (params.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const chosenKey = params.get("metric") || "train/loss";
  const picker = h("div", { class: "picker", id: "compare-picker" });
  const metricSelect = h("select", { id: "compare-metric" });
  const chartBox = h("div", { class: "card", id: "compare-chart" }, h("p", { class: "muted" }, "Loading…"));
  const summary = h("tbody", { id: "compare-rows" });
  const apply = h("button", { type: "button", id: "compare-apply" }, "Compare");

  const go = (nextIds, key) => navigate(`#/compare?ids=${nextIds.map(encodeURIComponent).join(",")}&metric=${encodeURIComponent(key)}`);
  apply.addEventListener("click", () => {
    const picked = [...picker.querySelectorAll("input:checked")].map((box) => box.value);
    go(picked, metricSelect.value || chosenKey);
  });
  metricSelect.addEventListener("change", () => go(ids, metricSelect.value));

  replace(view,
    h("div", { class: "page-head" }, h("h1", {}, "Compare jobs")),
    h("div", { class: "card" }, h("h2", {}, "Jobs"), picker, h("div", { class: "toolbar" }, h("label", {}, "Metric ", metricSelect), apply)),
    chartBox,
    h("table", { class: "table", id: "compare-table" },
      h("thead", {}, h("tr", {}, ["", "job", "method", "status", "steps", "last value", "best value"].map((t) => h("th", {}, t)))),
      summary));

  (async () => {
    const recent = await call("/v1/jobs", { params: { limit: 50 } });
    const known = new Map(recent.items.map((job) => [job.id, job]));
    const missing = ids.filter((id) => !known.has(id));
    for (const job of await Promise.all(missing.map((id) => call(`/v1/jobs/${encodeURIComponent(id)}`).catch(() => null)))) {
      if (job) known.set(job.id, job);
    }
    replace(picker, [...known.values()].map((job) =>
      h("label", { class: "pick-job" }, h("input", { type: "checkbox", value: job.id, checked: ids.includes(job.id) }), ` ${job.name || job.id} `, h("span", { class: "muted small" }, `${jobMethod(job)} · ${job.status} · ${job.id}`))));

    const jobs = ids.map((id) => known.get(id)).filter(Boolean);
    const metricPages = await Promise.all(jobs.map((job) => call(`/v1/jobs/${encodeURIComponent(job.id)}/metrics`, { params: { limit: 100000 } })));
    const keys = new Set(["train/loss"]);
    metricPages.forEach((page) => page.items.forEach((m) => keys.add(m.key)));
    replace(metricSelect, [...keys].sort().map((key) => h("option", { value: key, selected: key === chosenKey }, key)));

    const series = jobs.map((job, index) => ({
      label: `${job.name || job.id} (${jobMethod(job)}, ${job.id})`,
      color: PALETTE[index % PALETTE.length],
      points: metricPages[index].items.filter((m) => m.key === chosenKey).map((m) => [m.step, m.value]),
    }));
    replace(chartBox, jobs.length < 2
      ? h("p", { class: "muted" }, "Pick two or more jobs above.")
      : lineChart(series, { title: `${chosenKey} by job`, width: 1100, height: 380, empty: `No ${chosenKey} points in these jobs.` }));
    const lowerIsBetter = /loss/.test(chosenKey);
    replace(summary, jobs.map((job, index) => {
      const values = series[index].points.map((p) => p[1]);
      const best = values.length ? (lowerIsBetter ? Math.min(...values) : Math.max(...values)) : null;
      return h("tr", { dataset: { jobId: job.id } },
        h("td", {}, h("span", { class: "dot", dataset: { color: series[index].color } }, "●")),
        h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}` }, job.name || job.id)),
        h("td", {}, jobMethod(job)), h("td", {}, statusBadge(job.status)), h("td", {}, String(job.progress?.step ?? "–")),
        h("td", {}, values.length ? fmtNumber(values[values.length - 1]) : "–"), h("td", {}, fmtNumber(best)));
    }));
    // The colour dot is set through the CSSOM (allowed by the CSP), not a style attribute.
    summary.querySelectorAll(".dot").forEach((dot) => (dot.style.color = dot.dataset.color));
  })();
  return () => {};
}
