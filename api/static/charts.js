// Small SVG charts drawn with the DOM (no library, nothing inline that the page's CSP would refuse).
// Each chart is an <svg role="img"> named by its <title> and described by its <desc>; the pages put the
// same numbers in a table beside it for screen readers and for copying.

const NS = "http://www.w3.org/2000/svg";

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
  for (const c of children) if (c !== null && c !== undefined) el.append(c);
  return el;
}

function frame(title, desc, width, height) {
  // drawn at most at its own size, so the text stays the page's size on a wide screen
  const root = svg("svg", {class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
                           preserveAspectRatio: "xMinYMin meet"});
  root.style.maxWidth = `${Math.round(width * 1.25)}px`;
  const id = "c" + Math.random().toString(36).slice(2, 9);
  root.append(svg("title", {id: id + "t"}, title), svg("desc", {id: id + "d"}, desc));
  root.setAttribute("aria-labelledby", `${id}t ${id}d`);
  return root;
}

const short = (name, n) => (name.length > n ? "…" + name.slice(-(n - 1)) : name);

/** Channels per layer: an outlined bar for the original count, a filled bar per series (kept channels). */
export function layerChart(layers, series, title) {
  const rowH = 8 + 9 * series.length, labelW = 190, width = 720, top = 24;
  const height = top + layers.length * rowH + 8;
  const max = Math.max(1, ...layers.map((l) => l.before));
  const x = (v) => labelW + (v / max) * (width - labelW - 50);
  const kept = series.map((s) => layers.reduce((a, l) => a + (s.values[l.name] ?? 0), 0));
  const total = layers.reduce((a, l) => a + l.before, 0);
  const desc = `${layers.length} layers, ${total} channels before; ` +
    series.map((s, i) => `${s.label}: ${kept[i]} kept`).join("; ") + ".";
  const root = frame(title, desc, width, height);
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", {class: "grid", x1: x(v), x2: x(v), y1: top - 4, y2: height - 6}),
                svg("text", {x: x(v), y: 14, "text-anchor": "middle"}, String(Math.round(v))));
  }
  layers.forEach((l, i) => {
    const y = top + i * rowH;
    root.append(svg("text", {x: labelW - 6, y: y + rowH / 2 + 3, "text-anchor": "end"}, short(l.name, 30)));
    root.append(svg("rect", {class: "before", x: labelW, y: y + 2, width: Math.max(1, x(l.before) - labelW),
                             height: rowH - 5}));
    series.forEach((s, k) => {
      const v = s.values[l.name] ?? 0;
      root.append(svg("rect", {class: "s" + k, x: labelW, y: y + 4 + k * 9, width: Math.max(0, x(v) - labelW),
                               height: 6}, svg("title", {}, `${l.name}: ${v} of ${l.before} (${s.label})`)));
    });
    const last = series.length ? series[series.length - 1].values[l.name] ?? 0 : l.before;
    root.append(svg("text", {x: x(l.before) + 4, y: y + rowH / 2 + 3}, series.length === 1 ? `${last}/${l.before}` : String(l.before)));
  });
  return root;
}

/** Horizontal bars, one per item: used for the seconds each stage took. */
export function barChart(items, title, unit) {
  const rowH = 20, labelW = 90, width = 520, height = items.length * rowH + 8;
  const max = Math.max(1e-9, ...items.map((i) => i.value));
  const desc = items.map((i) => `${i.label} ${fmt(i.value)} ${unit}`).join(", ") + ".";
  const root = frame(title, desc, width, height);
  items.forEach((it, k) => {
    const y = 4 + k * rowH, w = (it.value / max) * (width - labelW - 80);
    root.append(svg("text", {x: labelW - 6, y: y + 13, "text-anchor": "end"}, it.label),
                svg("rect", {class: "s0", x: labelW, y: y + 3, width: Math.max(1, w), height: rowH - 7}),
                svg("text", {x: labelW + w + 5, y: y + 13}, `${fmt(it.value)} ${unit}`));
  });
  return root;
}

