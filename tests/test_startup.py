"""What a command loads before it starts: torchvision and torch._dynamo take ~2 s to import
(torchvision's own import loads torch._dynamo), which every command used to wait for."""
import subprocess
import sys


def test_commands_load_neither_torchvision_nor_dynamo_until_needed():
    # The parser with every subcommand, the trainer and the eval/predict/export/info commands,
    # then a training batch of in-memory data (the fmnist preset's augmentation) and an
    # evaluation of an uncompiled model. (The optimizer alone loads torch._dynamo.)
    code = """
import sys, torch
from budgetvit.cli import build_parser
from budgetvit import commands, train
from budgetvit.presets import fmnist
from budgetvit.data.memory import MemoryData
from budgetvit.evaluate import evaluate
from budgetvit.models import create_model
from budgetvit.runtime import Runtime
build_parser().parse_args(["train"])
images = (torch.rand(8, 1, 28, 28) * 255).to(torch.uint8), torch.arange(8) % 10
data = MemoryData(images, images, classes=[str(i) for i in range(10)], mean=(0.5,), std=(0.5,),
                  batch_size=4, seed=0, aug=fmnist().aug, device=torch.device("cpu"))
data.set_size(16)
data.next_batch()
model = create_model("vit_micro4_local", num_classes=10, in_chans=1)
evaluate(model, data, 16, 4, Runtime(torch.device("cpu"), None, False))
print(sorted(m for m in ("torchvision", "torch._dynamo") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
