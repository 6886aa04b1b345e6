// Server-Sent Events over fetch(): EventSource cannot send an Authorization header, so the
// stream is read as bytes and parsed here (the WHATWG "event stream" format: `event:`, `data:`,
// `id:` fields, a blank line ends an event, `:` starts a comment).

import { authHeaders } from "./api.js";

/** Feed text chunks; calls onMessage({event, data, id}) for each complete event. */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.reset();
    this.lastEventId = null;
  }

  reset() {
    this.event = "";
    this.data = [];
  }

  push(chunk) {
    let text = this.buffer + chunk;
    // A trailing CR may be the first half of a CRLF split across chunks: wait for the next one.
    const held = text.endsWith("\r") ? "\r" : "";
    if (held) text = text.slice(0, -1);
    const lines = text.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + held;
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onMessage({ event: this.event || "message", data: this.data.join("\n"), id: this.lastEventId });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
  }
}

/**
 * Follow `GET /v1/jobs/{id}/stream`, reconnecting with Last-Event-ID after a dropped connection.
 * handlers: {status(job), event(ev), metric(m), end(), unavailable()}; `unavailable` is called
 * once when the server has no stream route (404/405 on the first connect): the caller polls.
 * Returns {close()}.
 */
export function followJobStream(jobId, handlers) {
  const controller = new AbortController();
  let lastEventId = null;
  let closed = false;
  let connectedOnce = false;

  const dispatch = (message) => {
    let payload = null;
    try {
      payload = message.data ? JSON.parse(message.data) : null;
    } catch {
      payload = message.data;
    }
    if (message.id) lastEventId = message.id;
    const handler = handlers[message.event];
    if (handler) handler(payload);
    if (message.event === "end") closed = true;
  };

  async function connect() {
    const headers = authHeaders({ Accept: "text/event-stream" });
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/stream`, {
      headers,
      signal: controller.signal,
      cache: "no-store",
    });
    if (!connectedOnce && (response.status === 404 || response.status === 405)) {
      closed = true;
      handlers.unavailable?.();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`stream answered ${response.status}`);
    connectedOnce = true;
    handlers.open?.();
    const parser = new SseParser(dispatch);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    while (!closed) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.push(value);
    }
    if (closed) controller.abort();
  }

  (async () => {
    let delay = 500;
    while (!closed) {
      try {
        await connect();
        delay = 500;
      } catch (error) {
        if (closed || controller.signal.aborted) return;
        handlers.error?.(error);
      }
      if (closed) return;
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 8000);
    }
  })();

  return {
    close() {
      closed = true;
      controller.abort();
    },
  };
}
