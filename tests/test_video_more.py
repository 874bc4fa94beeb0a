"""Video style transfer, continued: a tiled frame's loss is the untiled frame's, two processes
give what one process running the same segments gives, a checkpoint keeps only the two latest
passes' frames, and a resume with other --steps keeps the finished frames and says so."""

from __future__ import annotations

import functools
import json
import pickle
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, SAMPLES, SHALLOW_LAYERS, free_port, run_cli, unoptimised_env
from test_video_cli import (  # noqa: F401 (the fixture)
    FAST,
    clip,
    counting,
    one_random_network,
    read_folder,
    write_folder,
)
from test_video_stylize import SIDE, panning_clip, style_image

from jaxmosaic import VideoConfig
from jaxmosaic.losses import gram_targets
from jaxmosaic.techniques.style import StyleTargets
from jaxmosaic.tiling import tile_grid
from jaxmosaic.vgg import vgg19_features
from jaxmosaic.video.stylize import (
    stylize_frames,
    tiled_video_losses,
    video_losses,
    video_memory,
    video_tiles,
)

WEIGHTS = {"relu1_1": 0.5, "relu2_1": 0.5}
SETTINGS = {"layer_weights": WEIGHTS, "alpha": 1.0, "beta": 1e3, "tv_weight": 1.0, "pooling": "max", "loss": "gram",
            "temporal_weight": 1.6e4}


def frame_case(seed: int, height: int, width: int, count: int = 2) -> dict:
    """Random frames, their contents, a style, and earlier results warped with their masks (K = 2)."""
    rng = np.random.default_rng(seed)
    return {"x": rng.random((count, height, width, 3)).astype(np.float32),
            "contents": rng.random((count, height, width, 3)).astype(np.float32),
            "style": rng.random((48, 48, 3)).astype(np.float32),
            "temporal": (rng.random((count, 2, height, width, 3)).astype(np.float32),
                         rng.random((count, 2, height, width)).astype(np.float32))}


def untiled_targets(params, case: dict) -> StyleTargets:
    features = vgg19_features(params, jnp.asarray(case["contents"]), ("relu2_2",))
    return StyleTargets({"relu2_2": features["relu2_2"]},
                        gram_targets(params, case["style"], tuple(WEIGHTS), size=case["x"].shape[1:3]))


def test_a_tiled_frame_s_loss_and_gradient_equal_the_untiled_frame_s(random_params):
    case = frame_case(0, 128, 32)
    targets = untiled_targets(random_params, case)

    def whole(x):
        return video_losses(x, targets, case["temporal"], random_params, **SETTINGS)

    def tiled(x):  # statistics tiles of 32 px (four per frame), each seen with 32 px of context each side, beyond relu2_2's reach (14 px)
        return tiled_video_losses(x, case["contents"], targets.grams, case["temporal"], random_params,
                                  content_layers=("relu2_2",), tile=32, halo=32, **SETTINGS)

    def value_and_gradient(losses):  # one program each: the sum's gradient, the per-frame totals and terms beside it
        def summed(x):
            totals, terms = losses(x)
            return jnp.sum(totals), (totals, terms)

        return jax.jit(jax.value_and_grad(summed, has_aux=True))(case["x"])

    ((total, (totals, terms)), gradient), ((tiled_total, (tiled_totals, tiled_terms)), tiled_gradient) = \
        value_and_gradient(whole), value_and_gradient(tiled)
    for name in ("content", "style", "tv", "temporal"):
        np.testing.assert_allclose(tiled_terms[name], terms[name], rtol=2e-5)
        assert np.all(np.asarray(terms[name]) > 0)
    np.testing.assert_allclose(tiled_totals, totals, rtol=2e-5)
    np.testing.assert_allclose(tiled_total, total, rtol=2e-5)
    scale = float(jnp.max(jnp.abs(gradient)))
    # measured: the terms 1.0e-7 apart (relative), the gradients 1.1e-7 of the largest component
    np.testing.assert_allclose(tiled_gradient, gradient, atol=2e-5 * scale)
    # the temporal term is a sum over pixels: the squared differences weighed by the masks, 1/D, D = 3 H W
    warped, masks = case["temporal"]
    expected = np.einsum("bkhw,bkhwc->b", masks.astype(np.float64),
                         (case["x"][:, None].astype(np.float64) - warped) ** 2) / (3 * 128 * 32)
    np.testing.assert_allclose(terms["temporal"], expected, rtol=1e-5)


