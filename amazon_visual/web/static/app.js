// The service page: photo / URL / product queries against /v1/search, and catalog browsing.
// Plain DOM code, no framework, no network beyond this server.
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const state = { last: null, page: 1, pages: 1, queryUrl: null, seq: 0 };

  function params() {
    const p = new URLSearchParams({ k: $("k").value });
    if ($("category").value) p.set("category", $("category").value);
    const s = $("min-sim").value.trim();
    if (s !== "") p.set("min_similarity", s);
    // attribute filters: their controls exist only when the index has the attribute
    if ($("brand")) for (const o of $("brand").selectedOptions) p.append("brand", o.value);
    for (const [id, name] of [["min-price", "min_price"], ["max-price", "max_price"], ["min-rating", "min_rating"]]) {
      const v = $(id) ? $(id).value.trim() : "";
      if (v !== "") p.set(name, v);
    }
    return p;
  }

  // "$12.99 · Acme · 4.3★ (120)": the attributes a product has (null ones left out)
  function attributesLine(item) {
    const parts = [];
    if (item.price !== null && item.price !== undefined) parts.push("$" + item.price.toFixed(2));
    if (item.brand) parts.push(item.brand);
    if (item.average_rating !== null && item.average_rating !== undefined) {
      parts.push(item.average_rating.toFixed(1) + "\u2605" + (item.rating_number !== null && item.rating_number !== undefined
                 ? " (" + item.rating_number + ")" : ""));
    }
    return parts.join(" \u00b7 ");
  }

  function setStatus(text, error) {
    $("status").textContent = text;
    $("status").classList.toggle("error", !!error);
  }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children || []) e.appendChild(c);
    return e;
  }

  function card(item, showSim) {
    const meta = el("div", { class: "meta" });
    if (showSim) {
      meta.appendChild(el("span", { class: "sim", text: "#" + item.rank + "  " + item.similarity.toFixed(3) }));
      const bar = el("div", { class: "bar" });
      bar.style.width = Math.max(0, Math.min(1, item.similarity)) * 100 + "%";
      meta.appendChild(bar);
    }
    meta.appendChild(el("div", { class: "cat", text: item.category }));
    const attrs = attributesLine(item);
    if (attrs) meta.appendChild(el("div", { class: "attrs", text: attrs }));
    meta.appendChild(el("div", { text: item.title || item.asin }));
    const thumb = el("div", { class: "thumb" });
    if (item.thumbnail) thumb.appendChild(el("img", { src: item.thumbnail, alt: item.title || item.asin, loading: "lazy" }));
    else thumb.appendChild(el("span", { text: item.asin }));
    const a = el("a", { class: "result", href: "#asin=" + encodeURIComponent(item.asin), "data-asin": item.asin,
                        title: "find products that look like " + item.asin }, [thumb, meta]);
    a.addEventListener("click", (ev) => { ev.preventDefault(); searchAsin(item.asin); });
    return el("li", {}, [a]);
  }

  function showQuery(src, lines) {
    const q = $("query");
    q.replaceChildren();
    if (src) q.appendChild(el("img", { src: src, alt: "the query" }));
    for (const line of lines) q.appendChild(el("div", { class: "meta", text: line }));
  }

  async function run(request, describe) {
    state.last = { request, describe };
    const seq = ++state.seq;  // filters change quickly: only the latest query's answer is shown
    setStatus("Searching…");
    let resp, body;
    try {
      resp = await request();
      body = await resp.json();
    } catch (err) {
      if (seq === state.seq) setStatus("The server did not answer: " + err, true);
      return;
    }
    if (seq !== state.seq) return;
    if (!resp.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      setStatus("Error " + resp.status + ": " + detail, true);
      return;
    }
    describe(body.query);
    const grid = $("results");
    grid.replaceChildren(...body.results.map((r) => card(r, true)));
    setStatus(body.results.length + " look-alike" + (body.results.length === 1 ? "" : "s") + " in " +
              Math.round(body.took_ms) + " ms" + (body.results.length ? "" : ": lower the minimum similarity or loosen the filters"));
  }

  function searchFile(file) {
    if (!file) return;
    if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
    state.queryUrl = URL.createObjectURL(file);
    const src = state.queryUrl;
    run(() => {
      const form = new FormData();
      form.append("file", file);
      return fetch("/v1/search?" + params(), { method: "POST", body: form });
    }, (q) => showQuery(src, [file.name, q.predicted_category ? "predicted: " + q.predicted_category +
                              " (" + q.predicted_probability.toFixed(2) + ")" : ""].filter(Boolean)));
  }

  function searchJson(body, describe) {
    run(() => fetch("/v1/search?" + params(), { method: "POST", headers: { "Content-Type": "application/json" },
                                                  body: JSON.stringify(body) }), describe);
  }

  function searchAsin(asin) {
    history.replaceState(null, "", "#asin=" + encodeURIComponent(asin));
    searchJson({ asin }, (q) => showQuery(q.thumbnail, ["product " + q.asin, q.category, q.title]));
    $("search").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  function searchUrl(url) {
    searchJson({ url }, (q) => showQuery(null, [url, q.predicted_category ? "predicted: " + q.predicted_category : ""].filter(Boolean)));
  }

  async function browse() {
    const p = new URLSearchParams({ page: state.page, per_page: 12 });
    if ($("browse-category").value) p.set("category", $("browse-category").value);
    if ($("browse-q").value.trim()) p.set("q", $("browse-q").value.trim());
    const resp = await fetch("/v1/products?" + p);
    const body = await resp.json();
    if (!resp.ok) return;
    state.pages = body.pages;
    $("catalog").replaceChildren(...body.items.map((it) => card(it, false)));
    $("page-info").textContent = "page " + body.page + " of " + body.pages + " (" + body.total + " products)";
    $("prev").disabled = body.page <= 1;
    $("next").disabled = body.page >= body.pages;
  }

  // wiring
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) searchFile(ev.dataTransfer.files[0]);
  });
  $("file").addEventListener("change", (ev) => searchFile(ev.target.files[0]));
  $("url-form").addEventListener("submit", (ev) => { ev.preventDefault(); if ($("url").value) searchUrl($("url").value); });
  for (const id of ["category", "min-sim", "k", "brand", "min-price", "max-price", "min-rating"]) {
    if ($(id)) $(id).addEventListener("change", () => { if (state.last) run(state.last.request, state.last.describe); });
  }
  $("browse-category").addEventListener("change", () => { state.page = 1; browse(); });
  $("browse-q").addEventListener("change", () => { state.page = 1; browse(); });
  $("prev").addEventListener("click", () => { if (state.page > 1) { state.page--; browse(); } });
  $("next").addEventListener("click", () => { if (state.page < state.pages) { state.page++; browse(); } });
  browse();
  const m = location.hash.match(/^#asin=(.+)$/);
  if (m) searchAsin(decodeURIComponent(m[1]));
})();
