"""The .npz as calibration data: a model takes `x` (or one key per input name) and every other member is ignored,
as before models with several inputs were taken; what is read is never unpickled nor over the size limit; integers
are never wrapped into an input's narrower dtype."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from secateurs.pruning import PruneSpec, prune
from secateurs.pruning.data import Dataset, load_npz
from secateurs.pruning.errors import BadDataError

from tests.conftest import npz_bytes
from tests.pruning.exporters import multi_input_onnx, small_classifier, torch_onnx


def with_members(data: bytes, members: dict[str, bytes]) -> bytes:
    """`data`, an .npz, with other zip members added (a README, a Mac's resource forks)."""
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as z:
        for name, content in members.items():
            z.writestr(name, content)
    return buf.getvalue()


def classifier_npz(n: int = 40) -> bytes:
    """x and y for a single-input classifier, with what else people keep beside them: a mean, class names, per-sample
    weights, a version number, a README and a Mac's resource fork."""
    x = np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
    data = npz_bytes(x=x, y=np.arange(n) % 4, mean=np.zeros(3), class_names=np.array(["cat", "dog", "owl", "ant"]),
                     weights=np.ones((n, 5)), version=np.int64(2))
    return with_members(data, {"__MACOSX/._x.npy": b"\x00\x05\x16\x07 not an array", "README.txt": b"images"})


def test_a_single_input_model_prunes_with_other_members_in_the_npz_ignored_as_before():
    sent = torch_onnx(small_classifier(), (1, 3, 32, 32)).SerializeToString()
    data = load_npz(classifier_npz())
    r = prune(sent, PruneSpec.model_validate({"target": {"macs": 0.5}}), calibration=data)
    assert r.report["macs_after"] <= 0.5 * r.report["macs_before"] and r.report["fidelity"]["measured"]


def test_a_single_input_is_taken_under_x_or_its_own_name_and_other_keys_are_left_out():
    x = np.ones((6, 3, 32, 32), np.float32)
    named = load_npz(npz_bytes(image=x, mean=np.zeros(3), ids=np.arange(6)))
    bound = named.bind(["image"], [np.dtype(np.float32)])
    assert bound.names == ["image"] and len(bound) == 6
    both = load_npz(npz_bytes(image=x[:2], x=x, y=np.arange(6)))  # x wins, as it always did
    assert len(both.bind(["image"], [np.dtype(np.float32)])) == 6
    sent = multi_input_onnx(small_classifier(), {"image": torch.randn(1, 3, 32, 32)}, ("logits",))
    r = prune(sent, PruneSpec.model_validate({"target": {"macs": 0.5}}), calibration=named)
    assert r.report["inputs"][0]["name"] == "image"


def test_an_npz_member_needing_pickle_is_refused_and_never_unpickled(tmp_path):
    flag = tmp_path / "unpickled"

    class Boom:
        def __reduce__(self):
            return (open, (str(flag), "w"))

    obj = io.BytesIO()
    np.save(obj, np.array([Boom()], dtype=object), allow_pickle=True)
    data = with_members(npz_bytes(x=np.zeros((2, 3, 8, 8), np.float32)), {"names.npy": obj.getvalue()})
    with pytest.raises(BadDataError, match="without pickle: names.npy holds Python objects"):
        load_npz(data)
    assert not flag.exists()
    pickle.loads(pickle.dumps(Boom()))  # the payload would have left its mark
    assert flag.exists()


def test_an_unused_member_still_counts_towards_the_size_limit():
    x = np.zeros((4, 3, 8, 8), np.float32)
    load_npz(npz_bytes(x=x, mean=np.zeros(100, np.float32)), max_elements=x.size + 100)
    with pytest.raises(BadDataError, match="mean.npy declares shape \\[100\\]"):
        load_npz(npz_bytes(x=x, mean=np.zeros(100, np.float32)), max_elements=x.size + 99)


@pytest.mark.parametrize("values,want,needle", [
    (np.array([1, 2**40]), np.int32, "ids holds values from 1 to 1099511627776"),
    (np.array([-1, 3]), np.uint8, "ids holds values from -1 to 3"),
    (np.array([0, 300], np.int16), np.uint8, "outside the range of the model's input 'ids' \\(uint8: 0 to 255\\)"),
])
def test_integers_outside_the_inputs_dtype_are_refused_not_wrapped(values, want, needle):
    data = Dataset(np.zeros((2, 3), np.float32), None, {"ids": values}, "image")
    with pytest.raises(BadDataError, match=needle):
        data.bind(["image", "ids"], [np.dtype(np.float32), np.dtype(want)])


def test_integers_within_the_inputs_dtype_are_narrowed_exactly():
    data = Dataset(np.zeros((3, 3), np.float32), None, {"ids": np.array([-2**31, 0, 2**31 - 1])}, "image")
    bound = data.bind(["image", "ids"], [np.dtype(np.float32), np.dtype(np.int32)])
    assert bound.extra["ids"].dtype == np.int32
    np.testing.assert_array_equal(bound.extra["ids"], [-2**31, 0, 2**31 - 1])
