"""Batches of problems: the native batch against separate runs and against a vmap of one problem.

For texture synthesis (Gram + spectrum loss up to pool4, average pooling) and style transfer
(content relu4_2, five style layers), at each size and for N = 1, 2, 4, 8 problems, with Adam
and with L-BFGS, in one run and on the same random VGG19 weights:

- native: jaxmosaic's batch, the network run on the N images together per evaluation (on a CPU
  a few at a time, as the techniques run it: `images_per_call`, 256x256 pixels per network
  call, in one jitted step), each problem with its own optimiser state (and its own L-BFGS
  memory and line search);
- separate: N runs of one problem (one run timed, times N);
- every native and separate run is repeated (`--repeats`), the repeats interleaved (N = 1, 2, 4,
  8, then again), and the fastest of each kept: on a shared machine a run is only ever slowed
  down by others, and interleaving keeps a slow spell from falling on one N alone; the spread
  (slowest / fastest) is reported;
- vmap: the previous way, `jax.vmap` of one problem's loss and of optax's optimiser (optax.lbfgs
  with its zoom line search under vmap), the evaluations counted with a callback;
- one evaluation: the native batch's loss and gradient alone, so that the optimiser's own cost
  per step shows (native step / one evaluation; the goal is at most 1.1 for Adam);
- L-BFGS: loss-and-gradient evaluations per step per problem; GFLOP/s of the convolutions
  (forward and input gradient) against the matmul peak measured in the same run.

    python bench/batch.py [--sizes 128,256] [--counts 1,2,4,8] [--steps 4] [--lbfgs-steps 12] [--repeats 3] [--vmap-max 4]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, matmul_peak_gflops, timeit, vgg_conv_flops, write_results  # noqa: E402

from jaxmosaic import load_image, resize  # noqa: E402
from jaxmosaic.optimize import batched_value_and_grad, minimize, problem_group  # noqa: E402
from jaxmosaic.techniques.style import STYLE_LAYERS, style_targets, style_transfer_losses  # noqa: E402
from jaxmosaic.techniques.texture import TEXTURE_LAYERS, texture_losses, texture_targets  # noqa: E402
from jaxmosaic.vgg import images_per_call  # noqa: E402
from jaxmosaic.weights import random_vgg19  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "samples"


def loss_of(technique: str, params, size: int, count: int):
    """(natively batched losses (params (N, ...)) -> (N,), data, data_axes, deepest layer)."""
    if technique == "texture":
        exemplar = np.asarray(resize(load_image(SAMPLES / "brick.png"), size, size))
        targets = texture_targets(params, exemplar)
        weights = {name: 1 / len(TEXTURE_LAYERS) for name in TEXTURE_LAYERS}

        def value(x, data):
            return texture_losses(x, data[0], data[1], layer_weights=weights, spectrum_weight=1e-4)[0]

        return value, (targets, params), (None, None), "pool4"
    content = np.asarray(resize(load_image(SAMPLES / "astronaut.png"), size, size))
    names = ["brick.png", "coffee.png", "chelsea.png", "rocket.jpg"]
    each = [style_targets(params, content, [np.asarray(resize(load_image(SAMPLES / names[i % 4]), size, size))])
            for i in range(count)]
    targets = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *each)
    weights = {name: 1 / len(STYLE_LAYERS) for name in STYLE_LAYERS}

    def value(x, data):
        return style_transfer_losses(x, data[0], data[1], layer_weights=weights)[0]

    return value, (targets, params), (0, None), "relu5_1"


def vmap_seconds(value, x, data, data_axes, optimizer: str, steps: int) -> tuple[float, float]:
    """(seconds per step, evaluations per step per problem) of the previous way: a vmap of one
    problem's loss and of optax's optimiser, in one jitted scan (under vmap every problem is
    evaluated whenever any is)."""
    calls = []
    per_problem = jax.tree_util.tree_map(lambda axis, sub: jax.tree_util.tree_map(lambda _: axis == 0, sub), data_axes, data,
                                         is_leaf=lambda leaf: leaf is None)
    in_axes = jax.tree_util.tree_map(lambda batched: 0 if batched else None, per_problem)

    def single(xi, di):
        jax.debug.callback(lambda: calls.append(1))  # under vmap: once per evaluation of the whole batch
        di = jax.tree_util.tree_map(lambda batched, leaf: leaf[None] if batched else leaf, per_problem, di)
        return value(xi[None], di)[0]

    transform = optax.adam(0.02) if optimizer == "adam" else optax.lbfgs()

    def one_problem(xi, di):
        def step(carry, _):
            p, state = carry
            fn = lambda q: single(q, di)  # noqa: E731
            if optimizer == "adam":
                loss, grad = jax.value_and_grad(fn)(p)
                updates, state = transform.update(grad, state, p)
            else:
                loss, grad = optax.value_and_grad_from_state(fn)(p, state=state)
                updates, state = transform.update(grad, state, p, value=loss, grad=grad, value_fn=fn)
            return (optax.apply_updates(p, updates), state), loss

        with jax.numpy_dtype_promotion("standard"):
            return jax.lax.scan(step, (xi, transform.init(xi)), None, length=steps)[1]

    run = jax.jit(jax.vmap(one_problem, in_axes=(0, in_axes))).lower(x, data).compile()
    start = time.perf_counter()
    jax.block_until_ready(run(x, data))
    seconds = time.perf_counter() - start
    return seconds / steps, len(calls) / steps  # every batch evaluation evaluates every problem


def native_seconds(value, x, data, data_axes, optimizer: str, steps: int, group: int | None) -> tuple[float, float, float]:
    """(seconds per step, evaluations per step per problem, batch evaluations per step) of
    jaxmosaic's native batch, `group` problems per network call as the techniques run it; the
    network calls are counted with a callback (a batch evaluation makes N / group of them)."""
    calls = []

    def counted(p, d):
        jax.debug.callback(lambda: calls.append(1))  # once per network call
        return value(p, d)

    settings = {"optimizer": optimizer, "learning_rate": 0.02 if optimizer == "adam" else None, "steps": steps,
                "chunk": steps, "batched": True, "data_axes": data_axes, "group": group}
    outcome = minimize(counted, x, data, **settings)  # its seconds leave compilation out
    per_batch = x.shape[0] // (group or x.shape[0])
    calls[:] = calls[per_batch:] if optimizer == "lbfgs" else calls  # the first are L-BFGS's start, counted apart
    evaluations = float(np.mean(outcome.evaluations)) / steps if outcome.evaluations is not None else 1.0
    return outcome.seconds / steps, evaluations, len(calls) / per_batch / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--counts", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=4, help="Adam steps timed")
    parser.add_argument("--lbfgs-steps", type=int, default=12, help="L-BFGS steps timed (its first step searches longer)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every native and separate run; the fastest is kept")
    parser.add_argument("--vmap-max", type=int, default=4, help="the largest N the (slow) vmap path is timed for")
    parser.add_argument("--techniques", default="texture,style")
    parser.add_argument("--optimizers", default="adam,lbfgs")
    parser.add_argument("--no-vmap", action="store_true", help="skip the vmap path (the slowest)")
    args = parser.parse_args()
    params = random_vgg19(jax.random.PRNGKey(0))
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak (jitted 2048^3): {peak:.1f} GFLOP/s")
    rows = []
    for technique in args.techniques.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            counts = [int(c) for c in args.counts.split(",")]
            cases = {}
            for count in counts:
                value, data, data_axes, deepest = loss_of(technique, params, size, count)
                channels = 1 if technique == "texture" else 3
                x = jax.random.uniform(jax.random.PRNGKey(count), (count, size, size, channels))
                group = problem_group(images_per_call(size, size), count)  # the techniques' network calls
                evaluate = jax.jit(lambda p, d, value=value, data_axes=data_axes, group=group:
                                   batched_value_and_grad(value, d, data_axes=data_axes, group=group)(p))
                one_eval = timeit(lambda: jax.block_until_ready(evaluate(x, data)), repeats=args.repeats)["min"]
                cases[count] = (value, data, data_axes, x, one_eval, 2 * count * vgg_conv_flops(size, deepest), group)
            for optimizer in args.optimizers.split(","):
                steps = args.lbfgs_steps if optimizer == "lbfgs" else args.steps
                runs = {count: [] for count in counts}
                for _ in range(args.repeats):  # interleaved: N = 1, 2, 4, 8, then again
                    for count in counts:
                        value, data, data_axes, x, _, _, group = cases[count]
                        runs[count].append(native_seconds(value, x, data, data_axes, optimizer, steps, group))
                single = min(run[0] for run in runs[1]) if 1 in runs else float("nan")
                for count in counts:
                    value, data, data_axes, x, one_eval, flops, group = cases[count]
                    times = [run[0] for run in runs[count]]
                    step, (_, evaluations, batch_calls) = min(times), runs[count][0]
                    row = {"technique": technique, "size": size, "N": count, "optimizer": optimizer,
                           "per call": group or count, "native s/step": step, "spread": max(times) / step, "one evaluation s": one_eval,
                           "native / evaluation": step / one_eval, "separate s/step": count * single,
                           "separate / native": count * single / step, "evals/step/problem": evaluations,
                           "batch evals/step": batch_calls, "GFLOP/s": flops * batch_calls / step / 1e9,
                           "of peak": flops * batch_calls / step / 1e9 / peak, "native s/step runs": times}
                    if not args.no_vmap and count <= args.vmap_max:
                        vmapped, vmap_evals = vmap_seconds(value, x, data, data_axes, optimizer, steps)
                        row.update({"vmap s/step": vmapped, "vmap / native": vmapped / step, "vmap evals/step/problem": vmap_evals})
                    rows.append(row)
                    print(markdown_table([row], [key for key in row if key != "native s/step runs"]), flush=True)
    path = write_results("batch", {"config": vars(args), "matmul_peak_gflops": peak, "rows": rows})
    columns = ["technique", "size", "N", "optimizer", "per call", "native s/step", "spread", "separate s/step", "vmap s/step", "separate / native",
               "vmap / native", "native / evaluation", "evals/step/problem", "batch evals/step", "vmap evals/step/problem", "GFLOP/s",
               "of peak"]
    print("\nbatches of problems: seconds per step, random VGG19 weights, one process")
    print(markdown_table(rows, columns))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
