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

from numba import cuda


if numba.config.ENABLE_CUDASIM:
    fast_exp = np.exp
else:
    fast_exp = math.exp


@cuda.jit(device=True)
def _block_sum(shared, value):
    """The sum of `value` over the block's threads, for every thread (a tree in shared memory)."""
    t = cuda.threadIdx.x
    shared[t] = value
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            shared[t] += shared[t + half]
        cuda.syncthreads()
        half //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _block_logsumexp(shared, shared_s, top, total):
    """Combines the threads' online logsumexp pairs (max, sum of exp(x - max)); every thread gets the row's."""
    t = cuda.threadIdx.x
    shared[t] = top
    shared_s[t] = total
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:
        if t < half:
            a, b = shared[t], shared[t + half]
            top = max(a, b)
            scale_a = 1.0 if a == top else fast_exp(a - top)
            scale_b = 1.0 if b == top else fast_exp(b - top)
            shared_s[t] = shared_s[t] * scale_a + shared_s[t + half] * scale_b
            shared[t] = top
        cuda.syncthreads()
        half //= 2
    top, total = shared[0], shared_s[0]
    cuda.syncthreads()
    return top, total


@cuda.jit(device=True, inline=True)
def load(array, index):
    return array[index]


@cuda.jit(device=True, inline=True)
def store(array, index, value):
    array[index] = value

F = np.float32
THREADS = 8 if numba.config.ENABLE_CUDASIM else 256


@cuda.jit(cache=True)
def loss_rows(_logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __bad, __result):
    __norm = 0.0
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(cuda.grid(1), __rows, cuda.gridsize(1)):
        __o = __row // __inner
        __q = __row - __o * __inner
        __b0 = __o * __steps[0, 0] + __q * __steps[0, 1]
        __t0 = __steps[0, 2]
        y = load(_y_, __o * __steps[1, 0] + __q * __steps[1, 1])
        __b2 = __o * __steps[2, 0] + __q * __steps[2, 1]
        __t2 = __steps[2, 2]
        if not (y == ignore_index):
            if y < 0 or y >= __C:
                cuda.atomic.min(__bad, 0, __row)
                continue
            class_weight_y = load(_class_weight_, __b2 + y * __t2)
            __norm += class_weight_y
    __partials = cuda.shared.array(THREADS, numba.float64)
    __norm = _block_sum(__partials, __norm)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(__result, 0, __norm)


