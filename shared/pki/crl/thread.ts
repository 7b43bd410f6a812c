/**
 * The parser thread's entry (see `ParserThread` in parse.ts): for each request, parses the
 * CRL, verifies its signature when asked (synchronously: blocking is this thread's job) and
 * posts it back with its buffers transferred. One thread serves every load of its process.
 */
import { X509Certificate } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { crlToTransfer, parseCrl, verifyCrlSignatureSync, type CrlThreadRequest } from './parse.ts';

const port = parentPort;
if (!port) throw new Error('thread.ts must run in a worker thread');

port.on('message', (req: CrlThreadRequest) => {
  try {
    const crl = parseCrl(Buffer.from(req.buffer), req.fileType);
    let signer = -1;
    if (req.signers) {
      const candidates = req.signers.map((der) => new X509Certificate(der));
      const found = verifyCrlSignatureSync(crl, candidates);
      signer = found ? candidates.indexOf(found) : -1;
    }
    const { message, transferList } = crlToTransfer(crl);
    port.postMessage({ id: req.id, ok: true, crl: message, signer }, transferList);
  } catch (e) {
    port.postMessage({ id: req.id, ok: false, message: (e as Error).message });
  }
});
