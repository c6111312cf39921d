// Looking records up the way crictl users type ids.

/** Finds a record by full id, or by a prefix that matches exactly one (as crictl lets users type). */
export function findByIdOrPrefix<T>(map: Map<string, T>, id: string): T | undefined {
  if (!id) return undefined;
  const exact = map.get(id);
  if (exact) return exact;
  let found: T | undefined;
  for (const [key, v] of map) {
    if (!key.startsWith(id)) continue;
    if (found) return undefined; // ambiguous
    found = v;
  }
  return found;
}
