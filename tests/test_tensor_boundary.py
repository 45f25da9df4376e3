"""The tensor boundary (csrc/tensor.h) seen through `_C.describe`."""

import numpy as np
import pytest
import torch

from affectvlm._ext import extension

C = extension()

NUMPY_DTYPES = {
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "int32": np.int32,
    "int64": np.int64,
    "uint8": np.uint8,
    "bool": np.bool_,
}
TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int32": torch.int32,
    "int64": torch.int64,
    "uint8": torch.uint8,
    "bool": torch.bool,
}


def random_tensor(shape, dtype, device="cpu"):
    values = torch.randn(shape, device=device) * 10
    return (values > 0) if dtype == torch.bool else values.to(dtype)


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_numpy_arrays_of_every_supported_dtype(name):
    array = np.ascontiguousarray(np.random.default_rng().standard_normal((4, 3, 5)) * 10).astype(NUMPY_DTYPES[name])
    seen = C.describe(array, dtype=name, ndim=3, contiguous=True, device="cpu", writable=True)
    assert seen["dtype"] == name
    assert seen["shape"] == (4, 3, 5)
    assert seen["strides"] == (15, 5, 1)
    assert seen["device"] == "cpu" and seen["device_index"] == 0
    assert seen["contiguous"] and not seen["readonly"]
    assert seen["data_ptr"] == array.ctypes.data


def tensor_cases(device):
    return [pytest.param(name, device, id=f"{device}-{name}") for name in TORCH_DTYPES]


@pytest.mark.parametrize("name,device", tensor_cases("cpu") + [
    pytest.param(*p.values, marks=pytest.mark.cuda, id=p.id) for p in tensor_cases("cuda")
])
def test_torch_tensors_of_every_supported_dtype_and_device(name, device):
    tensor = random_tensor((2, 7), TORCH_DTYPES[name], device)
    seen = C.describe(tensor, dtype=name, ndim=2, contiguous=True, device=device, writable=True)
    assert seen["dtype"] == name
    assert seen["shape"] == (2, 7)
    assert seen["device"] == device
    assert seen["device_index"] == (tensor.device.index or 0)
    assert seen["data_ptr"] == tensor.data_ptr()


def test_views_with_offsets_report_their_own_first_element():
    base = torch.arange(40, dtype=torch.float32).reshape(4, 10)
    rows = base[1:3]
    assert C.describe(rows)["data_ptr"] == rows.data_ptr() == base.data_ptr() + 10 * 4
    array = np.arange(40, dtype=np.int64).reshape(4, 10)[2:]
    assert C.describe(array)["data_ptr"] == array.ctypes.data


def test_scalars_and_empty_arrays_are_described():
    assert C.describe(torch.tensor(3.0))["shape"] == ()
    empty = C.describe(np.zeros((0, 3), dtype=np.float32), contiguous=True)
    assert empty["shape"] == (0, 3) and empty["contiguous"]


def test_a_list_of_dtypes_accepts_any_of_them():
    C.describe(np.zeros(3, np.int64), dtype=["int32", "int64"])
    with pytest.raises(TypeError, match=r"faces must have dtype int32 or int64, got float32"):
        C.describe(np.zeros(3, np.float32), "faces", dtype=["int32", "int64"])


def test_wrong_dtype_names_the_argument_and_both_dtypes():
    with pytest.raises(TypeError, match=r"^vertices must have dtype float32, got float64$"):
        C.describe(torch.zeros(5, 3, dtype=torch.float64), "vertices", dtype="float32")


@pytest.mark.parametrize("shape", [(5,), (5, 3, 1), ()])
def test_wrong_rank_names_the_argument_and_the_shape(shape):
    with pytest.raises(ValueError, match=r"^vertices must have 2 dimensions, got shape \("):
        C.describe(torch.zeros(shape), "vertices", ndim=2)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(4, 3).t(),
    lambda: torch.zeros(8, 3)[::2],
    lambda: np.zeros((3, 4), np.float32, order="F"),
    lambda: np.zeros((6, 4), np.float32)[:, 1:3],
], ids=["transposed", "strided-rows", "fortran", "column-slice"])
def test_non_contiguous_input_is_rejected(make):
    array = make()
    assert not C.describe(array)["contiguous"]
    with pytest.raises(ValueError, match=r"^faces must be contiguous \(C order\)"):
        C.describe(array, "faces", contiguous=True)


def test_size_one_dimensions_do_not_break_contiguity():
    tensor = torch.zeros(3, 1, 4).transpose(0, 1)  # shape (1, 3, 4): same memory order
    assert C.describe(tensor, contiguous=True)["contiguous"]


@pytest.mark.parametrize("obj,type_name", [
    ([[1.0, 2.0, 3.0]], "list"),
    ((1, 2), "tuple"),
    (3.5, "float"),
    (None, "NoneType"),
    ("mesh.obj", "str"),
    (object(), "object"),
])
def test_objects_that_are_not_arrays_are_rejected(obj, type_name):
    with pytest.raises(TypeError, match=rf"^vertices must be an array supporting DLPack .* got {type_name}$"):
        C.describe(obj, "vertices")


def test_unsupported_dtypes_are_rejected_with_the_supported_list():
    with pytest.raises(TypeError, match=r"^normals has an unsupported dtype .*supported dtypes are float16"):
        C.describe(torch.zeros(3, dtype=torch.complex64), "normals")
    with pytest.raises(TypeError, match=r"unsupported dtype"):
        C.describe(np.zeros(3, np.uint16))


def test_read_only_arrays_are_readable_but_not_writable():
    array = np.arange(6, dtype=np.float32)
    array.flags.writeable = False
    assert C.describe(array)["readonly"]
    with pytest.raises(ValueError, match=r"^images is read-only"):
        C.describe(array, "images", writable=True)


def test_device_mismatch_is_rejected():
    with pytest.raises(ValueError, match=r"^vertices must be on cuda:0, got cpu$"):
        C.describe(torch.zeros(3), "vertices", device="cuda:0")


@pytest.mark.cuda
def test_cuda_tensor_rejected_where_cpu_is_required():
    with pytest.raises(ValueError, match=r"^vertices must be on cpu, got cuda:0$"):
        C.describe(torch.zeros(3, device="cuda"), "vertices", device="cpu")


def test_producer_errors_are_reported_with_the_argument_name():
    with pytest.raises(TypeError, match=r"^embeddings cannot be read as an array: Tensor.__dlpack__\(\) failed"):
        C.describe(torch.zeros(3, requires_grad=True), "embeddings")


def test_bad_check_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        C.describe(torch.zeros(3), dtype="float8")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        C.describe(torch.zeros(3), device="tpu")


def test_the_exported_buffer_is_released_after_use():
    """Each view calls the producer's DLPack deleter: numpy's drops the reference the export took."""
    import sys

    array = np.zeros((16, 3), np.float32)
    before = sys.getrefcount(array)
    for _ in range(10):
        C.describe(array)
    with pytest.raises(TypeError):
        C.describe(array, dtype="int32")  # the failure path releases too
    assert sys.getrefcount(array) == before
