"""A small crafted `.pth` cannot exhaust the checkpoint reader: every case below is a file of a few
kilobytes (at most 2 MB) that once took gigabytes of memory, overflowed, or printed a message of a
gigabyte. Each runs `jaxmosaic weights convert` in a fresh Python whose address space is capped at
1.5 GiB, so an allocation over that budget fails the test instead of the machine; it must fail
with exit 1 and one short line.

The files are written by hand (pickle opcodes and zip records), without torch.
"""

from __future__ import annotations

import functools
import pickle
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from helpers import cli_command

LIMIT_BYTES = 3 * 2**29  # 1.5 GiB of address space for the process that reads a crafted file
CPU_SECONDS = 120  # and a bound on its time, should a file make it spin instead


# --- pickles written opcode by opcode ----------------------------------------------------------

class Global(NamedTuple):
    module: str
    name: str


class Call(NamedTuple):
    function: Global
    args: tuple


class Persistent(NamedTuple):
    pid: tuple


class Raw(NamedTuple):
    """Opcodes that push exactly one value."""
    code: bytes


def opcodes(value) -> bytes:
    """Protocol 2 opcodes that push `value`; tuples, lists and dicts nest."""
    if isinstance(value, Raw):
        return value.code
    if isinstance(value, Global):
        return b"c" + f"{value.module}\n{value.name}\n".encode()
    if isinstance(value, Call):
        return opcodes(value.function) + opcodes(tuple(value.args)) + b"R"
    if isinstance(value, Persistent):
        return opcodes(value.pid) + b"Q"
    if isinstance(value, tuple):
        return b"(" + b"".join(map(opcodes, value)) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(map(opcodes, value)) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(opcodes(k) + opcodes(v) for k, v in value.items()) + b"u"
    if isinstance(value, str):
        data = value.encode()
        return b"X" + struct.pack("<I", len(data)) + data
    assert value is None or isinstance(value, int), value
    return pickle.dumps(value, protocol=2)[2:-1]  # no memo for ints, bools and None


def nested(depth: int, fanout: int, leaf: str, *, tuples: bool = False) -> tuple[bytes, Raw]:
    """Opcodes that leave in memo slot `depth` a list (a tuple with `tuples`) of `fanout` references
    to one of `fanout` references ... `depth` deep down to `leaf`, and the value that fetches it:
    a few hundred bytes whose str() is fanout ** depth copies of the leaf."""
    start, close = (b"(", b"t") if tuples else (b"](", b"e")
    code = opcodes(leaf) + b"q\x000"  # BINPUT 0, POP
    for level in range(1, depth + 1):
        code += start + (b"h" + bytes([level - 1])) * fanout + close + b"q" + bytes([level]) + b"0"
    return code, Raw(b"h" + bytes([depth]))


NESTED, NESTED_VALUE = nested(6, 32, "abcdefgh")  # str() would take 32**6 * 12 bytes: 12 GiB


def pickled(value, prelude: bytes = b"") -> bytes:
    return b"\x80\x02" + prelude + opcodes(value) + b"."


def storage(key, numel, dtype: str = "FloatStorage") -> Persistent:
    return Persistent(("storage", Global("torch", dtype), key, "cpu", numel))


def tensor(pid: Persistent, size, stride, offset=0) -> Call:
    """torch.save's record of a tensor: `_rebuild_tensor_v2(storage, offset, size, stride, ...)`."""
    hooks = Call(Global("collections", "OrderedDict"), ())
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), (pid, offset, tuple(size), tuple(stride), False, hooks))


# --- zip archives written record by record -----------------------------------------------------

class Member(NamedTuple):
    payload: bytes  # as stored in the archive
    method: int  # zipfile.ZIP_STORED or ZIP_DEFLATED
    crc: int
    size: int  # uncompressed


def stored(data: bytes) -> Member:
    return Member(data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


@functools.cache
def deflated_zeros(mebibytes: int) -> Member:
    """`mebibytes` MiB of zeros as one deflate stream of about a kilobyte per MiB: the same block,
    each a full flush, repeated, then an empty final block."""
    zeros = bytes(2**20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    return Member(block * mebibytes + b"\x03\x00", zipfile.ZIP_DEFLATED, crc, mebibytes * 2**20)


def write_zip(path: Path, members: dict[str, Member]) -> Path:
    """A zip archive of `members` as given (zipfile itself cannot store an already deflated stream)."""
    body, directory = bytearray(), bytearray()
    for name, member in members.items():
        encoded, offset = name.encode(), len(body)
        fields = (member.method, 0, 0, member.crc, len(member.payload), member.size, len(encoded))
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, *fields, 0) + encoded + member.payload
        directory += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, *fields, 0, 0, 0, 0, 0, offset) + encoded
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), len(body), 0)
    path.write_bytes(bytes(body + directory) + end)
    return path


