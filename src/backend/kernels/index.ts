/**
 * The wasm kernel pack: gradient kernels the stock wasm backend lacks and fast paths for the
 * transposed / batched matmuls it runs in a scalar loop. Registered for `wasm` only.
 */
let registered = false;

export function registerWasmKernelPack(): void {
  if (registered) return;
  registered = true;
  // Filled in by the kernel pack (issue 2, item 5).
}

export function wasmKernelPackRegistered(): boolean {
  return registered;
}
