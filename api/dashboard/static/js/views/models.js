// Models of the project and their lineage: which job made a model, from which teacher (id and
// weight hash) and which datasets (content hashes, named when the dataset is in this project).

import { call, download } from "../api.js";
import { fmtNumber, fmtTime, h, replace, shortHash } from "../dom.js";

async function datasetsByHash() {
  const byHash = new Map();
  let cursor = null;
  for (let i = 0; i < 5; i += 1) {
    const page = await call("/v1/datasets", { params: { cursor, limit: 200 } });
    page.items.forEach((ds) => byHash.set(ds.sha256, ds));
    cursor = page.next_cursor;
    if (!cursor) break;
  }
  return byHash;
}

function lineageCell(model, byHash) {
  const lineage = model.lineage || {};
  if (model.source !== "job" && !lineage.job_id) return h("span", { class: "muted" }, model.source);
  const teacher = lineage.teacher || {};
  const datasets = Object.entries(lineage.datasets || {});
  return h("div", { class: "lineage" },
    h("div", {}, "job ", h("a", { href: `#/jobs/${encodeURIComponent(lineage.job_id || model.source_job_id)}` }, lineage.job_id || model.source_job_id),
      lineage.method ? ` · ${lineage.method}` : "", lineage.data_mode ? ` · ${lineage.data_mode}` : ""),
    h("div", {}, "teacher ", teacher.id ? h("a", { href: `#/models/${encodeURIComponent(teacher.id)}` }, teacher.id) : (teacher.path || "–"), " weights ", shortHash(teacher.weights_sha256)),
    datasets.map(([role, hash]) => h("div", {}, `${role} data `, byHash.get(hash) ? `${byHash.get(hash).name} ` : "", shortHash(hash))));
}

export function renderModels({ view }) {
  const body = h("tbody", { id: "model-rows" });
  const cursors = [null];
  let page = 0;
  let next = null;
  const prev = h("button", { type: "button" }, "← Newer");
  const older = h("button", { type: "button" }, "Older →");
  async function load() {
    const [result, byHash] = await Promise.all([call("/v1/models", { params: { cursor: cursors[page], limit: 50 } }), datasetsByHash()]);
    next = result.next_cursor;
    prev.disabled = page === 0;
    older.disabled = !next;
    replace(body, result.items.length
      ? result.items.map((m) => h("tr", { dataset: { modelId: m.id } },
          h("td", {}, h("a", { href: `#/models/${encodeURIComponent(m.id)}` }, m.name || m.id), h("div", { class: "muted small" }, m.id)),
          h("td", {}, m.source), h("td", {}, `${m.architecture} (${m.model_type})`),
          h("td", { class: "num" }, fmtNumber(m.num_parameters)), h("td", { class: "num" }, fmtNumber(m.vocab_size)), h("td", { class: "num" }, m.num_layers ?? "–"),
          h("td", {}, shortHash(m.weights_sha256)), h("td", {}, lineageCell(m, byHash)), h("td", {}, fmtTime(m.created_at))))
      : h("tr", {}, h("td", { colspan: 9, class: "muted" }, "No models yet.")));
  }
  prev.addEventListener("click", () => ((page = Math.max(0, page - 1)), load()));
  older.addEventListener("click", () => {
    if (!next) return;
    cursors[page + 1] = next;
    page += 1;
    load();
  });
  replace(view, h("div", { class: "page-head" }, h("h1", {}, "Models")),
    h("table", { class: "table", id: "models-table" },
      h("thead", {}, h("tr", {}, ["name", "source", "architecture", "parameters", "vocab", "layers", "weights sha256", "lineage", "created"].map((t) => h("th", {}, t)))), body),
    h("div", { class: "pager" }, prev, older));
  load();
  return () => {};
}

export function renderModel({ view }, modelId) {
  replace(view, h("p", { class: "muted" }, "Loading…"));
  (async () => {
    const [m, byHash] = await Promise.all([call(`/v1/models/${encodeURIComponent(modelId)}`), datasetsByHash()]);
    const rows = [
      ["id", m.id], ["name", m.name], ["source", m.source], ["path", m.path], ["architecture", m.architecture],
      ["model type", m.model_type], ["parameters", fmtNumber(m.num_parameters)], ["vocabulary", fmtNumber(m.vocab_size)],
      ["layers", m.num_layers ?? "–"], ["tokenizer sha256", m.tokenizer_sha256 || "–"], ["weights sha256", m.weights_sha256 || "–"],
      ["created", fmtTime(m.created_at)],
    ];
    replace(view,
      h("div", { class: "page-head" }, h("h1", {}, m.name || m.id),
        h("button", { type: "button", onclick: () => download(`/v1/models/${encodeURIComponent(m.id)}/download`, `${m.name || m.id}.tar.gz`) }, "Download")),
      h("div", { class: "columns" },
        h("div", { class: "card" }, h("h2", {}, "Model"), h("table", { class: "table compact", id: "model-facts" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, String(v))))))),
        h("div", { class: "card", id: "model-lineage" }, h("h2", {}, "Lineage"), lineageCell(m, byHash),
          Object.keys(m.lineage || {}).length ? h("pre", { class: "small" }, JSON.stringify(m.lineage, null, 2)) : null)));
  })();
  return () => {};
}
