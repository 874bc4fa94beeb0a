"""Several devices: batches sharded over forced host devices, and one image split over them, give
the images of one device. One subprocess with 8 forced host devices (XLA_FLAGS must be set before
JAX is imported) runs every case on one device and on a mesh of all 8; the batch of 8 style
problems, and one split image, also on a mesh of 4 (two problems, or two slices, each).
The subprocess reads the test process's seed-0 random VGG19 from a file instead of drawing it again.
The command line runs a batch of 8 at the settings of the "style" case, right after it: its runs on
one device and on 8 reuse the programs that case compiled."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np

from helpers import ROOT, SAMPLES, unoptimised_env

SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=" + sys.argv[1]
    os.environ["JAXMOSAIC_NO_COMPILATION_CACHE"] = "1"
    import jax, numpy as np
    from typer.testing import CliRunner
    from jaxmosaic import HybridConfig, HybridInputs, StyleConfig, StyleInputs, TextureConfig, TextureInputs, load_image
    from jaxmosaic import hybrid_optimize, resize, style_transfer, synthesize_texture
    from jaxmosaic.sharding import device_mesh
    from jaxmosaic.cli import app

    samples, out, weights_file = sys.argv[2], sys.argv[3], sys.argv[4]
    devices = len(jax.devices())
    meshes = {n: device_mesh(n) for n in (devices, devices // 2)}
    params = {}
    with np.load(weights_file) as stored:  # random_vgg19(jax.random.PRNGKey(0)), drawn by the test process
        for name in stored.files:
            layer, field = name.split("/")
            params.setdefault(layer, {})[field] = jax.numpy.asarray(stored[name])
    def image(name, h, w):
        return np.asarray(resize(load_image(os.path.join(samples, name)), h, w))
    names = ["brick.png", "coffee.png", "chelsea.png", "rocket.jpg", "astronaut.png"]
    styles = [image(names[i % 5], 32 + 4 * (i // 5), 32) for i in range(devices)]
    shallow = dict(content_layers=("relu2_1",), style_layers=("relu1_1", "relu2_1"))
    report = {"devices": devices}

    def compare(name, run, sizes=(devices,)):
        one = run(None)
        for n in sizes:
            mesh = meshes[n]
            many = run(mesh)
            report[f"{name}@{n}"] = {
                "difference": float(np.abs(one.images - many.images).max()),
                "spec": [str(axis) for axis in many.params.sharding.spec], "mesh": int(many.params.sharding.mesh.size),
                "loss": max(abs(a["total"] - b["total"]) / abs(a["total"]) for a, b in zip(one.loss, many.loss))}

    content = image("astronaut.png", 32, 32)
    compare("style", lambda m: style_transfer(StyleConfig(size=32, steps=(4,), batch=True, **shallow),
                                              StyleInputs(content, styles), params, mesh=m), tuple(meshes))
    import jaxmosaic.cli.style as style_command  # its --weights random (seed 0) are `params`: drawn once, not per run
    drawn = style_command.vgg_params
    style_command.vgg_params = lambda weights, seed=0, arch="vgg19": (
        params if (weights, seed, arch) == ("random", 0, "vgg19") else drawn(weights, seed, arch=arch))
    runner = CliRunner()
    counts = ("1", str(devices))
    for count in counts:  # a batch of 8 at "style"'s settings: both runs reuse the programs "style" compiled
        result = runner.invoke(app, ["style", os.path.join(samples, "astronaut.png"), *(os.path.join(samples, names[i % 5]) for i in range(devices)),
                                     "-o", os.path.join(out, f"d{count}.png"), "--batch",
                                     "--devices", count, "--weights", "random", "--size", "32", "--steps", "4",
                                     "--content-layers", "relu2_1", "--style-layers", "relu1_1,relu2_1"])
        assert result.exit_code == 0, result.output
    report["cli"] = all(np.array_equal(load_image(os.path.join(out, f"d1-style{i}.png")),
                                       load_image(os.path.join(out, f"d{count}-style{i}.png"))) for i in range(1, devices + 1) for count in counts)
    compare("texture", lambda m: synthesize_texture(TextureConfig(steps=3, variations=devices, layers=("relu1_1", "pool1")),
                                                    TextureInputs(image("brick.png", 32, 32)), params, mesh=m))
    compare("hybrid", lambda m: hybrid_optimize(HybridConfig(size=0, steps=5, ratios=(0.1, 0.3, 1.0, 3.0, 10.0)),
                                                HybridInputs(image("astronaut.png", 32, 32), image("coffee.png", 32, 32)), mesh=m))
    import jaxmosaic.techniques.common as common  # one image per network call, as on a CPU for large images
    common.images_per_call = lambda height, width: 1
    compare("texture per image", lambda m: synthesize_texture(TextureConfig(steps=3, variations=devices, layers=("relu1_1", "pool1")),
                                                              TextureInputs(image("brick.png", 32, 32)), params, mesh=m))
    tall = image("chelsea.png", 64, 48)
    compare("style split", lambda m: style_transfer(StyleConfig(size=64, steps=(4,), optimizer="adam", **shallow),
                                                    StyleInputs(tall, styles[:1]), params, mesh=m, split_image=m is not None), tuple(meshes))
    # L-BFGS: sums across devices (Gram matrices, content loss) round in another order than on one
    # device, and a line search branches on the last bits: one step (three evaluations) agrees to
    # rounding; later steps can take another bisection (at 8 devices, step 2: images 3.5e-3 apart)
    compare("style split L-BFGS", lambda m: style_transfer(StyleConfig(size=64, steps=(1,), **shallow),
                                                           StyleInputs(tall, styles[:1]), params, mesh=m, split_image=m is not None))
    compare("texture split", lambda m: synthesize_texture(TextureConfig(steps=2, layers=("relu1_1", "pool1")),
                                                          TextureInputs(tall), params, mesh=m, split_image=m is not None))
    print(json.dumps(report))
""")


