"""Linear + loss heads: the catalogue's linear_cross_entropy against PyTorch's, fused heads of other
class-axis specs against the unfused loss on materialised logits, chunk sizes that do and do not
divide the rows, exact accumulation across micro-batches, and the errors a call gets."""
import numpy as np
import pytest

import lossdsl
from lossdsl.errors import LossInputError, LossLabelError

HEADS = ("linear_cross_entropy", "linear_cross_entropy_probs")  # tests/test_catalogue.py counts them here

ROWS, WIDTH, CLASSES = 45, 12, 30


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _layer(seed, rows_shape=(ROWS,), dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(*rows_shape, WIDTH)).astype(dtype)
    weight = (rng.normal(size=(CLASSES, WIDTH)) * 0.4).astype(dtype)
    bias = rng.normal(size=CLASSES).astype(dtype)
    return rng, x, weight, bias


def _pytorch(torch, x, linear_weight, target, reduction, bias=None, **options):
    """PyTorch's linear_cross_entropy and its gradients (input, weight, bias)."""
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, linear_weight)]
    tensors.append(None if bias is None else torch.tensor(bias, requires_grad=True))
    options = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    value = torch.nn.functional.linear_cross_entropy(tensors[0], tensors[1], torch.tensor(target),
                                                     linear_bias=tensors[2], reduction=reduction, **options)
    value.sum().backward()
    return value.detach().numpy(), [None if t is None else t.grad.numpy() for t in tensors]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
# rows per chunk: divides 45, does not, more than all rows; classes per block: all, divides 30, does not
@pytest.mark.parametrize("chunk_rows, chunk_classes", [(9, None), (8, None), (100, None), (9, 10), (8, 7)])
def test_linear_cross_entropy_against_pytorch(load_loss, torch, dtype, reduction, chunk_rows, chunk_classes):
    rng, x, weight, bias = _layer(0, dtype=dtype)
    target = rng.integers(0, CLASSES, ROWS)
    target[[3, 17]] = -100
    class_weight = rng.uniform(0.5, 2.0, CLASSES).astype(dtype)
    head = load_loss("linear_cross_entropy", label_smoothing=0.1)
    chunks = {"chunk_rows": chunk_rows, "chunk_classes": chunk_classes}
    value, grads = head.value_and_grad(x, weight, target, weight=class_weight, linear_bias=bias,
                                       reduction=reduction, **chunks)
    expected, expected_grads = _pytorch(torch, x, weight, target, reduction, bias, weight=class_weight,
                                        label_smoothing=0.1)
    tolerance = 1e-10 if dtype == np.float64 else 2e-5
    assert np.asarray(value).dtype == dtype and all(g.dtype == dtype for g in grads)
    np.testing.assert_allclose(value, expected, rtol=tolerance, atol=tolerance)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(head(x, weight, target, weight=class_weight, linear_bias=bias, reduction=reduction,
                                    **chunks), value, rtol=tolerance)


