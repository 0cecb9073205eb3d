"""Property-based fuzzing of every reader and parser a user's input reaches (issue #21).

Each property: any input either succeeds or raises one of the project's documented errors
(a `ValueError` / `TypeError` subclass or `MdlError` naming the fix) -- never another
exception, never a crash, never a rewritten file. Budgets are bounded for CI (the sum of
``max_examples`` below); ``--hypothesis-show-statistics`` prints what ran.
"""

import hashlib
import json

import numpy as np
import pytest
from helpers import seeded
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mdl_tvm
from mdl_tvm import zoo
from mdl_tvm.compiler.importers import _normalise_shapes
from mdl_tvm.compiler.precision import parse_precision
from mdl_tvm.core.artifact import read_metadata
from mdl_tvm.core.errors import InputSpecError, MdlError, ModelFormatError

FAST = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOW = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
ALLOWED = (ValueError, TypeError, MdlError)

dims = st.one_of(st.integers(-5, 2**40), st.floats(allow_nan=True), st.text(max_size=3),
                 st.none(), st.booleans())
shapes = st.one_of(st.lists(dims, max_size=6).map(tuple), st.lists(st.lists(dims, max_size=5)),
                   st.dictionaries(st.text(max_size=4), st.lists(dims, max_size=5), max_size=3),
                   st.integers(), st.text(max_size=5))


@FAST
@given(shapes)
def test_input_shapes_parse_or_raise_input_spec_error(value):
    try:
        out = _normalise_shapes(value)
    except InputSpecError:
        return
    for _, parsed in out:
        assert all(isinstance(d, int) and d > 0 for d in parsed)
        assert int(np.prod(parsed, dtype=np.float64)) < 2**31


@FAST
@given(st.one_of(st.text(max_size=12), st.sampled_from(["fp32", "fp16", "fp16-full",
                                                         "fp16-storage"]), st.integers()),
       st.one_of(st.none(), st.text(max_size=6), st.sampled_from(["fp16", "fp32"])))
def test_precision_options_parse_or_raise(precision, accumulate):
    try:
        config = parse_precision(precision, accumulate)
    except ALLOWED:
        return
    assert config.mode in ("fp32", "fp16", "fp16-full", "fp16-storage")


@FAST
@given(st.one_of(st.text(max_size=20), st.from_regex(r"(kmeans|mask|prune)(:[-0-9.e]{0,6})"
                                                     r"(:[a-z]{0,8})?", fullmatch=True),
                 st.integers(), st.tuples(st.text(max_size=5), st.integers())))
