"""lossdsl.torch: gradients equal PyTorch's built-in losses, reductions, options, and a model trains."""
import pytest

torch = pytest.importorskip("torch")
import lossdsl.torch as lossdsl_torch  # noqa: E402

functional = torch.nn.functional


def _compare(ours, theirs, *inputs, dtype=torch.float64, upstream=None):
    """Value and input gradient of `ours` and of PyTorch's `theirs` on copies of the same inputs."""
    results = []
    for fn in (ours, theirs):
        x = inputs[0].detach().clone().requires_grad_(True)
        value = fn(x, *inputs[1:])
        (value if upstream is None else (value * upstream).sum()).backward()
        results.append((value.detach(), x.grad))
    (value, grad), (expected, expected_grad) = results
    tolerance = 2e-6 if dtype == torch.float32 else 1e-12
    assert value.dtype == expected.dtype
    torch.testing.assert_close(value, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad, expected_grad, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name, reference, targets", [
    ("huber", functional.huber_loss, "real"),
    ("smooth_l1", functional.smooth_l1_loss, "real"),
    ("mse", functional.mse_loss, "real"),
    ("l1", functional.l1_loss, "real"),
    ("bce_with_logits", functional.binary_cross_entropy_with_logits, "binary"),
    ("soft_margin", functional.soft_margin_loss, "signs"),
])
def test_gradients_equal_pytorch(name, reference, targets, dtype):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 7, generator=generator, dtype=dtype)
    t = torch.randn(6, 7, generator=generator, dtype=dtype)
    t = {"real": t, "binary": (t > 0).to(dtype), "signs": torch.where(t > 0, 1.0, -1.0).to(dtype)}[targets]
    _compare(lossdsl_torch.Loss(name), reference, x, t, dtype=dtype)
    _compare(lossdsl_torch.Loss(name, reduction="sum"), lambda a, b: reference(a, b, reduction="sum"), x, t,
             dtype=dtype)


def test_reduction_none_uses_the_incoming_gradient_as_weights():
    generator = torch.Generator().manual_seed(1)
    x, t = torch.randn(5, 4, generator=generator, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    upstream = torch.rand(5, 4, generator=generator, dtype=torch.float64)
    _compare(lossdsl_torch.Loss("huber", delta=0.5, reduction="none"),
             lambda a, b: functional.huber_loss(a, b, delta=0.5, reduction="none"), x, t, upstream=upstream)


def test_batch_reduction_is_the_per_sample_mean():
    x, t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    upstream = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    _compare(lossdsl_torch.Loss("mse", reduction="batch"),
             lambda a, b: functional.mse_loss(a, b, reduction="none").mean(dim=1), x, t, upstream=upstream)


@pytest.mark.parametrize("options", [{}, {"ignore_index": 1}, {"label_smoothing": 0.2},
                                     {"ignore_index": 0, "label_smoothing": 0.1}])
def test_cross_entropy_with_its_options(options):
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 5, (9,), generator=generator)
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    _compare(lossdsl_torch.Loss("cross_entropy", **options), lambda a, y: functional.cross_entropy(a, y, **options),
             logits, labels)
    _compare(lambda a, y: lossdsl_torch.Loss("cross_entropy", **options)(a, y, class_weight=weight),
             lambda a, y: functional.cross_entropy(a, y, weight=weight, **options), logits, labels)


def test_targets_get_no_gradient_and_double_backward_raises():
    x = torch.randn(4, requires_grad=True, dtype=torch.float64)
    t = torch.randn(4, requires_grad=True, dtype=torch.float64)
    lossdsl_torch.Loss("mse")(x, t).backward()
    assert x.grad is not None and t.grad is None  # mse differentiates its prediction only
    with pytest.raises(RuntimeError, match="mse is differentiable once"):
        torch.autograd.grad(lossdsl_torch.Loss("mse")(x, t), x, create_graph=True)


def test_a_small_model_trains():
    """A linear model fitted with the lossdsl huber loss reaches the data's line."""
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(256, 1, generator=generator)
    y = 2 * x + 3 + 0.05 * torch.randn(256, 1, generator=generator)
    model = torch.nn.Linear(1, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = lossdsl_torch.Loss("huber")
    first = criterion(model(x), y).item()
    for _ in range(300):
        optimiser.zero_grad()
        criterion(model(x), y).backward()
        optimiser.step()
    assert criterion(model(x), y).item() < 0.01 * first
    assert abs(model.weight.item() - 2) < 0.05 and abs(model.bias.item() - 3) < 0.05
