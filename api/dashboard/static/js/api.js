// The REST client every view uses: Bearer auth from sessionStorage, RFC 9457 problems as ApiError.

const KEY_STORAGE = "distill.apiKey";

export const apiKey = {
  get() {
    return sessionStorage.getItem(KEY_STORAGE);
  },
  set(value) {
    sessionStorage.setItem(KEY_STORAGE, value);
  },
  clear() {
    sessionStorage.removeItem(KEY_STORAGE);
  },
};

/** An answer other than 2xx: `problem` is the problem+json body ({title, detail, errors}). */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }

  /** Field errors as [{path: "method.loss", loc: [...], msg}], "body" dropped from the front. */
  get fieldErrors() {
    const errors = this.problem.errors || this.problem.problems || [];
    return errors.map((e) => normaliseProblem(e));
  }
}

export function normaliseProblem(problem) {
  let loc = Array.isArray(problem.loc) ? problem.loc : String(problem.loc || "").split(".");
  loc = loc.filter((part) => part !== "" && part !== null && part !== undefined);
  if (loc[0] === "body") loc = loc.slice(1);
  return { loc, path: loc.join("."), msg: String(problem.msg ?? problem.message ?? "invalid") };
}

export function authHeaders(extra = {}) {
  const key = apiKey.get();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : { ...extra };
}

async function readBody(response) {
  const type = response.headers.get("content-type") || "";
  if (type.includes("json")) return response.json();
  const text = await response.text();
  return { title: response.statusText, detail: text.slice(0, 500) };
}

/**
 * Call the API. `json` sends a JSON body; `text` + `contentType` send a raw one (YAML specs).
 * Returns the parsed body; throws ApiError on a non-2xx answer.
 */
export async function call(path, { method = "GET", json, text, contentType, params, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
  }
  const init = { method, headers: authHeaders(), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (text !== undefined) {
    init.body = text;
    init.headers["Content-Type"] = contentType || "text/plain";
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    const problem = await readBody(response).catch(() => ({ title: response.statusText }));
    throw new ApiError(response.status, typeof problem === "object" && problem ? problem : {});
  }
  if (response.status === 204) return null;
  return readBody(response);
}

/** Download an authenticated file (a model archive) through a blob URL. */
export async function download(path, filename) {
  const response = await fetch(path, { headers: authHeaders() });
  if (!response.ok) throw new ApiError(response.status, await readBody(response));
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