def test_values_alone_of_a_chunked_head_against_pytorch(load_loss, torch):
    """Logits of 2.4 MB: the head's own chunking takes small row chunks, and values alone a block of
    classes at a time (one sweep for cross_entropy's log-sum-exp); both equal PyTorch's."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 16)).astype(np.float32)
    weight = (rng.normal(size=(1000, 16)) * 0.5).astype(np.float32)
    bias = rng.normal(size=1000).astype(np.float32)
    target = rng.integers(0, 1000, 600)
    target[7] = -100
    head = load_loss("linear_cross_entropy", label_smoothing=0.1)
    expected, expected_grads = _pytorch(torch, x, weight, target, "none", bias, label_smoothing=0.1)
    np.testing.assert_allclose(head(x, weight, target, linear_bias=bias, reduction="none"), expected,
                               rtol=2e-5, atol=2e-5)
    value, grads = head.value_and_grad(x, weight, target, linear_bias=bias, reduction="none")
    np.testing.assert_allclose(value, expected, rtol=2e-5, atol=2e-5)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_gradient_reusing_the_values_pass_partials_against_pytorch(load_loss, torch, dtype):
    """DPO's two calls: values alone in blocks of classes keep each row's log-sum-exp; the second call,
    weighted per row (some weights 0 or negative), sweeps the classes once with them. Both equal PyTorch's."""
    rng = np.random.default_rng(6)
    x = rng.normal(size=(600, 16)).astype(dtype)
    weight = (rng.normal(size=(1000, 16)) * 0.5).astype(dtype)
    bias = rng.normal(size=1000).astype(dtype)
    target = rng.integers(0, 1000, 600)
    target[[7, 300]] = -100
    per_row = rng.normal(size=600)
    per_row[:50] = 0.0
    head = load_loss("linear_cross_entropy")
    values, partials = head.values_and_partials(x, weight, target, linear_bias=bias)
    assert partials is not None and partials.classes < 1000  # blocks of classes: what is reused
    expected, _ = _pytorch(torch, x, weight, target, "none", bias)
    tolerance = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(values, expected, rtol=tolerance, atol=tolerance)
    value, grads = head.value_and_grad(x, weight, target, linear_bias=bias, reduction="sum", sample_weight=per_row,
                                       partials=partials)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    losses = torch.nn.functional.cross_entropy(tensors[0] @ tensors[1].T + tensors[2], torch.tensor(target),
                                               reduction="none")
    wanted = (losses * torch.tensor(per_row, dtype=losses.dtype)).sum()
    wanted.backward()
    np.testing.assert_allclose(value, wanted.item(), rtol=tolerance)
    for got, tensor in zip(grads, tensors):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=tolerance, atol=tolerance)
    with pytest.raises(LossInputError, match="partials are for the gradient of the same rows"):
        head.value_and_grad(x[:500], weight, target[:500], linear_bias=bias, partials=partials)
    with pytest.raises(LossInputError, match="no chunking given"):
        head.value_and_grad(x, weight, target, linear_bias=bias, chunk_rows=100, partials=partials)
    bad = target.copy()
    bad[11] = 1000
    _, kept = head.values_and_partials(x, weight, target, linear_bias=bias)
    with pytest.raises(LossLabelError, match="label 1000"):
        head.value_and_grad(x, weight, bad, linear_bias=bias, partials=kept)


@pytest.mark.parametrize("chunk_rows, chunk_classes", [(8, None), (9, 10)])
@pytest.mark.parametrize("way", ["numpy", "packed blocks", "pieces on threads"])
def test_products_in_pieces(load_loss, torch, monkeypatch, way, chunk_rows, chunk_classes):
    """Where NumPy's BLAS is not found, the weight gradient is added a few classes at a time through NumPy
    (a bounded temporary); with it, its product is a few classes at a time (what bounds BLAS's packing
    workspace); and every product in pieces of a few classes or columns, taken by three threads in turn."""
    import lossdsl
    from lossdsl.runtime import blas
    threads = lossdsl.get_num_threads()
    if way == "numpy":
        monkeypatch.setattr(blas, "_gemm", lambda: None)
        monkeypatch.setattr("lossdsl.classaxis.heads._BLOCK_BYTES", 7 * WIDTH * 8)  # blocks of 7 classes
    elif way == "packed blocks":
        monkeypatch.setattr("lossdsl.classaxis.heads._PACKED_BYTES", 4 * 9 * 8)  # 4 classes of 9 rows a block
    else:
        monkeypatch.setattr("lossdsl.classaxis.heads._MIN_PIECE_WORK", 1)  # pieces of 1 to 2 classes or columns
        lossdsl.set_num_threads(3)
    rng, x, weight, bias = _layer(4)
    target = rng.integers(0, CLASSES, ROWS)
    try:
        value, grads = load_loss("linear_cross_entropy").value_and_grad(
            x, weight, target, linear_bias=bias, chunk_rows=chunk_rows, chunk_classes=chunk_classes)
    finally:
        lossdsl.set_num_threads(threads)
    expected, expected_grads = _pytorch(torch, x, weight, target, "mean", bias)
    np.testing.assert_allclose(value, expected, rtol=1e-10)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("min_rows, expected", [(4, (8, None)), (64, (ROWS, 5))])
