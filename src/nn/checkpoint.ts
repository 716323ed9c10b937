/**
 * Activation checkpointing: a block that keeps only its input for the backward pass and recomputes its
 * forward there. Without it the gradient tape keeps every intermediate of every block until the backward
 * pass reaches it; with it, one block's intermediates live at a time (during its recomputation).
 *
 * `checkpointed(f, x, params, consts)` is `f(x, consts)` as one custom-gradient op of inputs [x, ...trainable
 * params]: its forward runs outside the tape (nothing kept but clones of x and `consts`), its gradient re-runs
 * f on the saved input under a fresh tape and differentiates that. Same kernels on the same inputs, so the
 * gradients are bit-identical to the plain call. f must be a pure function of x, consts and the params
 * (any randomness seeded: LoRA dropout derives its masks from the pass seed).
 *
 * Frozen params (`trainable = false`) are not inputs of the op: no gradient is computed for them, as
 * `tf.variableGrads` over the trainable set does without checkpointing.
 */
import * as tf from '@tensorflow/tfjs';

/** The engine state the nested tape needs (tfjs keeps one active tape; a nested `gradients` call resets it). */
interface EngineTapeState {
  state: { activeTape: unknown };
}

/**
 * d f / d [x, ...params] at the saved inputs, for cotangent dy. tfjs' `gradients` called during a backward
 * pass starts a new tape and, when done, clears the engine's active tape, which the outer backward pass still
 * owns (it disposes its saved tensors from it afterwards): the outer tape is put back.
 */
function recomputeGrads(f: () => tf.Tensor, xs: tf.Tensor[], dy: tf.Tensor): tf.Tensor[] {
  const engine = tf.engine() as unknown as EngineTapeState;
  const outer = engine.state.activeTape;
  try {
    const { value, grads } = tf.engine().gradients(f, xs, dy, true);
    value.dispose();
    return xs.map((x, i) => grads[i] ?? tf.zerosLike(x));
  } finally {
    engine.state.activeTape = outer;
  }
}

/**
 * f(x, consts) with activation checkpointing. `params`: every variable f reads (the trainable ones get
 * gradients); `consts`: tensors f reads that need no gradient (masks, tables) — saved with x, because the
 * caller may dispose its own handles before the backward pass runs.
 */
export function checkpointed<T extends tf.Tensor>(f: (x: T, consts: tf.Tensor[]) => tf.Tensor, x: T, params: readonly tf.Variable[], consts: readonly tf.Tensor[] = []): tf.Tensor {
  const trainable = params.filter((v) => v.trainable);
  const op = tf.customGrad((...args: (tf.Tensor | tf.GradSaveFunc)[]) => {
    const save = args[args.length - 1] as tf.GradSaveFunc;
    const input = args[0] as T;
    save([input, ...consts]);
    return {
      value: f(input, [...consts]),
      gradFunc: (dy: tf.Tensor | tf.Tensor[], saved: tf.Tensor[]) => {
        const [xs, ...cs] = saved as [T, ...tf.Tensor[]];
        return recomputeGrads(() => f(xs, cs), [xs, ...trainable], dy as tf.Tensor);
      },
    };
  });
  return op(x, ...trainable);
}
