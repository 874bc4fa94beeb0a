"""VGG19 forward + backward (gradient with respect to the input image, through relu5_1).

Compares, on the same random weights and in one process: jaxmosaic under jit (NHWC, as shipped),
the same computation written in NCHW/OIHW (to check the layout choice), JAX eager (op by op) and
PyTorch eager. Reports compile time, seconds per step, achieved GFLOP/s and its ratio to the
float32 matmul peak measured in the same run.

    python bench/vgg.py [--sizes 256,512] [--repeats 5] [--no-torch]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import first_call_seconds, markdown_table, matmul_peak_gflops, timeit, vgg_conv_flops, write_results  # noqa: E402

from jaxmosaic import VGG19_LAYERS, random_vgg19, vgg19_features  # noqa: E402
from jaxmosaic.vgg import IMAGENET_MEAN, IMAGENET_STD, VGG19_CONVS  # noqa: E402

LAYER = "relu5_1"


def loss_nhwc(params, image):
    return jnp.sum(vgg19_features(params, image, layers=(LAYER,))[LAYER] ** 2) * 0.5


def loss_nchw(params_oihw, image_nchw):
    """The same network written NCHW/OIHW with lax directly, to compare layouts."""
    mean = jnp.asarray(IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = jnp.asarray(IMAGENET_STD).reshape(1, 3, 1, 1)
    x = (image_nchw - mean) / std
    for name in VGG19_LAYERS[: VGG19_LAYERS.index(LAYER) + 1]:
        if name.startswith("conv"):
            kernel, bias = params_oihw[name]
            x = jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
            x = x + bias.reshape(1, -1, 1, 1)
        elif name.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            n, c, h, w = x.shape
            x = x[:, :, : h - h % 2, : w - w % 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    return jnp.sum(x**2) * 0.5


def torch_step(params, size):
    import torch
    from torch_reference import features, torch_vgg19

    model = torch_vgg19(params).requires_grad_(False)  # only the input gradient is timed
    image = torch.rand(1, size, size, 3, requires_grad=True)

    def step():
        image.grad = None
        (0.5 * (features(model, image, (LAYER,), dtype=torch.float32)[LAYER] ** 2).sum()).backward()
        return image.grad

    return step, torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()

    params = random_vgg19(jax.random.PRNGKey(0))
    params_oihw = {n: (jnp.transpose(params[n]["kernel"], (3, 2, 0, 1)), params[n]["bias"]) for n in VGG19_CONVS}
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak (jitted 2048^3): {peak:.1f} GFLOP/s")
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        flops = 2 * vgg_conv_flops(size, LAYER)  # forward + input gradient (no weight gradients are needed)
        image = jax.random.uniform(jax.random.PRNGKey(1), (1, size, size, 3))
        image_nchw = jnp.transpose(image, (0, 3, 1, 2))
        repeats = args.repeats if size <= 256 else max(2, args.repeats // 2)

        grad_nhwc = jax.jit(jax.grad(loss_nhwc, argnums=1))
        compile_s = first_call_seconds(lambda: jax.block_until_ready(grad_nhwc(params, image)))
        jit_t = timeit(lambda: jax.block_until_ready(grad_nhwc(params, image)), repeats=repeats)

        grad_nchw = jax.jit(jax.grad(loss_nchw, argnums=1))
        compile_nchw = first_call_seconds(lambda: jax.block_until_ready(grad_nchw(params_oihw, image_nchw)))
        nchw_t = timeit(lambda: jax.block_until_ready(grad_nchw(params_oihw, image_nchw)), repeats=repeats)
        np.testing.assert_allclose(
            np.transpose(np.asarray(grad_nchw(params_oihw, image_nchw)), (0, 2, 3, 1)),
            np.asarray(grad_nhwc(params, image)), rtol=1e-3, atol=1e-3 * float(jnp.abs(grad_nhwc(params, image)).max()),
        )

        grad_eager = jax.grad(loss_nhwc, argnums=1)
        with jax.disable_jit():
            eager_t = timeit(lambda: jax.block_until_ready(grad_eager(params, image)), repeats=max(2, repeats // 2))

        row = {
            "size": size,
            "GFLOP": flops / 1e9,
            "compile s": compile_s,
            "jit NHWC s": jit_t["min"],
            "jit NCHW s": nchw_t["min"],
            "eager s": eager_t["min"],
            "jit GFLOP/s": flops / jit_t["min"] / 1e9,
            "of peak": flops / jit_t["min"] / 1e9 / peak,
            "eager / jit": eager_t["min"] / jit_t["min"],
            "compile NCHW s": compile_nchw,
            "details": {"jit": jit_t, "jit_nchw": nchw_t, "eager": eager_t},
        }
        if not args.no_torch:
            try:
                step, torch = torch_step(params, size)
            except ImportError:
                print("torch is not installed: skipping the PyTorch column")
                args.no_torch = True
            else:
                torch_t = timeit(step, repeats=repeats)
                row["torch s"] = torch_t["min"]
                row["torch / jit"] = torch_t["min"] / jit_t["min"]
                row["torch threads"] = torch.get_num_threads()
                row["details"]["torch"] = torch_t
        rows.append(row)
        print(f"size {size}: jit {jit_t['min']:.3f}s  nchw {nchw_t['min']:.3f}s  eager {eager_t['min']:.3f}s"
              + (f"  torch {row['torch s']:.3f}s" if "torch s" in row else ""))

    columns = ["size", "GFLOP", "compile s", "jit NHWC s", "jit NCHW s", "eager s", "torch s",
               "eager / jit", "torch / jit", "jit GFLOP/s", "of peak"]
    path = write_results("vgg", {"layer": LAYER, "matmul_peak_gflops": peak, "rows": rows})
    print()
    print(f"VGG19 forward + input gradient through {LAYER}, batch 1, float32; matmul peak {peak:.1f} GFLOP/s")
    print(markdown_table(rows, columns))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