def test_a_head_reports_the_chunking_it_takes(load_loss, monkeypatch, min_rows, expected):
    """`chunking` gives the rows per chunk and classes per block a call without chunk options goes through:
    a budget of 8 rows of all classes, taken as such where 4 rows are enough and as blocks of 5 classes for
    all 45 rows where a chunk needs 64."""
    from lossdsl.classaxis import heads
    monkeypatch.setattr(heads, "_SMALL_BYTES", 8 * CLASSES * 8)
    monkeypatch.setattr(heads, "_MIN_ROWS", min_rows)
    taken = []

    class Recorded(heads._Chunks):
        def __init__(self, layers, out_shape, per_row, step, classes, *rest):
            taken.append((step, classes))
            super().__init__(layers, out_shape, per_row, step, classes, *rest)

    monkeypatch.setattr(heads, "_Chunks", Recorded)
    head = load_loss("linear_cross_entropy")
    rng, x, weight, bias = _layer(6)
    head.value_and_grad(x, weight, rng.integers(0, CLASSES, ROWS), linear_bias=bias)
    assert head.chunking(ROWS, CLASSES, np.float64) == expected == taken[0]
    taken.clear()  # K-dimensional logits (N, C, 2): a row's logits twice as many, half the rows a chunk
    weight_k = np.concatenate([weight, weight], axis=1).reshape(CLASSES, 2, WIDTH)
    head.value_and_grad(x, weight_k, rng.integers(0, CLASSES, (ROWS, 2)))
    assert head.chunking(ROWS, (CLASSES, 2), np.float64) == taken[0] != expected


def test_gradients_come_from_the_pool_of_large_outputs(load_loss):
    """A gradient of 1 MiB or more comes from runtime.buffers' pool: one the caller still holds is never written
    again, one dropped is reused and zeroed first (the weight's is added chunk by chunk, so stale contents would
    show)."""
    rng = np.random.default_rng(7)
    x, weight = rng.normal(size=(40, 64)), rng.normal(size=(4096, 64)) * 0.1  # the weight's gradient: 2 MiB
    target = rng.integers(0, 4096, 40)
    head = load_loss("linear_cross_entropy")

    def call(x):
        return head.value_and_grad(x, weight, target, chunk_rows=16)[1]

    def unchanged(grads):
        for got, wanted in zip(grads, kept):
            np.testing.assert_array_equal(got, wanted)

    first = call(x)
    kept = [g.copy() for g in first]
    address = first[1].__array_interface__["data"][0]
    second = call(x * 2.0)
    assert not np.shares_memory(first[1], second[1])
    unchanged(first)
    del first, second
    again = call(x)
    assert again[1].__array_interface__["data"][0] == address  # the dropped array, reused
    unchanged(again)


def test_k_dimensional_logits_without_bias(load_loss, torch):
    """PyTorch's K-dimensional form: linear_weight (C, d1, D), logits (N, C, d1), targets (N, d1)."""
    rng, x, weight, _ = _layer(1)
    weight = rng.normal(size=(CLASSES, 3, WIDTH)) * 0.4
    target = rng.integers(0, CLASSES, (ROWS, 3))
    expected, expected_grads = _pytorch(torch, x, weight, target, "mean")
    for chunks in ({"chunk_rows": 4}, {"chunk_rows": 4, "chunk_classes": 7}):
        value, grads = load_loss("linear_cross_entropy").value_and_grad(x, weight, target, **chunks)
        assert len(grads) == 2 and grads[1].shape == weight.shape  # no bias, no bias gradient
        np.testing.assert_allclose(value, expected, rtol=1e-10)
        for got, wanted in zip(grads, expected_grads):
            np.testing.assert_allclose(got, wanted, atol=1e-12)


def test_leading_axes_of_the_input_are_rows(load_loss):
    """input (A, B, D) as nn.Linear takes it: the same as (A*B, D) rows."""
    rng, x, weight, bias = _layer(8, rows_shape=(5, 9))
    target = rng.integers(0, CLASSES, (5, 9))
    head = load_loss("linear_cross_entropy")
    values, grads = head.value_and_grad(x, weight, target, linear_bias=bias, reduction="none", chunk_rows=4)
    flat_values, flat_grads = head.value_and_grad(x.reshape(45, WIDTH), weight, target.reshape(45),
                                                  linear_bias=bias, reduction="none")
    assert values.shape == (5, 9) and grads[0].shape == x.shape
    np.testing.assert_allclose(values.reshape(45), flat_values, rtol=1e-13)
    np.testing.assert_allclose(grads[0].reshape(45, WIDTH), flat_grads[0], rtol=1e-12, atol=1e-15)


