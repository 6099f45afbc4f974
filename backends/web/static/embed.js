/* fedmsg-notify live toasts ("gritter"-style notifications) for one feed.
 *
 * Include it in any page:
 *   <script src="https://notify.example.org/embed.js" data-feed="NAME" data-token="..."></script>
 * It opens the feed's Server-Sent Events stream and shows each new item as a toast for
 * a few seconds. Message content is only ever put in the page as text (textContent),
 * and only http(s) links become links. No inline styles: works under a strict CSP.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) { return; }
  var feed = script.getAttribute("data-feed");
  if (!feed) { return; }
  var token = script.getAttribute("data-token");
  var listId = script.getAttribute("data-list");
  var stay = parseInt(script.getAttribute("data-stay") || "8000", 10);
  var base = new URL(script.src, document.baseURI).origin;

  function safeLink(link) {
    return typeof link === "string" && /^https?:\/\//i.test(link) ? link : null;
  }

  function stylesheet() {
    if (document.querySelector("link[data-fn-style]")) { return; }
    var css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = base + "/web.css";
    css.setAttribute("data-fn-style", "");
    document.head.appendChild(css);
  }

  function box() {
    var el = document.getElementById("fn-toasts");
    if (!el) {
      el = document.createElement("div");
      el.id = "fn-toasts";
      el.setAttribute("role", "status");
      el.setAttribute("aria-live", "polite");
      document.body.appendChild(el);
    }
    return el;
  }

  function titleNode(item) {
    var link = safeLink(item.link);
    var node = document.createElement(link ? "a" : "span");
    if (link) { node.href = link; node.rel = "noopener noreferrer"; }
    node.className = "fn-title";
    node.textContent = item.title;
    return node;
  }

  function toast(item) {
    var el = document.createElement("div");
    el.className = "fn-toast";
    var category = document.createElement("div");
    category.className = "fn-category";
    category.textContent = item.category;
    var summary = document.createElement("div");
    summary.className = "fn-summary";
    summary.textContent = item.summary;
    el.appendChild(category);
    el.appendChild(titleNode(item));
    el.appendChild(summary);
    el.addEventListener("click", function () { el.remove(); });
    box().appendChild(el);
    setTimeout(function () { el.remove(); }, stay);
  }

  function listed(item) {
    var list = listId && document.getElementById(listId);
    if (!list) { return; }
    var li = document.createElement("li");
    li.className = "fn-item";
    li.setAttribute("data-id", String(item.id));
    var when = document.createElement("span");
    when.className = "fn-when";
    when.textContent = new Date(item.updated * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
    var category = document.createElement("span");
    category.className = "fn-category";
    category.textContent = item.category;
    var summary = document.createElement("div");
    summary.className = "fn-summary";
    summary.textContent = item.summary;
    li.appendChild(when);
    li.appendChild(category);
    li.appendChild(titleNode(item));
    li.appendChild(summary);
    list.insertBefore(li, list.firstChild);
  }

  var url = base + "/feeds/" + encodeURIComponent(feed) + "/events";
  if (token) { url += "?token=" + encodeURIComponent(token); }
  stylesheet();
  // EventSource reconnects on its own and sends Last-Event-ID, so nothing is missed.
  var source = new EventSource(url);
  source.addEventListener("open", function () { document.documentElement.setAttribute("data-fn-live", "1"); });
  source.addEventListener("error", function () {
    // Closed for good (refused: no token, a CORS origin not allowed); otherwise it reconnects.
    if (source.readyState === EventSource.CLOSED) { document.documentElement.setAttribute("data-fn-live", "0"); }
  });
  source.addEventListener("item", function (event) {
    var item;
    try { item = JSON.parse(event.data); } catch (e) { return; }
    toast(item);
    listed(item);
  });
})();
