"""What a command loads before it starts: torch takes ~2 s to import, torchvision ~2 s more
(its import loads torch._dynamo); a command waits only for what it uses."""
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


def test_help_usage_errors_and_report_need_no_torch(tmp_path):
    """torch itself takes ~2 s to import: `budgetvit --help`, a mistyped --set key and
    `budgetvit report` answer without it."""
    code = """
import sys
from budgetvit.cli import main
try:
    main(["--help"])
except SystemExit as e:
    assert e.code == 0
assert main(["train", "--set", "train.bogus=1"]) == 2
assert main(["report", sys.argv[1]]) == 2  # (an empty folder: no runs)
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False"
    assert "unknown config key 'train.bogus'" in done.stderr
    assert f"no run directories (with summary.json or log.jsonl) under {tmp_path}" in done.stderr


def test_listing_a_trees_files_needs_no_torch(tmp_path):
    """`budgetvit prepare` starts by listing the tree (ImageFolder's rules, not its import)."""
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "1.jpg").touch()
    code = """
import sys
from budgetvit.data import prepare
from budgetvit.data.tree import scan
assert len(scan(sys.argv[1], "train")[0]) == 1
print("torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False"
