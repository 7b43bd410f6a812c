/**
 * `compute` kept by key, for values that are pure functions of it: at most `max` entries, all
 * dropped at once when full (no recency bookkeeping on the hot path; a refill costs `max`
 * computations at worst). A `compute` that throws keeps nothing.
 */
export function boundedMemo<K, V>(max: number, compute: (key: K) => V): (key: K) => V {
  const kept = new Map<K, V>();
  return (key) => {
    let value = kept.get(key);
    if (value === undefined) {
      value = compute(key);
      if (kept.size >= max) kept.clear();
      kept.set(key, value);
    }
    return value;
  };
}
