// The jobs list: status and kind filters (server-side), a text search over the loaded page,
// cursor pagination, checkboxes to compare, auto-refresh every few seconds.

import { call } from "../api.js";
import { fmtTime, h, replace, statusBadge } from "../dom.js";

const STATUSES = ["", "validating", "queued", "running", "pausing", "paused", "cancelling", "succeeded", "failed", "cancelled"];
const KINDS = ["", "distill", "edit", "inject"];
const REFRESH_MS = 4000;

export function jobMethod(job) {
  const method = job.spec?.method || {};
  return method.loss || method.name || "–";
}

export function progressText(job) {
  const { step, total_steps: total } = job.progress || {};
  return total ? `${step}/${total}` : String(step ?? 0);
}

export function renderJobs({ view, params, navigate }) {
  const state = {
    status: params.get("status") || "",
    kind: params.get("kind") || "",
    q: params.get("q") || "",
    limit: Math.min(200, Math.max(1, Number(params.get("limit")) || 25)),
    cursors: [null],
    page: 0,
    nextCursor: null,
    items: [],
    selected: new Set(),
  };
  const select = (id, values, current) =>
    h("select", { id }, values.map((v) => h("option", { value: v, selected: v === current }, v || "any")));
  const statusSelect = select("filter-status", STATUSES, state.status);
  const kindSelect = select("filter-kind", KINDS, state.kind);
  const search = h("input", { id: "filter-q", type: "search", placeholder: "search name, id, method, metadata", value: state.q });
  const tbody = h("tbody", { id: "jobs-rows" });
  const pageInfo = h("span", { class: "muted", id: "page-info" });
  const prev = h("button", { type: "button", id: "page-prev" }, "← Newer");
  const next = h("button", { type: "button", id: "page-next" }, "Older →");
  const compare = h("button", { type: "button", id: "compare-selected", disabled: true }, "Compare selected");
  const refreshed = h("span", { class: "muted", id: "refreshed" });

  function matches(job) {
    const q = state.q.trim().toLowerCase();
    if (!q) return true;
    const hay = [job.id, job.name, job.kind, job.status, jobMethod(job), JSON.stringify(job.metadata || {})].join(" ").toLowerCase();
    return hay.includes(q);
  }

  function draw() {
    const rows = state.items.filter(matches);
    replace(
      tbody,
      rows.length
        ? rows.map((job) =>
            h(
              "tr",
              { dataset: { jobId: job.id, status: job.status } },
              h("td", {}, h("input", {
                type: "checkbox",
                class: "pick",
                "aria-label": `select ${job.id}`,
                checked: state.selected.has(job.id),
                onchange: (event) => {
                  if (event.target.checked) state.selected.add(job.id);
                  else state.selected.delete(job.id);
                  compare.disabled = state.selected.size < 2;
                },
              })),
              h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(job.id)}`, class: "job-link" }, job.name || job.id), h("div", { class: "muted small" }, job.id)),
              h("td", {}, statusBadge(job.status)),
              h("td", {}, job.kind),
              h("td", {}, jobMethod(job)),
              h("td", {}, progressText(job)),
              h("td", {}, fmtTime(job.created_at)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No jobs match.")),
    );
    pageInfo.textContent = `page ${state.page + 1} · ${rows.length} shown of ${state.items.length} loaded`;
    prev.disabled = state.page === 0;
    next.disabled = !state.nextCursor;
    compare.disabled = state.selected.size < 2;
  }

  async function load() {
    const page = await call("/v1/jobs", {
      params: { status: state.status, kind: state.kind, cursor: state.cursors[state.page], limit: state.limit },
    });
    state.items = page.items;
    state.nextCursor = page.next_cursor;
    refreshed.textContent = `refreshed ${new Date().toLocaleTimeString()}`;
    draw();
  }

  const restart = () => {
    state.cursors = [null];
    state.page = 0;
    load();
  };
  statusSelect.addEventListener("change", () => ((state.status = statusSelect.value), restart()));
  kindSelect.addEventListener("change", () => ((state.kind = kindSelect.value), restart()));
  search.addEventListener("input", () => ((state.q = search.value), draw()));
  next.addEventListener("click", () => {
    if (!state.nextCursor) return;
    state.cursors[state.page + 1] = state.nextCursor;
    state.page += 1;
    load();
  });
  prev.addEventListener("click", () => {
    if (state.page === 0) return;
    state.page -= 1;
    load();
  });
  compare.addEventListener("click", () => navigate(`#/compare?ids=${[...state.selected].map(encodeURIComponent).join(",")}`));

  replace(
    view,
    h("div", { class: "page-head" }, h("h1", {}, "Jobs"), h("a", { href: "#/new", class: "button" }, "New job")),
    h("div", { class: "toolbar" },
      h("label", {}, "Status ", statusSelect),
      h("label", {}, "Kind ", kindSelect),
      search,
      compare,
      refreshed),
    h("table", { class: "table", id: "jobs-table" },
      h("thead", {}, h("tr", {}, ["", "Name", "Status", "Kind", "Method", "Steps", "Created"].map((t) => h("th", {}, t)))),
      tbody),
    h("div", { class: "pager" }, prev, pageInfo, next),
  );
  load();
  const timer = setInterval(() => {
    if (!document.hidden) load().catch(() => {});
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