def test_an_optimisation_tile_s_temporal_term_is_its_share_of_the_frame_s(random_params):
    # each tile's loss counts the temporal term over its own pixels: over tiles that partition the
    # frame the shares add up to the whole, and an overlapping tile's gradient is the whole's there
    case = frame_case(1, 64, 64, count=1)
    only_temporal = {**SETTINGS, "alpha": 0.0, "beta": 0.0, "tv_weight": 0.0}
    targets = untiled_targets(random_params, case)
    warped, masks = case["temporal"]

    @functools.partial(jax.jit, static_argnums=(1, 2, 3))
    def loss(x, top, left, side):
        crop = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        region = StyleTargets({"relu2_2": targets.content["relu2_2"][:, top // 2:(top + side) // 2, left // 2:(left + side) // 2]},
                              targets.grams)
        return jnp.sum(video_losses(x, region, (warped[crop], masks[crop]), random_params, **only_temporal)[0])

    whole = loss(case["x"], 0, 0, 64)
    parts = sum(loss(case["x"][:, top:top + 32, left:left + 32], top, left, 32) for top, left in tile_grid(64, 64, 32, 0))
    np.testing.assert_allclose(parts, whole, rtol=1e-5)
    assert float(whole) > 0
    gradient = jax.grad(loss)(case["x"], 0, 0, 64)
    own = jax.grad(loss)(case["x"][:, 16:64, 8:56], 16, 8, 48)  # a tile inside the frame
    np.testing.assert_allclose(own, gradient[:, 16:64, 8:56], rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(gradient))))
    assert float(jnp.max(jnp.abs(own))) > 0


def test_a_tiled_window_of_frames_reports_the_whole_frames_losses(random_params):
    case = frame_case(2, 96, 64)
    config = VideoConfig(size=96, steps=(2,), tile=64, overlap=16, tile_steps=1, passes=2, batch_frames=2, **SHALLOW_LAYERS)
    plan, = video_tiles(config, (96, 64))
    assert plan.tile == 64 and plan.grid == ((0, 0), (32, 0))
    solution = stylize_frames(config, case["contents"], [case["style"]], random_params, starts=case["x"],
                              warped=case["temporal"][0], masks=case["temporal"][1])
    assert solution.facts["tiles"] == [{"scale": "64x96", "tile": 64, "count": 2}]
    targets = untiled_targets(random_params, case)
    settings = {**SETTINGS, "layer_weights": config.layer_weight_map, "tv_weight": config.tv_weight}
    totals, terms = video_losses(jnp.asarray(solution.images), targets, case["temporal"], random_params, **settings)
    before, _ = video_losses(jnp.asarray(case["x"]), targets, case["temporal"], random_params, **settings)
    for k in range(2):
        assert solution.loss[k]["total"] == pytest.approx(float(totals[k]), rel=1e-4)
        assert solution.loss[k]["temporal"] == pytest.approx(float(terms["temporal"][k]), rel=1e-4)
        assert float(totals[k]) < 0.9 * float(before[k])  # the tiles were optimised
    # the estimate counts one tile of the window at a time, and the whole frames it holds
    untiled = VideoConfig(size=96, passes=2, batch_frames=2, **SHALLOW_LAYERS)
    assert video_memory(config, (96, 64), 3) < video_memory(untiled, (96, 64), 3)


SEGMENTS_SCRIPT = textwrap.dedent("""
    import pickle, sys
    import numpy as np
    case_path, role, port, out = sys.argv[1:5]
    from jaxmosaic.distributed import DistributedConfig, start_distributed
    if role != "one":
        start_distributed(DistributedConfig(coordinator=f"127.0.0.1:{port}", num_processes=2, process_id=int(role), timeout=120))
    import jax
    jax.config.update("jax_compilation_cache_dir", sys.argv[5])  # the suite's cache (conftest): a rerun compiles nothing
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    from jaxmosaic import VideoConfig, stylize_video
    from jaxmosaic.video.stylize import video_flows
    with open(case_path, "rb") as file:
        case = pickle.load(file)
    config = VideoConfig(**case["settings"])
    flows = video_flows(case["frames"], config, flows=case["flows"])
    result = stylize_video(config, case["frames"], [case["style"]], case["params"], flows=flows,
                           **({"segments": 2} if role == "one" else {}))
    if role == "one":  # and unsplit, with the programs compiled for the segments
        whole = stylize_video(config, case["frames"], [case["style"]], case["params"], flows=flows)
        np.save(out, np.stack([result.frames, whole.frames]))
    elif role == "0":
        np.save(out, result.frames)
    print(jax.process_count(), flush=True)
""")


