"""Every catalogue loss is compared with PyTorch, or NOT_IN_PYTORCH says why it is not.

The compared names come from the comparison tables themselves and the catalogue from the
specs, so a new loss needs no name added here: a PyTorch comparison, or a reason below.
Every loss, compared or not, is also checked against its NumPy reference (tests/test_catalogue.py).
"""
import lossdsl
import test_axis_torch  # these two skip the module without PyTorch
import test_references_torch
from axis_references import AXIS_REFERENCES
from references import REFERENCES
from test_ctc_dsl import SEQUENCE_LOSSES
from test_distillation import DISTILLATION
from test_topk import LIST_AXIS
from test_grpo import GRPO
from test_preference import PREFERENCE
from test_linear_heads import HEADS
from test_multilabel_margin import ROW_LOSSES

# loss → why no test compares it with PyTorch
NOT_IN_PYTORCH = {
    "gluon_kl_div": "MXNet Gluon's KLDivLoss convention (a mean over the axis, log_softmax unless from_logits); "
                    "PyTorch's kl_div is compared as kl_div",
    "triplet_squared": "MXNet Gluon's TripletLoss on squared distances; F.triplet_margin_loss takes p-norm "
                       "distances (compared as triplet)",
    "cosine_similarity": "Keras' -cos loss; PyTorch has no such loss, and -F.cosine_similarity has other "
                         "gradients below the eps floor",
    "dice": "MindSpore DiceLoss; PyTorch has no dice loss",
    "multiclass_dice": "MindSpore MultiClassDiceLoss; PyTorch has no dice loss",
    "tversky": "PyTorch has no Tversky loss (Salehi et al. 2017)",
    "rmse": "MindSpore RMSELoss; PyTorch has none, and autograd of sqrt(F.mse_loss) is NaN where this "
            "loss's gradient is 0",
}


def _compared_with_pytorch() -> set[str]:
    """Catalogue losses some test compares with PyTorch: the keys of the two PyTorch tables, and the
    losses the CTC, rows-intrinsic, linear-head and distillation test modules name (each compares them with
    PyTorch)."""
    return ({REFERENCES[key].name for key in test_references_torch.TORCH}
            | {AXIS_REFERENCES[key].name for key in test_axis_torch.TORCH}
            | set(SEQUENCE_LOSSES) | set(ROW_LOSSES) | set(HEADS) | set(DISTILLATION)
            | set(LIST_AXIS) | set(GRPO) | set(PREFERENCE))


def test_every_catalogue_loss_is_compared_with_pytorch_or_excused():
    unchecked = set(lossdsl.catalogue()) - _compared_with_pytorch() - set(NOT_IN_PYTORCH)
    assert not unchecked, f"compare these with PyTorch, or say in NOT_IN_PYTORCH why not: {sorted(unchecked)}"


def test_excuses_are_current():
    """An excused name is a catalogue loss that no test compares with PyTorch, with a reason."""
    assert set(NOT_IN_PYTORCH) <= set(lossdsl.catalogue())
    assert not set(NOT_IN_PYTORCH) & _compared_with_pytorch()
    assert all(reason.strip() for reason in NOT_IN_PYTORCH.values())
