// The service worker: keeps the pages and their assets on the device, so the report
// form opens and works without a network. Reports themselves never pass through here:
// the page keeps them in its IndexedDB outbox and sends them to the API itself.
"use strict";

const VERSION = {{ version|tojson }};
const ASSETS = {{ assets|tojson }};
const OFFLINE_PAGES = {{ pages|tojson }};
const STATIC_CACHE = "sr-static-" + VERSION;
const PAGE_CACHE = "sr-pages-" + VERSION;
// On bad Wi-Fi a page that does not answer in this time comes from the device instead.
const NETWORK_TIMEOUT_MS = 6000;

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches.open(STATIC_CACHE)
      .then((cache) => cache.addAll(ASSETS))
      .then(() => self.skipWaiting()),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(
        names
          .filter((name) => name.startsWith("sr-") && name !== STATIC_CACHE && name !== PAGE_CACHE)
          .map((name) => caches.delete(name)),
      ))
      .then(() => self.clients.claim()),
  );
});

// A page asks to be kept for offline use as soon as it has loaded.
self.addEventListener("message", (event) => {
  const message = event.data || {};
  if (message.type !== "keep-page" || !OFFLINE_PAGES.includes(message.path)) {
    return;
  }
  event.waitUntil(
    keepPage(message.path).then((kept) => {
      if (event.source) {
        event.source.postMessage({ type: "page-kept", path: message.path, kept });
      }
    }),
  );
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") {
    return;
  }
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) {
    return;
  }
  if (url.pathname.startsWith("/static/") || url.pathname === "/offline") {
    event.respondWith(cacheFirst(request));
  } else if (request.mode === "navigate") {
    event.respondWith(networkFirst(request, url.pathname));
  }
  // Everything else (the API, the event stream) goes to the network untouched.
});

async function keepPage(path) {
  const kept = await (await caches.open(PAGE_CACHE)).match(path);
  if (kept) {
    return true; // this visit came through networkFirst, which stored it
  }
  try {
    const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
    if (!keepable(response)) {
      return false;
    }
    const cache = await caches.open(PAGE_CACHE);
    await cache.put(path, response);
    return true;
  } catch (error) {
    return false;
  }
}

// A kept page now redirects (only to the login form: no session), or the login form
// itself is shown (no session either; signed in, it redirects).
function sessionEnded(path, response) {
  if (OFFLINE_PAGES.includes(path)) {
    return response.type === "opaqueredirect" || response.redirected;
  }
  return path === "/login" && response.ok;
}

function keepable(response) {
  // A redirect (to the login form) or an error page is not the page.
  return response.ok && !response.redirected && response.type === "basic";
}

async function cacheFirst(request) {
  const cached = await caches.match(request, { ignoreSearch: true });
  return cached || fetch(request);
}

async function networkFirst(request, path) {
  try {
    const response = await withTimeout(fetch(request), NETWORK_TIMEOUT_MS);
    if (sessionEnded(path, response)) {
      // Signed out, expired or revoked: the session's pages go with it.
      await caches.delete(PAGE_CACHE);
    } else if (OFFLINE_PAGES.includes(path) && keepable(response)) {
      // Stored before the page is handed over, so the page's own "keep me" finds it.
      const cache = await caches.open(PAGE_CACHE);
      await cache.put(path, response.clone());
    }
    return response;
  } catch (error) {
    return (await offlinePage(path)) || Response.error();
  }
}

async function offlinePage(path) {
  const cache = await caches.open(PAGE_CACHE);
  const kept = await cache.match(path);
  if (kept) {
    return kept;
  }
  if (path === "/") {
    // The start page of whoever is signed in on this device (pages are forgotten when a
    // session ends). Never for /login: whoever asks for it is not that person.
    for (const page of OFFLINE_PAGES) {
      const start = await cache.match(page);
      if (start) {
        return start;
      }
    }
  }
  return caches.match("/offline");
}

function withTimeout(promise, ms) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("timeout")), ms);
    promise.then(
      (value) => { clearTimeout(timer); resolve(value); },
      (error) => { clearTimeout(timer); reject(error); },
    );
  });
}
