"""Asks the driver whether a device pointer is managed memory (cuPointerGetAttribute)."""
import ctypes

_cuda = ctypes.CDLL("libcuda.so.1")
_IS_MANAGED = 8  # CU_POINTER_ATTRIBUTE_IS_MANAGED


def kind(ptr):
    value = ctypes.c_int(-1)
    rc = _cuda.cuPointerGetAttribute(ctypes.byref(value), _IS_MANAGED, ctypes.c_uint64(ptr))
    if rc != 0:
        return f"unknown(error {rc})"
    return "managed" if value.value else "device"
