/**
 * How images are decoded, as one policy from a config's `data` section: EXIF orientation and the pixel budget.
 * Apart from image.ts (which applies it) so that it can be read without loading sharp: the CLI's `--help` texts
 * and argument checks use it.
 */

/** How EXIF orientation is treated: `ignore` = the stored pixels, as the reference (PIL `Image.open`); `apply` = rotated. */
export type ExifOrientation = 'ignore' | 'apply';

/** PIL's `Image.MAX_IMAGE_PIXELS` (its decompression-bomb threshold): the default pixel budget. */
export const DEFAULT_MAX_IMAGE_PIXELS = 89_478_485;

export interface DecodeOptions {
  /** Default 'ignore' (the reference). Callers pass `imageOptionsOf(config.data)`. */
  exifOrientation?: ExifOrientation;
  /** Largest padded square (longer side²) accepted; default DEFAULT_MAX_IMAGE_PIXELS; null = sharp's own limit only. */
  maxPixels?: number | null;
}

/** The image options of a config's `data` section: the one place training, eval, chat and tools take them from. */
export function imageOptionsOf(d: { exif_orientation?: ExifOrientation; max_image_pixels?: number | null }): Required<DecodeOptions> {
  return {
    exifOrientation: d.exif_orientation ?? 'ignore',
    maxPixels: d.max_image_pixels === undefined ? DEFAULT_MAX_IMAGE_PIXELS : d.max_image_pixels,
  };
}