@cuda.jit(cache=True)
def loss_value(_logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __out, __result):
    """Weighted sum of the row losses; each also stored in __out when it has room."""
    __s = F(__scale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
    __total = 0.0
    __shared = cuda.shared.array(THREADS, numba.float64)
    __shared_s = cuda.shared.array(THREADS, numba.float64)
    __shared_i = cuda.shared.array(THREADS, numba.int64)
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(cuda.blockIdx.x, __rows, cuda.gridDim.x):
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
            __lse_acc_sum = 0.0
            ___r1 = 0.0
            ___r2 = 0.0
            if (label_smoothing > F(0.0)):
                for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                    logits = load(_logits_, __b0 + c * __t0)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    __lse_acc_v = logits
                    if __lse_acc_v > __lse_acc:
                        __lse_acc_sum = __lse_acc_sum * fast_exp(__lse_acc - __lse_acc_v) + 1.0
                        __lse_acc = __lse_acc_v
                    else:
                        __lse_acc_sum += 1.0 if __lse_acc_v == __lse_acc else fast_exp(__lse_acc_v - __lse_acc)
                    ___r1 += class_weight
                    ___r2 += class_weight*logits
            else:
                for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                    logits = load(_logits_, __b0 + c * __t0)
                    __lse_acc_v = logits
                    if __lse_acc_v > __lse_acc:
                        __lse_acc_sum = __lse_acc_sum * fast_exp(__lse_acc - __lse_acc_v) + 1.0
                        __lse_acc = __lse_acc_v
                    else:
                        __lse_acc_sum += 1.0 if __lse_acc_v == __lse_acc else fast_exp(__lse_acc_v - __lse_acc)
            __lse_acc, __lse_acc_sum = _block_logsumexp(__shared, __shared_s, __lse_acc, __lse_acc_sum)
            ___r1 = _block_sum(__shared, ___r1)
            ___r2 = _block_sum(__shared, ___r2)
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
        if cuda.threadIdx.x == 0:
            if __elementwise:
                __out[__row] = __loss
            __total += __loss
    __partials = cuda.shared.array(THREADS, numba.float64)
    __total = _block_sum(__partials, __total)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(__result, 0, __total)


@cuda.jit(cache=True)
def loss_value_and_grad(_logits_, _y_, _class_weight_, __steps, __rows, __C, __inner, _ignore_index_, _label_smoothing_, _z_loss_, __weight, __scale, __gscale, __gso, __gsq, __gsc, __out, __grad_logits, __result):
    """Weighted sum of the row losses, and each gradient row, in one pass."""
    __s = F(__scale)
    __gs = F(__gscale)
    __weighted = __weight.size == __rows
    __elementwise = __out.size == __rows
    __total = 0.0
    __shared = cuda.shared.array(THREADS, numba.float64)
    __shared_s = cuda.shared.array(THREADS, numba.float64)
    __shared_i = cuda.shared.array(THREADS, numba.int64)
    ignore_index = F(_ignore_index_)
    label_smoothing = F(_label_smoothing_)
    z_loss = F(_z_loss_)
    _len = F(__C)
    for __row in range(cuda.blockIdx.x, __rows, cuda.gridDim.x):
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
            __lse_acc_sum = 0.0
            ___r1 = 0.0
            ___r2 = 0.0
            if (label_smoothing > F(0.0)):
                for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                    logits = load(_logits_, __b0 + c * __t0)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    __lse_acc_v = logits
                    if __lse_acc_v > __lse_acc:
                        __lse_acc_sum = __lse_acc_sum * fast_exp(__lse_acc - __lse_acc_v) + 1.0
                        __lse_acc = __lse_acc_v
                    else:
                        __lse_acc_sum += 1.0 if __lse_acc_v == __lse_acc else fast_exp(__lse_acc_v - __lse_acc)
                    ___r1 += class_weight
                    ___r2 += class_weight*logits
            else:
                for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                    logits = load(_logits_, __b0 + c * __t0)
                    __lse_acc_v = logits
                    if __lse_acc_v > __lse_acc:
                        __lse_acc_sum = __lse_acc_sum * fast_exp(__lse_acc - __lse_acc_v) + 1.0
                        __lse_acc = __lse_acc_v
                    else:
                        __lse_acc_sum += 1.0 if __lse_acc_v == __lse_acc else fast_exp(__lse_acc_v - __lse_acc)
            __lse_acc, __lse_acc_sum = _block_logsumexp(__shared, __shared_s, __lse_acc, __lse_acc_sum)
            ___r1 = _block_sum(__shared, ___r1)
            ___r2 = _block_sum(__shared, ___r2)
            lse = F(__lse_acc + math.log(__lse_acc_sum))
            _r1 = F(___r1 / _len)
            _r2 = F(___r2 / _len)
            smooth = _r1*lse - _r2
            smoothed = (label_smoothing*smooth if (label_smoothing > F(0.0)) else F(0.0))
            hard = (class_weight_y*(F(1.0) - label_smoothing)*(-logits_y + lse) if (label_smoothing != F(1.0)) else F(0.0))
            z_term = ((lse*lse)*z_loss if (z_loss > F(0.0)) else F(0.0))
            _t7_0 = (label_smoothing > F(0.0))
            _t7_1 = class_weight_y*(F(1.0) - label_smoothing)
            _t7_2 = (label_smoothing != F(1.0))
            _a0 = (-label_smoothing if _t7_0 else F(0.0))
            _a2 = (_t7_1 if _t7_2 else F(0.0)) + (_r1*label_smoothing if _t7_0 else F(0.0)) + (F(2.0)*lse*z_loss if (z_loss > F(0.0)) else F(0.0))
            _a3 = (-_t7_1 if _t7_2 else F(0.0))
            __loss = (hard + smoothed + z_term) * __w
            __gw = __w * __gs
            if (label_smoothing > F(0.0)):
                __h0 = __gw*_a2
                __h1 = __gw*_a3
                __h2 = __gw*_a0/_len
                for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                    logits = load(_logits_, __b0 + c * __t0)
                    class_weight = load(_class_weight_, __b2 + c * __t2)
                    store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse) + __h1*(F(1.0) if (c == y) else F(0.0)) + __h2*class_weight)
            else:
                if ((z_loss > F(0.0)) or (label_smoothing != F(1.0))):
                    __h0 = __gw*_a2
                    __h1 = __gw*_a3
                    for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                        logits = load(_logits_, __b0 + c * __t0)
                        store(__grad_logits, __gb + c * __gsc, __h0*fast_exp(logits - lse) + __h1*(F(1.0) if (c == y) else F(0.0)))
                else:
                    __h0 = __gw*_a3
                    for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                        store(__grad_logits, __gb + c * __gsc, __h0*(F(1.0) if (c == y) else F(0.0)))
        else:
            __loss = 0.0
            for c in range(cuda.threadIdx.x, __C, cuda.blockDim.x):
                store(__grad_logits, __gb + c * __gsc, F(0.0))
        if cuda.threadIdx.x == 0:
            if __elementwise:
                __out[__row] = __loss
            __total += __loss
    __partials = cuda.shared.array(THREADS, numba.float64)
    __total = _block_sum(__partials, __total)
    if cuda.threadIdx.x == 0:
        cuda.atomic.add(__result, 0, __total)


# each kernel's arguments, by name (lossdsl.runtime.protocol.bind)
KERNELS = {
    'loss_rows': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__bad'),
    'loss_value': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__out'),
    'loss_value_and_grad': ('_logits_', '_y_', '_class_weight_', '__steps', '__rows', '__C', '__inner', '_ignore_index_', '_label_smoothing_', '_z_loss_', '__weight', '__scale', '__gscale', '__gso', '__gsq', '__gsc', '__out', '__grad_logits'),
}
