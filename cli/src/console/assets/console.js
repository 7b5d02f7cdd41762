// tracehop console: the only script. It keeps the live parts of a page
// current from server-sent events (each event names a part and carries its
// new HTML, rendered and escaped by the server), and draws the lines from a
// producer span to its consumers on a trace's waterfall. No framework, no
// build step, nothing fetched from anywhere but the console itself.
"use strict";

(function () {
  const connection = document.getElementById("connection");

  // An event's data is the part's name on the first line, its HTML after.
  function apply(data) {
    const cut = data.indexOf("\n");
    const name = cut < 0 ? data : data.slice(0, cut);
    const html = cut < 0 ? "" : data.slice(cut + 1);
    if (name === "trace") {
      replaceTrace(html);
      return;
    }
    if (name === "explain") {
      const explain = document.getElementById("explain");
      if (explain) explain.innerHTML = html;
      return;
    }
    const target = document.getElementById("live-" + name);
    if (target) target.innerHTML = html;
  }

  function follow(url, onSettled) {
    const source = new EventSource(url);
    source.addEventListener("fragment", (event) => apply(event.data));
    source.addEventListener("settled", () => {
      source.close();
      if (onSettled) onSettled();
    });
    return source;
  }

  // The live parts of every page.
  const live = follow("/events");
  live.onopen = () => {
    connection.textContent = "● live";
    connection.className = "connection on";
  };
  live.onerror = () => {
    connection.textContent = "○ reconnecting";
    connection.className = "connection off";
  };

  // A trace page follows its trace until it stops growing. The spans the
  // reader has opened stay open when the waterfall is drawn again.
  const trace = document.getElementById("trace");
  if (trace) {
    const id = trace.dataset.traceId;
    trace.dataset.state = "following";
    follow("/trace/" + id + "/events", () => {
      trace.dataset.state = "settled";
    });
  }

  function replaceTrace(html) {
    if (!trace) return;
    const open = new Set(
      Array.from(trace.querySelectorAll("details[open]")).map((d) => d.dataset.spanId)
    );
    trace.innerHTML = html;
    trace.querySelectorAll("details").forEach((d) => {
      if (open.has(d.dataset.spanId)) d.open = true;
    });
    drawLinks();
  }

  // A consumer span names the producer spans it is linked to; a line joins
  // the end of the producer's bar to the start of the consumer's.
  function drawLinks() {
    const waterfall = document.getElementById("waterfall");
    const svg = document.getElementById("links");
    if (!waterfall || !svg) return;
    const box = waterfall.getBoundingClientRect();
    svg.setAttribute("width", box.width);
    svg.setAttribute("height", box.height);
    svg.setAttribute("viewBox", "0 0 " + box.width + " " + box.height);
    const bars = new Map();
    waterfall.querySelectorAll("details").forEach((d) => {
      const bar = d.querySelector(".bar");
      if (bar) bars.set(d.dataset.spanId, bar.getBoundingClientRect());
    });
    let paths = "";
    waterfall.querySelectorAll("details[data-links]").forEach((d) => {
      const to = bars.get(d.dataset.spanId);
      d.dataset.links.split(" ").filter(Boolean).forEach((producer) => {
        const from = bars.get(producer);
        if (!from || !to) return;
        // Down from where the producer's bar starts, then into the
        // consumer's bar: a consumer starts after its producer did.
        const x1 = from.left - box.left + 1, y1 = from.bottom - box.top;
        const x2 = to.left - box.left, y2 = to.top + to.height / 2 - box.top;
        paths += '<path d="M' + x1 + "," + y1 + " C" + x1 + "," + y2 + " " +
          x1 + "," + y2 + " " + x2 + "," + y2 + '"/>' +
          '<circle cx="' + x2 + '" cy="' + y2 + '" r="2.5"/>';
      });
    });
    svg.innerHTML = paths;
    svg.dataset.lines = String((paths.match(/<path/g) || []).length);
  }

  document.addEventListener("toggle", drawLinks, true);
  window.addEventListener("resize", drawLinks);
  drawLinks();
})();
