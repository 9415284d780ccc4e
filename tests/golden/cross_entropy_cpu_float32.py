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
from lossdsl.runtime.kernel_math import exp_float32 as fast_exp, log_float64 as fast_log64

F = np.float32
FASTMATH = {"contract", "reassoc"}


@numba.njit(fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_rows(_logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_):
    __norm = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(__rows):
        __o = __row // __inner
        __q = __row - __o * __inner
        __b0 = __o * __steps[0, 0] + __q * __steps[0, 1]
        __t0 = __steps[0, 2]
        y = load(_y_, __o * __steps[1, 0] + __q * __steps[1, 1])
        __b2 = __o * __steps[2, 0] + __q * __steps[2, 1]
        __t2 = __steps[2, 2]
        if not (y == ignore_index):
            if y < 0 or y >= __C:
                return __norm, __row, y
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            __norm += class_weight_y
    return __norm, -1, 0


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __out):
    """Weighted sum of the row losses; each also stored in __out when it has room."""
    __s = F(__scale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
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
        if not (y == ignore_index):
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            logits_y = load(_logits_, __b0 + y * __t0)
            __lse_acc = F(-math.inf)
            for c in range(__C):
                logits = load(_logits_, __b0 + c * __t0)
                __lse_acc = maximum(__lse_acc, logits)
            __lse_acc = __lse_acc if abs(__lse_acc) < math.inf else F(0.0)
            __lse_acc_sum = 0.0
            ___r1 = 0.0
            ___r2 = 0.0
            if (label_smoothing > F(0.0)):
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    __part1 = F(0.0)
                    __part2 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        class_weight = load(_class_weight_, __b2 + c * __t2)
                        __part0 += F(fast_exp(logits - __lse_acc))
                        __part1 += F(class_weight)
                        __part2 += F(class_weight*logits)
                    __lse_acc_sum += __part0
                    ___r1 += __part1
                    ___r2 += __part2
            else:
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        __part0 += F(fast_exp(logits - __lse_acc))
                    __lse_acc_sum += __part0
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            _r1 = F(___r1 / _len)
            _r2 = F(___r2 / _len)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
        else:
            __loss = 0.0
        if __elementwise:
            __out[__row] = __loss
        __total += __loss
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits):
    """Weighted sum of the row losses, and each gradient row, in one pass."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
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
        __gb = __o * __gso + __q * __gsq
        if not (y == ignore_index):
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            logits_y = load(_logits_, __b0 + y * __t0)
            __lse_acc = F(-math.inf)
            for c in range(__C):
                logits = load(_logits_, __b0 + c * __t0)
                __lse_acc = maximum(__lse_acc, logits)
            __lse_acc = __lse_acc if abs(__lse_acc) < math.inf else F(0.0)
            __lse_acc_sum = 0.0
            ___r1 = 0.0
            ___r2 = 0.0
            if (label_smoothing > F(0.0)):
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    __part1 = F(0.0)
                    __part2 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        class_weight = load(_class_weight_, __b2 + c * __t2)
                        __e = fast_exp(logits - __lse_acc)
                        store(__grad_logits, __gb + c * __gsc, __e)
                        __part0 += F(__e)
                        __part1 += F(class_weight)
                        __part2 += F(class_weight*logits)
                    __lse_acc_sum += __part0
                    ___r1 += __part1
                    ___r2 += __part2
            else:
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        __e = fast_exp(logits - __lse_acc)
                        store(__grad_logits, __gb + c * __gsc, __e)
                        __part0 += F(__e)
                    __lse_acc_sum += __part0
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            _r1 = F(___r1 / _len)
            _r2 = F(___r2 / _len)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            _t8_0 = (label_smoothing > F(0.0))
            _t8_1 = class_weight_y*(F(1.0) - label_smoothing)
            _t8_2 = (label_smoothing != F(1.0))
            _a0 = (-label_smoothing if _t8_0 else F(0.0))
            _a2 = (_t8_1 if _t8_2 else F(0.0)) + (_r1*label_smoothing if _t8_0 else F(0.0)) + (F(2.0)*lse*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3 = (-_t8_1 if _t8_2 else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
            __gw = __w * __gs
            __inv = F(1.0 / __lse_acc_sum)
            if (label_smoothing > F(0.0)):
                __h0 = __gw*__inv*_a2
                __h1 = __gw*_a0/_len
                for c in range(__C):
                    __softmax = load(__grad_logits, __gb + c * __gsc)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    store(__grad_logits, __gb + c * __gsc, __h0*__softmax + __h1*class_weight)
                store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
            else:
                __h0 = __gw*__inv*_a2
                for c in range(__C):
                    __softmax = load(__grad_logits, __gb + c * __gsc)
                    store(__grad_logits, __gb + c * __gsc, __h0*__softmax)
                store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
        else:
            __loss = 0.0
            for c in range(__C):
                store(__grad_logits, __gb + c * __gsc, F(0.0))
        if __elementwise:
            __out[__row] = __loss
        __total += __loss
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad_in_place(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits):
    """Weighted sum of the row losses, and each gradient row, in one pass."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
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
        __gb = __o * __gso + __q * __gsq
        if not (y == ignore_index):
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            logits_y = load(_logits_, __b0 + y * __t0)
            __lse_acc = F(-math.inf)
            for c in range(__C):
                logits = load(_logits_, __b0 + c * __t0)
                __lse_acc = maximum(__lse_acc, logits)
            __lse_acc = __lse_acc if abs(__lse_acc) < math.inf else F(0.0)
            __lse_acc_sum = 0.0
            ___r1 = 0.0
            ___r2 = 0.0
            if (label_smoothing > F(0.0)):
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    __part1 = F(0.0)
                    __part2 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        class_weight = load(_class_weight_, __b2 + c * __t2)
                        __part0 += F(fast_exp(logits - __lse_acc))
                        __part1 += F(class_weight)
                        __part2 += F(class_weight*logits)
                    __lse_acc_sum += __part0
                    ___r1 += __part1
                    ___r2 += __part2
            else:
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        __part0 += F(fast_exp(logits - __lse_acc))
                    __lse_acc_sum += __part0
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            _r1 = F(___r1 / _len)
            _r2 = F(___r2 / _len)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            _t8_0 = (label_smoothing > F(0.0))
            _t8_1 = class_weight_y*(F(1.0) - label_smoothing)
            _t8_2 = (label_smoothing != F(1.0))
            _a0 = (-label_smoothing if _t8_0 else F(0.0))
            _a2 = (_t8_1 if _t8_2 else F(0.0)) + (_r1*label_smoothing if _t8_0 else F(0.0)) + (F(2.0)*lse*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3 = (-_t8_1 if _t8_2 else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
            __gw = __w * __gs
            if (label_smoothing > F(0.0)):
                __h0 = __gw*_a2
                __h1 = __gw*_a0/_len
                for c in range(__C):
                    logits = load(_logits_, __b0 + c * __t0)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse) + __h1*class_weight)
                store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
            else:
                if ((z_loss > F(0.0)) or (label_smoothing != F(1.0))):
                    __h0 = __gw*_a2
                    for c in range(__C):
                        logits = load(_logits_, __b0 + c * __t0)
                        store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse))
                    store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
                else:
                    for c in range(__C):
                        store(__grad_logits, __gb + c * __gsc, F(0.0))
                    store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
        else:
            __loss = 0.0
            for c in range(__C):
                store(__grad_logits, __gb + c * __gsc, F(0.0))
        if __elementwise:
            __out[__row] = __loss
        __total += __loss
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad_outputs(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits, __extra):
    """Weighted sum of the row losses, and each gradient row, in one pass."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
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
        __gb = __o * __gso + __q * __gsq
        if not (y == ignore_index):
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            logits_y = load(_logits_, __b0 + y * __t0)
            __lse_acc = F(-math.inf)
            for c in range(__C):
                logits = load(_logits_, __b0 + c * __t0)
                __lse_acc = maximum(__lse_acc, logits)
            __lse_acc = __lse_acc if abs(__lse_acc) < math.inf else F(0.0)
            __lse_acc_sum = 0.0
            for __c0 in range(0, __C, 256):
                __c1 = min(__c0 + 256, __C)
                __part0 = F(0.0)
                for c in range(__c0, __c1):
                    logits = load(_logits_, __b0 + c * __t0)
                    __part0 += F(fast_exp(logits - __lse_acc))
                __lse_acc_sum += __part0
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            ___r1 = 0.0
            ___r2 = 0.0
            ___r3 = 0.0
            if (label_smoothing > F(0.0)):
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    __part1 = F(0.0)
                    __part2 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        class_weight = load(_class_weight_, __b2 + c * __t2)
                        __part0 += F(class_weight)
                        __part1 += F(class_weight*logits)
                        __part2 += F((logits*fast_exp(logits - lse) if (logits != F(-math.inf)) else F(0.0)))
                    ___r1 += __part0
                    ___r2 += __part1
                    ___r3 += __part2
            else:
                for __c0 in range(0, __C, 256):
                    __c1 = min(__c0 + 256, __C)
                    __part0 = F(0.0)
                    for c in range(__c0, __c1):
                        logits = load(_logits_, __b0 + c * __t0)
                        __part0 += F((logits*fast_exp(logits - lse) if (logits != F(-math.inf)) else F(0.0)))
                    ___r3 += __part0
            _r1 = F(___r1 / _len)
            _r2 = F(___r2 / _len)
            _r3 = F(___r3)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            entropy = -_r3 + lse
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            _t10_0 = (label_smoothing > F(0.0))
            _t10_1 = class_weight_y*(F(1.0) - label_smoothing)
            _t10_2 = (label_smoothing != F(1.0))
            _a0 = (-label_smoothing if _t10_0 else F(0.0))
            _a2 = (_t10_1 if _t10_2 else F(0.0)) + (_r1*label_smoothing if _t10_0 else F(0.0)) + (F(2.0)*lse*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3 = (-_t10_1 if _t10_2 else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
            __extra[__row, 0] = lse
            __extra[__row, 1] = entropy
            __gw = __w * __gs
            if (label_smoothing > F(0.0)):
                __h0 = __gw*_a2
                __h1 = __gw*_a0/_len
                for c in range(__C):
                    logits = load(_logits_, __b0 + c * __t0)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse) + __h1*class_weight)
                store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
            else:
                if ((z_loss > F(0.0)) or (label_smoothing != F(1.0))):
                    __h0 = __gw*_a2
                    for c in range(__C):
                        logits = load(_logits_, __b0 + c * __t0)
                        store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse))
                    store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
                else:
                    for c in range(__C):
                        store(__grad_logits, __gb + c * __gsc, F(0.0))
                    store(__grad_logits, __gb + y * __gsc, load(__grad_logits, __gb + y * __gsc) + __gw*_a3)
        else:
            __loss = 0.0
            __extra[__row, 0] = math.nan
            __extra[__row, 1] = math.nan
            for c in range(__C):
                store(__grad_logits, __gb + c * __gsc, F(0.0))
        if __elementwise:
            __out[__row] = __loss
        __total += __loss
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_lanes(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __out, __lanes):
    """Weighted sum of the row losses, tile by tile."""
    __s = F(__scale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
    __total = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    __w = np.empty(__lanes, F)
    __keep = np.empty(__lanes, np.bool_)
    y = np.empty(__lanes, np.int64)
    class_weight_y = np.empty(__lanes, F)
    logits_y = np.empty(__lanes, F)
    __lse_acc = np.empty(__lanes, F)
    __part0 = np.empty(__lanes, F)
    __part1 = np.empty(__lanes, F)
    __part2 = np.empty(__lanes, F)
    __loss = np.empty(__lanes, F)
    __lse_acc_sum = np.empty(__lanes, np.float64)
    ___r1 = np.empty(__lanes, np.float64)
    ___r2 = np.empty(__lanes, np.float64)
    lse = np.empty(__lanes, F)
    hard = np.empty(__lanes, F)
    _r1 = np.empty(__lanes, F)
    _r2 = np.empty(__lanes, F)
    smooth = np.empty(__lanes, F)
    z_term = np.empty(__lanes, F)
    smoothed = np.empty(__lanes, F)
    __tiles = (__inner + __lanes - 1) // __lanes
    for __tile in range(__start, __stop):
        __o = __tile // __tiles
        __q0 = (__tile - __o * __tiles) * __lanes
        __n = min(__lanes, __inner - __q0)
        __row0 = __o * __inner + __q0
        __b0 = __o * __steps[0, 0] + __q0 * __steps[0, 1]
        __t0 = __steps[0, 2]
        __b2 = __o * __steps[2, 0] + __q0 * __steps[2, 1]
        __t2 = __steps[2, 2]
        for __j in range(__n):
            y[__j] = load(_y_, __o * __steps[1, 0] + (__q0 + __j) * __steps[1, 1])
            __w[__j] = __s * __weight[__row0 + __j] if __weighted else __s
            __keep[__j] = not (y[__j] == ignore_index)
            y[__j] = y[__j] if __keep[__j] else 0
        for __j in range(__n):
            class_weight_y[__j] = load(_class_weight_, (__b2 + __j) + y[__j] * __t2)
            logits_y[__j] = load(_logits_, (__b0 + __j) + y[__j] * __t0)
            __lse_acc[__j] = F(-math.inf)
        for c in range(__C):
            for __j in range(__n):
                logits = load(_logits_, (__b0 + __j) + c * __t0)
                __lse_acc[__j] = maximum(__lse_acc[__j], logits)
        for __j in range(__n):
            __lse_acc[__j] = __lse_acc[__j] if abs(__lse_acc[__j]) < math.inf else F(0.0)
            __lse_acc_sum[__j] = 0.0
            ___r1[__j] = 0.0
            ___r2[__j] = 0.0
        if (label_smoothing > F(0.0)):
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                    __part1[__j] = F(0.0)
                    __part2[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        class_weight = load(_class_weight_, (__b2 + __j) + c * __t2)
                        __part0[__j] += F(fast_exp(logits - __lse_acc[__j]))
                        __part1[__j] += F(class_weight)
                        __part2[__j] += F(class_weight*logits)
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
                    ___r1[__j] += __part1[__j]
                    ___r2[__j] += __part2[__j]
        else:
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        __part0[__j] += F(fast_exp(logits - __lse_acc[__j]))
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
        for __j in range(__n):
            lse[__j] = F(__lse_acc[__j] + fast_log64(__lse_acc_sum[__j]))
            _r1[__j] = F(___r1[__j] / _len)
            _r2[__j] = F(___r2[__j] / _len)
            smooth[__j] = _r1[__j]*lse[__j] - _r2[__j]
            smoothed[__j] = (label_smoothing*smooth[__j] if (label_smoothing > F(0.0)) else F(0.0))
            hard[__j] = (class_weight_y[__j]*(F(1.0) - label_smoothing)*(-logits_y[__j] + lse[__j]) if (label_smoothing != F(1.0)) else F(0.0))
            z_term[__j] = ((lse[__j]*lse[__j])*z_loss if (z_loss > F(0.0)) else F(0.0))
            __loss[__j] = (hard[__j] + smoothed[__j] + z_term[__j]) * __w[__j]
        if __elementwise:
            for __j in range(__n):
                __out[__row0 + __j] = __loss[__j] if __keep[__j] else 0.0
        for __j in range(__n):
            __total += __loss[__j] if __keep[__j] else 0.0
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad_lanes(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits, __lanes):
    """Weighted sum of the row losses, tile by tile, and each gradient row."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
    __total = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    __w = np.empty(__lanes, F)
    __keep = np.empty(__lanes, np.bool_)
    y = np.empty(__lanes, np.int64)
    class_weight_y = np.empty(__lanes, F)
    logits_y = np.empty(__lanes, F)
    __lse_acc = np.empty(__lanes, F)
    __part0 = np.empty(__lanes, F)
    __part1 = np.empty(__lanes, F)
    __part2 = np.empty(__lanes, F)
    __loss = np.empty(__lanes, F)
    __gw = np.empty(__lanes, F)
    __lse_acc_sum = np.empty(__lanes, np.float64)
    ___r1 = np.empty(__lanes, np.float64)
    ___r2 = np.empty(__lanes, np.float64)
    lse = np.empty(__lanes, F)
    hard = np.empty(__lanes, F)
    _t8_1 = np.empty(__lanes, F)
    __h0 = np.empty(__lanes, F)
    __h1 = np.empty(__lanes, F)
    _r1 = np.empty(__lanes, F)
    _r2 = np.empty(__lanes, F)
    smooth = np.empty(__lanes, F)
    z_term = np.empty(__lanes, F)
    _a2 = np.empty(__lanes, F)
    _a3 = np.empty(__lanes, F)
    __inv = np.empty(__lanes, F)
    smoothed = np.empty(__lanes, F)
    __tiles = (__inner + __lanes - 1) // __lanes
    for __tile in range(__start, __stop):
        __o = __tile // __tiles
        __q0 = (__tile - __o * __tiles) * __lanes
        __n = min(__lanes, __inner - __q0)
        __row0 = __o * __inner + __q0
        __b0 = __o * __steps[0, 0] + __q0 * __steps[0, 1]
        __t0 = __steps[0, 2]
        __b2 = __o * __steps[2, 0] + __q0 * __steps[2, 1]
        __t2 = __steps[2, 2]
        __gb = __o * __gso + __q0 * __gsq
        for __j in range(__n):
            y[__j] = load(_y_, __o * __steps[1, 0] + (__q0 + __j) * __steps[1, 1])
            __w[__j] = __s * __weight[__row0 + __j] if __weighted else __s
            __keep[__j] = not (y[__j] == ignore_index)
            y[__j] = y[__j] if __keep[__j] else 0
        for __j in range(__n):
            class_weight_y[__j] = load(_class_weight_, (__b2 + __j) + y[__j] * __t2)
            logits_y[__j] = load(_logits_, (__b0 + __j) + y[__j] * __t0)
            __lse_acc[__j] = F(-math.inf)
        for c in range(__C):
            for __j in range(__n):
                logits = load(_logits_, (__b0 + __j) + c * __t0)
                __lse_acc[__j] = maximum(__lse_acc[__j], logits)
        for __j in range(__n):
            __lse_acc[__j] = __lse_acc[__j] if abs(__lse_acc[__j]) < math.inf else F(0.0)
            __lse_acc_sum[__j] = 0.0
            ___r1[__j] = 0.0
            ___r2[__j] = 0.0
        if (label_smoothing > F(0.0)):
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                    __part1[__j] = F(0.0)
                    __part2[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        class_weight = load(_class_weight_, (__b2 + __j) + c * __t2)
                        __e = fast_exp(logits - __lse_acc[__j])
                        store(__grad_logits, (__gb + __j) + c * __gsc, __e)
                        __part0[__j] += F(__e)
                        __part1[__j] += F(class_weight)
                        __part2[__j] += F(class_weight*logits)
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
                    ___r1[__j] += __part1[__j]
                    ___r2[__j] += __part2[__j]
        else:
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        __e = fast_exp(logits - __lse_acc[__j])
                        store(__grad_logits, (__gb + __j) + c * __gsc, __e)
                        __part0[__j] += F(__e)
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
        for __j in range(__n):
            lse[__j] = F(__lse_acc[__j] + fast_log64(__lse_acc_sum[__j]))
            _r1[__j] = F(___r1[__j] / _len)
            _r2[__j] = F(___r2[__j] / _len)
            smooth[__j] = _r1[__j]*lse[__j] - _r2[__j]
            smoothed[__j] = (label_smoothing*smooth[__j] if (label_smoothing > F(0.0)) else F(0.0))
            hard[__j] = (class_weight_y[__j]*(F(1.0) - label_smoothing)*(-logits_y[__j] + lse[__j]) if (label_smoothing != F(1.0)) else F(0.0))
            z_term[__j] = ((lse[__j]*lse[__j])*z_loss if (z_loss > F(0.0)) else F(0.0))
        _t8_0 = (label_smoothing > F(0.0))
        for __j in range(__n):
            _t8_1[__j] = class_weight_y[__j]*(F(1.0) - label_smoothing)
        _t8_2 = (label_smoothing != F(1.0))
        _a0 = (-label_smoothing if _t8_0 else F(0.0))
        for __j in range(__n):
            _a2[__j] = (_t8_1[__j] if _t8_2 else F(0.0)) + (_r1[__j]*label_smoothing if _t8_0 else F(0.0)) + (F(2.0)*lse[__j]*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3[__j] = (-_t8_1[__j] if _t8_2 else F(0.0))
            __loss[__j] = (hard[__j] + smoothed[__j] + z_term[__j]) * __w[__j]
            __gw[__j] = __w[__j] * __gs
            __inv[__j] = F(1.0 / __lse_acc_sum[__j])
        if (label_smoothing > F(0.0)):
            for __j in range(__n):
                __h0[__j] = __gw[__j]*__inv[__j]*_a2[__j]
                __h1[__j] = __gw[__j]*_a0/_len
            for c in range(__C):
                for __j in range(__n):
                    __softmax = load(__grad_logits, (__gb + __j) + c * __gsc)
                    class_weight = load(_class_weight_, (__b2 + __j) + c * __t2)
                    store(__grad_logits, (__gb + __j) + c * __gsc, ((__h0[__j]*__softmax + __h1[__j]*class_weight) if __keep[__j] else F(0.0)))
            for __j in range(__n):
                store(__grad_logits, (__gb + __j) + y[__j] * __gsc, load(__grad_logits, (__gb + __j) + y[__j] * __gsc) + ((__gw[__j]*_a3[__j]) if __keep[__j] else F(0.0)))
        else:
            for __j in range(__n):
                __h0[__j] = __gw[__j]*__inv[__j]*_a2[__j]
            for c in range(__C):
                for __j in range(__n):
                    __softmax = load(__grad_logits, (__gb + __j) + c * __gsc)
                    store(__grad_logits, (__gb + __j) + c * __gsc, ((__h0[__j]*__softmax) if __keep[__j] else F(0.0)))
            for __j in range(__n):
                store(__grad_logits, (__gb + __j) + y[__j] * __gsc, load(__grad_logits, (__gb + __j) + y[__j] * __gsc) + ((__gw[__j]*_a3[__j]) if __keep[__j] else F(0.0)))
        if __elementwise:
            for __j in range(__n):
                __out[__row0 + __j] = __loss[__j] if __keep[__j] else 0.0
        for __j in range(__n):
            __total += __loss[__j] if __keep[__j] else 0.0
    return __total


@kernel(nogil=True, fastmath=FASTMATH, error_model="numpy", cache=True)
def loss_value_and_grad_in_place_lanes(__start, __stop, _logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits, __lanes):
    """Weighted sum of the row losses, tile by tile, and each gradient row."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
    __total = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    __w = np.empty(__lanes, F)
    __keep = np.empty(__lanes, np.bool_)
    y = np.empty(__lanes, np.int64)
    class_weight_y = np.empty(__lanes, F)
    logits_y = np.empty(__lanes, F)
    __lse_acc = np.empty(__lanes, F)
    __part0 = np.empty(__lanes, F)
    __part1 = np.empty(__lanes, F)
    __part2 = np.empty(__lanes, F)
    __loss = np.empty(__lanes, F)
    __gw = np.empty(__lanes, F)
    __lse_acc_sum = np.empty(__lanes, np.float64)
    ___r1 = np.empty(__lanes, np.float64)
    ___r2 = np.empty(__lanes, np.float64)
    lse = np.empty(__lanes, F)
    hard = np.empty(__lanes, F)
    _t8_1 = np.empty(__lanes, F)
    __h0 = np.empty(__lanes, F)
    __h1 = np.empty(__lanes, F)
    _r1 = np.empty(__lanes, F)
    _r2 = np.empty(__lanes, F)
    smooth = np.empty(__lanes, F)
    z_term = np.empty(__lanes, F)
    _a2 = np.empty(__lanes, F)
    _a3 = np.empty(__lanes, F)
    smoothed = np.empty(__lanes, F)
    __tiles = (__inner + __lanes - 1) // __lanes
    for __tile in range(__start, __stop):
        __o = __tile // __tiles
        __q0 = (__tile - __o * __tiles) * __lanes
        __n = min(__lanes, __inner - __q0)
        __row0 = __o * __inner + __q0
        __b0 = __o * __steps[0, 0] + __q0 * __steps[0, 1]
        __t0 = __steps[0, 2]
        __b2 = __o * __steps[2, 0] + __q0 * __steps[2, 1]
        __t2 = __steps[2, 2]
        __gb = __o * __gso + __q0 * __gsq
        for __j in range(__n):
            y[__j] = load(_y_, __o * __steps[1, 0] + (__q0 + __j) * __steps[1, 1])
            __w[__j] = __s * __weight[__row0 + __j] if __weighted else __s
            __keep[__j] = not (y[__j] == ignore_index)
            y[__j] = y[__j] if __keep[__j] else 0
        for __j in range(__n):
            class_weight_y[__j] = load(_class_weight_, (__b2 + __j) + y[__j] * __t2)
            logits_y[__j] = load(_logits_, (__b0 + __j) + y[__j] * __t0)
            __lse_acc[__j] = F(-math.inf)
        for c in range(__C):
            for __j in range(__n):
                logits = load(_logits_, (__b0 + __j) + c * __t0)
                __lse_acc[__j] = maximum(__lse_acc[__j], logits)
        for __j in range(__n):
            __lse_acc[__j] = __lse_acc[__j] if abs(__lse_acc[__j]) < math.inf else F(0.0)
            __lse_acc_sum[__j] = 0.0
            ___r1[__j] = 0.0
            ___r2[__j] = 0.0
        if (label_smoothing > F(0.0)):
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                    __part1[__j] = F(0.0)
                    __part2[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        class_weight = load(_class_weight_, (__b2 + __j) + c * __t2)
                        __part0[__j] += F(fast_exp(logits - __lse_acc[__j]))
                        __part1[__j] += F(class_weight)
                        __part2[__j] += F(class_weight*logits)
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
                    ___r1[__j] += __part1[__j]
                    ___r2[__j] += __part2[__j]
        else:
            for __c0 in range(0, __C, 16):
                __c1 = min(__c0 + 16, __C)
                for __j in range(__n):
                    __part0[__j] = F(0.0)
                for c in range(__c0, __c1):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        __part0[__j] += F(fast_exp(logits - __lse_acc[__j]))
                for __j in range(__n):
                    __lse_acc_sum[__j] += __part0[__j]
        for __j in range(__n):
            lse[__j] = F(__lse_acc[__j] + fast_log64(__lse_acc_sum[__j]))
            _r1[__j] = F(___r1[__j] / _len)
            _r2[__j] = F(___r2[__j] / _len)
            smooth[__j] = _r1[__j]*lse[__j] - _r2[__j]
            smoothed[__j] = (label_smoothing*smooth[__j] if (label_smoothing > F(0.0)) else F(0.0))
            hard[__j] = (class_weight_y[__j]*(F(1.0) - label_smoothing)*(-logits_y[__j] + lse[__j]) if (label_smoothing != F(1.0)) else F(0.0))
            z_term[__j] = ((lse[__j]*lse[__j])*z_loss if (z_loss > F(0.0)) else F(0.0))
        _t8_0 = (label_smoothing > F(0.0))
        for __j in range(__n):
            _t8_1[__j] = class_weight_y[__j]*(F(1.0) - label_smoothing)
        _t8_2 = (label_smoothing != F(1.0))
        _a0 = (-label_smoothing if _t8_0 else F(0.0))
        for __j in range(__n):
            _a2[__j] = (_t8_1[__j] if _t8_2 else F(0.0)) + (_r1[__j]*label_smoothing if _t8_0 else F(0.0)) + (F(2.0)*lse[__j]*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3[__j] = (-_t8_1[__j] if _t8_2 else F(0.0))
            __loss[__j] = (hard[__j] + smoothed[__j] + z_term[__j]) * __w[__j]
            __gw[__j] = __w[__j] * __gs
        if (label_smoothing > F(0.0)):
            for __j in range(__n):
                __h0[__j] = __gw[__j]*_a2[__j]
                __h1[__j] = __gw[__j]*_a0/_len
            for c in range(__C):
                for __j in range(__n):
                    logits = load(_logits_, (__b0 + __j) + c * __t0)
                    class_weight = load(_class_weight_, (__b2 + __j) + c * __t2)
                    store(__grad_logits, (__gb + __j) + c * __gsc, ((__h0[__j]*fast_exp(logits - lse[__j]) + __h1[__j]*class_weight) if __keep[__j] else F(0.0)))
            for __j in range(__n):
                store(__grad_logits, (__gb + __j) + y[__j] * __gsc, load(__grad_logits, (__gb + __j) + y[__j] * __gsc) + ((__gw[__j]*_a3[__j]) if __keep[__j] else F(0.0)))
        else:
            if ((z_loss > F(0.0)) or (label_smoothing != F(1.0))):
                for __j in range(__n):
                    __h0[__j] = __gw[__j]*_a2[__j]
                for c in range(__C):
                    for __j in range(__n):
                        logits = load(_logits_, (__b0 + __j) + c * __t0)
                        store(__grad_logits, (__gb + __j) + c * __gsc, ((__h0[__j]*fast_exp(logits - lse[__j])) if __keep[__j] else F(0.0)))
                for __j in range(__n):
                    store(__grad_logits, (__gb + __j) + y[__j] * __gsc, load(__grad_logits, (__gb + __j) + y[__j] * __gsc) + ((__gw[__j]*_a3[__j]) if __keep[__j] else F(0.0)))
            else:
                for c in range(__C):
                    for __j in range(__n):
                        store(__grad_logits, (__gb + __j) + c * __gsc, ((F(0.0)) if __keep[__j] else F(0.0)))
                for __j in range(__n):
                    store(__grad_logits, (__gb + __j) + y[__j] * __gsc, load(__grad_logits, (__gb + __j) + y[__j] * __gsc) + ((__gw[__j]*_a3[__j]) if __keep[__j] else F(0.0)))
        if __elementwise:
            for __j in range(__n):
                __out[__row0 + __j] = __loss[__j] if __keep[__j] else 0.0
        for __j in range(__n):
            __total += __loss[__j] if __keep[__j] else 0.0
    return __total


# each kernel's arguments, by name (lossdsl.runtime.protocol.bind)
KERNELS = {
    'loss_rows': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_'),
    'loss_value': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__out'),
    'loss_value_and_grad': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits'),
    'loss_value_and_grad_in_place': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits'),
    'loss_value_and_grad_outputs': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits', '__extra'),
    'loss_value_lanes': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__out', '__lanes'),
    'loss_value_and_grad_lanes': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits', '__lanes'),
    'loss_value_and_grad_in_place_lanes': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits', '__lanes'),
}
