/**
 * Worker-thread entry for `parseCrlOffThread` (see crl.ts): parses the CRL
 * handed over in `workerData` and posts it back with its buffers transferred.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { crlToTransfer, parseCrl, type CrlThreadRequest, type CrlThreadResponse } from './parse.ts';

const port = parentPort;
if (!port) throw new Error('crl-thread.ts must run in a worker thread');

const req = workerData as CrlThreadRequest;
let reply: { message: CrlThreadResponse; transferList: ArrayBuffer[] };
try {
  const { message, transferList } = crlToTransfer(parseCrl(Buffer.from(req.buffer), req.fileType));
  reply = { message: { ok: true, crl: message }, transferList };
} catch (e) {
  reply = { message: { ok: false, message: (e as Error).message }, transferList: [] };
}
port.postMessage(reply.message, reply.transferList);