/** Points (x, y) with one highlighted: accuracy (or agreement) against MACs kept, per job of a model. */
export function scatter(points, {title, xLabel, yLabel, current}) {
  const width = 520, height = 300, left = 56, right = 16, top = 14, bottom = 44;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1] = padRange(Math.min(...xs), Math.max(...xs)), [y0, y1] = padRange(Math.min(...ys), Math.max(...ys));
  const X = (v) => left + ((v - x0) / (x1 - x0)) * (width - left - right);
  const Y = (v) => height - bottom - ((v - y0) / (y1 - y0)) * (height - top - bottom);
  const desc = points.map((p) => `${p.label}: ${xLabel} ${fmt(p.x)}, ${yLabel} ${fmt(p.y)}`).join("; ") + ".";
  const root = frame(title, desc, width, height);
  root.append(svg("line", {class: "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}),
              svg("line", {class: "axis", x1: left, x2: left, y1: top, y2: height - bottom}));
  for (let i = 0; i <= 4; i++) {
    const xv = x0 + ((x1 - x0) * i) / 4, yv = y0 + ((y1 - y0) * i) / 4;
    root.append(svg("text", {x: X(xv), y: height - bottom + 16, "text-anchor": "middle"}, fmt(xv)),
                svg("text", {x: left - 6, y: Y(yv) + 4, "text-anchor": "end"}, fmt(yv)),
                svg("line", {class: "grid", x1: left, x2: width - right, y1: Y(yv), y2: Y(yv)}));
  }
  root.append(svg("text", {x: (left + width - right) / 2, y: height - 6, "text-anchor": "middle"}, xLabel),
              svg("text", {x: 12, y: (top + height - bottom) / 2, "text-anchor": "middle",
                           transform: `rotate(-90 12 ${(top + height - bottom) / 2})`}, yLabel));
  // the current job last, so it is drawn on top
  for (const p of [...points].sort((a, b) => (a.id === current) - (b.id === current))) {
    root.append(svg("circle", {cx: X(p.x), cy: Y(p.y), r: 5, class: p.cls || (p.id === current ? "current" : null)},
                    svg("title", {}, `${p.label}: ${xLabel} ${fmt(p.x)}, ${yLabel} ${fmt(p.y)}`)));
  }
  return root;
}

function padRange(lo, hi) {
  if (!(hi > lo)) return [lo - 0.05, hi + 0.05];
  const pad = (hi - lo) * 0.08;
  return [lo - pad, hi + pad];
}

export function fmt(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

/** Which channels two jobs cut, layer by layer: each row is one layer's original channels in order,
 *  coloured by who cut them (categories 1: A only, 2: B only, 3: both; 0, kept by both, left blank). */
export function channelMap(rows, labels, title) {
  const rowH = 14, labelW = 190, width = 720, top = 4, span = width - labelW - 10;
  const height = top + rows.length * rowH + 4;
  const totals = [0, 0, 0, 0];
  for (const r of rows) for (const c of r.who) totals[c] += 1;
  const desc = `${rows.length} layers: ${totals[3]} channels cut by both, ${totals[1]} by ${labels[0]} only, ` +
    `${totals[2]} by ${labels[1]} only, ${totals[0]} kept by both.`;
  const root = frame(title, desc, width, height);
  rows.forEach((r, i) => {
    const y = top + i * rowH, n = r.who.length, w = span / Math.max(1, n);
    root.append(svg("text", {x: labelW - 6, y: y + 10, "text-anchor": "end"}, short(r.name, 30)),
                svg("rect", {class: "before", x: labelW, y: y + 1, width: span, height: rowH - 3}));
    for (let s = 0; s < n;) {  // one rect per run of channels with the same fate
      let e = s;
      while (e < n && r.who[e] === r.who[s]) e++;
      if (r.who[s]) root.append(svg("rect", {class: "cut" + r.who[s], x: labelW + s * w, y: y + 1,
                                             width: Math.max(0.5, (e - s) * w), height: rowH - 3}));
      s = e;
    }
  });
  return root;
}