def test_probability_targets_against_pytorch(load_loss, torch):
    rng, x, weight, bias = _layer(2)
    target = rng.dirichlet(np.ones(CLASSES), ROWS)
    expected, expected_grads = _pytorch(torch, x, weight, target, "mean", bias, label_smoothing=0.2)
    for chunks in ({"chunk_rows": 7}, {"chunk_rows": 7, "chunk_classes": 8}):  # targets sliced with the blocks
        value, grads = load_loss("linear_cross_entropy_probs", label_smoothing=0.2).value_and_grad(
            x, weight, target, linear_bias=bias, **chunks)
        np.testing.assert_allclose(value, expected, rtol=1e-10)
        for got, wanted in zip(grads, expected_grads):
            np.testing.assert_allclose(got, wanted, atol=1e-12)


def _unfused(loss, x, weight, bias, inputs, **options):
    """The loss on materialised logits, its logit gradient pushed through the linear layer by NumPy."""
    logits = x @ weight.T + bias
    value, grad = loss.value_and_grad(logits, *inputs, axis=-1, **options)
    return value, (grad @ weight, grad.T @ x, grad.sum(axis=0))


EXTREMES = """
loss extremes(logits[c], y)
    "Every kind of partial a class block holds: max, min, p-norm, mean, logsumexp, a label's logit."
    param p = 3.0 where p >= 1
    extremes = max(logits, c) - 0.5*min(logits, c) + 0.1*norm(logits, c, p) + mean(logits*logits, c) + logsumexp(logits - max(logits, c), c) - logits[y]
"""


@pytest.mark.parametrize("name, params, kind", [
    ("poly1_ce", {"epsilon": 2.0, "label_smoothing": 0.05}, "labels"),
    ("softmax_focal", {"gamma": 2.0}, "labels"),
    ("multilabel_soft_margin", {}, "multi-hot"),
    ("cross_entropy_probs", {}, "probabilities"),
    ("multi_margin", {"p": 2, "margin": 0.5}, "labels"),  # a mean over classes needing a label's logit
    ("extremes", {}, "labels"),  # EXTREMES above
])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("chunks", [{"chunk_rows": 8}, {"chunk_rows": 8, "chunk_classes": 7},
                                    {"chunk_rows": 9, "chunk_classes": 10}, {"chunk_classes": 1}],
                         ids=["rows", "blocks", "blocks-dividing", "one-class-blocks"])
def test_fused_heads_of_other_specs_equal_the_unfused_loss(load_loss, name, params, kind, reduction, chunks):
    rng, x, weight, bias = _layer(3)
    inputs = {"labels": lambda: [rng.integers(0, CLASSES, ROWS)],
              "multi-hot": lambda: [(rng.uniform(size=(ROWS, CLASSES)) < 0.2).astype(np.float64)],
              "probabilities": lambda: [rng.dirichlet(np.ones(CLASSES), ROWS)]}[kind]()
    loss = lossdsl.compile(EXTREMES) if name == "extremes" else load_loss(name, **params)
    value, grads = loss.with_linear().value_and_grad(x, weight, *inputs, linear_bias=bias, reduction=reduction,
                                                     **chunks)
    expected, expected_grads = _unfused(loss, x, weight, bias, inputs, reduction=reduction)
    np.testing.assert_allclose(value, expected, rtol=1e-11)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, rtol=1e-10, atol=1e-13)


def test_sample_weights_and_all_rows_ignored(load_loss):
    rng, x, weight, bias = _layer(4)
    target = rng.integers(0, CLASSES, ROWS)
    per_row = rng.uniform(0.5, 2.0, ROWS)
    head = load_loss("linear_cross_entropy")
    value, grads = head.value_and_grad(x, weight, target, linear_bias=bias, sample_weight=per_row, chunk_rows=6)
    expected, expected_grads = _unfused(load_loss("cross_entropy"), x, weight, bias, [target],
                                        sample_weight=per_row)
    np.testing.assert_allclose(value, expected, rtol=1e-11)
    for got, wanted in zip(grads, expected_grads):
        np.testing.assert_allclose(got, wanted, atol=1e-13)
    ignored = np.full(ROWS, -100)
    value, grads = head.value_and_grad(x, weight, ignored, linear_bias=bias)  # every row ignored: as PyTorch,
    assert np.isnan(value) and all(np.all(g == 0) for g in grads)             # NaN, and zero gradients
    value, grads = head.value_and_grad(x, weight, ignored, linear_bias=bias, reduction="mean_or_zero")
    assert value == 0 and all(np.all(g == 0) for g in grads)


