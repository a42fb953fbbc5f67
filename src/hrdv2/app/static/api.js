// Thin client for the JSON API: every call throws an Error carrying the server's message.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function detail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
    return JSON.stringify(body);
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

export async function request(method, url, body, options = {}) {
  const init = { method, headers: {}, ...options };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) throw new ApiError(response.status, await detail(response));
  const type = response.headers.get("Content-Type") || "";
  return type.includes("application/json") ? response.json() : response;
}

export const get = (url) => request("GET", url);
export const post = (url, body, options) => request("POST", url, body, options);
export const patch = (url, body) => request("PATCH", url, body);
export const put = (url, body) => request("PUT", url, body);
export const del = (url) => request("DELETE", url);

// Follow a background job through server-sent events; resolves with its final state.
export function watchJob(job, onUpdate) {
  return new Promise((resolve) => {
    if (["done", "failed", "cancelled"].includes(job.state)) {
      onUpdate(job);
      resolve(job);
      return;
    }
    const source = new EventSource(`/api/jobs/${job.id}/events`);
    let last = job;
    source.onmessage = (event) => {
      last = JSON.parse(event.data);
      onUpdate(last);
      if (["done", "failed", "cancelled"].includes(last.state)) {
        source.close();
        resolve(last);
      }
    };
    source.onerror = async () => {
      // stream dropped (server restart, tunnel hiccup): fall back to one poll
      source.close();
      try {
        last = await get(`/api/jobs/${job.id}`);
      } catch {
        last = { ...last, state: "failed", error: "lost contact with the server" };
      }
      if (["done", "failed", "cancelled"].includes(last.state)) {
        onUpdate(last);
        resolve(last);
      } else {
        watchJob(last, onUpdate).then(resolve);
      }
    };
  });
}

// Raw prediction pixels (uint8, row-major) with their size.
export async function getPrediction(imageId, view, level = 0) {
  const response = await fetch(`/api/images/${imageId}/prediction?view=${view}&level=${level}`, { cache: "no-store" });
  if (response.status === 404) return null;
  if (!response.ok) throw new ApiError(response.status, await detail(response));
  const width = Number(response.headers.get("X-Width"));
  const height = Number(response.headers.get("X-Height"));
  const version = Number(response.headers.get("X-Model-Version"));
  return { width, height, version, data: new Uint8Array(await response.arrayBuffer()) };
}
