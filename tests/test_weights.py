"""Weights: safe conversion of torch checkpoints, download, lookup order, random weights."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import FileServer
from jaxmosaic import UnsafeCheckpointError, WeightsError, load_vgg19, random_vgg19
from jaxmosaic.weights import read_state_dict
from jaxmosaic.vgg import VGG19, VGG19_CONVS
from jaxmosaic.io.folders import folder_kind
from jaxmosaic.weights import (
    TORCHVISION_INDICES,
    convert,
    default_weights_dir,
    download,
    is_weights_folder,
    params_from_state_dict,
    weights_info,
)


def expected_params(torch_model) -> dict:
    state = torch_model.state_dict()
    return {
        name: {
            "kernel": state[f"features.{index}.weight"].numpy().transpose(2, 3, 1, 0),
            "bias": state[f"features.{index}.bias"].numpy(),
        }
        for name, index in zip(VGG19_CONVS, TORCHVISION_INDICES)
    }


def assert_same_params(ours, theirs):
    assert sorted(ours) == sorted(theirs) == sorted(VGG19_CONVS)
    for name in theirs:
        np.testing.assert_array_equal(np.asarray(ours[name]["kernel"]), theirs[name]["kernel"])
        np.testing.assert_array_equal(np.asarray(ours[name]["bias"]), theirs[name]["bias"])


def test_zip_checkpoint_reads_exactly(torch_model, torch_checkpoint):
    state = read_state_dict(torch_checkpoint)
    assert "classifier.6.weight" in state and state["features.34.weight"].shape == (512, 512, 3, 3)
    assert_same_params(params_from_state_dict(state), expected_params(torch_model))


def test_legacy_checkpoint_reads_exactly(torch_model, tmp_path):
    import torch

    legacy = tmp_path / "vgg19-legacy.pth"
    torch.save(torch_model.state_dict(), legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    assert_same_params(params_from_state_dict(read_state_dict(legacy)), expected_params(torch_model))


def test_non_contiguous_and_offset_tensors(tmp_path):
    import torch

    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    torch.save({"t": base.t(), "slice": base[1:, 2:]}, tmp_path / "views.pth")
    state = read_state_dict(tmp_path / "views.pth")
    np.testing.assert_array_equal(state["t"], base.t().numpy())
    np.testing.assert_array_equal(state["slice"], base[1:, 2:].numpy())


def test_convert_then_load_roundtrip(torch_model, torch_checkpoint, tmp_path):
    folder = convert(torch_checkpoint, tmp_path / "w")
    assert is_weights_folder(folder) and folder_kind(folder) == "weights"
    assert_same_params(load_vgg19(folder), expected_params(torch_model))
    info = weights_info(folder)
    assert info["sha256"] == hashlib.sha256(torch_checkpoint.read_bytes()).hexdigest()
    assert info["source"] == str(torch_checkpoint.absolute())


class Payload:
    """Unpickling this would create a file: proof that the code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_zip_checkpoint_is_refused_and_never_runs(torch_checkpoint, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with zipfile.ZipFile(torch_checkpoint) as source, zipfile.ZipFile(evil, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item.endswith("data.pkl"):
                data = pickle.dumps({"features.0.weight": Payload(marker)}, protocol=2)
            target.writestr(item, data)
    with pytest.raises(UnsafeCheckpointError, match=r"os\.system|posix\.system"):
        read_state_dict(evil)
    with pytest.raises(UnsafeCheckpointError):
        convert(evil, tmp_path / "w")
    assert not marker.exists() and not (tmp_path / "w").exists()
    # the payload is real: plain pickle would have run it
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_malicious_legacy_stream_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        read_state_dict(evil)
    assert not marker.exists()


def test_not_a_checkpoint_and_wrong_model(tmp_path, torch_model):
    import torch

    (tmp_path / "text.pth").write_text("hello")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        read_state_dict(tmp_path / "text.pth")
    state = {k: v for k, v in torch_model.state_dict().items() if k != "features.21.weight"}
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="missing features.21.weight"):
        convert(tmp_path / "partial.pth", tmp_path / "w")
    state = dict(torch_model.state_dict())
    state["features.0.weight"] = torch.zeros(64, 4, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"features.0.weight has shape \(64, 4, 3, 3\)"):
        convert(tmp_path / "shape.pth", tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.fixture
def server(torch_checkpoint):
    """The checkpoint served under its own checksum's name (`good`) and under a wrong one (`bad`)."""
    data = torch_checkpoint.read_bytes()
    prefix = hashlib.sha256(data).hexdigest()[:8]
    running = FileServer({f"vgg19-{prefix}.pth": data, "vgg19-00000000.pth": data})
    running.good = running.url(f"vgg19-{prefix}.pth")
    running.bad = running.url("vgg19-00000000.pth")
    yield running
    running.close()


def all_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_download_checksum_mismatch_caches_nothing(server, monkeypatch):
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", server.bad)
    with pytest.raises(WeightsError, match="checksum mismatch.*nothing was cached"):
        download()
    assert all_files(default_weights_dir().parent) == []


def test_download_converts_caches_and_does_not_repeat(server, torch_model, torch_checkpoint, monkeypatch):
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", server.good)
    seen = []
    folder = download(progress=lambda done, total: seen.append((done, total)))
    size = torch_checkpoint.stat().st_size
    assert seen[-1] == (size, size) and all(a <= b for (a, _), (b, _) in zip(seen, seen[1:]))
    assert folder == default_weights_dir() and is_weights_folder(folder)
    assert not any(p.suffix == ".pth" or "download" in p.name for p in all_files(folder.parent))
    assert_same_params(load_vgg19(), expected_params(torch_model))
    download()
    load_vgg19()
    assert sum(server.counts.values()) == 1


def test_load_downloads_when_nothing_is_found(server, torch_model, monkeypatch):
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", server.good)
    assert_same_params(load_vgg19(), expected_params(torch_model))
    assert sum(server.counts.values()) == 1


def test_torch_hub_copy_is_used_instead_of_downloading(torch_checkpoint, torch_model, tmp_path, monkeypatch):
    prefix = hashlib.sha256(torch_checkpoint.read_bytes()).hexdigest()[:8]
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(torch_checkpoint, hub / f"vgg19-{prefix}.pth")
    monkeypatch.setenv("JAXMOSAIC_VGG19_URL", f"http://127.0.0.1:9/vgg19-{prefix}.pth")  # nothing listens there
    download()
    assert_same_params(load_vgg19(download_missing=False), expected_params(torch_model))


def test_missing_weights_message_says_how_to_get_them():
    with pytest.raises(WeightsError) as info:
        load_vgg19()
    message = str(info.value)
    for hint in ("cannot download", "jaxmosaic weights download", "jaxmosaic weights convert", "--weights random"):
        assert hint in message
    with pytest.raises(WeightsError, match="no VGG19 weights"):
        load_vgg19(download_missing=False)


def test_lookup_order(torch_checkpoint, tmp_path, monkeypatch):
    folder_a = convert(torch_checkpoint, tmp_path / "a")
    folder_env = convert(torch_checkpoint, tmp_path / "env")
    cached = convert(torch_checkpoint)
    assert weights_info()["path"] == str(cached.absolute())
    monkeypatch.setenv("JAXMOSAIC_WEIGHTS", str(folder_env))
    assert weights_info()["path"] == str(folder_env.absolute())
    assert weights_info(folder_a)["path"] == str(folder_a.absolute())
    with pytest.raises(WeightsError, match="--weights .*nowhere: no such file"):
        weights_info(tmp_path / "nowhere")
    monkeypatch.setenv("JAXMOSAIC_WEIGHTS", str(tmp_path / "gone"))
    with pytest.raises(WeightsError, match=r"\$JAXMOSAIC_WEIGHTS"):
        load_vgg19()


def test_pth_path_loads_directly(torch_checkpoint, torch_model):
    assert_same_params(load_vgg19(torch_checkpoint), expected_params(torch_model))


def test_random_weights_are_seeded_and_normalised(random_params):
    again = random_vgg19(jax.random.PRNGKey(0))
    other = random_vgg19(jax.random.PRNGKey(1))
    np.testing.assert_array_equal(again["conv3_1"]["kernel"], random_params["conv3_1"]["kernel"])
    assert not np.allclose(other["conv3_1"]["kernel"], random_params["conv3_1"]["kernel"])
    reference = jax.random.uniform(jax.random.PRNGKey(0), (1, 64, 64, 3))
    relus = tuple(name.replace("conv", "relu") for name in VGG19_CONVS)
    features = VGG19(layers=relus).apply({"params": random_params}, reference)
    means = np.array([float(jnp.mean(features[name])) for name in relus])
    np.testing.assert_allclose(means, 1.0, rtol=1e-4)
    # on another input the activations stay of order one, neither vanishing nor exploding
    other_input = jax.random.uniform(jax.random.PRNGKey(7), (1, 96, 96, 3))
    deep = VGG19(layers=("relu5_4",)).apply({"params": random_params}, other_input)["relu5_4"]
    assert 0.2 < float(jnp.mean(deep)) < 5.0
