/**
 * CMYK -> RGB as PIL's `Image.convert('RGB')` does it (libImaging/Convert.c `cmyk2rgb`, no colour management):
 *
 *   nk = 255 - K;   R = nk - MULDIV255(C, nk)   (G from M, B from Y)
 *   MULDIV255(a, b) = ((t >> 8) + t) >> 8 with t = a*b + 128   (a*b/255, rounded)
 *
 * i.e. R = (255-C)(255-K)/255 rounded. The input is the *un-inverted* CMYK: for JPEGs, PIL (like libvips)
 * undoes the Adobe inversion while decoding. Checked against PIL 9.4 on all (C, K) pairs and on CMYK JPEG
 * fixtures (test/data-image-cmyk.test.ts). A colour-managed conversion (what sharp does by default through a
 * CMYK ICC profile) differs by up to ~100 levels.
 */

/** Interleaved CMYK(+extra) uint8 with `channels` >= 4 per pixel -> interleaved RGB uint8. */
export function cmykToRgbPil(cmyk: Uint8Array, channels = 4): Uint8Array {
  if (channels < 4) throw new Error(`cmykToRgbPil: ${channels} channels, expected >= 4`);
  const n = Math.floor(cmyk.length / channels);
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    const nk = 255 - cmyk[i * channels + 3]!;
    for (let c = 0; c < 3; c++) {
      const t = cmyk[i * channels + c]! * nk + 128;
      out[3 * i + c] = nk - (((t >> 8) + t) >> 8);
    }
  }
  return out;
}
