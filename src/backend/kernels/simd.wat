;; The wasm kernel pack's SIMD loops (simd.ts compiles this text with wabt and instantiates it on the
;; wasm backend's own WebAssembly.Memory, so the loops take the heap byte offsets `dataIdMap` gives).
;; All pointers are byte offsets, all counts float32 element counts unless named *Bytes.
;;
;; The floating-point operations and their order are the contract: kernels built on these loops are
;; bitwise identical to the tfjs composites they replace (test/kernels-*.test.ts), and the compiled
;; instructions are checked against the module this file replaced (test/kernels-simd-wat.test.ts).
;; Loads and stores of v128 declare 4-byte alignment (align=4): float32 data is not 16-byte aligned.
(module
  ;; The threaded wasm build's memory is shared: simd.ts swaps this line for
  ;; (memory 0 65536 shared) there (65536 pages = 4 GiB, the maximum a shared import must declare).
  (import "env" "memory" (memory 0))

  ;; acc[i] += a[i] * b[i] for i < n: 4 lanes at a time, then the n % 4 tail one by one.
  ;; ($end's `& -1` does nothing; it keeps the instructions those of the module this file replaced.)
  (func $madd (export "madd") (param $acc i32) (param $a i32) (param $b i32) (param $n i32)
    (local $end4 i32) (local $end i32)
    (local.set $end4 (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (local.set $end (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -1)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end4)))
        (v128.store align=4 (local.get $acc)
          (f32x4.add
            (v128.load align=4 (local.get $acc))
            (f32x4.mul (v128.load align=4 (local.get $a)) (v128.load align=4 (local.get $b)))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 16)))
        (local.set $a (i32.add (local.get $a) (i32.const 16)))
        (local.set $b (i32.add (local.get $b) (i32.const 16)))
        (br $next)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end)))
        (f32.store (local.get $acc)
          (f32.add (f32.load (local.get $acc)) (f32.mul (f32.load (local.get $a)) (f32.load (local.get $b)))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 4)))
        (local.set $a (i32.add (local.get $a) (i32.const 4)))
        (local.set $b (i32.add (local.get $b) (i32.const 4)))
        (br $next))))

  ;; acc[i] += a[i] for i < n.
  (func $add (export "add") (param $acc i32) (param $a i32) (param $n i32)
    (local $end4 i32) (local $end i32)
    (local.set $end4 (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -4)) (i32.const 2))))
    (local.set $end (i32.add (local.get $acc) (i32.shl (i32.and (local.get $n) (i32.const -1)) (i32.const 2))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end4)))
        (v128.store align=4 (local.get $acc)
          (f32x4.add (v128.load align=4 (local.get $acc)) (v128.load align=4 (local.get $a))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 16)))
        (local.set $a (i32.add (local.get $a) (i32.const 16)))
        (br $next)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $acc) (local.get $end)))
        (f32.store (local.get $acc) (f32.add (f32.load (local.get $acc)) (f32.load (local.get $a))))
        (local.set $acc (i32.add (local.get $acc) (i32.const 4)))
        (local.set $a (i32.add (local.get $a) (i32.const 4)))
        (br $next))))

  ;; dst[j*dstStride + i] = src[i*srcStride + j] for i < R&~3, j < C&~3: the whole 4x4 blocks of an
  ;; R x C block (the caller does the edges). Per block: rows 0,1 -> t0 = (a0 b0 a1 b1),
  ;; t1 = (a2 b2 a3 b3); rows 2,3 -> t2, t3 likewise; then column k pairs the halves of t0/t2 or t1/t3.
  (func $transpose4 (export "transpose4")
    (param $src i32) (param $dst i32) (param $R i32) (param $C i32) (param $srcStride i32) (param $dstStride i32)
    (local $i i32) (local $j i32) (local $R4 i32) (local $C4 i32)
    (local $srcRow i32) (local $dstRow i32) (local $sp i32) (local $dp i32)
    (local $t0 v128) (local $t1 v128) (local $t2 v128) (local $t3 v128)
    (local.set $R4 (i32.and (local.get $R) (i32.const -4)))
    (local.set $C4 (i32.and (local.get $C) (i32.const -4)))
    (local.set $srcRow (i32.shl (local.get $srcStride) (i32.const 2)))
    (local.set $dstRow (i32.shl (local.get $dstStride) (i32.const 2)))
    (local.set $i (i32.const 0))
    (block $rowsDone
      (loop $rows
        (br_if $rowsDone (i32.ge_u (local.get $i) (local.get $R4)))
        (local.set $j (i32.const 0))
        (block $colsDone
          (loop $cols
            (br_if $colsDone (i32.ge_u (local.get $j) (local.get $C4)))
            ;; sp = src + (i*srcStride + j)*4, dp = dst + (j*dstStride + i)*4
            (local.set $sp (i32.add (local.get $src)
              (i32.shl (i32.add (i32.mul (local.get $i) (local.get $srcStride)) (local.get $j)) (i32.const 2))))
            (local.set $dp (i32.add (local.get $dst)
              (i32.shl (i32.add (i32.mul (local.get $j) (local.get $dstStride)) (local.get $i)) (i32.const 2))))
            (local.set $t0 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23
              (v128.load align=4 (local.get $sp))
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 1))))))
            (local.set $t1 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31
              (v128.load align=4 (local.get $sp))
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 1))))))
            (local.set $t2 (i8x16.shuffle 0 1 2 3 16 17 18 19 4 5 6 7 20 21 22 23
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 2))))
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 3))))))
            (local.set $t3 (i8x16.shuffle 8 9 10 11 24 25 26 27 12 13 14 15 28 29 30 31
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 2))))
              (v128.load align=4 (i32.add (local.get $sp) (i32.mul (local.get $srcRow) (i32.const 3))))))
            (v128.store align=4 (local.get $dp)
              (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t0) (local.get $t2)))
            (v128.store align=4 (i32.add (local.get $dp) (i32.mul (local.get $dstRow) (i32.const 1)))
              (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t0) (local.get $t2)))
            (v128.store align=4 (i32.add (local.get $dp) (i32.mul (local.get $dstRow) (i32.const 2)))
              (i8x16.shuffle 0 1 2 3 4 5 6 7 16 17 18 19 20 21 22 23 (local.get $t1) (local.get $t3)))
            (v128.store align=4 (i32.add (local.get $dp) (i32.mul (local.get $dstRow) (i32.const 3)))
              (i8x16.shuffle 8 9 10 11 12 13 14 15 24 25 26 27 28 29 30 31 (local.get $t1) (local.get $t3)))
            (local.set $j (i32.add (local.get $j) (i32.const 4)))
            (br $cols)))
        (local.set $i (i32.add (local.get $i) (i32.const 4)))
        (br $rows))))

  ;; A run of n pixels of C channels (cBytes = 4C, a multiple of 16): for p < n, c < C,
  ;; acc[p*accStride + c] += a[p*aStride + c] * w[c]. Strides in bytes. One depthwise tap over a row.
  (func $maddRun (export "maddRun")
    (param $acc i32) (param $accStride i32) (param $a i32) (param $aStride i32) (param $w i32) (param $n i32) (param $cBytes i32)
    (local $p i32) (local $k i32)
    (local.set $p (i32.const 0))
    (block $pixelsDone
      (loop $pixels
        (br_if $pixelsDone (i32.ge_u (local.get $p) (local.get $n)))
        (local.set $k (i32.const 0))
        (block $channelsDone
          (loop $channels
            (br_if $channelsDone (i32.ge_u (local.get $k) (local.get $cBytes)))
            (v128.store align=4 (i32.add (local.get $acc) (local.get $k))
              (f32x4.add
                (v128.load align=4 (i32.add (local.get $acc) (local.get $k)))
                (f32x4.mul
                  (v128.load align=4 (i32.add (local.get $a) (local.get $k)))
                  (v128.load align=4 (i32.add (local.get $w) (local.get $k))))))
            (local.set $k (i32.add (local.get $k) (i32.const 16)))
            (br $channels)))
        (local.set $acc (i32.add (local.get $acc) (local.get $accStride)))
        (local.set $a (i32.add (local.get $a) (local.get $aStride)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $pixels))))

  ;; acc[c] += sum over p < n of a[p*aStride + c] * b[p*bStride + c], pixels in order (cBytes = 4C a
  ;; multiple of 16, strides in bytes). One depthwise filter-gradient tap over a row.
  (func $dotRun (export "dotRun")
    (param $acc i32) (param $a i32) (param $aStride i32) (param $b i32) (param $bStride i32) (param $n i32) (param $cBytes i32)
    (local $p i32) (local $k i32)
    (local.set $p (i32.const 0))
    (block $pixelsDone
      (loop $pixels
        (br_if $pixelsDone (i32.ge_u (local.get $p) (local.get $n)))
        (local.set $k (i32.const 0))
        (block $channelsDone
          (loop $channels
            (br_if $channelsDone (i32.ge_u (local.get $k) (local.get $cBytes)))
            (v128.store align=4 (i32.add (local.get $acc) (local.get $k))
              (f32x4.add
                (v128.load align=4 (i32.add (local.get $acc) (local.get $k)))
                (f32x4.mul
                  (v128.load align=4 (i32.add (local.get $a) (local.get $k)))
                  (v128.load align=4 (i32.add (local.get $b) (local.get $k))))))
            (local.set $k (i32.add (local.get $k) (i32.const 16)))
            (br $channels)))
        (local.set $a (i32.add (local.get $a) (local.get $aStride)))
        (local.set $b (i32.add (local.get $b) (local.get $bStride)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $pixels))))

  ;; One AdamW update of bytes/4 elements (a multiple of 4): the float32 operations of AdamW.apply in
  ;; the same order, with the 9 floats at consts c = [b1, 1-b1, b2, 1-b2, sqrt(bias corr. 2), eps,
  ;; lr / bias corr. 1, 1 - lr*wd, gradient scale]:
  ;;   g = g*c8;  m' = m*c0 + g*c1;  v' = v*c2 + (g*g)*c3;  p' = p*c7 - (m' / (sqrt(v')/c4 + c5)) * c6.
  (func $adamw (export "adamw")
    (param $p i32) (param $m i32) (param $v i32) (param $g i32)
    (param $pOut i32) (param $mOut i32) (param $vOut i32) (param $bytes i32) (param $consts i32)
    (local $i i32)
    (local $c0 v128) (local $c1 v128) (local $c2 v128) (local $c3 v128) (local $c4 v128)
    (local $c5 v128) (local $c6 v128) (local $c7 v128) (local $c8 v128)
    (local $gs v128) (local $m2 v128) (local $v2 v128)
    (local.set $c0 (v128.load32_splat (local.get $consts)))
    (local.set $c1 (v128.load32_splat offset=4 (local.get $consts)))
    (local.set $c2 (v128.load32_splat offset=8 (local.get $consts)))
    (local.set $c3 (v128.load32_splat offset=12 (local.get $consts)))
    (local.set $c4 (v128.load32_splat offset=16 (local.get $consts)))
    (local.set $c5 (v128.load32_splat offset=20 (local.get $consts)))
    (local.set $c6 (v128.load32_splat offset=24 (local.get $consts)))
    (local.set $c7 (v128.load32_splat offset=28 (local.get $consts)))
    (local.set $c8 (v128.load32_splat offset=32 (local.get $consts)))
    (local.set $i (i32.const 0))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $bytes)))
        ;; g = g * scale
        (local.set $gs (f32x4.mul (v128.load align=4 (i32.add (local.get $g) (local.get $i))) (local.get $c8)))
        ;; m' = m*b1 + g*(1-b1)
        (local.set $m2 (f32x4.add
          (f32x4.mul (v128.load align=4 (i32.add (local.get $m) (local.get $i))) (local.get $c0))
          (f32x4.mul (local.get $gs) (local.get $c1))))
        (v128.store align=4 (i32.add (local.get $mOut) (local.get $i)) (local.get $m2))
        ;; v' = v*b2 + (g*g)*(1-b2)
        (local.set $v2 (f32x4.add
          (f32x4.mul (v128.load align=4 (i32.add (local.get $v) (local.get $i))) (local.get $c2))
          (f32x4.mul (f32x4.mul (local.get $gs) (local.get $gs)) (local.get $c3))))
        (v128.store align=4 (i32.add (local.get $vOut) (local.get $i)) (local.get $v2))
        ;; p' = p*decay - (m' / (sqrt(v')/bc2 + eps)) * step
        (v128.store align=4 (i32.add (local.get $pOut) (local.get $i))
          (f32x4.sub
            (f32x4.mul (v128.load align=4 (i32.add (local.get $p) (local.get $i))) (local.get $c7))
            (f32x4.mul
              (f32x4.div (local.get $m2) (f32x4.add (f32x4.div (f32x4.sqrt (local.get $v2)) (local.get $c4)) (local.get $c5)))
              (local.get $c6))))
        (local.set $i (i32.add (local.get $i) (i32.const 16)))
        (br $next))))

  ;; Rotary embedding of `rows` rows of `heads` heads of hd floats (half = 2*hd bytes, a multiple of
  ;; 16), the tables c, s [rows, hd] shared by a row's heads: out_j = x_j*c_j + x_σ(j)*s_j with σ
  ;; swapping the two halves of a head.
  (func $rope (export "rope")
    (param $x i32) (param $c i32) (param $s i32) (param $out i32) (param $rows i32) (param $heads i32) (param $half i32)
    (local $r i32) (local $h i32) (local $j i32) (local $cRow i32) (local $sRow i32)
    (local.set $r (i32.const 0))
    (block $rowsDone
      (loop $rowLoop
        (br_if $rowsDone (i32.ge_u (local.get $r) (local.get $rows)))
        (local.set $cRow (local.get $c))
        (local.set $sRow (local.get $s))
        (local.set $h (i32.const 0))
        (block $headsDone
          (loop $headLoop
            (br_if $headsDone (i32.ge_u (local.get $h) (local.get $heads)))
            (local.set $j (i32.const 0))
            (block $halfDone
              (loop $halfLoop
                (br_if $halfDone (i32.ge_u (local.get $j) (local.get $half)))
                ;; first half: out[j] = x[j]*c[j] + x[j+half]*s[j]
                (v128.store align=4 (i32.add (local.get $out) (local.get $j))
                  (f32x4.add
                    (f32x4.mul
                      (v128.load align=4 (i32.add (local.get $x) (local.get $j)))
                      (v128.load align=4 (i32.add (local.get $cRow) (local.get $j))))
                    (f32x4.mul
                      (v128.load align=4 (i32.add (i32.add (local.get $x) (local.get $j)) (local.get $half)))
                      (v128.load align=4 (i32.add (local.get $sRow) (local.get $j))))))
                ;; second half: out[j+half] = x[j+half]*c[j+half] + x[j]*s[j+half]
                (v128.store align=4 (i32.add (i32.add (local.get $out) (local.get $j)) (local.get $half))
                  (f32x4.add
                    (f32x4.mul
                      (v128.load align=4 (i32.add (i32.add (local.get $x) (local.get $j)) (local.get $half)))
                      (v128.load align=4 (i32.add (i32.add (local.get $cRow) (local.get $j)) (local.get $half))))
                    (f32x4.mul
                      (v128.load align=4 (i32.add (local.get $x) (local.get $j)))
                      (v128.load align=4 (i32.add (i32.add (local.get $sRow) (local.get $j)) (local.get $half))))))
                (local.set $j (i32.add (local.get $j) (i32.const 16)))
                (br $halfLoop)))
            ;; next head: x and out move by one head (two halves); the tables stay
            (local.set $x (i32.add (local.get $x) (i32.add (local.get $half) (local.get $half))))
            (local.set $out (i32.add (local.get $out) (i32.add (local.get $half) (local.get $half))))
            (local.set $h (i32.add (local.get $h) (i32.const 1)))
            (br $headLoop)))
        ;; next row: the tables move by one row
        (local.set $c (i32.add (local.get $c) (i32.add (local.get $half) (local.get $half))))
        (local.set $s (i32.add (local.get $s) (i32.add (local.get $half) (local.get $half))))
        (local.set $r (i32.add (local.get $r) (i32.const 1)))
        (br $rowLoop))))
)
