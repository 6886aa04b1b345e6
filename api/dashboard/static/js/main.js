// Entry point: sign-in gate, hash routing (#/jobs, #/jobs/<id>, #/compare?ids=…, #/new,
// #/datasets, #/models, #/models/<id>) and the top bar. Each view renders into #view and
// returns a cleanup function that stops its timers and streams.

import { ApiError, apiKey, call } from "./api.js";
import { h, parseHash, replace } from "./dom.js";
import { renderCompare } from "./views/compare.js";
import { renderDatasets } from "./views/datasets.js";
import { renderJob } from "./views/job.js";
import { renderJobs } from "./views/jobs.js";
import { renderModel, renderModels } from "./views/models.js";
import { renderNewJob } from "./views/new_job.js";

const view = document.getElementById("view");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
let cleanup = null;
let signInMessage = "";

function showSignedIn(project) {
  nav.hidden = false;
  signOutButton.hidden = false;
  replace(who, h("span", { class: "muted" }, "project "), h("strong", { id: "project-name" }, project.name));
}

function showSignedOut() {
  nav.hidden = true;
  signOutButton.hidden = true;
  replace(who);
}

function renderSignIn(message) {
  showSignedOut();
  const input = h("input", { id: "api-key", type: "password", autocomplete: "off", placeholder: "dk_…", required: true, size: 48 });
  const error = h("p", { class: "error", id: "sign-in-error", role: "alert" }, message || "");
  const form = h(
    "form",
    { class: "card sign-in", id: "sign-in-form" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste an API key of your project (`distill serve` writes one to .distill/credentials.json). It is kept in this tab only."),
    h("label", { for: "api-key" }, "API key"),
    input,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    apiKey.set(input.value.trim());
    try {
      const project = await call("/v1/projects/me");
      showSignedIn(project);
      if (!parseHash(location.hash).parts.length || location.hash.startsWith("#/signin")) location.hash = "#/jobs";
      else route();
    } catch (err) {
      apiKey.clear();
      error.textContent = err instanceof ApiError && err.status === 401 ? "That key is not valid." : `Could not sign in: ${err.message}`;
    }
  });
  replace(view, form);
  input.focus();
}

async function route() {
  if (cleanup) cleanup();
  cleanup = null;
  if (!apiKey.get()) {
    renderSignIn(signInMessage);
    signInMessage = "";
    return;
  }
  const { parts, params } = parseHash(location.hash);
  const [section, id] = parts;
  for (const link of nav.querySelectorAll("a")) link.classList.toggle("active", link.dataset.nav === (section || "jobs"));
  const context = { view, params, navigate: (hash) => (location.hash = hash) };
  try {
    if (!section || section === "jobs") cleanup = id ? renderJob(context, id) : renderJobs(context);
    else if (section === "compare") cleanup = renderCompare(context);
    else if (section === "new") cleanup = renderNewJob(context);
    else if (section === "datasets") cleanup = renderDatasets(context);
    else if (section === "models") cleanup = id ? renderModel(context, id) : renderModels(context);
    else replace(view, h("p", { class: "error" }, `No page ${section}.`));
  } catch (err) {
    replace(view, h("p", { class: "error" }, String(err)));
  }
}

// A 401 anywhere means the key was revoked or is wrong: back to the sign-in form.
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason instanceof ApiError && event.reason.status === 401) {
    apiKey.clear();
    if (cleanup) cleanup();
    cleanup = null;
    renderSignIn("The API key was refused; sign in again.");
  }
});

signOutButton.addEventListener("click", () => {
  apiKey.clear();
  if (cleanup) cleanup();
  cleanup = null;
  signInMessage = "Signed out.";
  if (location.hash === "#/signin") route();
  else location.hash = "#/signin";
});

window.addEventListener("hashchange", route);

(async () => {
  if (apiKey.get()) {
    try {
      showSignedIn(await call("/v1/projects/me"));
    } catch {
      apiKey.clear();
    }
  }
  route();
})();
