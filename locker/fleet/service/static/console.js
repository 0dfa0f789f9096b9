// The console's live layer: server-sent events from /console/events (no build step).
// New events are prepended to #timeline on a locker page; online/offline flips rows on the
// fleet page. document.body.dataset.sse is "open" once the stream is connected, "ended" when
// the server ended it because the session is over.
(function () {
  const url = document.body.dataset.live;
  if (!url) return;
  const source = new EventSource(url);
  source.addEventListener("open", () => { document.body.dataset.sse = "open"; });
  // The session ended (logout elsewhere, expiry, user removed): stop, no reconnect.
  source.addEventListener("session_ended", () => {
    source.close();
    document.body.dataset.sse = "ended";
  });
  source.addEventListener("event", (msg) => {
    const timeline = document.getElementById("timeline");
    if (!timeline) return;
    const tpl = document.createElement("template");
    tpl.innerHTML = msg.data.trim();
    const row = tpl.content.firstElementChild;
    if (!row || timeline.querySelector(`li[data-seq="${row.dataset.seq}"][data-type="${row.dataset.type}"]`)) return;
    row.classList.add("new");
    timeline.prepend(row);
  });
  source.addEventListener("status", (msg) => {
    const doc = JSON.parse(msg.data);
    for (const el of document.querySelectorAll(`[data-locker="${doc.locker}"]`)) {
      if (doc.online === undefined) continue;
      el.dataset.online = doc.online ? "true" : "false";
      const cell = el.querySelector(".online");
      if (cell) cell.textContent = doc.online ? "online" : "OFFLINE";
    }
  });
  // A new state snapshot: re-read this page and swap the compartment grid and the summary
  // line (last seq, outbox, LOCKDOWN, keypad locked) in place: set by another operator or by
  // the keypad, they must not wait for a reload.
  source.addEventListener("state", async (msg) => {
    const here = document.getElementById("locker");
    if (!here || JSON.parse(msg.data).locker !== here.dataset.locker) return;
    const html = await (await fetch(location.pathname, { credentials: "same-origin" })).text();
    const page = new DOMParser().parseFromString(html, "text/html");
    for (const id of ["grid", "summary"]) {
      const old = document.getElementById(id);
      const fresh = page.getElementById(id);
      if (old && fresh) old.replaceWith(fresh);
    }
  });
})();
