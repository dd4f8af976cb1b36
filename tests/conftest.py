"""Shared test configuration: everything runs offline on the CPU."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

# Without a GPU the Triton kernels of fastdistill.losses are tested under Triton's CPU interpreter, which
# has to be switched on before triton is first imported (tests/losses/test_triton_kernels.py).
if not any(os.path.exists(dev) for dev in ("/dev/nvidiactl", "/dev/nvidia0")):
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    """Run the ``slow`` (multi-process, minutes-long) tests first. pytest-xdist hands tests out in
    collection order; with the slow ones last, one worker ran them alone at the end while the other
    sat idle. First, they overlap with the hundreds of short tests; the recipe launches (the longest:
    minutes each) lead. (The order is otherwise kept.)"""
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, "recipes/" not in item.nodeid))
