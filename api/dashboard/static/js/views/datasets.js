// Datasets of the project: rows, size, format, content hash; cursor pagination.

import { call } from "../api.js";
import { fmtBytes, fmtNumber, fmtTime, h, replace, shortHash } from "../dom.js";

export function renderDatasets({ view }) {
  const cursors = [null];
  let page = 0;
  let next = null;
  const body = h("tbody", { id: "dataset-rows" });
  const prev = h("button", { type: "button" }, "← Newer");
  const older = h("button", { type: "button" }, "Older →");

  async function load() {
    const result = await call("/v1/datasets", { params: { cursor: cursors[page], limit: 50 } });
    next = result.next_cursor;
    prev.disabled = page === 0;
    older.disabled = !next;
    replace(body, result.items.length
      ? result.items.map((ds) => h("tr", { dataset: { datasetId: ds.id } },
          h("td", {}, ds.name, h("div", { class: "muted small" }, ds.id)), h("td", {}, ds.format),
          h("td", { class: "num" }, fmtNumber(ds.rows)), h("td", { class: "num" }, fmtBytes(ds.bytes)),
          h("td", {}, shortHash(ds.sha256)), h("td", {}, fmtTime(ds.created_at))))
      : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No datasets yet: upload one with `distill datasets upload`.")));
  }
  prev.addEventListener("click", () => ((page = Math.max(0, page - 1)), load()));
  older.addEventListener("click", () => {
    if (!next) return;
    cursors[page + 1] = next;
    page += 1;
    load();
  });
  replace(view, h("div", { class: "page-head" }, h("h1", {}, "Datasets")),
    h("table", { class: "table", id: "datasets-table" },
      h("thead", {}, h("tr", {}, ["name", "format", "rows", "size", "sha256", "uploaded"].map((t) => h("th", {}, t)))), body),
    h("div", { class: "pager" }, prev, older));
  load();
  return () => {};
}
