// Worker-thread entry for ImageWorkerPool (image-pool.ts): workers start without the main thread's tsx
// loader, so register it here, then load the TypeScript worker body.
import { register } from 'tsx/esm/api';

register();
await import('./image-worker.ts');
