"""A small axe-like check run inside the page: what a screen-reader or keyboard user needs from every view.

It returns one line per problem: controls without a label, images without alt, buttons and links without
a name, charts without a text alternative, duplicate ids, and text below WCAG AA contrast."""

from __future__ import annotations

AUDIT_JS = r"""
() => {
  const problems = [];
  const where = (el) => el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") +
    (el.getAttribute("name") ? `[name=${el.getAttribute("name")}]` : "");
  const visible = (el) => !!(el.offsetWidth || el.offsetHeight || el.getClientRects().length) &&
    getComputedStyle(el).visibility !== "hidden";
  const refsText = (el, attr) => (el.getAttribute(attr) || "").split(/\s+/).filter(Boolean)
    .map((id) => document.getElementById(id)?.textContent.trim() || "").join(" ").trim();
  const name = (el) => (el.getAttribute("aria-label") || "").trim() || refsText(el, "aria-labelledby") ||
    [...(el.labels || [])].map((l) => l.textContent.trim()).join(" ").trim() || (el.getAttribute("title") || "").trim();

  if (!document.documentElement.lang) problems.push("html has no lang");
  if (!document.title.trim()) problems.push("the page has no title");
  for (const el of document.querySelectorAll("input, select, textarea")) {
    if (el.type === "hidden") continue;
    if (!name(el)) problems.push(`${where(el)}: no label`);
    for (const id of (el.getAttribute("aria-describedby") || "").split(/\s+/).filter(Boolean))
      if (!document.getElementById(id)) problems.push(`${where(el)}: aria-describedby points at missing #${id}`);
  }
  for (const el of document.querySelectorAll("img"))
    if (!el.hasAttribute("alt")) problems.push(`${where(el)} ${el.getAttribute("src")}: no alt`);
  for (const el of document.querySelectorAll("button"))
    if (!(el.textContent.trim() || name(el))) problems.push(`${where(el)}: button without a name`);
  for (const el of document.querySelectorAll("a[href]"))
    if (visible(el) && !(el.textContent.trim() || name(el) || el.querySelector("img[alt]:not([alt=''])")))
      problems.push(`${where(el)}: link without a name`);
  for (const el of document.querySelectorAll("svg")) {
    if (el.closest("[aria-hidden=true]")) continue;
    if (el.getAttribute("role") !== "img" || !refsText(el, "aria-labelledby"))
      problems.push(`${where(el)}: chart without role=img and a name`);
  }
  for (const el of document.querySelectorAll("progress"))
    if (!name(el)) problems.push(`${where(el)}: progress without a name`);
  const ids = {};
  for (const el of document.querySelectorAll("[id]")) ids[el.id] = (ids[el.id] || 0) + 1;
  for (const [id, n] of Object.entries(ids)) if (n > 1) problems.push(`#${id} is used ${n} times`);
  // Keyboard: whatever takes a click must be reachable with Tab.
  for (const el of document.querySelectorAll("[onclick], div[tabindex='-1'] button"))
    if (el.tabIndex < 0) problems.push(`${where(el)}: clickable but not focusable`);

  // Contrast (WCAG AA): 4.5:1, 3:1 for large text, against the first opaque background behind the text.
  const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length >= 3 && (c.length < 4 || c[3] > 0.9)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!n.textContent.trim() || !el || seen.has(el) || el.closest("svg, noscript, .visually-hidden, option") || !visible(el)) continue;
    seen.add(el);
    const s = getComputedStyle(el);
    let alpha = Number(s.opacity);
    for (let e = el.parentElement; e; e = e.parentElement) alpha *= Number(getComputedStyle(e).opacity);
    if (el.closest("button[disabled]")) continue;  // WCAG exempts inactive controls
    const fg = rgb(s.color), bg = background(el);
    const a = lum(fg.slice(0, 3)), b = lum(bg);
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const size = parseFloat(s.fontSize), bold = Number(s.fontWeight) >= 700;
    const need = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    if (alpha < 0.99 || ratio < need)
      problems.push(`${where(el)} "${n.textContent.trim().slice(0, 30)}": contrast ${ratio.toFixed(2)} < ${need}` +
                    (alpha < 0.99 ? ` (opacity ${alpha})` : ""));
  }
  return problems;
}
"""


def audit(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.evaluate(AUDIT_JS)