def checkpoint(path: Path, state, storages: dict[str, Member] | None = None, *, prelude: bytes = b"",
               pickle_member: Member | None = None, byteorder: Member | None = None) -> Path:
    """A zip checkpoint laid out as torch.save writes it: archive/data.pkl, byteorder, data/KEY."""
    members = {"archive/data.pkl": pickle_member or stored(pickled(state, prelude)),
               "archive/byteorder": byteorder or stored(b"little")}
    for key, member in (storages or {}).items():
        members[f"archive/data/{key}"] = member
    members["archive/version"] = stored(b"3\n")
    return write_zip(path, members)


def legacy(path: Path, *, protocol=1001, keys=("0",), prelude: bytes = b"") -> Path:
    """The legacy stream (torch.save before 1.6): magic, protocol, system info, the state dict, the
    storage keys, then each storage as an 8-byte element count and its bytes."""
    state = {"features.0.weight": tensor(storage("0", 4), (4,), (1,))}
    parts = [pickled(0x1950A86A20F9469CFC6C), pickled(protocol, prelude),
             pickled({"little_endian": True, "protocol_version": 1001}), pickled(state),
             pickled(list(keys), prelude), struct.pack("<q", 4), np.arange(4, dtype=np.float32).tobytes()]
    path.write_bytes(b"".join(parts))
    return path


# --- running the reader with a memory budget ---------------------------------------------------

class Run(NamedTuple):
    code: int
    stdout: str
    stderr: str
    peak_bytes: int  # the child's peak resident memory


def run_limited(argv: list[str], folder: Path) -> Run:
    """`argv` in a fresh process whose address space is capped at LIMIT_BYTES (and CPU time at
    CPU_SECONDS); returns its exit code, output (the first MiB of each) and peak memory.

    A forked child starts with its parent's resident memory as its peak, and exec keeps it, so the
    capped process is forked from a small Python in between, which reports the peak it reaps."""
    peak = folder / "peak"
    between = ("import os, resource, sys\n"
               "pid = os.fork()\n"
               "if pid == 0:\n"
               f"    resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))\n"
               f"    resource.setrlimit(resource.RLIMIT_CPU, ({CPU_SECONDS}, {CPU_SECONDS}))\n"
               "    os.execv(sys.argv[2], sys.argv[2:])\n"
               "_, status, usage = os.wait4(pid, 0)\n"
               "open(sys.argv[1], 'w').write(str(usage.ru_maxrss * 1024))\n"
               "sys.exit(os.waitstatus_to_exitcode(status))\n")
    with open(folder / "stdout", "w+b") as out, open(folder / "stderr", "w+b") as err:
        process = subprocess.run([sys.executable, "-c", between, str(peak), *argv], stdout=out, stderr=err)
        text = []
        for stream in (out, err):
            stream.seek(0)
            text.append(stream.read(2**20).decode(errors="replace"))
    return Run(process.returncode, *text, int(peak.read_text()))


