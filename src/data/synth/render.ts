/**
 * Scene → PNG bytes: the scene is drawn as SVG (rasterized by sharp/librsvg, antialiased), per-pixel noise
 * from the seeded generator is added, and the result is PNG-encoded with fixed settings. Same scene and
 * noise seed → same bytes (librsvg and libpng are deterministic; sharp writes no timestamp chunk).
 */
import sharp from 'sharp';
import { Rng } from '../../util/rng.js';
import type { ClutterItem, Rgb, Scene, SceneObject } from './scene.js';

const f = (v: number) => v.toFixed(2);
const rgb = (c: Rgb) => `rgb(${c[0]},${c[1]},${c[2]})`;

function clutterSvg(c: ClutterItem): string {
  const style = `opacity="${f(c.opacity)}"`;
  switch (c.kind) {
    case 'line':
      return `<line x1="${f(c.x1)}" y1="${f(c.y1)}" x2="${f(c.x2)}" y2="${f(c.y2)}" stroke="${rgb(c.rgb)}" stroke-width="${f(c.width)}" ${style}/>`;
    case 'ellipse':
      return `<ellipse cx="${f(c.cx)}" cy="${f(c.cy)}" rx="${f(c.rx)}" ry="${f(c.ry)}" fill="${rgb(c.rgb)}" ${style}/>`;
    case 'rect':
      return `<rect x="${f(c.x)}" y="${f(c.y)}" width="${f(c.w)}" height="${f(c.h)}" fill="${rgb(c.rgb)}" ${style}/>`;
  }
}

function objectSvg(o: SceneObject): string {
  const [x1, y1, x2, y2] = o.box;
  const fill = `fill="${rgb(o.rgb)}"`;
  switch (o.shape) {
    case 'square':
      return `<rect x="${f(x1)}" y="${f(y1)}" width="${f(x2 - x1)}" height="${f(y2 - y1)}" ${fill}/>`;
    case 'circle':
      return `<circle cx="${f((x1 + x2) / 2)}" cy="${f((y1 + y2) / 2)}" r="${f((x2 - x1) / 2)}" ${fill}/>`;
    case 'triangle':
      return `<polygon points="${f((x1 + x2) / 2)},${f(y1)} ${f(x2)},${f(y2)} ${f(x1)},${f(y2)}" ${fill}/>`;
  }
}

export function sceneSvg(scene: Scene): string {
  const { width: w, height: h } = scene;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">`,
    `<rect x="0" y="0" width="${w}" height="${h}" fill="${rgb(scene.background)}"/>`,
    ...scene.clutter.map(clutterSvg),
    ...scene.objects.map(objectSvg),
    '</svg>',
  ].join('\n');
}

/** Render to PNG; `noise` is the amplitude of a triangular per-pixel, per-channel perturbation. */
export async function renderScene(scene: Scene, noiseSeed: number, noise: number): Promise<Buffer> {
  const { data, info } = await sharp(Buffer.from(sceneSvg(scene)), { density: 72 })
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  if (info.width !== scene.width || info.height !== scene.height || info.channels !== 3) {
    throw new Error(`SVG rendered at ${info.width}x${info.height}x${info.channels}, expected ${scene.width}x${scene.height}x3`);
  }
  const rng = new Rng(noiseSeed);
  for (let i = 0; i < data.length; i++) {
    const v = data[i]! + Math.round((rng.next() + rng.next() - 1) * noise);
    data[i] = v < 0 ? 0 : v > 255 ? 255 : v;
  }
  return sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } })
    .png({ compressionLevel: 6, adaptiveFiltering: false, palette: false })
    .toBuffer();
}
