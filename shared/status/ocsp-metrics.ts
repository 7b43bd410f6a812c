// The OCSP counters of SPEC §2.6b (requests, cache hits, results by outcome), one definition for
// every process that checks certificates by OCSP (workers and the API), each in its own registry.
import { Counter, type Registry } from 'prom-client';
import type { OcspObserver } from '../pki/ocsp/checker.ts';

export function ocspMetrics(registry: Registry): OcspObserver {
  const registers = [registry];
  const requests = new Counter({
    name: 'certgate_ocsp_requests_total',
    help: 'OCSP responder requests by result (answered, invalid, timeout, http, too-large, network)',
    labelNames: ['result'],
    registers,
  });
  const hits = new Counter({ name: 'certgate_ocsp_cache_hits_total', help: 'OCSP answers served from a cache (memory of this process, or Redis)', labelNames: ['cache'], registers });
  const results = new Counter({ name: 'certgate_ocsp_results_total', help: 'OCSP checks by outcome (good, revoked, unknown, unavailable)', labelNames: ['outcome'], registers });
  return {
    request: (result) => requests.inc({ result }),
    cacheHit: (cache) => hits.inc({ cache }),
    outcome: (outcome) => results.inc({ outcome }),
  };
}