def test_compress_specs_parse_or_raise(spec):
    from relay_passes.compress_spec import make_compressor

    try:
        compressor = make_compressor(spec)
    except ALLOWED:
        return
    assert compressor is not None


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A LeNet-5 for this host: the model and its exported library."""
    model = mdl_tvm.compile(seeded(zoo.LeNet5), "host", input_shapes=[(1, 1, 28, 28)])
    path = tmp_path_factory.mktemp("fuzz") / "lenet.so"
    model.export(str(path))
    return model, path


arrays = st.builds(
    lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
    st.lists(st.integers(0, 30), min_size=0, max_size=5).map(tuple),
    st.sampled_from(["float32", "float64", "float16", "int64", "uint8", "bool"]),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-3, 3)))


@SLOW
@given(st.lists(arrays, max_size=3))
def test_run_time_inputs_run_or_raise_input_spec_error(tiny, inputs):
    model, _ = tiny
    try:
        outputs = model.run(*inputs)
    except InputSpecError:
        return
    assert [o.shape for o in outputs] == [(1, 10)]


@SLOW
@given(st.data())
def test_damaged_libraries_are_refused_not_loaded(tiny, tmp_path, data):
    """Truncated or bit-flipped copies: `read_metadata(verify=True)` (what `info` and
    `load` do first) returns intact metadata or raises ModelFormatError."""
    _, path = tiny
    blob = bytearray(path.read_bytes())
    if data.draw(st.booleans()):
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            blob[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(blob))
    try:
        meta = read_metadata(bad, verify=True)
    except ModelFormatError:
        return
    assert meta["target"] == "host"  # a flip the checksum cannot see does not exist here
    assert hashlib.sha256(bytes(blob)).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_a_non_ascii_byte_in_the_checksum_trailer_is_damage(tiny, tmp_path):
    """Found by the test above: a flipped byte in the trailer's hex digest that is not
    ASCII raised UnicodeDecodeError instead of ModelFormatError."""
    _, path = tiny
    blob = bytearray(path.read_bytes())
    blob[-10] = 0xE3
    bad = tmp_path / "bad.so"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ModelFormatError, match="SHA-256"):
        read_metadata(bad, verify=True)


@FAST
@given(st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY"]), st.binary(max_size=600))
def test_channel_mask_files_load_or_raise(tmp_path, prefix, payload):
    from relay_passes.channel_masks import ChannelMasks

    path = tmp_path / "m.npz"
    path.write_bytes(prefix + payload)
    with pytest.raises(ValueError, match="not a MobileDL channel-mask file"):
        ChannelMasks.load(path)


@FAST
@given(st.binary(max_size=400))
def test_images_decode_or_raise_value_error(tmp_path, payload):
    from apps.style_transfer.data import read_image

    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + payload)
    try:
        image = read_image(path, max_side=64)
    except ValueError:
        return
    assert image.ndim == 3 and image.shape[2] == 3


@SLOW
@given(st.dictionaries(st.sampled_from(["__config__", "__vocab__", "embed.weight", "x"]),
                       st.one_of(st.just(np.zeros(3)), st.just(np.array("ab")),
                                 st.just(np.array([5, 4, 8, 1]))), max_size=4))
def test_poem_weight_files_load_or_raise(tmp_path, arrays_):
    from apps.poem.model import load_model

    path = tmp_path / "w.npz"
    np.savez(path, **arrays_)
    with pytest.raises(ModelFormatError):
        load_model(path)


def _database(tmp_path):
    """A real MetaSchedule database of two tiny workloads, two records each (no tuning)."""
    import tvm
    from tvm import te
    from tvm.s_tir import meta_schedule as ms

    db = ms.database.JSONDatabase(path_workload=str(tmp_path / "database_workload.json"),
                                  path_tuning_record=str(tmp_path / "database_tuning_record.json"),
                                  allow_missing=True)
    target = tvm.target.Target({"kind": "llvm"})
    for n in (8, 16):
        a = te.placeholder((n,), name="a")
        b = te.compute((n,), lambda i: a[i] * 2)  # noqa: B023 - built and used right here
        mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
        workload = db.commit_workload(mod)
        args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
        for secs in (2e-6, 1e-6):  # the best record last: reading must not take the first
            sch = tvm.s_tir.Schedule(mod)
            db.commit_tuning_record(ms.database.TuningRecord(sch.trace, workload, [secs],
                                                             target, args))
    return tmp_path


@SLOW
@given(st.data())
def test_damaged_tuning_databases_load_without_rewriting(tmp_path_factory, data):
    import warnings

    from schedules import database as dbmod

    db = _database(tmp_path_factory.mktemp("db"))
    for name in (dbmod.WORKLOAD_FILE, dbmod.RECORD_FILE):
        lines = (db / name).read_text().split("\n")
        for _ in range(data.draw(st.integers(0, 2))):
            i = data.draw(st.integers(0, len(lines) - 1))
            cut = data.draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:cut] + data.draw(st.text(max_size=4))
        (db / name).write_text("\n".join(lines))
    before = {p.name: p.read_bytes() for p in db.iterdir()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            loaded = dbmod.open_database(db)
        except FileNotFoundError:
            loaded = None
    if loaded is not None:
        assert len(loaded.get_all_tuning_records()) <= 4
    assert {p.name: p.read_bytes() for p in db.iterdir()} == before
    assert json.dumps(sorted(before)) == json.dumps(sorted(p.name for p in db.iterdir()))


def test_database_read_back_applies_each_workloads_best_record(tmp_path):
    """Read into memory (insertion order), the best record still wins, not the first."""
    from schedules import database as dbmod

    db = _database(tmp_path)
    best = dbmod.best_records(dbmod.open_database(db))
    assert len(best) == 2
    assert [dbmod.mean_seconds(r) for _, r in best] == [1e-6, 1e-6]