def test_micro_batches_accumulate_to_the_full_batch_exactly(load_loss):
    """Sum-reduced micro-batches over the summed normaliser equal the full batch's mean, gradients included."""
    rng, x, weight, bias = _layer(5)
    target = rng.integers(0, CLASSES, ROWS)
    target[::7] = -100
    class_weight = rng.uniform(0.5, 2.0, CLASSES)
    head, ce = load_loss("linear_cross_entropy"), load_loss("cross_entropy")
    full, full_grads = head.value_and_grad(x, weight, target, weight=class_weight, linear_bias=bias)
    parts = [slice(0, 10), slice(10, 33), slice(33, ROWS)]
    normalizer = sum(ce.normalizer(x[p] @ weight.T, target[p], class_weight, axis=-1) for p in parts)
    np.testing.assert_allclose(normalizer, class_weight[target[target != -100]].sum(), rtol=1e-14)
    total, grads = 0.0, [np.zeros_like(x), np.zeros_like(weight), np.zeros_like(bias)]
    for p in parts:
        value, (d_x, d_weight, d_bias) = head.value_and_grad(x[p], weight, target[p], weight=class_weight,
                                                             linear_bias=bias, reduction="sum")
        total += value
        grads[0][p] += d_x
        grads[1] += d_weight
        grads[2] += d_bias
    np.testing.assert_allclose(total / normalizer, full, rtol=1e-13)
    for got, wanted in zip(grads, full_grads):
        np.testing.assert_allclose(got / normalizer, wanted, rtol=1e-12, atol=1e-15)


def test_pytorch_adapter_drives_a_head(torch):
    import lossdsl.torch
    rng, x, weight, bias = _layer(6)
    target = rng.integers(0, CLASSES, ROWS)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    lossdsl.torch.Loss("linear_cross_entropy")(tensors[0], tensors[1], torch.tensor(target),
                                               linear_bias=tensors[2]).backward()
    expected, expected_grads = _pytorch(torch, x, weight, target, "mean", bias)
    for tensor, wanted in zip(tensors, expected_grads):
        np.testing.assert_allclose(tensor.grad.numpy(), wanted, atol=1e-12)


@pytest.mark.parametrize("change, message", [
    (lambda a: a.update(weight=a["weight"][:, :5]), "do not fit"),
    (lambda a: a.update(bias=a["bias"][:3]), "linear_bias"),
    (lambda a: a.update(target=a["target"][:5]), "target of shape"),
    (lambda a: a.update(chunk_rows=0), "chunk_rows"),
    (lambda a: a.update(chunk_classes=2.5), "chunk_classes"),
    (lambda a: a.update(reduction="batch"), "reduction"),
])
def test_bad_calls_are_refused(load_loss, change, message):
    rng, x, weight, bias = _layer(7)
    arguments = {"x": x, "weight": weight, "target": rng.integers(0, CLASSES, ROWS), "bias": bias,
                 "chunk_rows": None, "chunk_classes": None, "reduction": "mean"}
    change(arguments)
    with pytest.raises(LossInputError, match=message):
        load_loss("linear_cross_entropy")(arguments["x"], arguments["weight"], arguments["target"],
                                          linear_bias=arguments["bias"], chunk_rows=arguments["chunk_rows"],
                                          chunk_classes=arguments["chunk_classes"],
                                          reduction=arguments["reduction"])


def test_a_head_needs_a_class_axis_loss():
    with pytest.raises(LossInputError, match="class axis"):
        lossdsl.load("huber").with_linear()


@pytest.mark.parametrize("chunks", [{}, {"chunk_classes": 4}])
def test_masked_classes_through_the_bias(load_loss, chunks):
    """A -inf bias masks a class of the head: finite loss, no gradient reaches that class's weights
    (with blocks of 4 classes, one block is masked whole)."""
    rng, x, weight, bias = _layer(9)
    masked = [4, 5, 6, 7, 11]
    bias[masked] = -np.inf
    target = rng.integers(0, 4, ROWS)
    value, (d_x, d_weight, d_bias) = load_loss("linear_cross_entropy").value_and_grad(x, weight, target,
                                                                                       linear_bias=bias, **chunks)
    assert np.isfinite(value) and np.isfinite(d_x).all()
    assert np.all(d_weight[masked] == 0) and np.all(d_bias[masked] == 0)
    kept = np.setdiff1d(np.arange(CLASSES), masked)
    expected, expected_grads = _unfused(load_loss("cross_entropy"), x, weight[kept], bias[kept],
                                        [np.searchsorted(kept, target)])
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(d_weight[kept], expected_grads[1], atol=1e-13)