def test_batches_and_split_images_on_forced_host_devices_equal_one_device(tmp_path, random_params):
    weights = tmp_path / "vgg19-random-0.npz"
    np.savez(weights, **{f"{layer}/{field}": np.asarray(value) for layer, fields in random_params.items()
                         for field, value in fields.items()})
    # unoptimised XLA: one device and the meshes run the same unoptimised kernels, and the
    # programs compile in about half the time (measured, with the weights read from a file: 179 -> 121 s of CPU)
    result = subprocess.run([sys.executable, "-c", SCRIPT, "8", str(SAMPLES), str(tmp_path), str(weights)], capture_output=True,
                            text=True, cwd=ROOT, timeout=600, env=unoptimised_env())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices"] == 8
    at_four = {"style", "style split"}  # the cases also run on a mesh of 4 (texture's batch runs as style's does)
    for name in ("style", "texture", "hybrid", "texture per image"):  # each device runs its own problems
        for devices in (8, 4) if name in at_four else (8,):
            case = report[f"{name}@{devices}"]
            assert case["difference"] <= 1e-4 and case["loss"] <= 1e-4, (name, devices, case)
    for name in ("style", "texture", "texture per image"):  # 8 problems: one each on 8 devices, two each on 4
        for devices in (8, 4) if name in at_four else (8,):
            case = report[f"{name}@{devices}"]
            assert case["mesh"] == devices and case["spec"][:1] == ["devices"], (name, devices, case)
    for name in ("style split", "texture split"):  # the Gram sums cross devices: equal but for the last bits
        for devices in (8, 4) if name in at_four else (8,):
            case = report[f"{name}@{devices}"]
            assert case["difference"] <= 1e-4 and case["loss"] <= 1e-4, (name, devices, case)
            assert case["mesh"] == devices and case["spec"][:2] == ["None", "devices"], (name, devices, case)
    case = report["style split L-BFGS@8"]
    assert case["difference"] <= 1e-6 and case["loss"] <= 1e-6, case
    assert case["mesh"] == 8 and case["spec"][:2] == ["None", "devices"], case
    assert report["cli"] is True