def assert_one_short_line(run: Run, *fragments: str) -> None:
    """Exit 1 with one `error: ...` line under 300 characters holding every fragment, within the budget."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.code == 1 and len(lines) == 1, (run.code, run.stderr[:2000])
    line = lines[0]
    assert line.startswith("error: ") and len(line) < 300 and "unexpected" not in line, line[:2000]
    for fragment in fragments:
        assert fragment in line, line
    assert run.peak_bytes < LIMIT_BYTES


def convert_limited(path: Path) -> Run:
    """`jaxmosaic weights convert PATH -o converted` within the budget; it must write nothing."""
    out = path.parent / "converted"
    run = run_limited(cli_command("weights", "convert", path, "-o", out), path.parent)
    assert not out.exists()
    return run


# --- the crafted files -------------------------------------------------------------------------

FOUR = {"0": stored(np.arange(4, dtype=np.float32).tobytes())}


def nested_storage_key(path):
    return checkpoint(path, {"features.0.weight": tensor(storage(NESTED_VALUE, 4), (4,), (1,))}, FOUR, prelude=NESTED)


def long_storage_key(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("k" * 200_000, 4), (4,), (1,))}, FOUR)


def nested_element_count(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", NESTED_VALUE), (4,), (1,))}, FOUR, prelude=NESTED)


def nested_size(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (NESTED_VALUE,), (1,))}, FOUR, prelude=NESTED)


def nested_tensor_name(path):
    # a tuple as the name is hashable, so the pickle builds the dict: 8**7 leaves of 2 KB in str()
    prelude, name = nested(7, 8, "n" * 2048, tuples=True)
    return checkpoint(path, {name: tensor(storage("0", 4), (4,), (1,))}, FOUR, prelude=prelude)


def hashing_tensor_name(path):
    # the same tuple name nested 12 deep: hashing it visits 8**12 leaves (hours), though the file is tiny
    prelude, name = nested(12, 8, "n", tuples=True)
    return checkpoint(path, {name: tensor(storage("0", 4), (4,), (1,))}, FOUR, prelude=prelude)


def unused_storage(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (4,), (1,)), "junk": storage("1", 2**29)},
                      {**FOUR, "1": deflated_zeros(2048)})


def unneeded_tensor(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (4,), (1,)),
                             "classifier.0.weight": tensor(storage("1", 2**29), (2**29,), (1,))},
                      {**FOUR, "1": deflated_zeros(2048)})


def inflated_pickle(path):
    return checkpoint(path, {}, pickle_member=deflated_zeros(2048))


def inflated_byteorder(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (4,), (1,))}, FOUR, byteorder=deflated_zeros(2048))


def declared_bytes(path):
    # BINBYTES8 (protocol 4) declaring 2**40 bytes that are not there
    return checkpoint(path, {}, pickle_member=stored(b"\x80\x04\x8e" + struct.pack("<Q", 2**40) + b"abc."))


def zero_stride(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (500_000_000,), (0,))}, FOUR)


def zero_strides_square(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (10**6, 10**6), (0, 0))}, FOUR)


def overlapping_strides(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 2**21), (10**6, 10**6), (1, 1))},
                      {"0": deflated_zeros(8)})


def huge_stride(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (1, 4), (2**70, 1))}, FOUR)


def huge_empty_size(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (0, 2**70), (1, 1))}, FOUR)


def huge_view_offset(path):
    return checkpoint(path, {"features.0.weight": tensor(storage("0", 4), (4,), (1,), offset=2**70)}, FOUR)


def legacy_nested_protocol(path):
    return legacy(path, protocol=NESTED_VALUE, prelude=NESTED)


def legacy_nested_storage_key(path):
    return legacy(path, keys=(NESTED_VALUE,), prelude=NESTED)


CRAFTED = [
    (nested_storage_key, "storage key is a list"),
    (long_storage_key, "storage key is 'kkkk"),
    (nested_element_count, "element count is a list"),
    (nested_size, "a size is a list"),
    (nested_tensor_name, "a tensor named by a tuple"),
    (hashing_tensor_name, "would hash more than"),
    (unused_storage, "features.0.weight has shape (4,)"),
    (unneeded_tensor, "features.0.weight has shape (4,)"),
    (inflated_pickle, "data.pkl"),
    (inflated_byteorder, "byteorder"),
    (declared_bytes, "larger than"),
    (zero_stride, "zero stride"),
    (zero_strides_square, "zero stride"),
    (overlapping_strides, "overlapping itself"),
    (huge_stride, "a stride is 1180591620717411303424"),
    (huge_empty_size, "a size is 1180591620717411303424"),
    (huge_view_offset, "a storage offset is 1180591620717411303424"),
    (legacy_nested_protocol, "protocol a list"),
    (legacy_nested_storage_key, "storage key is a list"),
]


@pytest.mark.parametrize("craft, fragment", CRAFTED, ids=[craft.__name__ for craft, _ in CRAFTED])
def test_a_crafted_checkpoint_fails_in_one_short_line_within_the_memory_budget(tmp_path, craft, fragment):
    path = craft(tmp_path / "crafted.pth")
    assert path.stat().st_size < 3 * 2**20
    assert_one_short_line(convert_limited(path), "crafted.pth", fragment)


def test_a_storage_nothing_uses_is_never_decompressed(tmp_path):
    """The library reader, asked for every tensor, reads the one small tensor and skips the 2 GiB
    storage that only a non-tensor entry mentions."""
    path = unused_storage(tmp_path / "unused.pth")
    script = ("import sys; from jaxmosaic.weights import read_state_dict; "
              "state = read_state_dict(sys.argv[1]); print(sorted(state), state['features.0.weight'].tolist())")
    run = run_limited([sys.executable, "-c", script, str(path)], tmp_path)
    assert run.code == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["['features.0.weight']", "[0.0,", "1.0,", "2.0,", "3.0]"]
    assert run.peak_bytes < LIMIT_BYTES


def alexnet_checkpoint(path: Path, classifier: Member) -> tuple[Path, dict[str, np.ndarray]]:
    """AlexNet's features as seeded random float32 (stored), plus a classifier tensor over `classifier`."""
    from jaxmosaic.alexnet import ALEXNET_CONVS, ALEXNET_SHAPES
    from jaxmosaic.weights import ARCHS

    rng = np.random.default_rng(0)
    state, storages, values = {}, {}, {}
    for name, index in zip(ALEXNET_CONVS, ARCHS["alexnet"].indices):
        for kind, shape in (("weight", ALEXNET_SHAPES[name]), ("bias", ALEXNET_SHAPES[name][:1])):
            key = f"features.{index}.{kind}"
            values[key] = rng.standard_normal(shape, dtype=np.float32)
            storages[str(len(storages))] = stored(values[key].tobytes())
            strides = tuple(int(s) // 4 for s in values[key].strides)
            state[key] = tensor(storage(str(len(storages) - 1), values[key].size), shape, strides)
    state["classifier.1.weight"] = tensor(storage("c", classifier.size // 4), (classifier.size // 4,), (1,))
    storages["c"] = classifier
    return checkpoint(path, state, storages), values


def test_conversion_reads_only_what_the_network_needs(tmp_path, monkeypatch):
    """A classifier of 2 GiB (2 MB deflated) beside AlexNet's features is never opened: loading the
    checkpoint stays within the budget and gives the features exactly."""
    from jaxmosaic.weights import read_state_dict

    path, values = alexnet_checkpoint(tmp_path / "alexnet.pth", deflated_zeros(2048))
    opened, original = [], zipfile.ZipFile.open

    def recording_open(archive, member, *args, **kwargs):
        opened.append(getattr(member, "filename", member))
        return original(archive, member, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    state = read_state_dict(path, select=lambda shapes: [name for name in shapes if name.startswith("features.")])
    assert sorted(state) == sorted(values) and "archive/data/c" not in opened
    for name, value in values.items():
        np.testing.assert_array_equal(state[name], value)

    # the loader `weights convert` uses, in a process within the budget (jax's CPU client, which
    # the conversion's checkpoint writer starts, reserves more address space than the cap)
    script = ("import sys, numpy as np; from jaxmosaic.weights import load_alexnet; "
              "params = load_alexnet(sys.argv[1], download_missing=False); "
              "np.savez(sys.argv[2], **{f'{n}.{k}': v for n, layer in params.items() for k, v in layer.items()})")
    run = run_limited([sys.executable, "-c", script, str(path), str(tmp_path / "params.npz")], tmp_path)
    assert run.code == 0, run.stderr[-2000:]
    assert run.peak_bytes < LIMIT_BYTES
    params = np.load(tmp_path / "params.npz")
    np.testing.assert_array_equal(params["conv1.kernel"], values["features.0.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["conv5.bias"], values["features.10.bias"])


def test_error_messages_quote_the_file_short_and_escaped(tmp_path):
    """A storage key of control characters is named escaped and cut short, on one line."""
    from jaxmosaic import WeightsError
    from jaxmosaic.weights import read_state_dict

    key = "\n\x1b[2J" * 10
    path = checkpoint(tmp_path / "escaped.pth", {"features.0.weight": tensor(storage(key, 4), (4,), (1,))}, FOUR)
    with pytest.raises(WeightsError) as caught:
        read_state_dict(path)
    message = str(caught.value)
    assert "\n" not in message and "\x1b" not in message and len(message) < 300
    assert r"'\n\x1b[2J" in message


def test_honest_views_still_read(tmp_path):
    """Offsets, transposed strides, size-1 axes of any stride and empty tensors read as numpy reads them."""
    from jaxmosaic.weights import read_state_dict

    base = np.arange(24, dtype=np.float32)
    path = checkpoint(tmp_path / "views.pth", {
        "t": tensor(storage("0", 24), (6, 4), (1, 6)),
        "slice": tensor(storage("0", 24), (3, 4), (6, 1), offset=8),
        "column": tensor(storage("0", 24), (4, 1), (6, 12345)),
        "empty": tensor(storage("0", 24), (0, 3), (3, 1)),
    }, {"0": stored(base.tobytes())})
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["t"], base.reshape(4, 6).T)
    np.testing.assert_array_equal(state["slice"], base.reshape(4, 6)[1:, 2:])
    np.testing.assert_array_equal(state["column"], base.reshape(4, 6)[:, :1])
    assert state["empty"].shape == (0, 3)
