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