def test_two_processes_give_the_frames_of_one_process_running_their_segments(random_params, tmp_path):
    frames, flows = panning_clip(4)
    settings = dict(size=SIDE, steps=(3,), optimizer="adam", lr=0.05, passes=2, batch_frames=2, **SHALLOW_LAYERS)
    shallow = {name: jax.tree_util.tree_map(np.asarray, random_params[name]) for name in ("conv1_1", "conv1_2", "conv2_1", "conv2_2")}
    with open(tmp_path / "case.pickle", "wb") as file:
        pickle.dump({"params": shallow, "frames": frames, "flows": flows, "style": style_image(), "settings": settings}, file)
    port = free_port()
    env = {name: value for name, value in unoptimised_env(JAX_PLATFORMS="cpu", JAXMOSAIC_NO_COMPILATION_CACHE="1",
                                                          PYTHONPATH=str(ROOT)).items()
           if not name.startswith(("SLURM_", "OMPI_", "TPU_", "KUBERNETES_", "JAX_COORDINATOR"))}
    runs = {role: subprocess.Popen([sys.executable, "-c", SEGMENTS_SCRIPT, str(tmp_path / "case.pickle"), role, str(port),
                                    str(tmp_path / f"{role}.npy"), str(ROOT / ".cache" / "xla")], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True) for role in ("one", "0", "1")}
    outputs = {role: run.communicate(timeout=300) for role, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), {role: output[1][-2000:] for role, output in outputs.items()}
    assert [outputs[role][0].split()[-1] for role in ("one", "0", "1")] == ["1", "2", "2"]
    (one, whole), two = np.load(tmp_path / "one.npy"), np.load(tmp_path / "0.npy")
    # measured: equal to the last bit, 0.0 apart (the same programs on the same numbers; only the border
    # frames travel between the processes, as float32)
    np.testing.assert_allclose(two, one, atol=1e-6)
    assert np.abs(one - frames).mean() > 0.02  # stylised
    # the segments are not the unsplit run: in the first pass frame 2 starts without frame 1's result
    assert np.abs(whole[2:] - one[2:]).max() > 1e-2


def frame_files(folder) -> list[str]:
    return sorted(path.name for path in folder.glob("pass*-frame*.npy"))


def test_a_checkpoint_keeps_the_two_latest_passes_and_a_resume_says_which_steps_it_keeps(tmp_path, monkeypatch):
    source, style = write_folder(tmp_path / "in", clip(3)), SAMPLES / "brick.png"
    three = ["--passes", 3, *FAST]
    whole = run_cli("video", source, style, "-o", tmp_path / "whole", "--checkpoint", tmp_path / "ck", *three)
    assert whole.exit_code == 0, whole.output
    assert frame_files(tmp_path / "ck") == [f"pass{p}-frame{i:06d}.npy" for p in (1, 2) for i in range(3)]
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["steps"] == [3]
    expected = read_folder(tmp_path / "whole")

    seen = counting(monkeypatch)
    seen["stop_after"] = 7  # passes 1 and 2, and frame 0 of pass 3 (which runs forwards again)
    stopped = run_cli("video", source, style, "-o", tmp_path / "part", "--checkpoint", tmp_path / "ck2", *three)
    assert stopped.exit_code == 130, stopped.output
    assert frame_files(tmp_path / "ck2") == ["pass0-frame000001.npy", "pass0-frame000002.npy", *[f"pass1-frame{i:06d}.npy" for i in range(3)],
                                             "pass2-frame000000.npy"]
    # as a checkpoint written before the pruning leaves it: every pass's frames kept, no --steps in meta.json
    # (pass 0's frame 0, listed in the marker, back; zeros, so that reading it as a start would show)
    np.save(tmp_path / "ck2" / "pass0-frame000000.npy", np.zeros((32, 32, 3), np.float32))
    meta = json.loads((tmp_path / "ck2" / "meta.json").read_text())
    (tmp_path / "ck2" / "meta.json").write_text(json.dumps({name: value for name, value in meta.items() if name != "steps"}))
    seen.update(optimised=[], stop_after=None)
    resumed = run_cli("video", source, style, "-o", tmp_path / "part", "--checkpoint", tmp_path / "ck2", "--resume", *three)
    assert resumed.exit_code == 0, resumed.output
    assert seen["optimised"] == [1, 2] and "are kept; the rest use" not in resumed.output
    np.testing.assert_array_equal(read_folder(tmp_path / "part"), expected)
    assert frame_files(tmp_path / "ck2") == frame_files(tmp_path / "ck")

    seen["optimised"] = []
    more = run_cli("video", source, style, "-o", tmp_path / "again", "--checkpoint", tmp_path / "ck", "--resume",
                   *three[:2], *FAST[:4], "--steps", 5, *FAST[6:])
    assert more.exit_code == 0, more.output
    assert "frames finished with --steps 3 are kept; the rest use 5" in more.output.splitlines()
    assert seen["optimised"] == []
    np.testing.assert_array_equal(read_folder(tmp_path / "again"), expected)
    assert json.loads((tmp_path / "ck" / "meta.json").read_text())["steps"] == [5]
