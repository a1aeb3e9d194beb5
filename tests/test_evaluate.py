"""evaluate() against the same figures computed in one pass over the whole split."""
import pytest
import torch
import torch.nn.functional as F

from budgetvit.evaluate import evaluate, normalize
from budgetvit.models import create_model
from budgetvit.runtime import Runtime


class Split:
    """The part of a data stream evaluate() uses: eval_batches, mean and std."""
    mean, std = (0.5,), (0.25,)

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def eval_batches(self, size, batch_size, rank=0, world=1):
        for i in range(0, len(self.labels), batch_size):
            yield self.images[i:i + batch_size], self.labels[i:i + batch_size]


def test_evaluate_matches_a_single_pass_over_the_split():
    torch.manual_seed(0)
    model = create_model("vit_micro4_local", in_chans=1, num_classes=10, depth=2)
    images, labels = torch.rand(103, 1, 28, 28), torch.randint(0, 10, (103,))
    with torch.no_grad():
        logits = model.eval()(normalize(images, Split.mean, Split.std))
    top5 = logits.topk(5, dim=1).indices
    model.train()
    r = evaluate(model, Split(images, labels), 28, 16, Runtime(torch.device("cpu"), None, False))
    assert r["images"] == 103 and model.training  # every image once; mode given back
    assert r["top1"] == pytest.approx(100 * (logits.argmax(1) == labels).float().mean().item())
    assert r["top5"] == pytest.approx(100 * (top5 == labels[:, None]).any(1).float().mean().item())
    assert r["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert 0 < r["top1"] < r["top5"] < 100  # the figures above are not trivially equal
