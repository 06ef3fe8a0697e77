// The dashboard's one script (no build step): forms marked data-fragment are sent without
// leaving the page, and the instances and nodes pages follow the event stream
// (GET /v1/events/stream, server-sent events; the session cookie signs the request in).
//
// The stream is read with fetch rather than EventSource: the server names each message
// after its event type (tetsu.<object>.<action>.<phase>), and an EventSource hands a
// named message only to a listener registered for that exact name, which a page cannot
// know in advance. The reader below follows the server-sent events format and reconnects
// with Last-Event-ID, as an EventSource would.
"use strict";

(() => {
  const tetsu = (window.tetsu = { loadedAt: Date.now(), live: "off", events: [] });
  const FRAGMENT = { "X-Tetsu-Fragment": "1" };
  const KEPT_EVENTS = 500;

  function showError(message) {
    const box = document.getElementById("error");
    if (!box) return;
    box.textContent = message || "";
    box.hidden = !message;
  }

  async function reasonOf(response) {
    try {
      const body = await response.json();
      return `${body.error.reason} (${body.error.code})`;
    } catch (_) {
      return `the server answered ${response.status}`;
    }
  }

  function rowsOf(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    return Array.from(template.content.querySelectorAll("tr"));
  }

  function setLive(state) {
    tetsu.live = state;
    const dot = document.getElementById("live");
    if (dot) dot.dataset.state = state;
  }

  // A row fetched from the server replaces the element with its id: a table row in place,
  // or, on a node's page, the fields of the details card.
  function putRow(tbody, row) {
    const current = document.getElementById(row.id);
    if (!current) {
      if (tbody) tbody.appendChild(row);
    } else if (current.tagName === "TR") {
      current.replaceWith(row);
    } else {
      for (const cell of row.querySelectorAll("[data-field]")) {
        const target = current.querySelector(`[data-field="${cell.dataset.field}"]`);
        if (target) target.innerHTML = cell.innerHTML;
      }
    }
  }

  async function fetchFragment(url) {
    const response = await fetch(url, { headers: FRAGMENT, credentials: "same-origin" });
    if (response.status === 401) window.location.assign("/ui/login");
    return response.ok ? response.text() : null;
  }

  // Forms

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    const submitter = event.submitter;
    const question = submitter && submitter.dataset.confirm;
    if (question && !window.confirm(question)) {
      event.preventDefault();
      return;
    }
    const mode = form.dataset.fragment;
    if (!mode) return;
    event.preventDefault();
    const body = new FormData(form, submitter);
    if (submitter) submitter.disabled = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body,
        headers: FRAGMENT,
        credentials: "same-origin",
      });
      if (response.status === 401) {
        window.location.assign("/ui/login");
        return;
      }
      if (!response.ok) {
        showError(await reasonOf(response));
        return;
      }
      showError("");
      const rows = rowsOf(await response.text());
      const tbody = form.dataset.target
        ? document.getElementById(form.dataset.target)
        : form.closest("tbody");
      for (const row of rows) {
        putRow(tbody, row);
        // The answer may be older than an event the stream already brought.
        document.dispatchEvent(new CustomEvent("tetsu:row", { detail: row }));
      }
      if (mode === "append") form.reset();
    } catch (error) {
      showError(`the dashboard could not reach the API: ${error}`);
    } finally {
      if (submitter && submitter.isConnected) submitter.disabled = false;
    }
  });

  // The event stream

  function subscribe(filter, handlers) {
    let lastId = null;
    let delay = 1000;
    const seen = new Set();

    function dispatch(data) {
      let event;
      try {
        event = JSON.parse(data);
      } catch (_) {
        return;
      }
      if (seen.has(event.id)) return;
      seen.add(event.id);
      tetsu.events.push(event);
      if (tetsu.events.length > KEPT_EVENTS) tetsu.events.shift();
      handlers.onEvent(event);
    }

    async function read(response) {
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let data = [];
      let id = null;
      let opened = false;
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        buffer += value;
        for (;;) {
          const end = buffer.search(/\r\n|\r|\n/);
          // A lone \r at the end may be the first half of \r\n: wait for more.
          if (end < 0 || (end === buffer.length - 1 && buffer[end] === "\r")) break;
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
          if (!opened) {
            // The server writes only once it listens (its first line is a comment or a
            // missed event): what changed before is read again now, and what changes
            // from now on waits in the response until the page is current.
            opened = true;
            if (handlers.onOpen) await handlers.onOpen();
            setLive("on");
          }
          if (line === "") {
            if (data.length) {
              if (id !== null) lastId = id;
              dispatch(data.join("\n"));
            }
            data = [];
          } else if (!line.startsWith(":")) {
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let text = colon < 0 ? "" : line.slice(colon + 1);
            if (text.startsWith(" ")) text = text.slice(1);
            if (field === "data") data.push(text);
            else if (field === "id") id = text;
          }
        }
      }
    }

    async function run() {
      const headers = { Accept: "text/event-stream" };
      if (lastId !== null) headers["Last-Event-ID"] = lastId;
      try {
        const response = await fetch(`/v1/events/stream?${filter}`, {
          headers,
          credentials: "same-origin",
          cache: "no-store",
        });
        if (response.status === 401) {
          window.location.assign("/ui/login");
          return;
        }
        if (!response.ok || !response.body) throw new Error(await reasonOf(response));
        delay = 1000;
        await read(response);
      } catch (error) {
        console.warn("event stream:", error);
      }
      setLive("retrying");
      window.setTimeout(run, delay);
      delay = Math.min(delay * 2, 15000);
    }

    run();
  }

  function setField(container, field, build) {
    const cell = container.querySelector(`[data-field="${field}"]`);
    if (!cell) return;
    cell.replaceChildren(...build());
  }

  function text(value) {
    return document.createTextNode(value == null ? "" : String(value));
  }

  function badge(value, target) {
    const span = document.createElement("span");
    span.className = "badge";
    span.textContent = value;
    return target ? [span, text(` → ${target}`)] : [span];
  }

  function faultText(fault) {
    if (!fault) return "";
    const message = fault.message || JSON.stringify(fault);
    return fault.code ? `${message} (${fault.code})` : message;
  }

  // Instances page

  function followInstances(tbody) {
    const latest = new Map();
    const refetching = new Set();

    function applyCells(row, p) {
      row.dataset.status = p.status;
      row.className = `status-${String(p.status).toLowerCase()}`;
      setField(row, "status", () => badge(p.status));
      setField(row, "task_state", () => [text(p.task_state || "")]);
      setField(row, "fault", () => [text(faultText(p.fault))]);
      if (p.status === "DELETING" || p.status === "DELETED") setField(row, "actions", () => []);
    }

    async function refetch(id) {
      if (refetching.has(id)) return;
      refetching.add(id);
      try {
        const html = await fetchFragment(tbody.dataset.row.replace("{id}", id));
        if (html === null) return;
        for (const row of rowsOf(html)) {
          putRow(tbody, row);
          if (latest.has(id)) applyCells(row, latest.get(id));
        }
      } finally {
        refetching.delete(id);
      }
    }

    document.addEventListener("tetsu:row", (event) => {
      const row = event.detail;
      if (row.id === `instance-${row.dataset.id}` && latest.has(row.dataset.id)) {
        applyCells(row, latest.get(row.dataset.id));
      }
    });

    subscribe(tbody.dataset.stream, {
      async onOpen() {
        const html = await fetchFragment(tbody.dataset.rows);
        if (html !== null) tbody.replaceChildren(...rowsOf(html));
      },
      onEvent(event) {
        const p = event.payload || {};
        if (event.object_type !== "instance" || !p.id || !p.status) return;
        latest.set(p.id, p);
        const row = document.getElementById(`instance-${p.id}`);
        if (!row) {
          if (p.status !== "DELETED") refetch(p.id);
          return;
        }
        applyCells(row, p);
        // A node (shown to admins) is named by the server: fetch the row when it changes.
        const node = row.querySelector('[data-field="node_id"]');
        if (node && (node.dataset.value || "") !== (p.node_id || "")) refetch(p.id);
      },
    });
  }

  // Nodes page and a node's page

  function applyNode(container, p) {
    setField(container, "power_state", () => [
      text(p.power_state + (p.target_power_state ? ` → ${p.target_power_state}` : "")),
    ]);
    setField(container, "provision_state", () =>
      badge(p.provision_state, p.target_provision_state),
    );
    setField(container, "maintenance", () => [
      text(p.maintenance ? `yes${p.maintenance_reason ? `: ${p.maintenance_reason}` : ""}` : "no"),
    ]);
    setField(container, "instance_id", () => [text(p.instance_id || "")]);
    setField(container, "last_error", () => [text(p.last_error || "")]);
  }

  function followNodes(tbody) {
    async function refetch(id) {
      const html = await fetchFragment(tbody.dataset.row.replace("{id}", id));
      if (html !== null) for (const row of rowsOf(html)) putRow(tbody, row);
    }

    subscribe(tbody.dataset.stream, {
      async onOpen() {
        const html = await fetchFragment(tbody.dataset.rows);
        if (html !== null) tbody.replaceChildren(...rowsOf(html));
      },
      onEvent(event) {
        const p = event.payload || {};
        if (event.object_type !== "node" || !p.id) return;
        const row = document.getElementById(`node-${p.id}`);
        if (!row) {
          refetch(p.id);
          return;
        }
        applyNode(row, p);
        row.classList.toggle("maintenance", Boolean(p.maintenance));
        // The row's buttons depend on these: the server renders them again.
        if (row.dataset.key !== `${p.provision_state}/${Boolean(p.maintenance)}`) refetch(p.id);
      },
    });
  }

  function eventRow(event) {
    const p = event.payload || {};
    const row = document.createElement("tr");
    row.id = `event-${event.id}`;
    row.className = `severity-${event.severity}`;
    const when = new Date(event.created_at);
    const cells = [
      Number.isNaN(when.getTime()) ? event.created_at : when.toLocaleString(),
      event.event_type,
      event.severity,
      p.provision_state || "",
      p.power_state || "",
      p.last_error || "",
    ];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.textContent = value == null ? "" : String(value);
      row.appendChild(cell);
    }
    return row;
  }

  function followNode(tbody) {
    const card = document.querySelector("section[data-id]");
    const filter = tbody.dataset.events;

    async function loadHistory() {
      const response = await fetch(`/v1/events?${filter}&limit=100`, {
        credentials: "same-origin",
      });
      if (!response.ok) {
        showError(`event history: ${await reasonOf(response)}`);
        return;
      }
      const body = await response.json();
      const rows = (body.events || []).map(eventRow);
      tbody.replaceChildren(...rows);
      if (!rows.length) {
        const empty = document.createElement("tr");
        empty.className = "muted placeholder";
        empty.innerHTML = '<td colspan="6">No events yet.</td>';
        tbody.appendChild(empty);
      }
    }

    subscribe(filter, {
      onOpen: loadHistory,
      onEvent(event) {
        if (document.getElementById(`event-${event.id}`)) return;
        for (const placeholder of tbody.querySelectorAll(".placeholder")) placeholder.remove();
        tbody.prepend(eventRow(event));
        if (card && event.payload && event.payload.id === card.dataset.id) {
          applyNode(card, event.payload);
        }
      },
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const instances = document.getElementById("instances");
    if (instances && instances.dataset.stream) followInstances(instances);
    const nodes = document.getElementById("nodes");
    if (nodes && nodes.dataset.stream) followNodes(nodes);
    const history = document.getElementById("node-events");
    if (history) followNode(history);
  });
})();
