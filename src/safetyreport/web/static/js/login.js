// The login page: forget the pages kept for offline use (they belong to whoever was
// signed in before). The outbox stays: its reports are not lost by signing out, and each
// is sent only by the user who wrote it.

async function forgetPages() {
  if (!("caches" in window)) {
    return;
  }
  const names = await caches.keys();
  await Promise.all(names.filter((name) => name.startsWith("sr-pages-")).map((name) => caches.delete(name)));
}

function showOfflineHint() {
  document.getElementById("offline-hint").hidden = navigator.onLine;
}

forgetPages();
showOfflineHint();
window.addEventListener("online", showOfflineHint);
window.addEventListener("offline", showOfflineHint);
