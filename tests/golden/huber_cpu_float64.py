#
# loss huber(pred, target) wrt pred
#     d = abs(pred - target)
#     huber = 0.5 * d^2 if d < delta else delta * (d - 0.5 * delta)

import math

import numba
import numpy as np

from lossdsl.runtime.jit import kernel

F = np.float64
FASTMATH = {"contract", "reassoc"}


@numba.njit(inline="always", fastmath=FASTMATH, error_model="numpy")
def _sign(x):
    return F(1.0) if x > 0 else F(-1.0) if x < 0 else x * F(0.0)


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value(__start, __stop, _pred_, _target_, _delta_, __weight, __scale, __check, __out):
    """Weighted sum of the loss elements; each one is also stored in __out when it has room."""
    delta = F(_delta_)
    __s = F(__scale)
    __n = _pred_.size
    __weighted = __weight.size == __n
    __elementwise = __out.size == __n
    __plain = not __weighted and not __elementwise
    __total = 0.0
    __stop_u = np.uint64(__stop)
    __losses = np.empty(512, F)
    if __plain:
        for __b in range(np.uint64(__start), __stop_u, np.uint64(512)):
            __end = min(__b + np.uint64(512), __stop_u)
            for __i in range(__b, __end):
                pred = _pred_[__i]
                target = _target_[__i]
                d = abs(pred - target)
                __w = __s
                __loss = (((F(0.5))*(d*d) if (d < delta) else delta*(d - F(0.5)*delta))) * __w
                __losses[__i - __b] = __loss
            for __j in range(__end - __b):
                __total += __losses[__j]
    else:
        for __b in range(np.uint64(__start), __stop_u, np.uint64(512)):
            __end = min(__b + np.uint64(512), __stop_u)
            for __i in range(__b, __end):
                pred = _pred_[__i]
                target = _target_[__i]
                d = abs(pred - target)
                __w = __s * __weight[__i] if __weighted else __s
                __loss = (((F(0.5))*(d*d) if (d < delta) else delta*(d - F(0.5)*delta))) * __w
                if __elementwise:
                    __out[__i] = __loss
                __losses[__i - __b] = __loss
            for __j in range(__end - __b):
                __total += __losses[__j]
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad(__start, __stop, _pred_, _target_, _delta_, __weight, __scale, __check, __gscale, __out, __grad_pred):
    """loss_value, and each gradient times weight and __gscale, in one pass."""
    delta = F(_delta_)
    __s = F(__scale)
    __gs = F(__gscale)
    __n = _pred_.size
    __weighted = __weight.size == __n
    __elementwise = __out.size == __n
    __plain = not __weighted and not __elementwise
    __total = 0.0
    __stop_u = np.uint64(__stop)
    __losses = np.empty(512, F)
    if __plain:
        for __b in range(np.uint64(__start), __stop_u, np.uint64(512)):
            __end = min(__b + np.uint64(512), __stop_u)
            for __i in range(__b, __end):
                pred = _pred_[__i]
                target = _target_[__i]
                _0 = pred - target
                d = abs(_0)
                _2 = (delta > d)
                _3 = _sign(_0)
                __w = __s
                __loss = (((F(0.5))*(d*d) if _2 else delta*(d - F(0.5)*delta))) * __w
                __gw = __w * __gs
                __grad_pred[__i] = ((_3*d if _2 else _3*delta)) * __gw
                __losses[__i - __b] = __loss
            for __j in range(__end - __b):
                __total += __losses[__j]
    else:
        for __b in range(np.uint64(__start), __stop_u, np.uint64(512)):
            __end = min(__b + np.uint64(512), __stop_u)
            for __i in range(__b, __end):
                pred = _pred_[__i]
                target = _target_[__i]
                _0 = pred - target
                d = abs(_0)
                _2 = (delta > d)
                _3 = _sign(_0)
                __w = __s * __weight[__i] if __weighted else __s
                __loss = (((F(0.5))*(d*d) if _2 else delta*(d - F(0.5)*delta))) * __w
                if __elementwise:
                    __out[__i] = __loss
                __gw = __w * __gs
                __grad_pred[__i] = ((_3*d if _2 else _3*delta)) * __gw
                __losses[__i - __b] = __loss
            for __j in range(__end - __b):
                __total += __losses[__j]
    return __total


loss_value_and_grad_in_place = loss_value_and_grad  # reads each element before storing there


# each kernel's arguments, by name (lossdsl.runtime.protocol.bind)
KERNELS = {
    'loss_value': ('_pred_', '_target_', '_delta_', '__weight', '__scale', '__check', '__out'),
    'loss_value_and_grad': ('_pred_', '_target_', '_delta_', '__weight', '__scale', '__check', '__gscale', '__out', '__grad_pred'),
    'loss_value_and_grad_in_place': ('_pred_', '_target_', '_delta_', '__weight', '__scale', '__check', '__gscale', '__out', '__grad_pred'),
}
