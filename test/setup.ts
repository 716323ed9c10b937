// Every test file runs on the backend CI uses (wasm, with the kernel pack) unless MGLLAVA_BACKEND says otherwise.
import { selectBackend } from '../src/backend/select.js';

await selectBackend(process.env.MGLLAVA_BACKEND ?? 'wasm');
