#
# loss cross_entropy(logits[c], y, class_weight[c]) wrt logits
#     smoothing = 'pytorch'
#     ignore if y == ignore_index
#     mean weighted by class_weight[y]
#     lse = logsumexp(logits, c)
#     smooth = lse * mean(class_weight, c) - mean(class_weight * logits, c)
#     alpha = label_smoothing
#     smoothed = alpha * smooth if label_smoothing > 0 else 0
#     entropy = lse - sum(exp(logits - lse) * logits if logits > -inf else 0, c)
#     hard = (1 - alpha) * class_weight[y] * (lse - logits[y]) if alpha != 1 else 0
#     z_term = z_loss * lse^2 if z_loss > 0 else 0
#     cross_entropy = hard + smoothed + z_term

import math

import numba
import numpy as np

from lossdsl.runtime.jit import kernel, load, store, maximum
from lossdsl.runtime.kernel_math import exp_float32 as fast_exp

F = np.float32
FASTMATH = {"contract", "reassoc"}
PARTIALS = (('load', 0, 0), ('load', 0, 1), ('logsumexp', 0, 2), ('mean', 0, 4), ('mean', 0, 5))


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_block_pass(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __width, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __lo, __C, __done, __level, __partial):
    """Partials over this block of the nodes of one level; rows left out keep theirs."""
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(__start, __stop):
        __o = __row // __inner
        __q = __row - __o * __inner
        __b0 = __o * __steps[0, 0] + __q * __steps[0, 1]
        __t0 = __steps[0, 2]
        y = load(_y_, __o * __steps[1, 0] + __q * __steps[1, 1])
        __b2 = __o * __steps[2, 0] + __q * __steps[2, 1]
        __t2 = __steps[2, 2]
        if not (y == ignore_index):
            if __level == 0:
                class_weight_y = 0.0
                if __lo <= y and y < __lo + __width:
                    class_weight_y = load(_class_weight_, __b2 + (y - __lo) * __t2)
                __partial[__row, 0] = class_weight_y
                logits_y = 0.0
                if __lo <= y and y < __lo + __width:
                    logits_y = load(_logits_, __b0 + (y - __lo) * __t0)
                __partial[__row, 1] = logits_y
                __lse_acc = F(-math.inf)
                for __c in range(__width):
                    c = __lo + __c
                    logits = load(_logits_, __b0 + __c * __t0)
                    __lse_acc = maximum(__lse_acc, logits)
                __lse_acc = __lse_acc if abs(__lse_acc) < math.inf else F(0.0)
                __lse_acc_sum = 0.0
                ___r1 = 0.0
                ___r2 = 0.0
                for __c0 in range(0, __width, 256):
                    __c1 = min(__c0 + 256, __width)
                    __part0 = F(0.0)
                    __part1 = F(0.0)
                    __part2 = F(0.0)
                    for __c in range(__c0, __c1):
                        c = __lo + __c
                        logits = load(_logits_, __b0 + __c * __t0)
                        class_weight = load(_class_weight_, __b2 + __c * __t2)
                        __part0 += F(fast_exp(logits - __lse_acc))
                        __part1 += F(class_weight)
                        __part2 += F(class_weight*logits)
                    __lse_acc_sum += __part0
                    ___r1 += __part1
                    ___r2 += __part2
                __partial[__row, 2] = __lse_acc
                __partial[__row, 3] = __lse_acc_sum
                __partial[__row, 4] = ___r1
                __partial[__row, 5] = ___r2
    return 0.0


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_block_value(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __width, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __lo, __C, __done, __weight, __scale, __out, __norms, __bad, __extra):
    """Each row's loss from its whole partials, what the mean divides by, and labels out of range."""
    __s = F(__scale)
    __weighted = __weight.size == __rows
    __total = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(__start, __stop):
        __o = __row // __inner
        __q = __row - __o * __inner
        __b0 = __o * __steps[0, 0] + __q * __steps[0, 1]
        __t0 = __steps[0, 2]
        y = load(_y_, __o * __steps[1, 0] + __q * __steps[1, 1])
        __b2 = __o * __steps[2, 0] + __q * __steps[2, 1]
        __t2 = __steps[2, 2]
        __w = __s * __weight[__row] if __weighted else __s
        __loss = 0.0
        __norms[__row] = 0.0
        if not (y == ignore_index):
            if y < 0 or y >= __C:
                __bad[__row] = 1
            class_weight_y = F(__done[__row, 0])
            logits_y = F(__done[__row, 1])
            __lse_acc = __done[__row, 2]
            __lse_acc_sum = __done[__row, 3]
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            ___r1 = __done[__row, 4]
            _r1 = F(___r1 / _len)
            ___r2 = __done[__row, 5]
            _r2 = F(___r2 / _len)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
            __norms[__row] = class_weight_y
        __out[__row] = __loss
        __total += __loss
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_block_grad(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __width, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __lo, __C, __done, __weight, __scale, __gscale, __grad_logits):
    """This block's gradients, times weight, scale and __gscale; each may be its own input."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(__start, __stop):
        __o = __row // __inner
        __q = __row - __o * __inner
        __b0 = __o * __steps[0, 0] + __q * __steps[0, 1]
        __t0 = __steps[0, 2]
        y = load(_y_, __o * __steps[1, 0] + __q * __steps[1, 1])
        __b2 = __o * __steps[2, 0] + __q * __steps[2, 1]
        __t2 = __steps[2, 2]
        __gw = __s * __gs * (__weight[__row] if __weighted else F(1.0))
        __gb = __o * __width * __inner + __q
        if not (y == ignore_index):
            class_weight_y = F(__done[__row, 0])
            logits_y = F(__done[__row, 1])
            __lse_acc = __done[__row, 2]
            __lse_acc_sum = __done[__row, 3]
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            ___r1 = __done[__row, 4]
            _r1 = F(___r1 / _len)
            ___r2 = __done[__row, 5]
            _r2 = F(___r2 / _len)
            _t1_0 = (label_smoothing > F(0.0))
            _t1_1 = class_weight_y*(F(1.0) - label_smoothing)
            _t1_2 = (label_smoothing != F(1.0))
            _a0 = (-label_smoothing if _t1_0 else F(0.0))
            _a2 = (_t1_1 if _t1_2 else F(0.0)) + (_r1*label_smoothing if _t1_0 else F(0.0)) + (F(2.0)*lse*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3 = (-_t1_1 if _t1_2 else F(0.0))
            __h0 = __gw*_a2
            __h1 = __gw*_a3
            __h2 = __gw*_a0/_len
            for __c in range(__width):
                c = __lo + __c
                logits = load(_logits_, __b0 + __c * __t0)
                class_weight = load(_class_weight_, __b2 + __c * __t2)
                store(__grad_logits, __gb + __c * __inner, __h0*fast_exp(logits - lse) + __h1*(F(1.0) if (c == y) else F(0.0)) + __h2*class_weight)
        else:
            for __c in range(__width):
                store(__grad_logits, __gb + __c * __inner, F(0.0))
    return 0.0


# each kernel's arguments, by name (lossdsl.runtime.protocol.bind)
KERNELS = {
    'loss_block_pass': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__width', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__lo', '__C', '__done', '__level', '__partial'),
    'loss_block_value': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__width', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__lo', '__C', '__done', '__weight', '__scale', '__out', '__norms', '__bad', '__extra'),
    'loss_block_grad': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__width', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__lo', '__C', '__done', '__weight', '__scale', '__gscale', '__grad_logits'),
}
