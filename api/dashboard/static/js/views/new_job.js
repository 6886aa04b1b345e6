// The new-job form: the spec as YAML in a textarea, seeded with this project's models and
// datasets. "Validate" sends it to POST /v1/jobs/validate and shows every problem on the line of
// its field path; "Create" posts it to POST /v1/jobs, and a problem+json answer is shown the
// same way.

import { ApiError, call, normaliseProblem } from "../api.js";
import { fmtBytes, fmtNumber, h, replace } from "../dom.js";
import { lineOfPath } from "../yaml_paths.js";

const YAML = "application/yaml";

function comment(text) {
  // A name goes into a YAML comment: keep it on one line.
  return String(text ?? "").replace(/[\u0000-\u001f\u007f]+/g, " ").slice(0, 80);
}

export function starterSpec(models, datasets) {
  const teacher = models.find((m) => m.source !== "job") || models[0];
  const [train, evalSet] = datasets;
  return [
    "kind: distill",
    "name: dashboard-student",
    "metadata: {source: dashboard}",
    "teacher:",
    `  model: ${teacher ? teacher.id : "mdl_…"}${teacher ? `   # ${comment(teacher.name)}, ${fmtNumber(teacher.num_parameters)} parameters` : "   # register a model first"}`,
    "student:",
    "  model: {init: {from_teacher_layers: every_2nd}}",
    "dataset:",
    `  train: ${train ? train.id : "ds_…"}${train ? `   # ${comment(train.name)}, ${train.rows} rows` : "   # upload a dataset first"}`,
    ...(evalSet ? [`  # eval: ${evalSet.id}   # ${comment(evalSet.name)}, ${evalSet.rows} rows`] : []),
    "method:",
    "  loss: fkl                # ce fkl rkl jsd tvd skl srkl akl atkd taid dskd uld mined",
    "  params: {temperature: 1.0, alpha_ce: 0.1}",
    "  data_mode: offline",
    "training:",
    "  max_steps: 200",
    "  batch_size: 16",
    "  lr: 1.0e-3",
    "  warmup_steps: 10",
    "  checkpoint_every: 100",
    "  eval_every: 50",
    "evaluation:",
    "  max_examples: 32",
    "  max_new_tokens: 16",
    "",
  ].join("\n");
}

function reportFacts(report) {
  const facts = [];
  const push = (label, value) => value !== undefined && value !== null && typeof value !== "object" && facts.push([label, value]);
  for (const section of ["plan", "memory", "time", "vocabulary"]) {
    for (const [key, value] of Object.entries(report[section] || {})) {
      push(`${section}.${key}`, /bytes/.test(key) && Number.isFinite(value) ? fmtBytes(value) : value);
    }
  }
  (report.models || []).forEach((m, i) => push(`model ${i + 1}`, [m.role, m.id || m.path, m.architecture, m.num_parameters && `${fmtNumber(m.num_parameters)} params`].filter(Boolean).join(" · ")));
  return facts;
}

export function renderNewJob({ view, navigate }) {
  const textarea = h("textarea", { id: "spec-yaml", spellcheck: "false", rows: 28, wrap: "off", "aria-label": "job spec (YAML)" });
  const gutter = h("pre", { id: "spec-gutter", class: "gutter", "aria-hidden": "true" });
  const problems = h("ul", { id: "spec-problems", class: "problems" });
  const verdict = h("p", { id: "spec-verdict", role: "status" });
  const facts = h("dl", { id: "spec-report", class: "facts" });
  const validateButton = h("button", { type: "button", id: "spec-validate" }, "Validate");
  const createButton = h("button", { type: "button", id: "spec-create", class: "primary" }, "Create job");
  let marked = new Map(); // line -> messages

  function drawGutter() {
    const count = textarea.value.split("\n").length;
    replace(gutter, Array.from({ length: count }, (_, i) => {
      const messages = marked.get(i + 1);
      return h("span", { class: messages ? "gutter-line has-problem" : "gutter-line", title: messages ? messages.join("\n") : null, dataset: { line: String(i + 1) } }, `${messages ? "!" : " "}${String(i + 1).padStart(3, " ")}\n`);
    }));
    gutter.scrollTop = textarea.scrollTop;
  }

  function selectLine(line) {
    const lines = textarea.value.split("\n");
    const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
    textarea.focus();
    textarea.setSelectionRange(start, start + (lines[line - 1] || "").length);
  }

  function showProblems(list) {
    marked = new Map();
    replace(problems, list.map((raw) => {
      const problem = normaliseProblem(raw);
      const found = raw.line ? { line: Number(raw.line), exact: true } : lineOfPath(textarea.value, problem.loc);
      if (found.line) marked.set(found.line, [...(marked.get(found.line) || []), `${problem.path}: ${problem.msg}`]);
      const where = found.line ? `line ${found.line}` : "spec";
      return h("li", { class: "problem", dataset: { loc: problem.path, line: found.line ? String(found.line) : "" }, onclick: () => found.line && selectLine(found.line) },
        h("span", { class: "where" }, where), " ", h("code", {}, problem.path || "(body)"), ": ", problem.msg);
    }));
    drawGutter();
  }

  async function validate() {
    verdict.textContent = "Validating…";
    verdict.className = "";
    replace(facts);
    try {
      const report = await call("/v1/jobs/validate", { method: "POST", text: textarea.value, contentType: YAML });
      showProblems(report.problems || []);
      verdict.textContent = report.valid ? "The spec is valid." : `${report.problems.length} problem(s) found.`;
      verdict.className = report.valid ? "ok" : "error";
      replace(facts, reportFacts(report).map(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))]));
      return report;
    } catch (err) {
      return failed(err);
    }
  }

  function failed(err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 401) throw err;
    if (err.status === 404 || err.status === 405) {
      verdict.textContent = "This server has no validate endpoint; Create checks the spec.";
    } else {
      verdict.textContent = err.message;
    }
    verdict.className = "error";
    showProblems(err.problem.errors || []);
    return null;
  }

  async function create() {
    verdict.textContent = "Creating…";
    verdict.className = "";
    try {
      const job = await call("/v1/jobs", { method: "POST", text: textarea.value, contentType: YAML });
      navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      failed(err);
    }
  }

  validateButton.addEventListener("click", validate);
  createButton.addEventListener("click", create);
  textarea.addEventListener("input", drawGutter);
  textarea.addEventListener("scroll", () => (gutter.scrollTop = textarea.scrollTop));

  replace(view,
    h("div", { class: "page-head" }, h("h1", {}, "New job"), h("a", { href: "/v1/docs", class: "muted small" }, "API reference")),
    h("p", { class: "muted" }, "Edit the spec (docs/SPEC.md). Validate resolves it against this project's models and datasets without queuing anything."),
    h("div", { class: "editor" }, gutter, textarea),
    h("div", { class: "toolbar" }, validateButton, createButton, verdict),
    problems,
    facts);
  (async () => {
    const [models, datasets] = await Promise.all([call("/v1/models", { params: { limit: 50 } }), call("/v1/datasets", { params: { limit: 50 } })]);
    if (!textarea.value) textarea.value = starterSpec(models.items, datasets.items);
    drawGutter();
  })();
  return () => {};
}