@pytest.mark.parametrize("chunks", [{"chunk_rows": 8}, {"chunk_rows": 8, "chunk_classes": 7}])
def test_a_label_outside_the_classes_is_refused(load_loss, chunks):
    """In the third chunk of rows; the row named is the input's, not the chunk's."""
    rng, x, weight, bias = _layer(11)
    target = rng.integers(0, CLASSES, ROWS)
    target[20] = CLASSES
    with pytest.raises(LossLabelError, match=rf"label {CLASSES} at row \(20,\) is outside the classes"):
        load_loss("linear_cross_entropy").value_and_grad(x, weight, target, linear_bias=bias, **chunks)


CAPPED = """
loss capped_ce(logits[c], y)
    "Gemma-style soft-capped logits with a temperature, then cross-entropy: one fused kernel."
    param cap = 30.0 where cap > 0
    param temperature = 1.0 where temperature > 0
    capped_ce = cross_entropy(cap*tanh(logits/(cap*temperature)), y)
"""


def test_soft_capping_and_temperature_fuse_into_a_head(torch):
    rng, x, weight, bias = _layer(10)
    weight *= 20  # logits large enough for the cap to matter
    target = rng.integers(0, CLASSES, ROWS)
    head = lossdsl.compile(CAPPED, cap=5.0, temperature=2.0).with_linear()
    value, grads = head.value_and_grad(x, weight, target, linear_bias=bias, chunk_rows=16)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    logits = torch.nn.functional.linear(*tensors)
    expected = torch.nn.functional.cross_entropy(5.0 * torch.tanh(logits / 10.0), torch.tensor(target))
    expected.backward()
    np.testing.assert_allclose(value, expected.detach().numpy(), rtol=1e-12)
    for got, tensor in zip(grads, tensors):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("chunks", [{"chunk_rows": 8}, {"chunk_rows": 8, "chunk_classes": 7}])
def test_a_head_gives_the_normaliser_from_the_labels(load_loss, chunks):
    """head.normalizer: the class weights of the kept rows, the same divisor its own "mean" uses."""
    rng, x, weight, bias = _layer(13)
    target = rng.integers(0, CLASSES, ROWS)
    target[::5] = -100
    class_weight = rng.uniform(0.5, 2.0, CLASSES)
    head = load_loss("linear_cross_entropy")
    normalizer = head.normalizer(x, weight, target, weight=class_weight)
    assert normalizer == pytest.approx(class_weight[target[target != -100]].sum(), rel=1e-14)
    total = head(x, weight, target, weight=class_weight, linear_bias=bias, reduction="sum", **chunks)
    mean = head(x, weight, target, weight=class_weight, linear_bias=bias, **chunks)
    assert total / normalizer == pytest.approx(mean, rel=1e-13)
    target[33] = CLASSES + 2
    with pytest.raises(LossLabelError, match=r"label 32 at row \(33,\)"):
        head.normalizer(x, weight, target)


NORMED = '''
loss normed(logits[c], y)
    head linear
    axis c = -1
    param p = 2.0 where p > 0
    normed = logsumexp(logits, c) - logits[y] + 0.1*norm(logits, c, p)
'''


@pytest.mark.parametrize("p", [2.0, 1.5])
@pytest.mark.parametrize("chunks", [{"chunk_rows": 8}, {"chunk_rows": 8, "chunk_classes": 7}])
def test_a_runtime_norm_order_in_rows_and_blocks(torch, p, chunks):
    """A norm's order p is tested once per row, outside the loops over the classes (one loop for p = 2,
    one for other orders): both against PyTorch, in rows and in blocks of classes."""
    rng, x, weight, bias = _layer(5)
    target = rng.integers(0, CLASSES, ROWS)
    head = lossdsl.compile(NORMED, p=p)
    value, grads = head.value_and_grad(x, weight, target, linear_bias=bias, **chunks)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    logits = tensors[0] @ tensors[1].T + tensors[2]
    expected = (torch.nn.functional.cross_entropy(logits, torch.tensor(target), reduction="none")
                + 0.1 * torch.linalg.vector_norm(logits, ord=p, dim=1)).mean()
    expected.backward()
    np.testing.assert_allclose(value, expected.item(), rtol=1e-10)
    for got, wanted in zip(grads, tensors):
        np.testing.assert_allclose(got, wanted.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert "if (p == F(2.0)):" in head.source("cpu", "float64")
