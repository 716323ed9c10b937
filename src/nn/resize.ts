/**
 * Bilinear resize with half-pixel centres (torch `F.interpolate(mode='bilinear', align_corners=False)`,
 * no antialias) whose gradient is right.
 *
 * The forward is tfjs' own `resizeBilinear(x, size, false, true)`, which matches torch (edges clamped).
 * Its gradient kernel (`ResizeBilinearGrad`, tfjs 4.22, every backend) ignores `halfPixelCenters` and
 * back-projects with the corner-aligned mapping, so the backward here is the exact adjoint instead:
 * dx = Rh^T dy Rw, with the [out, in] interpolation matrices applied as two plain 2-D matmuls.
 */
import * as tf from '@tensorflow/tfjs';

/**
 * The [inSize, outSize] transpose of the 1-D interpolation matrix R [outSize, inSize] (row o holds the
 * two taps of output o): source = (o + 0.5) * in / out - 0.5, clamped at 0; upper tap clamped at in-1.
 * Row-major: element (i, o) at i * outSize + o.
 */
export function bilinearWeightsT(inSize: number, outSize: number): Float32Array {
  const m = new Float32Array(inSize * outSize);
  const scale = inSize / outSize;
  for (let o = 0; o < outSize; o++) {
    const src = Math.max(0, (o + 0.5) * scale - 0.5);
    const i0 = Math.min(Math.floor(src), inSize - 1);
    const i1 = Math.min(i0 + 1, inSize - 1);
    const frac = src - i0;
    m[i0 * outSize + o]! += 1 - frac;
    m[i1 * outSize + o]! += frac;
  }
  return m;
}

function interpolationMatrixT(inSize: number, outSize: number): tf.Tensor2D {
  return tf.tensor2d(bilinearWeightsT(inSize, outSize), [inSize, outSize]);
}

/** x [B,h,w,C] -> [B,H,W,C] (torch bilinear, align_corners=False). */
export function resizeBilinearHalfPixel(x: tf.Tensor4D, size: [number, number]): tf.Tensor4D {
  const [outH, outW] = size;
  const [, inH, inW] = x.shape;
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => ({
    value: tf.image.resizeBilinear(args[0] as tf.Tensor4D, size, false, true),
    gradFunc: (dy: tf.Tensor) =>
      tf.tidy(() => {
        const [b, , , c] = dy.shape as [number, number, number, number];
        // rows: [H, B*W*C] -> Rh^T [h,H] x -> [h, B*W*C]
        const rows = dy.transpose([1, 0, 2, 3]).reshape([outH, b * outW * c]);
        const dh = tf.matMul(interpolationMatrixT(inH, outH), rows).reshape([inH, b, outW, c]); // [h,B,W,C]
        // cols: [W, B*h*C] -> Rw^T [w,W] x -> [w, B*h*C]
        const cols = dh.transpose([2, 1, 0, 3]).reshape([outW, b * inH * c]); // [W,B,h,C]
        const dw = tf.matMul(interpolationMatrixT(inW, outW), cols).reshape([inW, b, inH, c]); // [w,B,h,C]
        return dw.transpose([1, 2, 0, 3]); // [B,h,w,C]
      }),
  }));
  return op(x) as tf.Tensor4D;
}
