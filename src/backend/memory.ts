/** Memory guard for the wasm heap (issue 2, item 7). Placeholder until the guard lands. */
export function installMemoryGuard(): void {}
export function memoryCeilingBytes(): number | null {
  return null;
}
