// The outbox: reports waiting on this device, in IndexedDB, until the server took them.
//
// An entry is {key, user, kind, body, state, error, createdAt, attempts}. ``key`` is the
// Idempotency-Key made when the form was opened: sending an entry twice (a lost answer,
// two tabs) stores one report. An entry is deleted only after a 2xx answer; a 422 keeps
// it as "failed" with the server's reasons until the nurse corrects or discards it.
// States: queued (waiting), sending (a request is out; after a crash it is sent again),
// failed (the server refused it).

const DB_NAME = "safetyreport";
const DB_VERSION = 1;
const STORE = "outbox";

let dbPromise = null;

function openDb() {
  if (!dbPromise) {
    dbPromise = new Promise((resolve, reject) => {
      const request = indexedDB.open(DB_NAME, DB_VERSION);
      request.onupgradeneeded = () => {
        const db = request.result;
        if (!db.objectStoreNames.contains(STORE)) {
          db.createObjectStore(STORE, { keyPath: "key" });
        }
      };
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => reject(request.error);
    });
  }
  return dbPromise;
}

// Run ``work(store)`` in one transaction; resolves when it has committed.
async function withStore(mode, work) {
  const db = await openDb();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    let result;
    tx.oncomplete = () => resolve(result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error || new Error("outbox transaction aborted"));
    const request = work(tx.objectStore(STORE));
    if (request) {
      request.onsuccess = () => { result = request.result; };
    }
  });
}

/** Every entry, oldest first. */
export async function all() {
  const entries = await withStore("readonly", (store) => store.getAll());
  return (entries || []).sort((a, b) => a.createdAt.localeCompare(b.createdAt));
}

export function put(entry) {
  return withStore("readwrite", (store) => store.put(entry));
}

export function remove(key) {
  return withStore("readwrite", (store) => store.delete(key));
}

/** Add ``entry``, replacing the entry ``replacedKey`` (a corrected one) in the same commit. */
export function add(entry, replacedKey = null) {
  return withStore("readwrite", (store) => {
    if (replacedKey && replacedKey !== entry.key) {
      store.delete(replacedKey);
    }
    return store.put(entry);
  });
}

export async function update(key, changes) {
  return withStore("readwrite", (store) => {
    const request = store.get(key);
    request.onsuccess = () => {
      if (request.result) {
        store.put({ ...request.result, ...changes });
      }
    };
  });
}
